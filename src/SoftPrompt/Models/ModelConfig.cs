using System.Text.Json.Nodes;
using TorchSharp;

namespace SoftPrompt.Models;

/// <summary>The two block families the supported architectures reduce to.</summary>
public enum ArchFamily
{
    /// <summary>GPT-2: LayerNorm, learned positions, fused qkv (Conv1D), GELU MLP, tied head.</summary>
    Gpt2,
    /// <summary>Llama and its descendants (Mistral, Qwen2, Qwen3): RMSNorm, RoPE, separate q/k/v, gated SiLU MLP.</summary>
    Llama,
    /// <summary>T5 / Flan-T5 encoder-decoder (<see cref="T5Config"/>, <see cref="T5Model"/>): not a decoder-only model.</summary>
    T5,
}

/// <summary>RoPE frequency scaling as Hugging Face's <c>rope_scaling</c> describes it.</summary>
public sealed record RopeScaling(string Type, double Factor, double LowFreqFactor, double HighFreqFactor, int OriginalMaxPositions);

/// <summary>
/// A model's <c>config.json</c>, normalised over architectures. Every field that changes the math is bound here,
/// and a value we do not implement fails loudly instead of being ignored (an ignored <c>rope_scaling</c> is how
/// other ports silently drift from the reference).
/// </summary>
public sealed partial record ModelConfig
{
    public required string ModelType { get; init; }
    public required ArchFamily Family { get; init; }
    public required int VocabSize { get; init; }
    public required int HiddenSize { get; init; }
    public required int NumLayers { get; init; }
    public required int NumHeads { get; init; }
    public required int NumKvHeads { get; init; }
    public required int HeadDim { get; init; }
    public required int IntermediateSize { get; init; }
    public required int MaxPositions { get; init; }
    public required double NormEps { get; init; }
    public required string Activation { get; init; }
    public bool TieWordEmbeddings { get; init; }
    /// <summary>Biases on q, k, v projections (Qwen2: true; Llama: attention_bias).</summary>
    public bool QkvBias { get; init; }
    /// <summary>Bias on the output projection (Llama attention_bias).</summary>
    public bool OutBias { get; init; }
    public bool MlpBias { get; init; }
    /// <summary>Per-head RMSNorm on q and k before RoPE (Qwen3).</summary>
    public bool QkNorm { get; init; }
    public double RopeTheta { get; init; } = 10000;
    public RopeScaling? RopeScaling { get; init; }
    /// <summary>Mistral-style sliding-window attention: a query at t sees keys in (t - window, t].</summary>
    public int? SlidingWindow { get; init; }
    /// <summary>GPT-2 only: divide attention scores by (layer index + 1).</summary>
    public bool ScaleAttnByInverseLayerIdx { get; init; }
    /// <summary>GPT-2 only: divide attention scores by sqrt(head_dim) (true unless the config says otherwise).</summary>
    public bool ScaleAttnWeights { get; init; } = true;
    public int? BosTokenId { get; init; }
    public IReadOnlyList<int> EosTokenIds { get; init; } = Array.Empty<int>();
    public int? PadTokenId { get; init; }
    /// <summary>The dtype the checkpoint was saved in (<c>torch_dtype</c>), if given.</summary>
    public string? TorchDtype { get; init; }
    public string? NameOrPath { get; init; }
    /// <summary>The encoder-decoder options of a T5 checkpoint (model_type t5), else null.</summary>
    public T5Config? T5 { get; init; }
    /// <summary>True for encoder-decoder models (T5): the prompt is the encoder input, the target the decoder's.</summary>
    public bool IsEncoderDecoder => T5 is not null;

    public int KvDim => NumKvHeads * HeadDim;

    public static readonly string[] SupportedModelTypes = { "gpt2", "llama", "mistral", "qwen2", "qwen3", "t5" };

    public static ModelConfig Load(string modelDir)
    {
        var path = Path.Combine(modelDir, "config.json");
        if (!Directory.Exists(modelDir)) throw new SoftPromptException($"Model folder '{modelDir}' does not exist.");
        if (!File.Exists(path)) throw new SoftPromptException($"{path}: not found; a Hugging Face model folder holds config.json next to its *.safetensors.");
        var o = IO.JsonFile.ReadObject(path);
        return Parse(o, path) with { NameOrPath = o["_name_or_path"] is JsonValue nv && nv.TryGetValue<string>(out var n) && n.Length > 0 ? n : Path.GetFullPath(modelDir) };
    }

