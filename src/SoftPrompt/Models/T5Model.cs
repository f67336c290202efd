using SoftPrompt.IO;
using SoftPrompt.Runtime;
using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace SoftPrompt.Models;

/// <summary>The encoder's output: final-normed hidden states [B, S, d_model] and the key mask the decoder's
/// cross-attention uses ([B, S], 1 = attend; null when every position is real).</summary>
public sealed record T5EncoderOutput(Tensor Hidden, Tensor? Mask, IReadOnlyList<Tensor>? HiddenStates = null);

/// <summary>
/// The decoder's keys/values: self-attention entries of earlier decoder positions (they grow by the tokens of each
/// step) and the cross-attention projections of the encoder output (computed once, at the first step). Owns its
/// tensors.
/// </summary>
public sealed class T5Cache : IDisposable
{
    internal readonly Tensor?[] SelfK, SelfV, CrossK, CrossV;
    /// <summary>Decoder positions held.</summary>
    public int Length { get; internal set; }

    public T5Cache(int decoderLayers)
    {
        SelfK = new Tensor?[decoderLayers]; SelfV = new Tensor?[decoderLayers];
        CrossK = new Tensor?[decoderLayers]; CrossV = new Tensor?[decoderLayers];
    }

    internal static void Keep(Tensor?[] slot, int i, Tensor t)
    {
        var old = slot[i];
        slot[i] = t.DetachFromDisposeScope();
        old?.Dispose();
    }

    public void Dispose()
    {
        foreach (var a in new[] { SelfK, SelfV, CrossK, CrossV })
            for (int i = 0; i < a.Length; i++) { a[i]?.Dispose(); a[i] = null; }
    }
}

/// <summary>
/// A frozen T5 / Flan-T5 (T5ForConditionalGeneration) computed from its Hugging Face weights with TorchSharp's
/// functional ops; the whole math is in this file. Like <see cref="CausalLM"/> it knows nothing of soft prompts: its
/// encoder accepts extra input embeddings placed before the tokens (where prompt tuning attaches, as PEFT does for
/// SEQ_2_SEQ_LM), and its decoder a cache of keys/values.
/// Semantics (transformers v4.44 modeling_t5): RMS layer norm without mean or bias; attention with no 1/sqrt(d)
/// scaling; a relative position bias from block 0's table of each stack, shared by its layers (bidirectional
/// buckets in the encoder, causal in the decoder, none in cross-attention); ReLU or gated feed-forward; a tied head
/// scales the decoder output by d_model^-1/2 first, an untied one does not.
/// </summary>
public sealed class T5Model : IPromptableModel
{
    public ModelConfig Config { get; }
    public T5Config T5 => Config.T5!;
    public Device Device { get; }
    public ScalarType DType { get; }
    /// <summary>Weights by their Hugging Face names.</summary>
    public IReadOnlyDictionary<string, Tensor> Weights => _w;

    readonly Dictionary<string, Tensor> _w;
    readonly Tensor _shared, _lmHead;

    internal T5Model(ModelConfig cfg, Dictionary<string, Tensor> weights, Device device, ScalarType dtype)
    {
        if (cfg.T5 is null) throw new ArgumentException("not a T5 config", nameof(cfg));
        RefuseFp16(dtype);
        Config = cfg; Device = device; DType = dtype; _w = weights;
        foreach (var t in _w.Values) t.requires_grad = false;
        _shared = _w["shared.weight"];
        _lmHead = cfg.TieWordEmbeddings ? _shared : _w["lm_head.weight"];
    }

    Tensor W(string k) => _w[k];

