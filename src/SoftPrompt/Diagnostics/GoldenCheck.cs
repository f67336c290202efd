using SoftPrompt.IO;
using SoftPrompt.Models;
using SoftPrompt.Runtime;
using TorchSharp;
using static TorchSharp.torch;

namespace SoftPrompt.Diagnostics;

/// <summary>One architecture fixture's distances from Hugging Face's own outputs (max absolute differences of logits).</summary>
/// <summary><see cref="PrefixLogits"/> is null for a fixture without a prefix golden (Gemma 2: see fixtures/hf-reference-more/README.md).</summary>
public sealed record GoldenModelResult(string Name, string ModelType, double PlainLogits, double PromptLogits, double? PrefixLogits,
    double PromptLoss, double PromptGradRel, bool GreedyMatches, bool Pass);

public sealed record GoldenReport(string Device, string DType, double Tolerance, double LossTolerance, double GradRelTolerance,
    IReadOnlyList<GoldenModelResult> Models, bool Pass);

/// <summary>
/// The golden-fidelity check of the test suite (tests/SoftPrompt.Tests/Models/GoldenReferenceTests.cs) as a library
/// call, so a published app can run it on any device without xunit (<c>softprompt golden</c>, used by the GPU kit).
/// For each fixture folder holding <c>golden.safetensors</c> (made by Hugging Face transformers + PEFT in fp32): the
/// plain forward, the soft-prompt forward and the prefix forward (logits of three sequences each), the prompt-tuning
/// loss and its gradient with respect to the soft prompt, and greedy generation with the KV cache.
/// Tolerances: fp32 1e-4 on logits (as the tests); bf16 weights <see cref="DefaultTolerance"/> (the fixtures' logits
/// lie within about ±1, and bf16 keeps 8 bits of mantissa, so a 2-layer model's logits move by ~1e-2; measured on CPU:
/// docs/benchmarks.md); bf16's error is relative, so for a fixture whose logits reach further (Gemma 2's lie within ±6)
/// the bf16 logit tolerance is multiplied by max(1, max |reference logit|). Greedy tokens must match in fp32 only (in
/// bf16 near-ties may flip; reported, not judged).
/// </summary>
public static class GoldenCheck
{
    public static double DefaultTolerance(ScalarType dtype) => dtype == ScalarType.Float32 ? 1e-4 : 5e-2;

    public static GoldenReport Run(string fixturesDir, Device device, ScalarType dtype, double? tolerance = null)
    {
        if (!Directory.Exists(fixturesDir)) throw new SoftPromptException($"--fixtures {fixturesDir}: no such folder.");
        var dirs = Directory.GetDirectories(fixturesDir).Where(d => File.Exists(Path.Combine(d, "golden.safetensors"))).OrderBy(d => d, StringComparer.Ordinal).ToList();
        if (dirs.Count == 0) throw new SoftPromptException($"--fixtures {fixturesDir}: no sub-folder holds golden.safetensors (expected tests/SoftPrompt.Tests/fixtures/hf-reference).");
        double tol = tolerance ?? DefaultTolerance(dtype);
        bool fp32 = dtype == ScalarType.Float32;
        // Loss and gradient: fp32 as the tests; bf16 scaled with the logits' tolerance.
        double lossTol = fp32 ? 1e-5 : tol, gradRel = fp32 ? 1e-3 : 0.1;
        var results = dirs.Select(d => One(d, device, dtype, tol, lossTol, gradRel)).ToList();
        return new GoldenReport(device.ToString(), TorchRuntime.DTypeName(dtype), tol, lossTol, gradRel, results, results.All(r => r.Pass));
    }

    static double MaxAbs(Tensor a, Tensor b) => (a.to(ScalarType.Float64).cpu() - b.to(ScalarType.Float64).cpu()).abs().max().item<double>();

