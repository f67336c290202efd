using SoftPrompt.Data;
using SoftPrompt.IO;
using SoftPrompt.Models;
using SoftPrompt.Scoring;
using SoftPrompt.Training;
using SoftPrompt.Tuning;
using TorchSharp;
using static TorchSharp.torch;

namespace SoftPrompt.Tests.Training;

public class TrainerTests
{
    /// <summary>A task a prompt can learn: after any 3-6 random tokens, answer token 7 then 11.</summary>
    internal static List<TokenizedExample> Task(int count, int seed)
    {
        var rng = new Random(seed);
        return Enumerable.Range(0, count).Select(_ =>
            new TokenizedExample(Enumerable.Range(0, rng.Next(3, 7)).Select(_ => rng.Next(20, 900)).ToArray(), new[] { 7, 11 })).ToList();
    }

    static TrainOptions Options(string method, int steps, string dir) => new()
    {
        Method = Enum.Parse<SoftPrompt.Tuning.TuningMethod>(method, true), VirtualTokens = 4, Lr = 0.3, Steps = steps, BatchSize = 4, EvalEvery = 10, LogEvery = 5,
        Seed = 3, Schedule = "constant", Output = dir, Model = "unused", Train = "unused",
    };

    [Theory]
    [InlineData("llama", "prompt")]
    [InlineData("llama", "prefix")]
    [InlineData("gpt2", "prompt")]
    [InlineData("qwen2", "prefix")]
    [InlineData("llama", "prompt-projection")]
    public void TrainingLowersValidationLossAndLeavesTheBaseModelBitIdentical(string modelName, string method)
    {
        using var tmp = new Fixtures.TempDir();
        using var model = ModelLoader.Load(Fixtures.HfReference(modelName));
        var before = model.Weights.ToDictionary(kv => kv.Key, kv => kv.Value.clone());
        var train = Task(32, 1); var val = Task(8, 2);
        using IPromptMethod m = method switch
        {
            "prompt" => PromptTuning.Create(model, 4, PromptInit.SampleVocab, 5),
            "prompt-projection" => PromptTuning.Create(model, 4, PromptInit.SampleVocab, 5, projectionHidden: 16),
            _ => PrefixTuning.Create(model.Config, 4, false, 0, 5, model.Device),
        };
        double initial = PromptLoss.ValidationLoss(model, m, val, 8, 0);
        var o = Options(method == "prefix" ? "prefix" : "prompt", 30, tmp.Path) with { Lr = method == "prompt-projection" ? 0.03 : 0.3 };
        var result = new Trainer(model, m, train, val, o, 0, tmp.Path).Run();
        double final = PromptLoss.ValidationLoss(model, m, val, 8, 0);
        // The near-random reference models give ~ln(1000) = 6.9 to everything, and a prompt has little leverage
        // on them (least through GPT-2's tied head); the validation set is fixed, so any drop is learning, and
        // 30 steps must buy a clear one.
        Assert.True(final < initial - 0.15, $"validation loss {initial:F3} -> {final:F3}");
        foreach (var (k, w) in model.Weights)
        {
            Assert.True(w.equal(before[k]).all().item<bool>(), $"base weight {k} changed");
            Assert.False(w.requires_grad);
            Assert.Null(w.grad);
        }
        foreach (var (_, p) in m.Parameters) Assert.Equal(ScalarType.Float32, p.dtype);
        Assert.True(File.Exists(Path.Combine(tmp.Path, "adapter", "adapter_model.safetensors")));
        Assert.True(File.Exists(Path.Combine(tmp.Path, "metrics.jsonl")));
        Assert.True(File.Exists(Path.Combine(tmp.Path, "training.png")));
        Assert.Equal(30, result.Steps);
    }

    [Theory]
    [InlineData("llama", "prompt")]
    [InlineData("gpt2", "prefix")]
    [InlineData("mistral", "prefix")]
    public void RightPaddedBatchLossEqualsTheSumOfUnpaddedLosses(string modelName, string method)
    {
        using var model = ModelLoader.Load(Fixtures.HfReference(modelName));
        using IPromptMethod m = method == "prompt" ? PromptTuning.Create(model, 4, PromptInit.SampleVocab, 5) : PrefixTuning.Create(model.Config, 4, false, 0, 5, model.Device);
        var examples = new List<TokenizedExample> { new(new[] { 5, 6, 7, 8, 9, 10 }, new[] { 11, 12, 13 }), new(new[] { 20 }, new[] { 21 }), new(new[] { 30, 31, 32 }, new[] { 33, 34 }) };
        using var _ = torch.no_grad();
        using var batch = Collator.Collate(examples, 0, model.Device);
        var (sum, count) = PromptLoss.Compute(model, m, batch);
        double separate = 0; long n = 0;
        foreach (var e in examples)
        {
            using var one = Collator.Collate(new[] { e }, 0, model.Device);
            var (s1, c1) = PromptLoss.Compute(model, m, one);
            separate += s1.item<float>(); n += c1;
        }
        Assert.Equal(n, count);
        Assert.Equal(6, count);
        Assert.InRange(Math.Abs(sum.item<float>() - separate), 0, 1e-4);
    }

