using System.Text.Json.Nodes;

namespace SoftPrompt.Models;

/// <summary>
/// What a T5 <c>config.json</c> carries beyond the shared <see cref="ModelConfig"/> fields (which hold, for T5:
/// <c>d_model</c> as HiddenSize, <c>num_layers</c> (encoder) as NumLayers, <c>num_heads</c>, <c>d_kv</c> as HeadDim,
/// <c>d_ff</c> as IntermediateSize, <c>layer_norm_epsilon</c> as NormEps, the feed-forward activation as Activation
/// and <c>tie_word_embeddings</c>).
/// </summary>
public sealed record T5Config
{
    /// <summary><c>num_decoder_layers</c> (defaults to <c>num_layers</c>, as transformers does).</summary>
    public required int NumDecoderLayers { get; init; }
    /// <summary><c>relative_attention_num_buckets</c>.</summary>
    public required int NumBuckets { get; init; }
    /// <summary><c>relative_attention_max_distance</c>.</summary>
    public required int MaxDistance { get; init; }
    /// <summary>Gated feed-forward (<c>feed_forward_proj</c> "gated-gelu", T5 v1.1 / Flan-T5): wo(act(wi_0 x) * wi_1 x).</summary>
    public required bool GatedAct { get; init; }
    /// <summary>The decoder's first input token (<c>decoder_start_token_id</c>; 0, the pad id, in every T5 checkpoint).</summary>
    public required int DecoderStartTokenId { get; init; }
}

public sealed partial record ModelConfig
{
    /// <summary>
    /// model_type "t5" as transformers v4.44's <c>T5Config</c> reads it: <c>feed_forward_proj</c> is "ACT" or
    /// "gated-ACT" ("gated-gelu" means gelu_new); an explicit <c>dense_act_fn</c> / <c>is_gated_act</c> in the file
    /// wins over it, as in transformers (the saved attributes are set after the derived ones). Options we do not
    /// implement are refused by name.
    /// </summary>
    static ModelConfig ParseT5(JsonObject o, Reader r, List<int> eos, int? pad, string path)
    {
        int Pos(string key, int dflt)
        {
            int v = r.Int(key, dflt);
            r.Positive(key, v);
            return v;
        }
        if (!r.Bool("is_encoder_decoder", true))
            throw new SoftPromptException($"{path}: is_encoder_decoder false (a T5 encoder alone, T5EncoderModel) is not supported; softprompt tunes T5ForConditionalGeneration.");
        int dModel = Pos("d_model", 512), dKv = Pos("d_kv", 64), dFf = Pos("d_ff", 2048), layers = Pos("num_layers", 6), heads = Pos("num_heads", 8);
        int decLayers = r.IntOrNull("num_decoder_layers") ?? layers;
        r.Positive("num_decoder_layers", decLayers);
        if (decLayers > MaxLayers) throw new SoftPromptException($"{path}: num_decoder_layers is {decLayers}; expected 1..{MaxLayers}.");
        int buckets = Pos("relative_attention_num_buckets", 32), maxDistance = Pos("relative_attention_max_distance", 128);
        // The bucket formula halves the buckets (bidirectional) and then halves again for the exact range: fewer
        // than 4 leaves an empty range, and a max distance at or below the exact range gives log(<=1) scales.
        if (buckets < 4) throw new SoftPromptException($"{path}: relative_attention_num_buckets is {buckets}; expected at least 4.");
        if (maxDistance <= buckets / 2) throw new SoftPromptException($"{path}: relative_attention_max_distance {maxDistance} must exceed relative_attention_num_buckets / 2 ({buckets / 2}).");

        var ffp = r.Str("feed_forward_proj") ?? "relu";
        var parts = ffp.Split('-');
        if (parts.Length > 2 || (parts.Length == 2 && parts[0] != "gated") || parts[^1].Length == 0)
            throw new SoftPromptException($"{path}: feed_forward_proj '{ffp}' is not of the form 'ACT' or 'gated-ACT' (e.g. 'relu', 'gated-gelu').");
        bool gated = parts[0] == "gated" && parts.Length == 2;
        var act = ffp == "gated-gelu" ? "gelu_new" : parts[^1];
        act = r.Str("dense_act_fn") ?? act;
        gated = r.Bool("is_gated_act", gated);
        act = CheckAct(act, path, o.ContainsKey("dense_act_fn") ? "dense_act_fn" : "feed_forward_proj");

        int? start = r.IntOrNull("decoder_start_token_id") ?? (r.IntOrList("bos_token_id") is { Count: > 0 } b ? b[0] : null);
        if (start is null)
            throw new SoftPromptException($"{path}: missing key 'decoder_start_token_id' (the decoder's first input token; 0 in T5 checkpoints).");
        if (start < 0 || start >= r.Int("vocab_size", 32128))
            throw new SoftPromptException($"{path}: decoder_start_token_id {start} is outside the vocabulary.");
        return new ModelConfig
        {
            ModelType = "t5", Family = ArchFamily.T5, VocabSize = r.Int("vocab_size", 32128), HiddenSize = dModel, NumLayers = layers,
            NumHeads = heads, NumKvHeads = heads, HeadDim = dKv, IntermediateSize = dFf,
            // Relative position buckets have no learned limit (the farthest bucket covers every longer distance).
            MaxPositions = MaxPositionsCeiling,
            NormEps = r.Double("layer_norm_epsilon", 1e-6), Activation = act,
            TieWordEmbeddings = r.Bool("tie_word_embeddings", true),
            EosTokenIds = eos.Count > 0 ? eos : new List<int> { 1 }, PadTokenId = o.ContainsKey("pad_token_id") ? pad : 0,
            TorchDtype = r.Str("torch_dtype") ?? r.Str("dtype"),
            T5 = new T5Config { NumDecoderLayers = decLayers, NumBuckets = buckets, MaxDistance = maxDistance, GatedAct = gated, DecoderStartTokenId = start.Value },
        };
    }
}