    static GoldenModelResult One(string dir, Device device, ScalarType dtype, double tol, double lossTol, double gradRelTol)
    {
        if (ModelConfig.Load(dir).IsEncoderDecoder) return OneSeq2Seq(dir, device, dtype, tol, lossTol, gradRelTol);
        using var scope = torch.NewDisposeScope();
        using var model = ModelLoader.Load(dir, device, dtype);
        var g = SafeTensors.Load(Path.Combine(dir, "golden.safetensors"));
        Tensor G(string k) => g.TryGetValue(k, out var t) ? t.to(device) : throw new SoftPromptException($"{dir}/golden.safetensors: no tensor '{k}'.");
        double plain = 0, prompt = 0;
        double? prefix = g.ContainsKey("prefix.layer0.key") ? 0 : null;
        using (torch.no_grad())
        {
            var soft = G("soft_prompt").unsqueeze(0);
            var kv = prefix is null ? null : Enumerable.Range(0, model.Config.NumLayers).Select(l => (G($"prefix.layer{l}.key"), G($"prefix.layer{l}.value"))).ToList();
            for (int i = 0; i < 3; i++)
            {
                var ids = G($"seq{i}.input_ids");
                plain = Math.Max(plain, MaxAbs(model.Logits(model.Forward(new ForwardArgs { InputIds = ids }).Hidden), G($"seq{i}.full.logits")));
                prompt = Math.Max(prompt, MaxAbs(model.Logits(model.Forward(new ForwardArgs { InputIds = ids, PrefixEmbeds = soft }).Hidden), G($"seq{i}.prompt.logits")));
                if (kv is null) continue;
                var cache = KvCache.Growing(model.Config.NumLayers);
                cache.SetPrefix(kv);
                prefix = Math.Max(prefix!.Value, MaxAbs(model.Logits(model.Forward(new ForwardArgs { InputIds = ids, Cache = cache }).Hidden), G($"seq{i}.prefix.logits")));
            }
        }
        // The training path: loss and gradient with respect to an fp32 soft prompt.
        var leaf = G("soft_prompt").to(ScalarType.Float32).detach().requires_grad_(true);
        var seq = G("seq1.input_ids");
        int n = (int)leaf.shape[0], T = (int)seq.shape[1];
        var r = model.Forward(new ForwardArgs { InputIds = seq, PrefixEmbeds = leaf.unsqueeze(0) });
        var loss = nn.functional.cross_entropy(model.Logits(r.Hidden[0].narrow(0, n - 1, T)), seq[0]);
        loss.backward();
        double lossDiff = Math.Abs(loss.item<float>() - g["seq1.prompt.loss"].item<float>());
        var refGrad = g["seq1.prompt.grad_soft_prompt"];
        double gradRel = MaxAbs(leaf.grad!, refGrad) / Math.Max(1e-12, refGrad.abs().max().item<float>());
        // Greedy generation with the preallocated KV cache.
        var promptIds = g["generate.prompt_ids"][0].data<long>().Select(x => (int)x).ToArray();
        var expected = g["generate.sequences"][0].data<long>().Skip(promptIds.Length).Select(x => (int)x).ToArray();
        var gen = Inference.Generator.Generate(model, promptIds, new Inference.GenerationOptions { MaxNewTokens = expected.Length });
        bool greedy = gen.NewIds.SequenceEqual(expected);
        if (dtype != ScalarType.Float32)
            tol *= Math.Max(1, Enumerable.Range(0, 3).Max(i => g[$"seq{i}.full.logits"].abs().max().item<float>()));
        bool pass = plain <= tol && prompt <= tol && (prefix ?? 0) <= tol && lossDiff <= lossTol && gradRel <= gradRelTol && (greedy || dtype != ScalarType.Float32);
        return new GoldenModelResult(Path.GetFileName(dir), model.Config.ModelType, plain, prompt, prefix, lossDiff, gradRel, greedy, pass);
    }

    /// <summary>An encoder-decoder fixture (fixtures/hf-reference-more/t5): teacher-forced decoder logits without and with
    /// the soft prompt on the encoder, the prompt-tuning loss and gradient, greedy decoding with the decoder cache. No
    /// prefix golden (prefix tuning is not supported on encoder-decoder models).</summary>
    static GoldenModelResult OneSeq2Seq(string dir, Device device, ScalarType dtype, double tol, double lossTol, double gradRelTol)
    {
        using var scope = torch.NewDisposeScope();
        using var model = T5Model.Load(dir, device, dtype);
        var g = SafeTensors.Load(Path.Combine(dir, "golden.safetensors"));
        Tensor G(string k) => g.TryGetValue(k, out var t) ? t.to(device) : throw new SoftPromptException($"{dir}/golden.safetensors: no tensor '{k}'.");
        double plain = 0, prompt = 0;
        using (torch.no_grad())
        {
            var soft = G("soft_prompt").unsqueeze(0);
            for (int i = 0; i < 3; i++)
            {
                var ids = G($"seq{i}.input_ids");
                var dec = model.ShiftRight(G($"seq{i}.labels"));
                plain = Math.Max(plain, MaxAbs(model.Logits(model.Decode(dec, model.Encode(ids)).Hidden), G($"seq{i}.full.logits")));
                prompt = Math.Max(prompt, MaxAbs(model.Logits(model.Decode(dec, model.Encode(ids, prefixEmbeds: soft)).Hidden), G($"seq{i}.prompt.logits")));
            }
        }
        var leaf = G("soft_prompt").to(ScalarType.Float32).detach().requires_grad_(true);
        var labels = G("seq1.labels");
        var enc = model.Encode(G("seq1.input_ids"), prefixEmbeds: leaf.unsqueeze(0));
        var loss = nn.functional.cross_entropy(model.Logits(model.Decode(model.ShiftRight(labels), enc).Hidden)[0], labels[0]);
        loss.backward();
        double lossDiff = Math.Abs(loss.item<float>() - g["seq1.prompt.loss"].item<float>());
        var refGrad = g["seq1.prompt.grad_soft_prompt"];
        double gradRel = MaxAbs(leaf.grad!, refGrad) / Math.Max(1e-12, refGrad.abs().max().item<float>());
        var input = g["generate.input_ids"][0].data<long>().Select(x => (int)x).ToArray();
        var expected = g["generate.sequences"][0].data<long>().Skip(1).Select(x => (int)x).ToArray();
        var gen = Inference.Seq2SeqGenerator.Generate(model, input, new Inference.GenerationOptions { MaxNewTokens = expected.Length });
        bool greedy = gen.NewIds.SequenceEqual(expected);
        if (dtype != ScalarType.Float32)
            tol *= Math.Max(1, Enumerable.Range(0, 3).Max(i => g[$"seq{i}.full.logits"].abs().max().item<float>()));
        bool pass = plain <= tol && prompt <= tol && lossDiff <= lossTol && gradRel <= gradRelTol && (greedy || dtype != ScalarType.Float32);
        return new GoldenModelResult(Path.GetFileName(dir), model.Config.ModelType, plain, prompt, null, lossDiff, gradRel, greedy, pass);
    }
}