    [Theory]
    [InlineData("gpt2")]
    [InlineData("llama")]
    public void ForwardOnlyLossOverChunksOfRowsEqualsTheOneShotLoss(string modelName)
    {
        // > PromptLoss.ForwardOnlyChunkRows loss rows: without autograd the head runs in chunks (memory), with it in one go.
        using var model = ModelLoader.Load(Fixtures.HfReference(modelName));
        using var m = PromptTuning.Create(model, 3, PromptInit.SampleVocab, 5);
        var rng = new Random(3);
        var examples = Enumerable.Range(0, 30).Select(i => new TokenizedExample(Enumerable.Range(0, 40).Select(_ => rng.Next(3, 900)).ToArray(),
            Enumerable.Range(0, 20 + i % 9).Select(_ => rng.Next(3, 900)).ToArray())).ToList();
        using var batch = Collator.Collate(examples, 0, model.Device);
        Assert.True(batch.LossCount > 2 * PromptLoss.ForwardOnlyChunkRows, $"{batch.LossCount} loss rows");
        double chunked, whole;
        using (torch.no_grad()) { var (s, c) = PromptLoss.Compute(model, m, batch); chunked = s.item<float>() / c; }
        { var (s, c) = PromptLoss.Compute(model, m, batch); Assert.True(s.requires_grad); whole = s.item<float>() / c; }
        Assert.InRange(Math.Abs(chunked - whole), 0, 1e-5 * Math.Max(1, Math.Abs(whole)));
    }

    [Fact]
    public void BfloatModelTrainsAnFp32Prompt()
    {
        using var tmp = new Fixtures.TempDir();
        using var model = ModelLoader.Load(Fixtures.HfReference("llama"), dtype: ScalarType.BFloat16);
        using var m = PromptTuning.Create(model, 4, PromptInit.SampleVocab, 5);
        var val = Task(8, 2);
        double initial = PromptLoss.ValidationLoss(model, m, val, 8, 0);
        new Trainer(model, m, Task(32, 1), val, Options("prompt", 20, tmp.Path), 0, tmp.Path).Run();
        Assert.Equal(ScalarType.Float32, m.Parameters[0].Param.dtype);
        Assert.True(PromptLoss.ValidationLoss(model, m, val, 8, 0) < initial);
    }

    [Theory]
    [InlineData("prompt", "adamw")]
    [InlineData("prefix", "adafactor")]
    [InlineData("prompt-projection", "adamw")]
    public void ResumedRunEndsAtTheSamePromptAsAnUninterruptedOne(string method, string optimizer)
    {
        using var tmp = new Fixtures.TempDir();
        using var model = ModelLoader.Load(Fixtures.HfReference("llama"));
        var train = Task(20, 1); var val = Task(6, 2);
        IPromptMethod Make() => method switch
        {
            "prompt" => PromptTuning.Create(model, 4, PromptInit.SampleVocab, 5),
            "prompt-projection" => PromptTuning.Create(model, 4, PromptInit.SampleVocab, 5, projectionHidden: 8),
            _ => PrefixTuning.Create(model.Config, 4, true, 16, 5, model.Device),
        };
        var o = Options(method == "prefix" ? "prefix" : "prompt", 24, tmp["a"]) with { Optimizer = optimizer, Lr = optimizer == "adafactor" ? 0.1 : 0.05, Schedule = "linear", WarmupSteps = 3, GradAccum = 2, BatchSize = 3 };

        using var straight = Make();
        new Trainer(model, straight, train, val, o, 0, tmp["a"]).Run();

        // Interrupted at step 13 (not a checkpoint boundary), then resumed by a fresh trainer and prompt.
        using (var first = Make())
        {
            var cts = new CancellationTokenSource();
            var reporter = new StopAt(13, cts);
            var r = new Trainer(model, first, train, val, o with { Output = tmp["b"] }, 0, tmp["b"], reporter).Run(cancel: cts.Token);
            Assert.Equal("cancelled", r.StopReason);
        }
        using var resumed = Make();
        var r2 = new Trainer(model, resumed, train, val, o with { Output = tmp["b"] }, 0, tmp["b"]).Run(resume: true);
        Assert.Equal(24, r2.Steps);
        for (int i = 0; i < straight.Parameters.Count; i++)
            Assert.InRange(Fixtures.MaxAbsDiff(straight.Parameters[i].Param, resumed.Parameters[i].Param), 0, 1e-6);
        var a = SafeTensors.Load(Path.Combine(tmp["a"], "adapter", "adapter_model.safetensors"))["prompt_embeddings"];
        var b = SafeTensors.Load(Path.Combine(tmp["b"], "adapter", "adapter_model.safetensors"))["prompt_embeddings"];
        Assert.InRange(Fixtures.MaxAbsDiff(a, b), 0, 1e-6);
    }

