using SoftPrompt.Models;
using SoftPrompt.Runtime;
using SoftPrompt.Tuning;
using TorchSharp;
using static TorchSharp.torch;

namespace SoftPrompt.Inference;

public sealed record GenerationOptions
{
    public int MaxNewTokens { get; init; } = 32;
    /// <summary>0 = greedy; so is anything below <see cref="GreedyBelowTemperature"/>.</summary>
    public double Temperature { get; init; } = 0;
    public double TopP { get; init; } = 1.0;
    public int TopK { get; init; } = 0;
    public long? Seed { get; init; }
    /// <summary>Generation stops after any of these ids (it is kept in the output). Empty = never stop early.</summary>
    public IReadOnlyList<int> EosIds { get; init; } = Array.Empty<int>();

    /// <summary>Ceiling on <see cref="MaxNewTokens"/>; what fits is further bounded by the model's positions and memory.</summary>
    public const int MaxNewTokensCeiling = 1 << 20;

    /// <summary>
    /// Temperatures below this decode greedily (as vLLM does below 1e-5). The rule, shared by the CLI, the batch engine
    /// and the server: a temperature that small leaves the most likely token with all the probability mass anyway, and
    /// dividing logits by it can overflow float32 (1e-300 gives infinities, then NaN probabilities). So such a
    /// temperature is accepted (it is a valid request) and treated as 0 — never refused, never sampled.
    /// </summary>
    public const double GreedyBelowTemperature = 1e-5;

    /// <summary>Decoding picks the most likely token (<see cref="Temperature"/> below <see cref="GreedyBelowTemperature"/>).</summary>
    public bool IsGreedy => Temperature < GreedyBelowTemperature;

    /// <summary>How <see cref="Validate"/> names the settings: as CLI options (<c>--top-p</c>) or as OpenAI API fields (<c>top_p</c>).</summary>
    public enum Naming { CliOptions, ApiFields }

    /// <summary>Checks the values: the one validation of generation settings, used by <see cref="Generator"/>, the
    /// batch engine (eval, serve) and the CLI. Errors name the setting as <paramref name="naming"/> says. A temperature
    /// in (0, <see cref="GreedyBelowTemperature"/>) is valid and means greedy (<see cref="IsGreedy"/>).</summary>
    public void Validate(Naming naming = Naming.CliOptions)
    {
        string N(string cli, string api) => naming == Naming.CliOptions ? cli : api;
        static string G(double v) => v.ToString("G", System.Globalization.CultureInfo.InvariantCulture);
        if (MaxNewTokens is < 1 or > MaxNewTokensCeiling) throw new SoftPromptException($"{N("--max-new-tokens", "max_tokens")} {MaxNewTokens}: expected 1..{MaxNewTokensCeiling}.");
        if (!double.IsFinite(Temperature) || Temperature < 0) throw new SoftPromptException($"{N("--temperature", "temperature")} {G(Temperature)}: expected a finite number >= 0 (0 = greedy).");
        if (!double.IsFinite(TopP) || TopP <= 0 || TopP > 1) throw new SoftPromptException($"{N("--top-p", "top_p")} {G(TopP)}: expected a number in (0, 1].");
        if (TopK < 0) throw new SoftPromptException($"{N("--top-k", "top_k")} {TopK}: expected 0 (all tokens) or a positive number.");
    }
}

public sealed record GenerationResult(int[] PromptIds, int[] NewIds, string StopReason, float[][]? Scores);