    /// <summary>Every tensor the config implies, with its shape as stored.</summary>
    public static Dictionary<string, long[]> ExpectedShapes(ModelConfig c)
    {
        var t5 = c.T5 ?? throw new ArgumentException("not a T5 config", nameof(c));
        int d = c.HiddenSize, inner = c.NumHeads * c.HeadDim, ff = c.IntermediateSize;
        var e = new Dictionary<string, long[]> { ["shared.weight"] = new long[] { c.VocabSize, d } };
        void Attn(string p, bool bias)
        {
            e[p + "q.weight"] = e[p + "k.weight"] = e[p + "v.weight"] = new long[] { inner, d };
            e[p + "o.weight"] = new long[] { d, inner };
            if (bias) e[p + "relative_attention_bias.weight"] = new long[] { t5.NumBuckets, c.NumHeads };
        }
        void Ff(string p)
        {
            if (t5.GatedAct) e[p + "DenseReluDense.wi_0.weight"] = e[p + "DenseReluDense.wi_1.weight"] = new long[] { ff, d };
            else e[p + "DenseReluDense.wi.weight"] = new long[] { ff, d };
            e[p + "DenseReluDense.wo.weight"] = new long[] { d, ff };
            e[p + "layer_norm.weight"] = new long[] { d };
        }
        for (int i = 0; i < c.NumLayers; i++)
        {
            string p = $"encoder.block.{i}.layer.";
            Attn(p + "0.SelfAttention.", i == 0); e[p + "0.layer_norm.weight"] = new long[] { d };
            Ff(p + "1.");
        }
        e["encoder.final_layer_norm.weight"] = new long[] { d };
        for (int i = 0; i < t5.NumDecoderLayers; i++)
        {
            string p = $"decoder.block.{i}.layer.";
            Attn(p + "0.SelfAttention.", i == 0); e[p + "0.layer_norm.weight"] = new long[] { d };
            Attn(p + "1.EncDecAttention.", false); e[p + "1.layer_norm.weight"] = new long[] { d };
            Ff(p + "2.");
        }
        e["decoder.final_layer_norm.weight"] = new long[] { d };
        if (!c.TieWordEmbeddings) e["lm_head.weight"] = new long[] { c.VocabSize, d };
        return e;
    }

    /// <summary>T5's activations overflow fp16 (transformers clamps them to the fp16 range after every sub-layer, a
    /// workaround not implemented here); bf16 has fp32's range.</summary>
    static void RefuseFp16(ScalarType dtype)
    {
        if (dtype == ScalarType.Float16)
            throw new SoftPromptException("T5 in fp16 is not supported (its activations overflow fp16; transformers clamps them, which is not implemented here): use --dtype fp32 or bf16.");
    }

    /// <summary>Copies of <c>shared.weight</c> some checkpoints store (and, tied, the head), and the cross-attention
    /// bias table old checkpoints carry that transformers never uses: read past, not loaded.</summary>
    static bool Ignored(ModelConfig c, string name) =>
        name is "encoder.embed_tokens.weight" or "decoder.embed_tokens.weight" || (c.TieWordEmbeddings && name == "lm_head.weight")
        || name == "decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight";

    /// <summary>Loads a Hugging Face T5 folder (config.json + model.safetensors or a sharded index), checking every
    /// tensor's name and shape against config.json before any weight is read.</summary>
    public static T5Model Load(string modelDir, Device? device = null, ScalarType dtype = ScalarType.Float32, bool checkFinite = true)
    {
        device ??= torch.CPU;
        var cfg = ModelConfig.Load(modelDir);
        if (cfg.T5 is null) throw new SoftPromptException($"{modelDir}: model_type '{cfg.ModelType}' is not an encoder-decoder T5 model.");
        RefuseFp16(dtype);
        if (cfg.T5.NumDecoderLayers > ModelConfig.MaxLayers)
            throw new SoftPromptException($"{Path.Combine(modelDir, "config.json")}: num_decoder_layers is {cfg.T5.NumDecoderLayers}; expected 1..{ModelConfig.MaxLayers}.");
        var weights = ModelLoader.ReadWeights(modelDir, cfg.ModelType, ExpectedShapes(cfg), device, dtype, checkFinite,
            canonical: n => n, ignored: n => Ignored(cfg, n), optional: _ => false,
            unexpectedHint: _ => $"is the config from another model? feed_forward_proj '{(cfg.T5.GatedAct ? "gated-" : "")}{cfg.Activation}', {cfg.NumLayers} encoder / {cfg.T5.NumDecoderLayers} decoder layers, tie_word_embeddings {cfg.TieWordEmbeddings.ToString().ToLowerInvariant()}",
            missingHint: _ => "");
        try { return new T5Model(cfg, weights, device, dtype); }
        catch { foreach (var t in weights.Values) t.Dispose(); throw; }
    }