    sealed class StopAt(int step, CancellationTokenSource cts) : ITrainingReporter
    {
        public void Step(int s, int total, double loss, double lr, double tps, TimeSpan eta) { if (s == step) cts.Cancel(); }
        public void Eval(int s, IReadOnlyDictionary<string, double> m, bool best) { }
        public void Message(string text) { }
    }

    /// <summary>A prompt that turns into NaN after a number of forward passes (a stand-in for a diverging run).</summary>
    sealed class PoisonedPrompt(IPromptMethod inner, int healthyForwards) : IPromptMethod
    {
        int _calls;
        public TuningMethod Method => inner.Method;
        public int NumVirtualTokens => inner.NumVirtualTokens;
        public IReadOnlyList<(string Name, Tensor Param)> Parameters => inner.Parameters;
        public PromptInjection Inject(int batchSize)
        {
            var inj = inner.Inject(batchSize);
            return ++_calls <= healthyForwards ? inj : new PromptInjection { VirtualTokens = inj.VirtualTokens, PrefixEmbeds = inj.PrefixEmbeds! * double.NaN };
        }
        public Tensor ExportEmbeddings() => inner.ExportEmbeddings();
        public AdapterConfig AdapterConfig(ModelConfig model) => inner.AdapterConfig(model);
        public void SetTrainable(bool trainable) => inner.SetTrainable(trainable);
        public void Dispose() => inner.Dispose();
    }

    [Fact]
    public void NonFiniteLossStopsTheRunAndKeepsTheLastGoodCheckpoint()
    {
        using var tmp = new Fixtures.TempDir();
        using var model = ModelLoader.Load(Fixtures.HfReference("llama"));
        // 16 training examples in batches of 4, evaluation every 2 steps on 4 examples (1 forward): the 9th
        // training forward (step 8 + 2 evaluations before it... ) is poisoned well after a checkpoint was written.
        using var m = new PoisonedPrompt(PromptTuning.Create(model, 4, PromptInit.SampleVocab, 5), 9);
        var o = Options("prompt", 40, tmp.Path) with { EvalEvery = 2 };
        var e = Assert.Throws<TrainingDivergedException>(() => new Trainer(model, m, Task(16, 1), Task(4, 2), o, 0, tmp.Path).Run());
        Assert.Contains("NaN", e.Message);
        var state = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(Path.Combine(tmp.Path, "checkpoint", "trainer_state.json")))!;
        Assert.InRange(state["Step"]!.GetValue<int>(), 2, 8);
        // The message names the step that failed (within the run) and the checkpoint that really is on disk.
        var failed = int.Parse(System.Text.RegularExpressions.Regex.Match(e.Message, @"stopped at step (\d+) of 40").Groups[1].Value);
        Assert.InRange(failed, state["Step"]!.GetValue<int>() + 1, 40);
        Assert.Contains($"(step {state["Step"]!.GetValue<int>()})", e.Message);
        var ckpt = SafeTensors.Load(Path.Combine(tmp.Path, "checkpoint", "state.safetensors"));
        foreach (var t in ckpt.Values.Where(t => t.is_floating_point())) Assert.True(t.isfinite().all().item<bool>());
        Assert.False(Directory.Exists(Path.Combine(tmp.Path, "adapter")), "no adapter is exported from a diverged run");
    }

    [Fact]
    public void TrainingStepsDoNotLeakTensors()
    {
        using var tmp = new Fixtures.TempDir();
        using var model = ModelLoader.Load(Fixtures.HfReference("llama"));
        using var m = PrefixTuning.Create(model.Config, 4, true, 16, 5, model.Device);
        var train = Task(16, 1); var val = Task(4, 2);
        var o = Options("prefix", 5, tmp.Path) with { EvalEvery = 5 };
        long LiveGrowth(int steps, string dir)
        {
            long before = DisposeScopeManager.Statistics.ThreadTotalLiveCount;
            new Trainer(model, m, train, val, o with { Steps = steps, Output = dir }, 0, dir).Run();
            GC.Collect(); GC.WaitForPendingFinalizers();
            return DisposeScopeManager.Statistics.ThreadTotalLiveCount - before;
        }
        LiveGrowth(5, tmp["warm"]);
        long shortRun = LiveGrowth(5, tmp["a"]);
        long longRun = LiveGrowth(30, tmp["b"]);
        // Whatever a run leaves alive must not grow with the number of steps (or evaluations).
        Assert.True(longRun <= shortRun, $"live tensors grew by {shortRun} after 5 steps but {longRun} after 30");
        Assert.InRange(shortRun, 0, 0);
    }
}