/// <summary>Greedy or sampled decoding with a preallocated KV cache; a soft prompt or prefix is attached through a <see cref="PromptInjection"/>.</summary>
public static class Generator
{
    public static GenerationResult Generate(CausalLM model, IReadOnlyList<int> promptIds, GenerationOptions opt, PromptInjection? prompt = null, bool keepScores = false)
    {
        if (promptIds.Count == 0) throw new SoftPromptException("generate needs at least one prompt token.");
        opt.Validate();
        prompt ??= PromptInjection.None;
        int n = prompt.VirtualTokens;
        long capacityL = (long)n + promptIds.Count + opt.MaxNewTokens;
        // Past its positions a model with learned positions has no embedding, and a rotary one is outside what it was
        // trained on (its config's max_position_embeddings): both are refused rather than generated.
        if (capacityL > model.Config.MaxPositions)
            throw new SoftPromptException($"{n} virtual + {promptIds.Count} prompt + {opt.MaxNewTokens} new tokens exceed the model's {model.Config.MaxPositions} positions (--max-new-tokens).");
        // The cache is allocated for the whole generation up front: check its size first (keys and values of every layer).
        int elem = model.DType == ScalarType.Float32 ? 4 : model.DType == ScalarType.Float64 ? 8 : 2;
        MemoryBudget.Check(MemoryBudget.Product(2, model.Config.NumLayers, model.Config.KvDim, capacityL, elem),
            $"--max-new-tokens {opt.MaxNewTokens} (a key/value cache of {capacityL} positions)");
        int capacity = (int)Math.Min(int.MaxValue, capacityL);
        using var gen = !opt.IsGreedy && opt.Seed is long s ? NewRandom(s, model.Device) : null;
        using var noGrad = torch.no_grad();
        using var cache = KvCache.Preallocated(model.Config, 1, capacity, model.DType, model.Device);
        var newIds = new List<int>();
        var scores = keepScores ? new List<float[]>() : null;
        string reason = "max_new_tokens";
        using (var scope = torch.NewDisposeScope())
        {
            if (prompt.PastKeyValues is not null) cache.SetPrefix(prompt.PastKeyValues);
        }
        var next = promptIds.Select(i => (long)i).ToArray();
        bool first = true;
        for (int step = 0; step < opt.MaxNewTokens; step++)
        {
            using var scope = torch.NewDisposeScope();
            var ids = torch.tensor(next, ScalarType.Int64, model.Device).unsqueeze(0);
            var res = model.Forward(new ForwardArgs { InputIds = ids, PrefixEmbeds = first ? prompt.PrefixEmbeds : null, Cache = cache });
            first = false;
            var logits = model.Logits(res.Hidden.narrow(1, res.Hidden.shape[1] - 1, 1)).reshape(-1);
            if (scores != null) scores.Add(logits.cpu().data<float>().ToArray());
            int tok = Pick(logits, opt, gen);
            newIds.Add(tok);
            if (opt.EosIds.Contains(tok)) { reason = "eos"; break; }
            next = new long[] { tok };
        }
        return new GenerationResult(promptIds.ToArray(), newIds.ToArray(), reason, scores?.ToArray());
    }

    /// <summary>A seeded random generator on <paramref name="device"/>: sampling draws on the logits' device, and a
    /// CPU generator with CUDA logits makes <c>multinomial</c> throw.</summary>
    public static torch.Generator NewRandom(long seed, Device device) => new((ulong)seed, device);

    internal static int Pick(Tensor logits, GenerationOptions opt, torch.Generator? gen)
    {
        if (opt.IsGreedy) return (int)logits.argmax().item<long>();
        using var scope = torch.NewDisposeScope();
        return (int)PickOnDevice(logits, opt, gen).item<long>();
    }

    /// <summary>The sampled token of one row's logits [vocab] as a one-element tensor on the logits' device (no host
    /// read): temperature, top-k, top-p, then <c>multinomial</c> with <paramref name="gen"/> (which must be on the same
    /// device; see <see cref="NewRandom"/>). The logits are shifted by their maximum before dividing by the
    /// temperature, so the largest scaled logit is exactly 0 and no temperature overflows them.</summary>
    public static Tensor PickOnDevice(Tensor logits, GenerationOptions opt, torch.Generator? gen) =>
        torch.multinomial(SamplingProbs(logits, opt), 1, generator: gen);

    /// <summary>The distribution a sampled token is drawn from: softmax of the logits [vocab] over the temperature,
    /// restricted to the top-k and the top-p mass (renormalised); on the logits' device, no host read.</summary>
    public static Tensor SamplingProbs(Tensor logits, GenerationOptions opt)
    {
        var l = (logits - logits.amax(new long[] { -1 }, keepdim: true)) / opt.Temperature;
        if (opt.TopK > 0 && opt.TopK < l.shape[0])
        {
            var kth = l.topk(opt.TopK).values[-1];
            l = l.masked_fill(l < kth, double.NegativeInfinity);
        }
        var probs = l.softmax(-1);
        if (opt.TopP < 1.0)
        {
            var (sorted, idx) = probs.sort(descending: true);
            var cum = sorted.cumsum(0);
            var remove = (cum - sorted) > opt.TopP; // keep the smallest set whose mass reaches top_p (always >= 1 token)
            sorted = sorted.masked_fill(remove, 0);
            probs = torch.zeros_like(probs).scatter(0, idx, sorted);
            probs = probs / probs.sum();
        }
        return probs;
    }
}
