using SoftPrompt.Data;
using SoftPrompt.IO;
using SoftPrompt.Models;
using SoftPrompt.Optimization;
using SoftPrompt.Scoring;
using SoftPrompt.Training;
using SoftPrompt.Tuning;
using TorchSharp;
using static TorchSharp.torch;

namespace SoftPrompt.Tests.Device;

/// <summary>
/// bf16 frozen weights with fp32 prompts and fp32 optimizer state, for every method and both optimizers (the GPU
/// recipe: bf16 halves the weights' memory, while the few trainable tensors and their Adam/Adafactor moments stay in
/// fp32 so small updates are not rounded away). Checks the dtype of everything that reaches the optimizer (parameters,
/// their gradients, the state), the checkpoint (state.safetensors), and the export (adapter/ and best/).
/// </summary>
public class DeviceDtypeTests
{
    /// <summary>The trainer tests' learnable task (after 3-6 random tokens, answer 7 then 11).</summary>
    static List<TokenizedExample> Task(int count, int seed) => Training.TrainerTests.Task(count, seed);

    public static IEnumerable<object[]> Cases() =>
        from method in new[] { "prompt", "prompt-projection", "prefix", "prefix-projection" }
        from opt in new[] { "adamw", "adafactor" }
        select new object[] { method, opt };

    [Theory, MemberData(nameof(Cases))]
    public void Bf16WeightsTrainFp32PromptsWithFp32StateCheckpointAndExport(string method, string optimizer)
    {
        using var tmp = new Fixtures.TempDir();
        using var model = ModelLoader.Load(Fixtures.HfReference("qwen2"), torch.CPU, ScalarType.BFloat16);
        foreach (var w in model.Weights.Values) Assert.Equal(ScalarType.BFloat16, w.dtype);
        var before = model.Weights.ToDictionary(kv => kv.Key, kv => kv.Value.clone());
        using IPromptMethod m = method switch
        {
            "prompt" => PromptTuning.Create(model, 3, PromptInit.SampleVocab, 5),
            "prompt-projection" => PromptTuning.Create(model, 3, PromptInit.SampleVocab, 5, projectionHidden: 8),
            _ => PrefixTuning.Create(model.Config, 3, method == "prefix-projection", 8, 5, model.Device),
        };
        foreach (var (name, p) in m.Parameters) Assert.True(p.dtype == ScalarType.Float32, $"{name} is {p.dtype}");

        // One step by hand, to see what reaches the optimizer.
        using (var scope = torch.NewDisposeScope())
        {
            using IPromptOptimizer opt = optimizer == "adamw" ? new AdamW(m.Parameters) : new Adafactor(m.Parameters, beta1: 0.9);
            using var batch = Collator.Collate(Task(4, 1), 0, model.Device);
            var (nll, count) = PromptLoss.Compute(model, m, batch);
            Assert.Equal(ScalarType.Float32, nll.dtype);
            (nll / count).backward();
            foreach (var (name, p) in m.Parameters) Assert.True(p.grad!.dtype == ScalarType.Float32, $"{name}.grad is {p.grad.dtype}");
            opt.Step(0.01);
            foreach (var (name, p) in m.Parameters) Assert.True(p.dtype == ScalarType.Float32, $"{name} became {p.dtype}");
            foreach (var (k, t) in opt.StateDict())
                Assert.True(t.dtype == (k.EndsWith("step") || k == "__step__" ? ScalarType.Int64 : ScalarType.Float32), $"optimizer state {k} is {t.dtype}");
        }

        // The trainer: checkpoint, best and the exported adapter.
        var o = new TrainOptions
        {
            Method = method.StartsWith("prefix") ? SoftPrompt.Tuning.TuningMethod.Prefix : SoftPrompt.Tuning.TuningMethod.Prompt, Optimizer = optimizer, VirtualTokens = 3, Lr = 0.01, Steps = 2, BatchSize = 4,
            EvalEvery = 2, LogEvery = 1, Seed = 3, Schedule = "constant", Output = tmp.Path, Model = "unused", Train = "unused", Dtype = "bf16",
        };
        new Trainer(model, m, Task(8, 1), Task(4, 2), o, 0, tmp.Path).Run();
        var state = SafeTensors.ReadHeader(Path.Combine(tmp.Path, "checkpoint", "state.safetensors"));
        Assert.Contains(state.Tensors.Keys, k => k.StartsWith("optim."));
        foreach (var (k, info) in state.Tensors)
            Assert.True(info.DType == (k.StartsWith("optim.") && (k.EndsWith("step") || k.EndsWith("__step__")) ? "I64" : "F32"), $"checkpoint {k} is {info.DType}");
        Assert.Equal(m.Parameters.Count, state.Tensors.Keys.Count(k => k.StartsWith("param.")));
        foreach (var dir in new[] { "adapter", "best" })
        {
            var exported = SafeTensors.ReadHeader(Path.Combine(tmp.Path, dir, "adapter_model.safetensors"));
            var info = Assert.Single(exported.Tensors.Values);
            Assert.Equal("prompt_embeddings", info.Name);
            Assert.Equal("F32", info.DType);
        }
        // Scoring and generation with the fp32 prompt on the bf16 model (the prefix meets bf16 keys in the cache).
        var scores = SoftPrompt.Scoring.RankClassifier.Score(model, m, new[] { 21, 22, 23 }, new[] { new[] { 7 }, new[] { 8, 9 } });
        Assert.All(scores.LogProbs, lp => Assert.True(double.IsFinite(lp)));
        using (var scope = torch.NewDisposeScope())
            Assert.Equal(2, SoftPrompt.Inference.Generator.Generate(model, new[] { 21, 22 }, new SoftPrompt.Inference.GenerationOptions { MaxNewTokens = 2 }, m.Inject(1)).NewIds.Length);
        foreach (var (k, w) in model.Weights)
        {
            Assert.Equal(ScalarType.BFloat16, w.dtype);
            Assert.True(w.equal(before[k]).all().item<bool>(), $"base weight {k} changed");
        }
    }

