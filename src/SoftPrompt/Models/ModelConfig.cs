using System.Text.Json.Nodes;
using TorchSharp;

namespace SoftPrompt.Models;

/// <summary>The block families the supported architectures reduce to.</summary>
public enum ArchFamily
{
    /// <summary>GPT-2: LayerNorm, learned positions, fused qkv (Conv1D), GELU MLP, tied head.</summary>
    Gpt2,
    /// <summary>Llama and its descendants (Mistral, Qwen2, Qwen3, Gemma, Gemma 2, Phi-3): RMSNorm, RoPE, q/k/v
    /// (separate or fused), gated MLP; the variants are flags of <see cref="ModelConfig"/>.</summary>
    Llama,
    /// <summary>GPT-NeoX (Pythia): LayerNorm with bias, partial RoPE, q/k/v fused and interleaved per head, GELU MLP,
    /// parallel or sequential residual.</summary>
    GptNeoX,
    /// <summary>T5 / Flan-T5 encoder-decoder (<see cref="T5Config"/>, <see cref="T5Model"/>): not a decoder-only model.</summary>
    T5,
}

/// <summary>RoPE frequency scaling as Hugging Face's <c>rope_scaling</c> describes it. For <c>longrope</c> (Phi-3's
/// LongRoPE, formerly "su"), <see cref="OriginalMaxPositions"/> is the config's <c>original_max_position_embeddings</c>,
/// <see cref="ShortFactor"/>/<see cref="LongFactor"/> divide the frequencies (one list per forward: the long one when
/// the forward reaches past the original context), and <see cref="AttentionFactor"/> multiplies cos and sin.</summary>
public sealed record RopeScaling(string Type, double Factor, double LowFreqFactor, double HighFreqFactor, int OriginalMaxPositions)
{
    public IReadOnlyList<double>? ShortFactor { get; init; }
    public IReadOnlyList<double>? LongFactor { get; init; }
    public double AttentionFactor { get; init; } = 1.0;
}

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
    /// <summary>Sliding-window attention: a query at cache index t sees keys at cache indices (t - window, t] (a prefix's
    /// entries take indices 0..P-1). On every layer (Mistral, Phi-3) unless <see cref="SlidingLayers"/> says otherwise.</summary>
    public int? SlidingWindow { get; init; }
    /// <summary>Which layers use <see cref="SlidingWindow"/> (Gemma 2: the even ones); null = every layer.</summary>
    public IReadOnlyList<bool>? SlidingLayers { get; init; }
    /// <summary>Gemma: RMSNorm weights are stored as w and applied as (1 + w), in fp32.</summary>
    public bool NormAddsOne { get; init; }
    /// <summary>Gemma: the input embeddings (soft-prompt rows included) are multiplied by sqrt(hidden_size), rounded to the
    /// activations' dtype.</summary>
    public bool ScaleEmbeddings { get; init; }
    /// <summary>Gemma 2: the attention and MLP outputs are normalised before the residual add (post_attention_layernorm,
    /// post_feedforward_layernorm), and the MLP's input norm is pre_feedforward_layernorm.</summary>
    public bool SandwichNorms { get; init; }
    /// <summary>Gemma 2: attention scores become cap·tanh(score/cap) before masking (attn_logit_softcapping).</summary>
    public double? AttnLogitSoftcap { get; init; }
    /// <summary>Gemma 2: logits become cap·tanh(logit/cap) (final_logit_softcapping).</summary>
    public double? FinalLogitSoftcap { get; init; }
    /// <summary>Attention score scale; null = 1/sqrt(head_dim) (Gemma 2: query_pre_attn_scalar^-1/2).</summary>
    public double? AttnScale { get; init; }
    /// <summary>Phi-3: q/k/v in one <c>qkv_proj</c> (rows q | k | v) and gate/up in one <c>gate_up_proj</c> (rows gate | up).</summary>
    public bool FusedProjections { get; init; }
    /// <summary>Fraction of each head's dimensions that RoPE rotates (GPT-NeoX rotary_pct, partial_rotary_factor).</summary>
    public double PartialRotaryFactor { get; init; } = 1.0;
    /// <summary>GPT-NeoX: h + attn(ln1(h)) + mlp(ln2(h)) instead of the sequential residual.</summary>
    public bool ParallelResidual { get; init; }
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
    /// <summary>Dimensions of each head that RoPE rotates (the first ones); the rest pass through.</summary>
    public int RotaryDim => (int)(HeadDim * PartialRotaryFactor);
    /// <summary>Whether layer <paramref name="layer"/> attends within <see cref="SlidingWindow"/>.</summary>
    public bool IsSlidingLayer(int layer) => SlidingWindow is not null && (SlidingLayers is null || SlidingLayers[layer]);
    /// <summary>Some layers slide and some attend globally (Gemma 2): masks come in two kinds.</summary>
    public bool MixedSlidingLayers => SlidingWindow is not null && SlidingLayers is { } s && s.Contains(true) && s.Contains(false);
    /// <summary>The window every layer uses, or null when some (or all) layers attend globally.</summary>
    public int? UniformSlidingWindow => SlidingWindow is int w && (SlidingLayers is null || !SlidingLayers.Contains(false)) ? w : null;

    public static readonly string[] SupportedModelTypes = { "gpt2", "llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "phi3", "gpt_neox", "t5" };

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
        bool neox = c.Family == ArchFamily.GptNeoX;
        if (!(c.NormEps > 0)) throw new SoftPromptException($"{path}: {(gpt2 ? "layer_norm_epsilon" : neox ? "layer_norm_eps" : "rms_norm_eps")} is {c.NormEps}; expected a positive number.");
        if (!(c.RopeTheta > 0)) throw new SoftPromptException($"{path}: {(neox ? "rotary_emb_base" : "rope_theta")} is {c.RopeTheta}; expected a positive number.");
        if (!gpt2 && (c.RotaryDim < 2 || c.RotaryDim % 2 != 0 || !(c.PartialRotaryFactor <= 1)))
            throw new SoftPromptException($"{path}: {(neox ? "rotary_pct" : "partial_rotary_factor")} {c.PartialRotaryFactor} of head_dim {c.HeadDim} rotates {c.RotaryDim} dimensions; expected an even number from 2 to head_dim.");
        foreach (var (key, cap) in new[] { ("attn_logit_softcapping", c.AttnLogitSoftcap), ("final_logit_softcapping", c.FinalLogitSoftcap), ("query_pre_attn_scalar", c.AttnScale) })
            if (cap is double v && !(v > 0)) throw new SoftPromptException($"{path}: {key} is {v}; expected a positive number or null.");
        if (c.SlidingLayers is { } sl && sl.Count != c.NumLayers)
            throw new SoftPromptException($"{path}: layer_types lists {sl.Count} layers; num_hidden_layers is {c.NumLayers}.");
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
            case "gemma" or "gemma2":
                return ParseGemma(o, r, type, bos ?? 2, eos.Count > 0 ? eos : new() { 1 }, pad ?? 0, path);
            case "phi3":
                return ParsePhi3(o, r, bos ?? 1, eos.Count > 0 ? eos : new() { 32000 }, pad ?? 32000, path);
            case "gpt_neox":
                return ParseNeoX(o, r, bos ?? 0, eos.Count > 0 ? eos : new() { 2 }, pad, path);
            case "t5":
                return ParseT5(o, r, eos, pad, path);
            default:
                throw new SoftPromptException($"{path}: model_type '{type}' is not supported (supported: {string.Join(", ", SupportedModelTypes)}).");
        }
    }

    // Gemma, Gemma 2, Phi-3 and GPT-NeoX: a key missing from config.json takes the default of transformers' config class
    // (save_pretrained omits some values equal to the defaults), and each option that changes the math is bound or
    // refused by name. Dropout keys are read by nobody: the base model is frozen and runs without dropout.

    /// <summary>The shape keys every Llama-style family requires, with num_key_value_heads and head_dim resolved.</summary>
    static (int Hidden, int Heads, int Kv, int HeadDim) Geometry(Reader r, string path, int? headDimDefault)
    {
        int hidden = r.Req("hidden_size"), heads = r.Req("num_attention_heads");
        r.Positive("hidden_size", hidden); r.Positive("num_attention_heads", heads);
        int kv = r.IntOrNull("num_key_value_heads") ?? heads;
        r.Positive("num_key_value_heads", kv);
        if (heads % kv != 0) throw new SoftPromptException($"{path}: num_attention_heads {heads} is not a multiple of num_key_value_heads {kv}.");
        int headDim = r.IntOrNull("head_dim") ?? headDimDefault
            ?? (hidden % heads == 0 ? hidden / heads : throw new SoftPromptException($"{path}: hidden_size {hidden} is not divisible by num_attention_heads {heads} and no head_dim is given."));
        r.Positive("head_dim", headDim);
        return (hidden, heads, kv, headDim);
    }

    /// <summary>rope_theta, also from transformers v5's <c>rope_parameters</c> when it holds plain RoPE.</summary>
    static double ReadRopeTheta(JsonObject o, Reader r, string path, string key = "rope_theta")
    {
        if (o["rope_parameters"] is JsonObject rp)
        {
            var rr = new Reader(rp, path + " rope_parameters");
            var t = rr.Str("rope_type") ?? "default";
            if (t != "default") throw new SoftPromptException($"{path}: rope_parameters.rope_type '{t}' is not supported for {r.Str("model_type")} (only plain RoPE in rope_parameters).");
            if (rr.DoubleOrNull("rope_theta") is double th) return th;
        }
        return r.Double(key, 10000);
    }

    static void RefuseTrue(Reader r, string path, params string[] keys)
    {
        foreach (var k in keys)
            if (r.Bool(k, false)) throw new SoftPromptException($"{path}: {k}=true is not supported for {r.Str("model_type")}.");
    }

    static ModelConfig ParseGemma(JsonObject o, Reader r, string type, int? bos, List<int> eos, int? pad, string path)
    {
        bool g2 = type == "gemma2";
        var (hidden, heads, kv, headDim) = Geometry(r, path, 256);
        int layers = r.Req("num_hidden_layers");
        r.Positive("num_hidden_layers", layers);
        // transformers uses hidden_activation; hidden_act is ignored (an original Gemma config's "gelu" still runs the tanh GELU).
        var act = CheckAct(r.Str("hidden_activation") ?? "gelu_pytorch_tanh", path, "hidden_activation");
        bool attnBias = r.Bool("attention_bias", false);
        if (o["rope_scaling"] is JsonObject) throw new SoftPromptException($"{path}: rope_scaling is not supported for {type} (its configuration has none).");
        RefuseTrue(r, path, "use_bidirectional_attention");
        double? Cap(string k, double dflt) => o.TryGetPropertyValue(k, out var n) ? (n is null ? null : r.DoubleOrNull(k)) : dflt;
        IReadOnlyList<bool>? sliding = null;
        int? window = null;
        if (g2)
        {
            window = o.TryGetPropertyValue("sliding_window", out var wn) ? (wn is null ? null : r.IntOrNull("sliding_window")) : 4096;
            if (o["layer_types"] is JsonArray lt)
                sliding = lt.Select((x, i) => (x is JsonValue v && v.TryGetValue<string>(out var s) ? s : null) switch
                {
                    "sliding_attention" => true,
                    "full_attention" => false,
                    _ => throw new SoftPromptException($"{path}: layer_types[{i}] must be \"sliding_attention\" or \"full_attention\"."),
                }).ToList();
            else sliding = Enumerable.Range(0, layers).Select(i => i % 2 == 0).ToList();
        }
        else if (r.IntOrNull("sliding_window") is not null) throw new SoftPromptException($"{path}: sliding_window is not supported for gemma (Gemma 2's is).");
        return new ModelConfig
        {
            ModelType = type, Family = ArchFamily.Llama, VocabSize = r.Req("vocab_size"), HiddenSize = hidden, NumLayers = layers,
            NumHeads = heads, NumKvHeads = kv, HeadDim = headDim, IntermediateSize = r.Req("intermediate_size"),
            MaxPositions = r.Int("max_position_embeddings", 8192), NormEps = r.Double("rms_norm_eps", 1e-6), Activation = act,
            TieWordEmbeddings = r.Bool("tie_word_embeddings", true), QkvBias = attnBias, OutBias = attnBias,
            RopeTheta = ReadRopeTheta(o, r, path), NormAddsOne = true, ScaleEmbeddings = true,
            SandwichNorms = g2, SlidingWindow = window, SlidingLayers = sliding,
            AttnLogitSoftcap = g2 ? Cap("attn_logit_softcapping", 50.0) : null,
            FinalLogitSoftcap = g2 ? Cap("final_logit_softcapping", 30.0) : null,
            AttnScale = g2 ? 1.0 / Math.Sqrt(r.Double("query_pre_attn_scalar", 224)) : null,
            BosTokenId = bos, EosTokenIds = eos, PadTokenId = pad, TorchDtype = r.Str("torch_dtype") ?? r.Str("dtype"),
        };
    }

    static ModelConfig ParsePhi3(JsonObject o, Reader r, int? bos, List<int> eos, int? pad, string path)
    {
        var (hidden, heads, kv, headDim) = Geometry(r, path, null);
        double partial = r.Double("partial_rotary_factor", 1.0);
        int maxPos = r.Int("max_position_embeddings", 4096), origMax = r.Int("original_max_position_embeddings", 4096);
        r.Positive("original_max_position_embeddings", origMax);
        RopeScaling? rope = null;
        if (o["rope_scaling"] is JsonObject rs)
        {
            var rr = new Reader(rs, path + " rope_scaling");
            var t = rr.Str("rope_type") ?? rr.Str("type") ?? throw new SoftPromptException($"{path}: rope_scaling has no 'type'.");
            if (t is not ("longrope" or "su" or "yarn"))   // transformers renames Phi-3's "su" and "yarn" to "longrope"
                throw new SoftPromptException($"{path}: rope_scaling type '{t}' is not supported for phi3 (supported: longrope, su).");
            foreach (var (k, _) in rs)
                if (k is not ("type" or "rope_type" or "short_factor" or "long_factor" or "attention_factor" or "factor"))
                    throw new SoftPromptException($"{path}: rope_scaling.{k} is not supported for phi3 (LongRoPE takes short_factor, long_factor and optionally attention_factor).");
            int half = (int)(headDim * partial) / 2;
            List<double> Factors(string k)
            {
                if (rs[k] is not JsonArray a) throw new SoftPromptException($"{path}: rope_scaling.{k} must be a list of {half} numbers.");
                var l = a.Select((x, i) => x is JsonValue v && v.TryGetValue<double>(out var d) && double.IsFinite(d) && d > 0 ? d
                    : throw new SoftPromptException($"{path}: rope_scaling.{k}[{i}] must be a positive number.")).ToList();
                if (l.Count != half) throw new SoftPromptException($"{path}: rope_scaling.{k} has {l.Count} numbers; expected {half} (rotary dimensions / 2).");
                return l;
            }
            // The attention factor: given, or sqrt(1 + ln(s) / ln(original)) with s = max / original positions (1 if s <= 1).
            double s = (double)maxPos / origMax;
            double attn = rr.DoubleOrNull("attention_factor") ?? (s <= 1 ? 1.0 : Math.Sqrt(1 + Math.Log(s) / Math.Log(origMax)));
            rope = new RopeScaling("longrope", s, 0, 0, origMax) { ShortFactor = Factors("short_factor"), LongFactor = Factors("long_factor"), AttentionFactor = attn };
        }
        else if (o["rope_scaling"] is not null) throw new SoftPromptException($"{path}: rope_scaling must be an object or null.");
        return new ModelConfig
        {
            ModelType = "phi3", Family = ArchFamily.Llama, VocabSize = r.Req("vocab_size"), HiddenSize = hidden, NumLayers = r.Req("num_hidden_layers"),
            NumHeads = heads, NumKvHeads = kv, HeadDim = headDim, IntermediateSize = r.Req("intermediate_size"),
            MaxPositions = maxPos, NormEps = r.Double("rms_norm_eps", 1e-5), Activation = CheckAct(r.Str("hidden_act") ?? "silu", path, "hidden_act"),
            TieWordEmbeddings = r.Bool("tie_word_embeddings", false), FusedProjections = true, PartialRotaryFactor = partial,
            RopeTheta = ReadRopeTheta(o, r, path), RopeScaling = rope, SlidingWindow = r.IntOrNull("sliding_window"),
            BosTokenId = bos, EosTokenIds = eos, PadTokenId = pad, TorchDtype = r.Str("torch_dtype") ?? r.Str("dtype"),
        };
    }

    static ModelConfig ParseNeoX(JsonObject o, Reader r, int? bos, List<int> eos, int? pad, string path)
    {
        int hidden = r.Req("hidden_size"), heads = r.Req("num_attention_heads");
        r.Positive("hidden_size", hidden); r.Positive("num_attention_heads", heads);
        if (hidden % heads != 0) throw new SoftPromptException($"{path}: hidden_size {hidden} is not divisible by num_attention_heads {heads}.");
        if (r.IntOrNull("num_key_value_heads") is int kvh && kvh != heads)
            throw new SoftPromptException($"{path}: num_key_value_heads {kvh} is not supported for gpt_neox (its attention has one key/value head per query head).");
        // Older names (rotary_pct, rotary_emb_base) and newer ones (partial_rotary_factor, rope_theta) mean the same.
        double Either(string oldKey, string newKey, double dflt)
        {
            double? a = r.DoubleOrNull(oldKey), b = r.DoubleOrNull(newKey);
            if (a is double x && b is double y && x != y) throw new SoftPromptException($"{path}: {oldKey} {x} and {newKey} {y} disagree.");
            return a ?? b ?? dflt;
        }
        double partial = Either("rotary_pct", "partial_rotary_factor", 0.25);
        double theta = o["rope_parameters"] is JsonObject ? ReadRopeTheta(o, r, path) : Either("rotary_emb_base", "rope_theta", 10000);
        var rope = ParseRopeScaling(o["rope_scaling"], path);
        bool attnBias = r.Bool("attention_bias", true);
        return new ModelConfig
        {
            ModelType = "gpt_neox", Family = ArchFamily.GptNeoX, VocabSize = r.Req("vocab_size"), HiddenSize = hidden, NumLayers = r.Req("num_hidden_layers"),
            NumHeads = heads, NumKvHeads = heads, HeadDim = hidden / heads, IntermediateSize = r.Req("intermediate_size"),
            MaxPositions = r.Int("max_position_embeddings", 2048), NormEps = r.Double("layer_norm_eps", 1e-5),
            Activation = CheckAct(r.Str("hidden_act") ?? "gelu", path, "hidden_act"), TieWordEmbeddings = r.Bool("tie_word_embeddings", false),
            QkvBias = attnBias, OutBias = attnBias, MlpBias = true, PartialRotaryFactor = partial, RopeTheta = theta, RopeScaling = rope,
            ParallelResidual = r.Bool("use_parallel_residual", true),
            BosTokenId = bos, EosTokenIds = eos, PadTokenId = pad, TorchDtype = r.Str("torch_dtype") ?? r.Str("dtype"),
        };
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