    /// <summary>A frozen model from weights in memory (names and shapes as in a checkpoint, checked against the config);
    /// the model owns them from here on.</summary>
    public static T5Model FromWeights(ModelConfig cfg, Dictionary<string, Tensor> weights)
    {
        var expected = ExpectedShapes(cfg);
        foreach (var (name, shape) in expected)
            if (!weights.TryGetValue(name, out var t) || !t.shape.SequenceEqual(shape))
                throw new ArgumentException($"weight '{name}' is missing or not of shape [{string.Join(", ", shape)}].");
        var extra = weights.Keys.FirstOrDefault(k => !expected.ContainsKey(k));
        if (extra is not null) throw new ArgumentException($"unexpected weight '{extra}' for this config.");
        var first = weights["shared.weight"];
        return new T5Model(cfg, weights, first.device, first.dtype);
    }

    /// <summary>A frozen model of <paramref name="cfg"/>'s shape with random weights (tests, benchmarks).</summary>
    public static T5Model Random(ModelConfig cfg, long seed = 0, ScalarType dtype = ScalarType.Float32, Device? device = null, double std = 0.05)
    {
        device ??= torch.CPU;
        var weights = new Dictionary<string, Tensor>();
        using (var scope = torch.NewDisposeScope())
            foreach (var (name, t) in ModelFactory.RandomWeights(ExpectedShapes(cfg).Select(kv => (kv.Key, kv.Value)), seed, std))
                weights[name] = t.to(dtype).to(device).contiguous().MoveToOuterDisposeScope();
        return new T5Model(cfg, weights, device, dtype);
    }

    /// <summary>Token embeddings [.., d_model] (T5 does not scale them).</summary>
    public Tensor Embed(Tensor ids)
    {
        var shape = ids.shape.Append(_shared.shape[1]).ToArray();
        return _shared.index_select(0, ids.reshape(-1)).view(shape);
    }

    /// <summary>The input embedding matrix <c>shared.weight</c> [vocab, d_model] (frozen).</summary>
    public Tensor EmbeddingMatrix => _shared;

    /// <summary>Vocabulary logits (fp32) of decoder outputs [.., d_model]: a tied head first scales them by d_model^-1/2.</summary>
    public Tensor Logits(Tensor hidden)
    {
        var h = hidden.to(DType);
        if (Config.TieWordEmbeddings) h = h * Math.Pow(Config.HiddenSize, -0.5);
        return F.linear(h, _lmHead).to(ScalarType.Float32);
    }

    public long ParameterCount => _w.Values.Sum(t => t.NumberOfElements);

