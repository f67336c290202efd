using SoftPrompt.Models;
using SoftPrompt.Optimization;
using SoftPrompt.Tuning;
using TorchSharp;
using static TorchSharp.torch;

namespace SoftPrompt.Tests.Device;

/// <summary>
/// The parts of a training step that libtorch can run on its <c>meta</c> device (shapes and dtypes, no data): the
/// prompt and prefix injections (with the prefix's MLP), the loss accumulation, gradient clipping and both optimizers'
/// updates. On meta, an op that mixes in a CPU tensor fails ("Expected all tensors to be on the same device"), and so
/// does every host sync (<c>.item()</c>, <c>.cpu()</c>, reading data: "Cannot copy out of meta tensor"), and every
/// data-dependent shape (<c>nonzero</c> has no meta kernel). So these steps completing proves, at run time, that the
/// optimizer state is made on the parameters' device and that the optimizer and clipping make no host sync.
/// Not covered here: the transformer itself (no meta kernels for index_select, where, layer_norm in libtorch; see
/// <see cref="DefaultDeviceMetaTests"/> and <see cref="HostSyncDeviceTests"/>), numerics.
/// </summary>
public class MetaDeviceTests
{
    static readonly torch.Device Meta = torch.device("meta");

    [Fact]
    public void MetaIsStrictAboutDevicesAndHostReads()
    {
        // What the other tests here rely on: it must be able to fail.
        using var scope = torch.NewDisposeScope();
        Assert.ThrowsAny<Exception>(() => torch.ones(3, device: Meta) + torch.ones(3, device: torch.CPU));
        Assert.ThrowsAny<Exception>(() => torch.ones(3, device: Meta).sum().item<float>());
        Assert.ThrowsAny<Exception>(() => torch.ones(3, device: Meta).cpu().data<float>().ToArray());
        Assert.ThrowsAny<Exception>(() => torch.ones(3, device: Meta).nonzero());
    }

    public static IEnumerable<object[]> Cases() =>
        from method in new[] { "prompt", "prefix", "prefix-projection" }
        from opt in new[] { "adamw", "adafactor", "adafactor-full" }
        select new object[] { method, opt };

    [Theory, MemberData(nameof(Cases))]
    public void InjectionClippingAndOptimizerStepsRunOnMetaWithoutAHostSync(string method, string optimizer)
    {
        var cfg = ModelConfig.Load(Fixtures.HfReference("qwen2")); // grouped-query attention: kv heads < heads
        using IPromptMethod m = method == "prompt"
            ? new PromptTuning(torch.zeros(new long[] { 4, cfg.HiddenSize }, device: Meta))
            : PrefixTuning.Create(cfg, 4, method == "prefix-projection", 8, 1, Meta);
        foreach (var (_, p) in m.Parameters) Assert.Equal(DeviceType.META, p.device.type);
        using IPromptOptimizer opt = optimizer switch
        {
            "adamw" => new AdamW(m.Parameters, weightDecay: 0.01),
            "adafactor" => new Adafactor(m.Parameters),
            _ => new Adafactor(m.Parameters, beta1: 0.9, weightDecay: 0.01, scaleParameter: true, relativeStep: true, warmupInit: true),
        };
        for (int step = 0; step < 2; step++)
        {
            using var scope = torch.NewDisposeScope();
            opt.ZeroGrad();
            var inj = m.Inject(3);
            // A stand-in loss over everything the method injects (the transformer cannot run on meta).
            var acc = torch.zeros(1, ScalarType.Float32, Meta).sum();
            if (inj.PrefixEmbeds is not null)
            {
                Assert.Equal(new long[] { 3, 4, cfg.HiddenSize }, inj.PrefixEmbeds.shape);
                acc = acc + inj.PrefixEmbeds.pow(2).sum();
            }
            foreach (var (k, v) in inj.PastKeyValues ?? Array.Empty<(Tensor, Tensor)>())
            {
                Assert.Equal(new long[] { 3, cfg.NumKvHeads, 4, cfg.HeadDim }, k.shape);
                acc = acc + k.pow(2).sum() + v.sum();
            }
            acc.backward();
            var norm = GradientClipping.ClipGradNorm(m.Parameters.Select(p => p.Param), 1.0);
            Assert.Equal(DeviceType.META, norm.device.type);
            opt.Step(0.1);
            foreach (var (_, p) in m.Parameters) { Assert.Equal(DeviceType.META, p.device.type); Assert.Equal(DeviceType.META, p.grad!.device.type); }
        }
        Assert.Equal(2, opt.StepCount);
    }

    [Fact]
    public void ClippingWithoutGradientsAnswersOnTheParametersDevice()
    {
        // Found by these tests: with no gradients the norm was a CPU tensor whatever the parameters' device.
        using var p = torch.zeros(new long[] { 2, 3 }, device: Meta).requires_grad_(true);
        using var norm = GradientClipping.ClipGradNorm(new[] { p }, 1.0);
        Assert.Equal(DeviceType.META, norm.device.type);
    }

    /// <summary>Issue 21: seeded sampling draws with a generator made on the logits' device. A CPU generator with
    /// CUDA logits made <c>multinomial</c> throw (failing every row of the batch). On meta: the generator made for
    /// meta logits is a meta generator, and the sampling distribution (temperature, top-k, top-p) is computed with no
    /// host read (libtorch has no meta kernel for multinomial itself, and its CPU kernel does not check the generator's
    /// device, so the draw is run on the CPU with the generator made for the CPU logits).</summary>
    [Fact]
    public void SamplingDrawsWithAGeneratorOnTheLogitsDevice()
    {
        using var scope = torch.NewDisposeScope();
        foreach (var opt in new[] { new SoftPrompt.Inference.GenerationOptions { Temperature = 0.7 }, new SoftPrompt.Inference.GenerationOptions { Temperature = 1.3, TopK = 5, TopP = 0.9 } })
        {
            var meta = torch.zeros(50, device: Meta);
            using var metaGen = SoftPrompt.Inference.Generator.NewRandom(1, meta.device);
            Assert.Equal(DeviceType.META, metaGen.device.type);
            Assert.Equal(DeviceType.META, SoftPrompt.Inference.Generator.SamplingProbs(meta, opt).device.type);
            var cpu = torch.randn(50);
            using var cpuGen = SoftPrompt.Inference.Generator.NewRandom(1, cpu.device);
            var pick = SoftPrompt.Inference.Generator.PickOnDevice(cpu, opt, cpuGen).item<long>();
            Assert.InRange(pick, 0, 49);
        }
    }
}