    public static ModelConfig Parse(JsonObject o, string path = "config.json")
    {
        // A JsonObject built in code holds CLR values (JsonValue<int>, ...) whose TryGetValue<long>/<double> fail;
        // re-parsing gives JsonElement-backed values that convert like those of a parsed file.
        o = JsonNode.Parse(o.ToJsonString())!.AsObject();
        var r = new Reader(o, path);
        var type = r.Str("model_type") ?? throw new SoftPromptException($"{path}: missing key 'model_type' (one of {string.Join(", ", SupportedModelTypes)}).");
        var eos = r.IntOrList("eos_token_id");
        int? bos = r.IntOrList("bos_token_id") is { Count: > 0 } b ? b[0] : null;
        int? pad = r.IntOrList("pad_token_id") is { Count: > 0 } p ? p[0] : null;
        if (pad == -1) pad = null; // some older configs write -1 for "no padding token"
        var cfg = ParseFamily(o, r, type, bos, eos, pad, path);
        Validate(cfg, path);
        return cfg;
    }

    // Ceilings far above any released checkpoint of these families: a value past them is a typo or a hostile file, and
    // is refused before anything is allocated from it (the weights' shapes are then checked against the checkpoint).
    public const int MaxVocab = 1 << 24, MaxHidden = 1 << 17, MaxLayers = 1024, MaxHeads = 1 << 14, MaxHeadDim = 1 << 12,
        MaxIntermediate = 1 << 20, MaxPositionsCeiling = 1 << 24;

    static void Validate(ModelConfig c, string path)
    {
        bool gpt2 = c.Family == ArchFamily.Gpt2;
        void Range(string key, long v, long min, long max)
        {
            if (v < min || v > max) throw new SoftPromptException($"{path}: {key} is {v}; expected {min}..{max}.");
        }
        Range("vocab_size", c.VocabSize, 1, MaxVocab);
        Range(gpt2 ? "n_embd" : "hidden_size", c.HiddenSize, 1, MaxHidden);
        Range(gpt2 ? "n_layer" : "num_hidden_layers", c.NumLayers, 1, MaxLayers);
        Range(gpt2 ? "n_head" : "num_attention_heads", c.NumHeads, 1, MaxHeads);
        Range("num_key_value_heads", c.NumKvHeads, 1, c.NumHeads);
        Range("head_dim", c.HeadDim, 1, MaxHeadDim);
        Range(gpt2 ? "n_inner" : "intermediate_size", c.IntermediateSize, 1, MaxIntermediate);
        Range(gpt2 ? "n_positions" : "max_position_embeddings", c.MaxPositions, 1, MaxPositionsCeiling);
        if (!(c.NormEps > 0)) throw new SoftPromptException($"{path}: {(gpt2 ? "layer_norm_epsilon" : "rms_norm_eps")} is {c.NormEps}; expected a positive number.");
        if (!(c.RopeTheta > 0)) throw new SoftPromptException($"{path}: rope_theta is {c.RopeTheta}; expected a positive number.");
        if (c.SlidingWindow is int w && w < 1) throw new SoftPromptException($"{path}: sliding_window is {w}; expected a positive number of positions or null.");
        if (c.RopeScaling is { } s)
        {
            if (!(s.Factor > 0)) throw new SoftPromptException($"{path}: rope_scaling.factor is {s.Factor}; expected a positive number.");
            if (s.Type == "llama3")
            {
                if (!(s.LowFreqFactor > 0) || !(s.HighFreqFactor > s.LowFreqFactor))
                    throw new SoftPromptException($"{path}: rope_scaling low_freq_factor {s.LowFreqFactor} and high_freq_factor {s.HighFreqFactor}: expected 0 < low_freq_factor < high_freq_factor.");
                Range("rope_scaling.original_max_position_embeddings", s.OriginalMaxPositions, 1, MaxPositionsCeiling);
            }
        }
        foreach (var (key, id) in new[] { ("bos_token_id", c.BosTokenId), ("pad_token_id", c.PadTokenId) }.Concat(c.EosTokenIds.Select(e => ("eos_token_id", (int?)e))))
            if (id is int v && (v < 0 || v >= c.VocabSize))
                throw new SoftPromptException($"{path}: {key} {v} is outside the vocabulary (0..{c.VocabSize - 1}).");
    }