    /// <summary>
    /// Runs the encoder over <paramref name="prefixEmbeds"/> (e.g. a soft prompt, [B or 1, n, d]) followed by the
    /// tokens (<paramref name="inputIds"/> [B, T] or <paramref name="inputsEmbeds"/> [B, T, d]). The mask [B, T] covers
    /// the tokens only (1 = real); the prefix positions are always attended, and the returned mask (null when
    /// <paramref name="attentionMask"/> is) covers them as well.
    /// </summary>
    public T5EncoderOutput Encode(Tensor? inputIds, Tensor? attentionMask = null, Tensor? prefixEmbeds = null, Tensor? inputsEmbeds = null, bool outputHiddenStates = false)
    {
        if (inputIds is not null && inputsEmbeds is not null) throw new ArgumentException("Give inputIds or inputsEmbeds, not both (use prefixEmbeds for extra embeddings).");
        Tensor h = inputIds is not null ? Embed(inputIds) : inputsEmbeds ?? throw new ArgumentException("Encode needs inputIds or inputsEmbeds.");
        h = h.to(DType);
        long B = h.shape[0];
        Tensor? mask = attentionMask?.to(ScalarType.Int64).to(Device);
        if (mask is not null && (mask.shape[0] != B || mask.shape[1] != h.shape[1]))
            throw new ArgumentException($"attention mask is [{string.Join(", ", mask.shape)}], expected [{B}, {h.shape[1]}] (the tokens only).");
        if (prefixEmbeds is not null)
        {
            var pe = prefixEmbeds.to(DType);
            if (pe.shape[0] != B) pe = pe.expand(B, -1, -1);
            h = torch.cat(new[] { pe, h }, 1);
            if (mask is not null) mask = torch.cat(new[] { torch.ones(B, pe.shape[1], ScalarType.Int64, Device), mask }, 1);
        }
        long S = h.shape[1];
        var pos = torch.arange(S, ScalarType.Int64, Device);
        var bias = PositionBias("encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight", pos, pos, bidirectional: true);
        if (mask is not null) bias = bias + KeyMask(mask);
        var states = outputHiddenStates ? new List<Tensor> { h } : null;
        for (int i = 0; i < Config.NumLayers; i++)
        {
            string p = $"encoder.block.{i}.layer.";
            var x = Norm(h, W(p + "0.layer_norm.weight"));
            h = h + Attention(p + "0.SelfAttention.", x, x, bias, null, null, 0);
            h = h + FeedForward(p + "1.", h);
            if (states is not null && i < Config.NumLayers - 1) states.Add(h);
        }
        h = Norm(h, W("encoder.final_layer_norm.weight"));
        states?.Add(h);
        return new T5EncoderOutput(h, mask, states);
    }

    /// <summary>
    /// Runs the decoder over <paramref name="decoderInputIds"/> [B, T] (teacher forcing: the target shifted right
    /// behind <see cref="T5Config.DecoderStartTokenId"/>), attending causally to itself (and to the
    /// <paramref name="cache"/>'s earlier positions) and to the encoder output. Returns the final-normed hidden states
    /// [B, T, d] (before the head's rescale; <see cref="Logits"/> applies it).
    /// </summary>
    public ForwardResult Decode(Tensor decoderInputIds, T5EncoderOutput encoder, T5Cache? cache = null, bool outputHiddenStates = false)
    {
        var h = Embed(decoderInputIds.to(Device)).to(DType);
        long T = h.shape[1];
        int past = cache?.Length ?? 0;
        var q = torch.arange(past, past + T, ScalarType.Int64, Device);
        var k = torch.arange(0, past + T, ScalarType.Int64, Device);
        var selfBias = PositionBias("decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight", q, k, bidirectional: false);
        selfBias = selfBias.masked_fill((k.unsqueeze(0) > q.unsqueeze(1)).unsqueeze(0).unsqueeze(0), MinValue);
        Tensor crossBias = encoder.Mask is null
            ? torch.zeros(1, 1, 1, encoder.Hidden.shape[1], DType, Device)
            : KeyMask(encoder.Mask);
        var states = outputHiddenStates ? new List<Tensor> { h } : null;
        for (int i = 0; i < T5.NumDecoderLayers; i++)
        {
            string p = $"decoder.block.{i}.layer.";
            var x = Norm(h, W(p + "0.layer_norm.weight"));
            h = h + Attention(p + "0.SelfAttention.", x, x, selfBias, cache, cache?.SelfK, i, cache?.SelfV);
            x = Norm(h, W(p + "1.layer_norm.weight"));
            h = h + CrossAttention(p + "1.EncDecAttention.", x, encoder.Hidden, crossBias, cache, i);
            h = h + FeedForward(p + "2.", h);
            if (states is not null && i < T5.NumDecoderLayers - 1) states.Add(h);
        }
        if (cache is not null) cache.Length = past + (int)T;
        h = Norm(h, W("decoder.final_layer_norm.weight"));
        states?.Add(h);
        return new ForwardResult { Hidden = h, HiddenStates = states };
    }

