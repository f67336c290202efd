using System.Text.Json.Nodes;
using SoftPrompt.Data;
using SoftPrompt.Evaluation;
using SoftPrompt.Inference;
using SoftPrompt.Scoring;
using SoftPrompt.Search;
using SoftPrompt.Tokenization;
using SoftPrompt.Tuning;
using TorchSharp;
using static TorchSharp.torch;

namespace SoftPrompt.Tests.Evaluation;

/// <summary>
/// The gradient-guided hard-prompt search on the tiny gpt2 fixture with a tokenizer trained in the test
/// (<see cref="SearchFixture"/>): it lowers its objective, reports a score that the trainer's own loss code
/// reproduces through <see cref="HardPrompt.BuildPromptIds"/>, is deterministic, and its gradient ranks swaps
/// better than chance; projected prompts are made of real, non-special tokens.
/// </summary>
public class HardPromptSearchTests
{
    static HardPromptSearchOptions Options(string train, string output) => new()
    {
        Model = SearchFixture.ModelDir, Train = train, Output = output,
        PromptLength = 4, Steps = 6, Candidates = 16, EvalCandidates = 16, BatchSize = 8, EvalEvery = 3, Seed = 5, Threads = 0,
    };

    [Fact]
    public void SearchLowersTheTargetLossAndItsScoreIsTheTrainersLossThroughBuildPromptIds()
    {
        using var tmp = new Fixtures.TempDir();
        var train = SearchFixture.WriteTask(tmp["train.jsonl"], 8, 1);
        var result = HardPromptSearchJob.Run(Options(train, tmp["run"]));

        Assert.True(result.Score < result.InitialScore - 1e-3, $"target loss {result.InitialScore:F4} -> {result.Score:F4}");
        Assert.True(result.Accepted > 0);
        var hp = HardPrompt.Load(tmp["run"]);
        Assert.Equal(result.TokenIds, hp.TokenIds);
        Assert.Equal("target_loss", hp.Objective);
        Assert.Equal(4, hp.TokenIds.Length);

        // Independent recomputation: the examples rebuilt through HardPrompt.BuildPromptIds (what eval uses) and
        // scored by the trainer's loss code (PromptLoss via PromptLoss.ValidationLoss).
        using var lm = LanguageModel.Load(SearchFixture.ModelDir);
        var tok = lm.RequireTokenizer();
        Assert.Equal(new[] { 0 }, tok.PrefixIds); // BOS first: the hard prompt sits at positions 1..k
        var examples = DatasetReader.Read(train, new DataOptions()).Examples;
        double Recompute(int[] ids) => PromptLoss.ValidationLoss(lm.Model, null,
            examples.Select(e => new TokenizedExample(HardPrompt.BuildPromptIds(tok, ids, e.Prompt), tok.Encode(e.Target, false))).ToList(), 3, tok.PadId ?? tok.EosId ?? 0);
        Assert.Equal(Recompute(hp.TokenIds), hp.Score!.Value, 4);
        Assert.Equal(Recompute(result.InitialIds), result.InitialScore, 4);

        // The prompt is made of allowed tokens: real vocabulary entries, not special, readable.
        var allowed = TokenSets.AllowedTokens(tok, lm.Model.Config.VocabSize, readableOnly: true);
        foreach (var id in hp.TokenIds.Where((id, i) => id != result.InitialIds[i])) Assert.True(allowed[id], $"token {id} '{tok.TokenText(id)}' is not allowed");
        Assert.Equal(tok.Decode(hp.TokenIds), hp.Text);

        // Run folder: a log row per step, the resolved config, a summary.
        var log = File.ReadAllLines(tmp["run/search_log.jsonl"]).Select(l => JsonNode.Parse(l)!.AsObject()).ToList();
        Assert.Equal(6, log.Count);
        Assert.Equal(Enumerable.Range(1, 6), log.Select(r => r["step"]!.GetValue<int>()));
        foreach (var r in log) { Assert.NotNull(r["loss"]); Assert.NotNull(r["best"]); Assert.NotNull(r["prompt"]); }
        Assert.Equal(hp.Score!.Value, log[^1]["best"]!.GetValue<double>(), 9);
        Assert.Equal(4, JsonNode.Parse(File.ReadAllText(tmp["run/config.json"]))!["prompt_length"]!.GetValue<int>());
        Assert.Empty(Directory.GetFiles(tmp["run"], "*.tmp"));
        // An existing result is not overwritten.
        var e2 = Assert.Throws<SoftPromptException>(() => HardPromptSearchJob.Run(Options(train, tmp["run"])));
        Assert.Contains("already holds", e2.Message);
    }

    [Fact]
    public void SameSeedSameSearch()
    {
        using var tmp = new Fixtures.TempDir();
        var train = SearchFixture.WriteTask(tmp["train.jsonl"], 12, 2);
        var o = Options(train, tmp["a"]) with { Steps = 4, BatchSize = 4, EvalEvery = 2 };
        var a = HardPromptSearchJob.Run(o);
        var b = HardPromptSearchJob.Run(o with { Output = tmp["b"] });
        Assert.Equal(a.TokenIds, b.TokenIds);
        Assert.Equal(a.Score, b.Score);
        Assert.Equal(File.ReadAllLines(tmp["a/search_log.jsonl"]).Select(Strip), File.ReadAllLines(tmp["b/search_log.jsonl"]).Select(Strip));
        static string Strip(string row) { var o = JsonNode.Parse(row)!.AsObject(); o.Remove("elapsed_s"); return o.ToJsonString(); }
    }