    /// <summary>The Gemma, Gemma 2, Phi-3 and GPT-NeoX paths in bf16 (Gemma's embedding scale rounded to bf16, Gemma 2's
    /// fp32 soft-capped softmax, GPT-NeoX's LayerNorm, Phi-3's fused projections): a prompt and a prefix train a step
    /// with fp32 gradients, generation runs, and the logits stay near the fp32 model's (bf16's tolerance of the golden
    /// check, scaled by the logits' range).</summary>
    [Theory]
    [InlineData("gemma")]
    [InlineData("gemma2")]
    [InlineData("phi3")]
    [InlineData("gpt_neox")]
    public void Bf16WeightsRunTheGemmaPhi3AndNeoXFamilies(string name)
    {
        using var model = ModelLoader.Load(Fixtures.HfReference(name), torch.CPU, ScalarType.BFloat16);
        using var fp32 = ModelLoader.Load(Fixtures.HfReference(name));
        using (var scope = torch.NewDisposeScope())
        using (torch.no_grad())
        {
            var ids = torch.tensor(ModelFolders.Seq2[..12]).unsqueeze(0);
            var a = model.Logits(model.Forward(new ForwardArgs { InputIds = ids }).Hidden);
            var b = fp32.Logits(fp32.Forward(new ForwardArgs { InputIds = ids }).Hidden);
            Assert.Equal(ScalarType.Float32, a.dtype);
            Assert.InRange(Fixtures.MaxAbsDiff(a, b), 0, 0.05 * Math.Max(1, b.abs().max().item<float>()));
        }
        foreach (var prefix in new[] { false, true })
        {
            using IPromptMethod m = prefix ? PrefixTuning.Create(model.Config, 3, false, 0, 5, model.Device) : PromptTuning.Create(model, 3, PromptInit.SampleVocab, 5);
            using var scope = torch.NewDisposeScope();
            using var batch = Collator.Collate(Task(4, 1), 0, model.Device);
            var (nll, count) = PromptLoss.Compute(model, m, batch);
            (nll / count).backward();
            Assert.True(float.IsFinite((nll / count).item<float>()));
            foreach (var (pn, p) in m.Parameters) Assert.True(p.grad!.dtype == ScalarType.Float32 && p.grad.abs().sum().item<float>() > 0, $"{pn}.grad");
            Assert.Equal(2, SoftPrompt.Inference.Generator.Generate(model, new[] { 21, 22 }, new SoftPrompt.Inference.GenerationOptions { MaxNewTokens = 2 }, m.Inject(1)).NewIds.Length);
        }
    }
}