    /// <summary>Decoder input for teacher forcing: [start] + labels[:-1], with ignored labels (-100) as the pad id,
    /// as transformers' <c>_shift_right</c> builds it.</summary>
    public Tensor ShiftRight(Tensor labels)
    {
        long B = labels.shape[0];
        var start = torch.full(new long[] { B, 1 }, T5.DecoderStartTokenId, ScalarType.Int64, labels.device);
        var shifted = torch.cat(new[] { start, labels.narrow(1, 0, labels.shape[1] - 1) }, 1);
        return shifted.masked_fill(shifted == -100, Config.PadTokenId ?? 0);
    }

    double MinValue => DType switch
    {
        ScalarType.Float32 => float.MinValue,
        ScalarType.Float64 => double.MinValue,
        ScalarType.BFloat16 => -3.3895313892515355e38,
        ScalarType.Float16 => -65504.0,
        _ => float.MinValue,
    };

    /// <summary>Additive key mask [B, 1, 1, S]: 0 where attended, the dtype's lowest value where masked (as transformers).</summary>
    Tensor KeyMask(Tensor mask) => ((1 - mask.to(DType)) * MinValue).view(mask.shape[0], 1, 1, mask.shape[1]);

    /// <summary>Relative position bias [1, H, q, k] from a stack's table [buckets, H] for query positions
    /// <paramref name="q"/> and key positions <paramref name="k"/>.</summary>
    Tensor PositionBias(string table, Tensor q, Tensor k, bool bidirectional)
    {
        var rel = k.unsqueeze(0) - q.unsqueeze(1);                              // key - query, [q, k]
        var buckets = Buckets(rel, bidirectional, T5.NumBuckets, T5.MaxDistance);
        var w = W(table);
        return w.index_select(0, buckets.reshape(-1)).view(q.shape[0], k.shape[0], -1).permute(2, 0, 1).unsqueeze(0);
    }

    /// <summary>T5's relative-position bucket of (key - query): exact buckets for small distances, logarithmic ones up
    /// to <paramref name="maxDistance"/>, one bucket beyond; the encoder splits the buckets by direction, the decoder
    /// counts only the past (later keys share bucket 0). Evaluated in fp32, as transformers does.</summary>
    public static Tensor Buckets(Tensor relative, bool bidirectional, int numBuckets, int maxDistance)
    {
        int n = numBuckets;
        Tensor ret, r;
        if (bidirectional)
        {
            n /= 2;
            ret = (relative > 0).to(ScalarType.Int64) * n;
            r = relative.abs();
        }
        else
        {
            ret = torch.zeros_like(relative);
            r = (-relative).clamp_min(0);
        }
        int exact = n / 2;
        var small = r < exact;
        // log(0) at r = 0 is -inf; those entries are small and take the exact branch below.
        var large = (torch.log(r.to(ScalarType.Float32) / exact) / Math.Log(maxDistance / (double)exact) * (n - exact)).nan_to_num(0, 0, 0).to(ScalarType.Int64) + exact;
        large = large.clamp_max(n - 1);
        return ret + torch.where(small, r, large);
    }

    Tensor Heads(Tensor t, long B) => t.view(B, -1, Config.NumHeads, Config.HeadDim).transpose(1, 2);