    static (LanguageModel Lm, TargetLossObjective Objective, int[] Init) Objective(string train, HardPromptSearchOptions? o = null)
    {
        o ??= new HardPromptSearchOptions { PromptLength = 4 };
        var lm = LanguageModel.Load(SearchFixture.ModelDir);
        var examples = DatasetReader.Read(train, new DataOptions()).Examples;
        var obj = new TargetLossObjective(lm.Model, lm.RequireTokenizer(), examples, null, o);
        return (lm, obj, HardPromptSearchJob.InitialIds(lm.RequireTokenizer(), obj.Allowed, o.PromptLength, o.Init));
    }

    [Fact]
    public void GradientLossEqualsTheExactLossAndGradientProposalsBeatRandomSwaps()
    {
        using var tmp = new Fixtures.TempDir();
        var train = SearchFixture.WriteTask(tmp["train.jsonl"], 8, 3);
        var (lm, obj, init) = Objective(train);
        using var _ = lm;
        var all = Enumerable.Range(0, obj.ExampleCount).ToArray();
        var (gLoss, grad) = obj.Gradient(init, all);
        Assert.Equal(obj.Loss(new[] { init }, all)[0], gLoss, 4);
        Assert.Equal(new long[] { 4, lm.Model.Config.HiddenSize }, grad.shape);

        // Top-8 gradient candidates per position vs. the same number of random allowed swaps (seeded).
        var E = lm.Model.EmbeddingMatrix;
        var mask = torch.tensor(obj.Allowed.Select(a => a ? 0f : float.NegativeInfinity).ToArray());
        var scores = -grad.matmul(E.t()) + mask;
        var top = scores.topk(8, dim: 1).indexes.data<long>().ToArray();
        var gradCands = new List<int[]>(); var randCands = new List<int[]>();
        var allowedIds = Enumerable.Range(0, obj.Allowed.Count).Where(i => obj.Allowed[i]).ToArray();
        var rng = new Random(9);
        for (int p = 0; p < 4; p++)
            for (int j = 0; j < 8; j++)
            {
                var g = init.ToArray(); g[p] = (int)top[p * 8 + j]; gradCands.Add(g);
                var r = init.ToArray(); r[p] = allowedIds[rng.Next(allowedIds.Length)]; randCands.Add(r);
            }
        double gMean = obj.Loss(gradCands, all).Average(), rMean = obj.Loss(randCands, all).Average();
        Assert.True(gMean < rMean, $"gradient-proposed swaps {gMean:F4} vs random swaps {rMean:F4} (mean exact loss)");
    }

    [Fact]
    public void ProjectedPromptsAreRealTokensAndACopiedVocabularyRowProjectsToItself()
    {
        using var lm = LanguageModel.Load(SearchFixture.ModelDir);
        var tok = lm.RequireTokenizer();
        var allowed = TokenSets.AllowedTokens(tok, lm.Model.Config.VocabSize, readableOnly: false);

        // A random prompt (N(0,1), far from every row) still projects onto real, non-special tokens.
        using var random = PromptTuning.Create(lm.Model, 6, PromptInit.Random, 3);
        var projected = PromptProjection.Project(lm.Model, random, allowed)!;
        Assert.Equal(6, projected.Length);
        foreach (var id in projected)
        {
            Assert.InRange(id, 0, tok.VocabSize - 1);
            Assert.DoesNotContain(id, tok.AddedTokens.Select(a => a.Id));
        }

        // Text init copies vocabulary rows: each virtual token's nearest token is that very token, cosine 1.
        var ids = tok.Encode(" the movie was good", false);
        using var text = PromptTuning.Create(lm.Model, ids.Length, PromptInit.Text, 3, new[] { ids }, " the movie was good");
        using var emb = text.ExportEmbeddings();
        var (near, cos) = PromptProjection.NearestTokens(lm.Model, emb, 3, allowed);
        for (int i = 0; i < ids.Length; i++)
        {
            Assert.Equal(ids[i], near[i][0]);
            Assert.Equal(1.0, cos[i][0], 5);
            Assert.True(cos[i][1] < cos[i][0]);
        }
        Assert.Equal(ids, PromptProjection.Project(lm.Model, text, allowed));

        // Sample-vocab init: the nearest token's row is bit-identical to the virtual token.
        using var sampled = PromptTuning.Create(lm.Model, 5, PromptInit.SampleVocab, 7);
        using var se = sampled.ExportEmbeddings();
        var (sn, sc) = PromptProjection.NearestTokens(lm.Model, se, 1);
        for (int i = 0; i < 5; i++)
        {
            Assert.Equal(1.0, sc[i][0], 5);
            Assert.Equal(0.0, Fixtures.MaxAbsDiff(lm.Model.EmbeddingMatrix[sn[i][0]], se[i]));
        }
    }

    [Fact]
    public void BadOptionsAreClearErrors()
    {
        using var tmp = new Fixtures.TempDir();
        var train = SearchFixture.WriteTask(tmp["train.jsonl"], 4, 1);
        Assert.Contains("--prompt-length must be at least 1", Assert.Throws<SoftPromptException>(() => HardPromptSearchJob.Run(Options(train, tmp["r"]) with { PromptLength = 0 })).Message);
        Assert.Contains("dataset file not found", Assert.Throws<DatasetException>(() => HardPromptSearchJob.Run(Options(tmp["nope.jsonl"], tmp["r"]))).Message);
        Assert.Contains("--select-by", Assert.Throws<SoftPromptException>(() => HardPromptSearchJob.Run(Options(train, tmp["r"]) with { SelectBy = "f1" })).Message);
        Assert.False(Directory.Exists(tmp["r"]));
    }
}
