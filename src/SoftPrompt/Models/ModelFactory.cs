using System.Text.Json.Nodes;
using TorchSharp;
using static TorchSharp.torch;

namespace SoftPrompt.Models;

/// <summary>Models built in memory: random weights for named shapes (benchmarks, tests), initialised as Hugging
/// Face does (matrices N(0, 0.02), biases 0, norm weights 1).</summary>
public static class ModelFactory
{
    /// <summary>config.json contents of well-known shapes (weights are random; only the shapes matter).</summary>
    public static readonly IReadOnlyDictionary<string, Func<JsonObject>> Shapes = new Dictionary<string, Func<JsonObject>>
    {
        ["gpt2-small"] = () => Gpt2(768, 12, 12),
        ["gpt2-medium"] = () => Gpt2(1024, 24, 16),
        ["smollm2-135m"] = () => Llama(576, 30, 9, 3, 1536, 49152, tied: true, theta: 100000),
        ["smollm2-360m"] = () => Llama(960, 32, 15, 5, 2560, 49152, tied: true, theta: 100000),
        ["qwen2.5-0.5b"] = () => Llama(896, 24, 14, 2, 4864, 151936, tied: true, theta: 1000000, type: "qwen2"),
        ["tinyllama-1.1b"] = () => Llama(2048, 22, 32, 4, 5632, 32000, tied: false, theta: 10000),
        ["llama-1b"] = () => Llama(2048, 16, 32, 8, 8192, 128256, tied: true, theta: 500000),
        ["llama-3b"] = () => Llama(3072, 28, 24, 8, 8192, 128256, tied: true, theta: 500000),     // Llama-3.2-3B
        ["llama-8b"] = () => Llama(4096, 32, 32, 8, 14336, 128256, tied: false, theta: 500000),   // Llama-3.1-8B
        ["gemma-2b"] = () => Gemma("gemma", 2048, 18, 8, 1, 16384),
        ["gemma2-2b"] = () => Gemma("gemma2", 2304, 26, 8, 4, 9216),
        ["phi3-mini"] = () => new JsonObject
        {
            ["model_type"] = "phi3", ["hidden_size"] = 3072, ["num_hidden_layers"] = 32, ["num_attention_heads"] = 32, ["num_key_value_heads"] = 32,
            ["intermediate_size"] = 8192, ["vocab_size"] = 32064, ["max_position_embeddings"] = 4096, ["sliding_window"] = 2047,
        },
        ["pythia-160m"] = () => new JsonObject
        {
            ["model_type"] = "gpt_neox", ["hidden_size"] = 768, ["num_hidden_layers"] = 12, ["num_attention_heads"] = 12,
            ["intermediate_size"] = 3072, ["vocab_size"] = 50304, ["max_position_embeddings"] = 2048, ["rotary_pct"] = 0.25,
        },
    };

    /// <summary>Gemma / Gemma 2 shapes (head_dim 256; Gemma 2's other keys take transformers' defaults but the attention scalar).</summary>
    static JsonObject Gemma(string type, int h, int layers, int heads, int kv, int inter)
    {
        var o = new JsonObject
        {
            ["model_type"] = type, ["hidden_size"] = h, ["num_hidden_layers"] = layers, ["num_attention_heads"] = heads, ["num_key_value_heads"] = kv,
            ["head_dim"] = 256, ["intermediate_size"] = inter, ["vocab_size"] = 256000,
        };
        if (type == "gemma2") o["query_pre_attn_scalar"] = 256;
        return o;
    }

    static JsonObject Gpt2(int h, int layers, int heads) => new()
    {
        ["model_type"] = "gpt2", ["n_embd"] = h, ["n_layer"] = layers, ["n_head"] = heads, ["vocab_size"] = 50257, ["n_positions"] = 1024,
        ["bos_token_id"] = 50256, ["eos_token_id"] = 50256,
    };

    static JsonObject Llama(int h, int layers, int heads, int kv, int inter, int vocab, bool tied, double theta, string type = "llama") => new()
    {
        ["model_type"] = type, ["hidden_size"] = h, ["num_hidden_layers"] = layers, ["num_attention_heads"] = heads, ["num_key_value_heads"] = kv,
        ["intermediate_size"] = inter, ["vocab_size"] = vocab, ["tie_word_embeddings"] = tied, ["rope_theta"] = theta,
        ["max_position_embeddings"] = 8192, ["rms_norm_eps"] = 1e-5, ["hidden_act"] = "silu",
    };