    static ModelConfig ParseFamily(JsonObject o, Reader r, string type, int? bos, List<int> eos, int? pad, string path)
    {
        switch (type)
        {
            case "gpt2":
            {
                int hidden = r.Int("n_embd", 768), heads = r.Int("n_head", 12);
                r.Positive("n_embd", hidden); r.Positive("n_head", heads);
                if (hidden % heads != 0) throw new SoftPromptException($"{path}: n_embd {hidden} is not divisible by n_head {heads}.");
                if (r.Bool("reorder_and_upcast_attn", false)) { /* same math in fp32; upcast handled by computing softmax in fp32 inside SDPA */ }
                return new ModelConfig
                {
                    ModelType = type, Family = ArchFamily.Gpt2, VocabSize = r.Int("vocab_size", 50257), HiddenSize = hidden,
                    NumLayers = r.Int("n_layer", 12), NumHeads = heads, NumKvHeads = heads, HeadDim = hidden / heads,
                    IntermediateSize = r.IntOrNull("n_inner") ?? 4 * hidden, MaxPositions = r.Int("n_positions", 1024),
                    NormEps = r.Double("layer_norm_epsilon", 1e-5), Activation = CheckAct(r.Str("activation_function") ?? "gelu_new", path, "activation_function"),
                    TieWordEmbeddings = r.Bool("tie_word_embeddings", true), QkvBias = true, OutBias = true, MlpBias = true,
                    ScaleAttnWeights = r.Bool("scale_attn_weights", true), ScaleAttnByInverseLayerIdx = r.Bool("scale_attn_by_inverse_layer_idx", false),
                    BosTokenId = bos, EosTokenIds = eos, PadTokenId = pad, TorchDtype = r.Str("torch_dtype") ?? r.Str("dtype"),
                };
            }
            case "llama" or "mistral" or "qwen2" or "qwen3":
            {
                int hidden = r.Req("hidden_size"), heads = r.Req("num_attention_heads");
                int kv = r.IntOrNull("num_key_value_heads") ?? heads;
                r.Positive("hidden_size", hidden); r.Positive("num_attention_heads", heads); r.Positive("num_key_value_heads", kv);
                int headDim = r.IntOrNull("head_dim") ?? (hidden % heads == 0 ? hidden / heads : throw new SoftPromptException($"{path}: hidden_size {hidden} is not divisible by num_attention_heads {heads} and no head_dim is given."));
                if (heads % kv != 0) throw new SoftPromptException($"{path}: num_attention_heads {heads} is not a multiple of num_key_value_heads {kv}.");
                if (headDim % 2 != 0) throw new SoftPromptException($"{path}: head_dim {headDim} must be even for rotary embeddings.");
                if (r.Double("partial_rotary_factor", 1.0) != 1.0) throw new SoftPromptException($"{path}: partial_rotary_factor other than 1.0 is not supported.");
                bool attnBias = r.Bool("attention_bias", false);
                int? window = null;
                if (type == "mistral") window = r.IntOrNull("sliding_window");
                if (type is "qwen2" or "qwen3" && r.Bool("use_sliding_window", false))
                    throw new SoftPromptException($"{path}: use_sliding_window=true (per-layer sliding-window attention) is not supported for {type}.");
                return new ModelConfig
                {
                    ModelType = type, Family = ArchFamily.Llama, VocabSize = r.Req("vocab_size"), HiddenSize = hidden, NumLayers = r.Req("num_hidden_layers"),
                    NumHeads = heads, NumKvHeads = kv, HeadDim = headDim, IntermediateSize = r.Req("intermediate_size"),
                    MaxPositions = r.Int("max_position_embeddings", 2048), NormEps = r.Double("rms_norm_eps", 1e-6),
                    Activation = CheckAct(r.Str("hidden_act") ?? "silu", path, "hidden_act"),
                    TieWordEmbeddings = r.Bool("tie_word_embeddings", false),
                    QkvBias = type == "qwen2" || attnBias, OutBias = type != "qwen2" && attnBias, MlpBias = r.Bool("mlp_bias", false),
                    QkNorm = type == "qwen3", RopeTheta = r.Double("rope_theta", 10000), RopeScaling = ParseRopeScaling(o["rope_scaling"], path),
                    SlidingWindow = window, BosTokenId = bos, EosTokenIds = eos, PadTokenId = pad, TorchDtype = r.Str("torch_dtype") ?? r.Str("dtype"),
                };
            }
            case "t5":
                return ParseT5(o, r, eos, pad, path);
            default:
                throw new SoftPromptException($"{path}: model_type '{type}' is not supported (supported: {string.Join(", ", SupportedModelTypes)}).");
        }
    }

