using SoftPrompt.Models;
using SoftPrompt.Scoring;
using SoftPrompt.Training;
using SoftPrompt.Tuning;
using TorchSharp;
using static TorchSharp.torch;

namespace SoftPrompt.Tests.Training;

/// <summary>
/// A training smoke test per added family on its tiny checkpoint (fixtures/hf-reference-more): prompt tuning and
/// prefix tuning lower the validation loss, the base model stays bit-identical, and the exported PEFT adapter, loaded
/// back, gives the trained prompt's logits exactly.
/// </summary>
public class FamilyTrainingTests
{
    public static IEnumerable<object[]> Cases() =>
        from model in Fixtures.MoreReferenceModels
        from method in new[] { "prompt", "prefix" }
        select new object[] { model, method };

    [Theory, MemberData(nameof(Cases))]
    public void TrainingLowersTheLossAndTheExportedAdapterReloadsToTheSameLogits(string modelName, string method)
    {
        using var tmp = new Fixtures.TempDir();
        using var model = ModelLoader.Load(Fixtures.HfReference(modelName));
        var before = model.Weights.ToDictionary(kv => kv.Key, kv => kv.Value.clone());
        var train = TrainerTests.Task(32, 1); var val = TrainerTests.Task(8, 2);
        using IPromptMethod m = method == "prompt"
            ? PromptTuning.Create(model, 4, PromptInit.SampleVocab, 5)
            : PrefixTuning.Create(model.Config, 4, false, 0, 5, model.Device);
        double initial = PromptLoss.ValidationLoss(model, m, val, 8, 0);
        var o = new TrainOptions
        {
            Method = method == "prompt" ? TuningMethod.Prompt : TuningMethod.Prefix, VirtualTokens = 4, Lr = 0.3, Steps = 30, BatchSize = 4, EvalEvery = 10, LogEvery = 5,
            Seed = 3, Schedule = "constant", Output = tmp.Path, Model = "unused", Train = "unused",
        };
        new Trainer(model, m, train, null, o, 0, tmp.Path).Run();   // no validation in the run: adapter/ holds the last prompt
        double final = PromptLoss.ValidationLoss(model, m, val, 8, 0);
        Assert.True(final < initial - 0.15, $"{modelName} {method}: validation loss {initial:F3} -> {final:F3}");
        foreach (var (k, w) in model.Weights) Assert.True(w.equal(before[k]).all().item<bool>(), $"base weight {k} changed");

        // Export (the trainer wrote adapter/), reload, same logits as the trained prompt.
        using var loaded = Adapter.Load(Path.Combine(tmp.Path, "adapter"), model);
        Assert.Equal(m.PeftType, loaded.PeftType);
        using var _ = torch.no_grad();
        var ids = torch.tensor(ModelFolders.Seq2[..9]).unsqueeze(0);
        Tensor Logits(IPromptMethod p)
        {
            var inj = p.Inject(1);
            var cache = inj.PastKeyValues is null ? null : KvCache.Growing(model.Config.NumLayers);
            cache?.SetPrefix(inj.PastKeyValues!);
            return model.Logits(model.Forward(new ForwardArgs { InputIds = ids, PrefixEmbeds = inj.PrefixEmbeds, Cache = cache }).Hidden);
        }
        Assert.InRange(Fixtures.MaxAbsDiff(Logits(loaded), Logits(m)), 0, 1e-6);
        Assert.InRange(Math.Abs(PromptLoss.ValidationLoss(model, loaded, val, 8, 0) - final), 0, 1e-6);
    }
}
