using SoftPrompt.Inference;
using SoftPrompt.Models;
using SoftPrompt.Optimization;
using SoftPrompt.Scoring;
using SoftPrompt.Training;
using SoftPrompt.Tuning;
using TorchSharp;
using static TorchSharp.torch;

namespace SoftPrompt.Tests.Device;

/// <summary>The tests that change libtorch's process-wide default device run alone, after the parallel ones.</summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class DefaultDeviceCollection
{
    public const string Name = "default device changed";
}

/// <summary>
/// Device discipline, checked without a GPU: the first CUDA run of a TorchSharp program usually fails on a tensor made
/// on the default device (CPU) while the model is on the GPU. Here the roles are swapped: the model and every tensor
/// the code places on purpose stay on the CPU (full kernels, real numbers), and TorchSharp's default device, which a
/// factory call without a device uses, is libtorch's <c>meta</c> device (shapes only, no data). A tensor made without
/// a device then meets the CPU model in some op and fails with "Expected all tensors to be on the same device", or
/// fails on the first read of its data ("Cannot copy out of meta tensor").
/// <para>Covers: every factory call that relies on the default device (arange, zeros, tensor(...), randn, masks,
/// positions, labels, optimizer state) on the paths run below: model load, prompt/prefix creation, forward/backward,
/// AdamW and Adafactor, gradient clipping, rank classification, cached generation (prompt and prefix), the trainer's
/// whole run (steps, validation with rank classification, checkpoints, export).</para>
/// <para>Does not cover: tensors deliberately placed on the CPU (<c>torch.CPU</c>, <c>.cpu()</c>) where the model's
/// device was meant (see <see cref="HostSyncDeviceTests"/>'s scan of the training step), kernels CUDA lacks for a dtype,
/// numerics on the GPU. Why not the whole model on <c>meta</c>: libtorch has no meta kernel for index_select (the
/// embedding lookup), where (inside SDPA's math path), native_batch_norm (layer_norm) or nonzero, so a forward on meta
/// stops at the first embedding; <see cref="MetaDeviceTests"/> runs the parts that do have meta kernels.</para>
/// </summary>
[Collection(DefaultDeviceCollection.Name)]
public class DefaultDeviceMetaTests
{
    /// <summary>Runs <paramref name="body"/> with the default device set to meta; restores it after.</summary>
    internal static void WithMetaDefault(Action body)
    {
        var saved = torch.get_default_device();
        torch.set_default_device(torch.device("meta"));
        try { body(); }
        finally { torch.set_default_device(saved); }
    }

    [Fact]
    public void TheCheckCatchesATensorMadeOnTheDefaultDevice()
    {
        // The check must be able to fail: an arange without a device, added to a CPU tensor, throws under it.
        using var model = ModelLoader.Load(Fixtures.HfReference("llama"));
        WithMetaDefault(() =>
        {
            var e = Assert.ThrowsAny<Exception>(() => { using var s = torch.NewDisposeScope(); _ = model.EmbeddingMatrix.narrow(0, 0, 4) + torch.arange(4).unsqueeze(1); });
            Assert.Contains("device", e.Message);
            Assert.ThrowsAny<Exception>(() => torch.zeros(1).item<float>());
        });
    }