    static readonly string[] Activations = { "gelu_new", "gelu", "gelu_pytorch_tanh", "gelu_fast", "relu", "silu", "swish" };
    static string CheckAct(string a, string path, string key) =>
        Activations.Contains(a) ? a : throw new SoftPromptException($"{path}: {key} '{a}' is not supported (supported: {string.Join(", ", Activations)}).");

    static RopeScaling? ParseRopeScaling(JsonNode? n, string path)
    {
        if (n is null) return null;
        if (n is not JsonObject o) throw new SoftPromptException($"{path}: rope_scaling must be an object or null.");
        var r = new Reader(o, path + " rope_scaling");
        var type = r.Str("rope_type") ?? r.Str("type") ?? throw new SoftPromptException($"{path}: rope_scaling has no 'rope_type'.");
        switch (type)
        {
            case "default": return null;
            case "linear": return new RopeScaling(type, r.Double("factor", 1), 0, 0, 0);
            case "llama3":
                return new RopeScaling(type, r.ReqDouble("factor"), r.ReqDouble("low_freq_factor"), r.ReqDouble("high_freq_factor"), r.Req("original_max_position_embeddings"));
            default:
                throw new SoftPromptException($"{path}: rope_scaling type '{type}' is not supported (supported: default, linear, llama3).");
        }
    }

    /// <summary>Typed access to config keys with errors that name the file and key.</summary>
    sealed class Reader(JsonObject o, string path)
    {
        JsonNode? Get(string k) => o.TryGetPropertyValue(k, out var v) ? v : null;
        public string? Str(string k)
        {
            var n = Get(k);
            if (n is null) return null;
            return n is JsonValue v && v.TryGetValue<string>(out var s) ? s : throw new SoftPromptException($"{path}: key '{k}' must be a string, got {Excerpt(n)}.");
        }
        static string Excerpt(JsonNode n) { var s = n.ToJsonString(); return s.Length <= 40 ? s : s[..37] + "..."; }
        public int? IntOrNull(string k)
        {
            var n = Get(k);
            if (n is null) return null;
            if (n is JsonValue v && v.TryGetValue<long>(out var l) && l is >= int.MinValue and <= int.MaxValue) return (int)l;
            if (n is JsonValue d && d.TryGetValue<double>(out var x) && x == Math.Floor(x) && x is >= int.MinValue and <= int.MaxValue) return (int)x;
            throw new SoftPromptException($"{path}: key '{k}' must be an integer (32-bit), got {Excerpt(n)}.");
        }
        public int Int(string k, int dflt) => IntOrNull(k) ?? dflt;
        public void Positive(string k, int v) { if (v < 1) throw new SoftPromptException($"{path}: {k} is {v}; expected a positive integer."); }
        public int Req(string k) => IntOrNull(k) ?? throw new SoftPromptException($"{path}: missing required key '{k}'.");
        public double? DoubleOrNull(string k)
        {
            var n = Get(k);
            if (n is null) return null;
            if (n is JsonValue v && v.TryGetValue<double>(out var d) && double.IsFinite(d)) return d;
            throw new SoftPromptException($"{path}: key '{k}' must be a finite number, got {Excerpt(n)}.");
        }
        public double Double(string k, double dflt) => DoubleOrNull(k) ?? dflt;
        public double ReqDouble(string k) => DoubleOrNull(k) ?? throw new SoftPromptException($"{path}: missing required key '{k}'.");
        public bool Bool(string k, bool dflt)
        {
            var n = Get(k);
            if (n is null) return dflt;
            if (n is JsonValue v && v.TryGetValue<bool>(out var b)) return b;
            throw new SoftPromptException($"{path}: key '{k}' must be true or false, got {Excerpt(n)}.");
        }
        public List<int> IntOrList(string k)
        {
            var n = Get(k);
            if (n is null) return new();
            if (n is JsonArray a) return a.Select((x, i) => x is JsonValue v && v.TryGetValue<int>(out var l) ? l : throw new SoftPromptException($"{path}: {k}[{i}] must be an integer (32-bit).")).ToList();
            return new() { IntOrNull(k)!.Value };
        }
    }
}
