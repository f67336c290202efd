using SoftPrompt.Inference;
using SoftPrompt.Models;
using SoftPrompt.Tuning;

namespace SoftPrompt.Tests.Inference;

/// <summary>The README's ".NET code" example, as code that must keep compiling and working: load a model once,
/// attach a saved prompt, score and generate with it, and use the same model without it.</summary>
public class LibraryUsageTests
{
    [Fact]
    public void TheReadmeExampleWorks()
    {
        using var tmp = new Fixtures.TempDir();
        var dir = Fixtures.TinyModelWithTokenizer();
        using (var model = ModelLoader.Load(dir))
        using (var p = PromptTuning.Create(model, 4, PromptInit.SampleVocab, 1))
            Adapter.Save(tmp["adapter"], p, model);

        using var lm = LanguageModel.Load(dir, device: "auto");
        using var prompt = lm.LoadPrompt(tmp["adapter"]);
        var ids = lm.Encode("Word: good\nSentiment:");
        var scores = lm.Score(ids, prompt);
        Assert.All(scores.LogProbs, lp => Assert.NotNull(lp));
        var gen = lm.Generate(ids, new GenerationOptions { MaxNewTokens = 5, EosIds = lm.EosIds }, prompt);
        Assert.InRange(gen.NewIds.Length, 1, 5);
        Assert.NotNull(lm.Decode(gen.NewIds));

        var plain = lm.Score(ids);                 // the same model without the prompt: no context for the first token
        Assert.Null(plain.LogProbs[0]);
        Assert.NotEqual(plain.LogProbs[^1], scores.LogProbs[^1]);
    }
}