    [Theory]
    [InlineData("llama")]
    [InlineData("gpt2")]
    [InlineData("qwen2")]
    [InlineData("mistral")]
    [InlineData("llama3rope")]
    [InlineData("gemma")]
    [InlineData("gemma2")]
    [InlineData("phi3")]
    [InlineData("gpt_neox")]
    public void ModelPromptPrefixOptimizersRankAndGenerationUseOnlyTheModelsDevice(string name)
    {
        WithMetaDefault(() =>
        {
            using var model = ModelLoader.Load(Fixtures.HfReference(name), torch.CPU);
            var labels = new[] { new[] { 5 }, new[] { 6, 7 } };
            var ids = new[] { 3, 4, 8, 9, 10 };
            foreach (var (method, opt) in new (Func<IPromptMethod>, string)[]
            {
                (() => PromptTuning.Create(model, 3, PromptInit.SampleVocab, 1), "adamw"),
                (() => PromptTuning.Create(model, 3, PromptInit.Random, 1, projectionHidden: 8), "adafactor"),
                (() => PromptTuning.Create(model, 3, PromptInit.ClassLabels, 1, tokenIds: labels), "adamw"),
                (() => PrefixTuning.Create(model.Config, 3, false, 0, 1, model.Device), "adafactor"),
                (() => PrefixTuning.Create(model.Config, 3, true, 8, 1, model.Device), "adamw"),
            })
            {
                using var m = method();
                using (var scope = torch.NewDisposeScope())
                {
                    var batch = SoftPrompt.Data.Collator.Collate(new[] { new SoftPrompt.Data.TokenizedExample(ids, new[] { 5, 6 }), new SoftPrompt.Data.TokenizedExample(ids[..2], new[] { 7 }) }, 0, model.Device);
                    using IPromptOptimizer o = opt == "adamw" ? new AdamW(m.Parameters, weightDecay: 0.01) : new Adafactor(m.Parameters, beta1: 0.9, weightDecay: 0.01, scaleParameter: true);
                    var (nll, count) = PromptLoss.Compute(model, m, batch);
                    (nll / count).backward();
                    GradientClipping.ClipGradNorm(m.Parameters.Select(p => p.Param), 1.0);
                    o.Step(0.01);
                    Assert.True(float.IsFinite(nll.item<float>()));
                    foreach (var (_, p) in m.Parameters) Assert.Equal(DeviceType.CPU, p.grad!.device.type);
                    foreach (var (k, t) in o.StateDict()) Assert.Equal(DeviceType.CPU, t.device.type);
                    batch.Dispose();
                }
                var scores = RankClassifier.Score(model, m, ids, labels);
                Assert.All(scores.LogProbs, lp => Assert.True(double.IsFinite(lp)));
                var naive = RankClassifier.ScoreNaive(model, m, ids, labels);
                Assert.All(naive.LogProbs, lp => Assert.True(double.IsFinite(lp)));
                using (var scope = torch.NewDisposeScope())
                {
                    var inj = m.Inject(1);
                    var greedy = SoftPrompt.Inference.Generator.Generate(model, ids, new GenerationOptions { MaxNewTokens = 3 }, inj, keepScores: true);
                    Assert.Equal(3, greedy.NewIds.Length);
                    var sampled = SoftPrompt.Inference.Generator.Generate(model, ids, new GenerationOptions { MaxNewTokens = 3, Temperature = 0.8, TopP = 0.9, TopK = 20, Seed = 1 }, inj);
                    Assert.Equal(3, sampled.NewIds.Length);
                    var sc = Scorer.Score(model, ids, inj);
                    Assert.Equal(ids.Length, sc.LogProbs.Length);
                }
                Assert.Equal(DeviceType.CPU, m.ExportEmbeddings().device.type);
            }
            // A padded batch with an explicit attention mask (the masked attention path).
            using (var scope = torch.NewDisposeScope())
            {
                var input = torch.tensor(new long[] { 3, 4, 5, 0, 6, 7, 8, 9 }, new long[] { 2, 4 }, ScalarType.Int64, model.Device);
                var mask = torch.tensor(new long[] { 1, 1, 1, 0, 1, 1, 1, 1 }, new long[] { 2, 4 }, ScalarType.Int64, model.Device);
                var h = model.Forward(new ForwardArgs { InputIds = input, AttentionMask = mask }).Hidden;
                Assert.Equal(DeviceType.CPU, h.device.type);
            }
        });
    }

    [Theory]
    [InlineData("prompt", "adamw")]
    [InlineData("prefix", "adafactor")]
    public void TheTrainersWholeRunUsesOnlyTheModelsDevice(string method, string optimizer)
    {
        var modelDir = Fixtures.TinyModelWithTokenizer("llama");
        using var tmp = new Fixtures.TempDir();
        var train = Fixtures.WriteSentimentTask(tmp["train.jsonl"], 24, 1);
        var val = Fixtures.WriteSentimentTask(tmp["val.jsonl"], 8, 2);
        WithMetaDefault(() =>
        {
            var result = TrainingJob.Run(new TrainOptions
            {
                Model = modelDir, Train = train, Validation = val, Output = tmp["run"], Method = Enum.Parse<SoftPrompt.Tuning.TuningMethod>(method, true), Optimizer = optimizer,
                VirtualTokens = 3, Steps = 4, BatchSize = 4, GradAccum = 2, EvalEvery = 2, LogEvery = 2, Device = "cpu", Threads = 1,
                PrefixProjection = method == "prefix", EncoderHiddenSize = 8, Lr = 0.01,
            });
            Assert.Equal(4, result.Steps);
        });
        Assert.True(File.Exists(Path.Combine(tmp["run"], "adapter", "adapter_model.safetensors")));
        Assert.True(File.Exists(Path.Combine(tmp["run"], "checkpoint", "state.safetensors")));
    }
}