    public static ModelConfig ShapeConfig(string name) =>
        Shapes.TryGetValue(name, out var f) ? ModelConfig.Parse(f(), $"shape '{name}'") with { NameOrPath = "random:" + name }
        : throw new SoftPromptException($"unknown shape '{name}' (known: {string.Join(", ", Shapes.Keys)}).");

    /// <summary>
    /// Random weights as Hugging Face's <c>_init_weights</c> makes them: matrices N(0, <paramref name="std"/>) drawn in
    /// the order given, biases 0, other vectors (norm weights) 1. fp32 CPU tensors in the caller's dispose scope.
    /// </summary>
    public static Dictionary<string, Tensor> RandomWeights(IEnumerable<(string Name, long[] Shape)> shapes, long seed, double std = 0.02)
    {
        var gen = new torch.Generator((ulong)seed);
        var weights = new Dictionary<string, Tensor>();
        foreach (var (name, shape) in shapes)
            weights[name] = name.EndsWith(".bias") ? torch.zeros(shape, device: torch.CPU)
                : shape.Length == 1 ? torch.ones(shape, device: torch.CPU)
                : torch.empty(shape, device: torch.CPU).normal_(0, std, gen);
        return weights;
    }

    /// <summary>A frozen model of <paramref name="cfg"/>'s shape with random weights (Gemma's norm weights start at 0,
    /// which it applies as 1 + w, as Hugging Face initialises them).</summary>
    public static CausalLM Random(ModelConfig cfg, long seed = 0, ScalarType dtype = ScalarType.Float32, Device? device = null)
    {
        device ??= torch.CPU;
        var weights = new Dictionary<string, Tensor>();
        // One tensor at a time, each in its own scope (the same draws, in the same order, as RandomWeights): building
        // them all first and converting after held a second copy of every transposed or cast matrix at once (+300 MB
        // at GPT-2-small shape in fp32; a whole fp32 copy of the model for bf16).
        var gen = new torch.Generator((ulong)seed);
        foreach (var (name, shape) in ModelLoader.ExpectedShapes(cfg))
        {
            using var scope = torch.NewDisposeScope();
            // Below fp32, a large matrix is drawn in fp32 slices written into the narrower tensor, so that no whole fp32
            // copy exists (Llama-3.1-8B's embedding is 2.1 GB in fp32): peak = the model in its dtype plus one slice.
            bool sliced = dtype != ScalarType.Float32 && shape.Length == 2 && shape[0] * shape[1] > SliceElements && !name.EndsWith(".bias");
            var t0 = name.EndsWith(".bias") ? torch.zeros(shape, device: torch.CPU)
                : shape.Length == 1 ? torch.ones(shape, device: torch.CPU)
                : sliced ? NormalSliced(shape, dtype, gen)
                : torch.empty(shape, device: torch.CPU).normal_(0, 0.02, gen);
            var t = cfg.Family == ArchFamily.Gpt2 && t0.dim() == 2 && (name.Contains(".attn.") || name.Contains(".mlp.")) ? t0.t() : t0; // Conv1D [in,out] -> [out,in]
            if (cfg.NormAddsOne && t.dim() == 1 && name.EndsWith("norm.weight")) t = torch.zeros_like(t);
            weights[name] = t.to(dtype).to(device).contiguous().MoveToOuterDisposeScope();
        }
        return new CausalLM(cfg, weights, device, dtype);
    }

    const long SliceElements = 1 << 24;

    static Tensor NormalSliced(long[] shape, ScalarType dtype, torch.Generator gen)
    {
        var t = torch.empty(shape, dtype, torch.CPU);
        long rows = Math.Max(1, SliceElements / shape[1]);
        for (long r = 0; r < shape[0]; r += rows)
        {
            using var scope = torch.NewDisposeScope();
            long n = Math.Min(rows, shape[0] - r);
            t.narrow(0, r, n).copy_(torch.empty(new[] { n, shape[1] }, device: torch.CPU).normal_(0, 0.02, gen));
        }
        return t;
    }
}
