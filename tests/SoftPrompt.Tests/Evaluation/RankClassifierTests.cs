using SoftPrompt.Inference;
using SoftPrompt.Models;
using SoftPrompt.Scoring;
using SoftPrompt.Tuning;

namespace SoftPrompt.Tests.Evaluation;

public class RankClassifierTests
{
    static readonly int[] Prompt = { 42, 171, 785, 367, 214, 606, 449, 23, 159 };
    // Labels of 1, 2 and 3 tokens; two share a first token (a shared prefix must not confuse the batching).
    static readonly int[][] Labels = { new[] { 17 }, new[] { 250, 113 }, new[] { 250, 116, 371 }, new[] { 99, 5 } };

    static IPromptMethod? Method(string kind, CausalLM model) => kind switch
    {
        "soft" => PromptTuning.Create(model, 3, PromptInit.Random, 7),
        "prefix" => PrefixTuning.Create(model.Config, 3, false, 0, 7, model.Device),
        _ => null,
    };

    [Theory]
    [InlineData("llama", "none")]
    [InlineData("llama", "soft")]
    [InlineData("llama", "prefix")]
    [InlineData("gpt2", "none")]
    [InlineData("gpt2", "soft")]
    [InlineData("qwen2", "prefix")]
    public void SharedPrefixScoresEqualOneForwardPerLabel(string modelName, string kind)
    {
        using var model = ModelLoader.Load(Fixtures.HfReference(modelName));
        using var m = Method(kind, model);
        var fast = RankClassifier.Score(model, m, Prompt, Labels);
        var naive = RankClassifier.ScoreNaive(model, m, Prompt, Labels);
        for (int l = 0; l < Labels.Length; l++)
        {
            Assert.True(Math.Abs(fast.LogProbs[l] - naive.LogProbs[l]) <= 1e-4, $"label {l}: {fast.LogProbs[l]} vs {naive.LogProbs[l]}");
            Assert.Equal(Labels[l].Length, fast.TokenCounts[l]);
        }
        Assert.Equal(naive.Best(false), fast.Best(false));
        Assert.Equal(naive.Best(true), fast.Best(true));
    }

    [Theory]
    [InlineData("none")]
    [InlineData("soft")]
    [InlineData("prefix")]
    public void ScoreIsTheSumOfPerTokenLogProbsFromTheScorer(string kind)
    {
        using var model = ModelLoader.Load(Fixtures.HfReference("llama"));
        using var m = Method(kind, model);
        var fast = RankClassifier.Score(model, m, Prompt, Labels);
        for (int l = 0; l < Labels.Length; l++)
        {
            var ids = Prompt.Concat(Labels[l]).ToArray();
            TokenScores s;
            using (var scope = TorchSharp.torch.NewDisposeScope()) s = Scorer.Score(model, ids, m?.Inject(1));
            double sum = s.LogProbs.Skip(Prompt.Length).Sum(x => x!.Value);
            Assert.True(Math.Abs(sum - fast.LogProbs[l]) <= 1e-4, $"label {l}: scorer {sum} vs rank classifier {fast.LogProbs[l]}");
        }
        // Length normalisation divides by the label's token count.
        Assert.Equal(fast.LogProbs[2] / 3, fast.Score(2, true), 12);
    }
}