    /// <summary>Self-attention: q, k, v from <paramref name="x"/>; with a cache, the new keys/values are appended to
    /// the layer's earlier ones.</summary>
    Tensor Attention(string p, Tensor x, Tensor kv, Tensor bias, T5Cache? cache, Tensor?[]? kSlot, int layer, Tensor?[]? vSlot = null)
    {
        long B = x.shape[0];
        var q = Heads(F.linear(x, W(p + "q.weight")), B);
        var k = Heads(F.linear(kv, W(p + "k.weight")), B);
        var v = Heads(F.linear(kv, W(p + "v.weight")), B);
        if (cache is not null && kSlot is not null && vSlot is not null)
        {
            if (kSlot[layer] is { } pk) { k = torch.cat(new[] { pk, k }, 2); v = torch.cat(new[] { vSlot[layer]!, v }, 2); }
            T5Cache.Keep(kSlot, layer, k.detach().clone());
            T5Cache.Keep(vSlot, layer, v.detach().clone());
        }
        return Core(p, q, k, v, bias, B);
    }

    /// <summary>Cross-attention: queries from the decoder, keys/values the encoder output's projections (computed
    /// once per cache).</summary>
    Tensor CrossAttention(string p, Tensor x, Tensor encoderHidden, Tensor bias, T5Cache? cache, int layer)
    {
        long B = x.shape[0];
        var q = Heads(F.linear(x, W(p + "q.weight")), B);
        Tensor k, v;
        if (cache?.CrossK[layer] is { } ck) { k = ck; v = cache.CrossV[layer]!; }
        else
        {
            k = Heads(F.linear(encoderHidden, W(p + "k.weight")), B);
            v = Heads(F.linear(encoderHidden, W(p + "v.weight")), B);
            if (cache is not null)
            {
                T5Cache.Keep(cache.CrossK, layer, k.detach().clone());
                T5Cache.Keep(cache.CrossV, layer, v.detach().clone());
            }
        }
        return Core(p, q, k, v, bias, B);
    }

    /// <summary>softmax(q k^T + bias) v with no 1/sqrt(d) scaling (T5 folds it into the initialisation); the softmax
    /// in fp32, as transformers computes it.</summary>
    Tensor Core(string p, Tensor q, Tensor k, Tensor v, Tensor bias, long B)
    {
        var scores = q.matmul(k.transpose(-1, -2)) + bias;
        var weights = F.softmax(scores.to(ScalarType.Float32), -1).to(scores.dtype);
        var y = weights.matmul(v).transpose(1, 2).reshape(B, -1, Config.NumHeads * Config.HeadDim);
        return F.linear(y, W(p + "o.weight"));
    }

    Tensor FeedForward(string p, Tensor h)
    {
        var x = Norm(h, W(p + "layer_norm.weight"));
        var f = T5.GatedAct
            ? Act(F.linear(x, W(p + "DenseReluDense.wi_0.weight"))) * F.linear(x, W(p + "DenseReluDense.wi_1.weight"))
            : Act(F.linear(x, W(p + "DenseReluDense.wi.weight")));
        return F.linear(f, W(p + "DenseReluDense.wo.weight"));
    }

    Tensor Act(Tensor x) => Config.Activation switch
    {
        "relu" => F.relu(x),
        "gelu" => F.gelu(x),
        "gelu_new" or "gelu_pytorch_tanh" or "gelu_fast" => F.gelu(x, TorchSharp.Modules.GELU.Approximate.tanh),
        "silu" or "swish" => F.silu(x),
        var a => throw new SoftPromptException($"T5 activation '{a}' is not supported."),
    };

    /// <summary>T5LayerNorm: x / sqrt(mean(x^2) + eps) * w in fp32, cast to the weight's dtype before the scale; no mean, no bias.</summary>
    Tensor Norm(Tensor x, Tensor w)
    {
        var xf = x.to(ScalarType.Float32);
        xf = xf * torch.rsqrt(xf.pow(2).mean(new long[] { -1 }, keepdim: true) + Config.NormEps);
        return w * xf.to(w.dtype);
    }

    public void Dispose()
    {
        foreach (var t in _w.Values) t.Dispose();
    }
}
