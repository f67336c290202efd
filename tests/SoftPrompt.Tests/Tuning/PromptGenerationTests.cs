using SoftPrompt.Inference;
using SoftPrompt.Models;
using SoftPrompt.Tuning;
using TorchSharp;
using static TorchSharp.torch;

namespace SoftPrompt.Tests.Tuning;

/// <summary>Generation with an attached soft prompt or prefix uses the KV cache correctly: the cached greedy decode
/// equals a cache-free loop that reruns the whole sequence (virtual tokens included) at every step.</summary>
public class PromptGenerationTests
{
    [Theory]
    [InlineData("llama", "prompt")]
    [InlineData("llama", "prefix")]
    [InlineData("gpt2", "prompt")]
    [InlineData("gpt2", "prefix")]
    [InlineData("qwen2", "prefix")]
    public void CachedGenerationWithAPromptEqualsTheCacheFreeLoop(string modelName, string method)
    {
        using var model = ModelLoader.Load(Fixtures.HfReference(modelName));
        using IPromptMethod m = method == "prompt"
            ? PromptTuning.Create(model, 5, PromptInit.Random, 3)
            : PrefixTuning.Create(model.Config, 5, false, 0, 3, model.Device);
        m.SetTrainable(false);
        var prompt = new[] { 580, 980, 431, 491, 305, 523 };
        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        var cached = SoftPrompt.Inference.Generator.Generate(model, prompt, new GenerationOptions { MaxNewTokens = 8 }, m.Inject(1), keepScores: true);

        var seq = prompt.ToList();
        for (int step = 0; step < 8; step++)
        {
            var inj = m.Inject(1);
            KvCache? cache = null;
            if (inj.PastKeyValues is not null) { cache = KvCache.Growing(model.Config.NumLayers); cache.SetPrefix(inj.PastKeyValues); }
            var ids = torch.tensor(seq.Select(i => (long)i).ToArray()).unsqueeze(0);
            var h = model.Forward(new ForwardArgs { InputIds = ids, PrefixEmbeds = inj.PrefixEmbeds, Cache = cache }).Hidden;
            var logits = model.Logits(h[0, -1]);
            var expectedScores = torch.tensor(cached.Scores![step]);
            Assert.InRange(Fixtures.MaxAbsDiff(logits, expectedScores), 0, 1e-4);
            seq.Add((int)logits.argmax().item<long>());
        }
        Assert.Equal(seq.Skip(prompt.Length).ToArray(), cached.NewIds);
        // The prompt really changes the output distribution.
        var plain = SoftPrompt.Inference.Generator.Generate(model, prompt, new GenerationOptions { MaxNewTokens = 1 }, null, keepScores: true);
        Assert.True(Fixtures.MaxAbsDiff(torch.tensor(plain.Scores![0]), torch.tensor(cached.Scores![0])) > 1e-3);
    }
}
