using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace SoftPrompt.Models;

/// <summary>Inputs of one forward pass. Exactly one of <see cref="InputIds"/> / <see cref="InputsEmbeds"/> gives the
/// tokens; <see cref="PrefixEmbeds"/> (e.g. a soft prompt) is prepended to them.</summary>
public sealed class ForwardArgs
{
    /// <summary>[B, T] int64 token ids.</summary>
    public Tensor? InputIds { get; init; }
    /// <summary>[B, T, hidden] embeddings used instead of <see cref="InputIds"/>.</summary>
    public Tensor? InputsEmbeds { get; init; }
    /// <summary>[B or 1, n, hidden] extra embeddings placed before the tokens (they take positions first).</summary>
    public Tensor? PrefixEmbeds { get; init; }
    /// <summary>[B, past + n + T] with 1 = attend, 0 = padding (covers the cache, the prefix embeddings and the tokens);
    /// or a complete boolean mask [B, 1, n + T, S] (true = attend) used as given, e.g. from <see cref="KvCache.BeginRaggedStep"/>
    /// ([B, 2, n + T, S] for a model whose layers mix global and sliding-window attention: channel 0 global, 1 sliding).</summary>
    public Tensor? AttentionMask { get; init; }
    /// <summary>[B, n + T] positions; default past..past+n+T-1 (Hugging Face's default, which ignores padding).</summary>
    public Tensor? PositionIds { get; init; }
    /// <summary>Keys/values of earlier positions (a generation cache or a prefix); updated in place.</summary>
    public KvCache? Cache { get; init; }
    public bool OutputHiddenStates { get; init; }
}

public sealed class ForwardResult
{
    /// <summary>[B, n + T, hidden]: the last block's output with the final norm applied.</summary>
    public required Tensor Hidden { get; init; }
    /// <summary>Embedding output, then each block's output, then the normed final output (as Hugging Face's hidden_states).</summary>
    public IReadOnlyList<Tensor>? HiddenStates { get; init; }
}

/// <summary>
/// A frozen decoder-only transformer (GPT-2, the Llama family with Gemma, Gemma 2 and Phi-3, and GPT-NeoX) computed from a dictionary of weights with
/// TorchSharp's functional ops. The whole math is in this file, as in nanoGPT: a reader sees it on a few screens.
/// The model knows nothing about soft prompts: it accepts extra input embeddings and past keys/values, the two
/// points where prompt methods attach (as in Hugging Face / PEFT).
/// </summary>
public sealed partial class CausalLM : IPromptableModel
{
    public ModelConfig Config { get; }
    public Device Device { get; }
    public ScalarType DType { get; }
    /// <summary>Weights by their Hugging Face names (GPT-2 Conv1D weights are stored transposed to [out, in]).</summary>
    public IReadOnlyDictionary<string, Tensor> Weights => _w;

    readonly Dictionary<string, Tensor> _w;
    readonly Layer[] _layers;
    readonly Tensor _embed, _lmHead;
    readonly Tensor? _wpe, _finalNormW, _finalNormB;
    readonly Tensor? _invFreq; // fp32 [rotary_dim / 2]
    readonly Tensor? _invFreqLong; // LongRoPE: the frequencies used once a forward reaches past the original context
    readonly Tensor? _embedScale;  // Gemma: sqrt(hidden) in the residual dtype

    /// <summary>One block's weights by role; null where the family has none (GPT-2 fuses q/k/v into Qkv as q | k | v
    /// blocks, GPT-NeoX interleaves them per head, Phi-3 fuses them as q | k | v rows and gate/up as GateUp; Llama-style
    /// blocks have separate projections, optional biases and, for Qwen3, q/k norms; Gemma 2 adds output norms).
    /// Norm1 is the attention's input norm, Norm2 the MLP's.</summary>
    sealed class Layer
    {
        public required Tensor Norm1W { get; init; }
        public Tensor? Norm1B { get; init; }
        public required Tensor Norm2W { get; init; }
        public Tensor? Norm2B { get; init; }
        /// <summary>Gemma 2: norms of the attention output and of the MLP output, before each residual add.</summary>
        public Tensor? AttnOutNormW { get; init; }
        public Tensor? MlpOutNormW { get; init; }
        public Tensor? GateUpW { get; init; }
        public Tensor? QkvW { get; init; }
        public Tensor? QkvB { get; init; }
        public Tensor? QW { get; init; }
        public Tensor? QB { get; init; }
        public Tensor? KW { get; init; }
        public Tensor? KB { get; init; }
        public Tensor? VW { get; init; }
        public Tensor? VB { get; init; }
        public required Tensor OW { get; init; }
        public Tensor? OB { get; init; }
        public Tensor? QNorm { get; init; }
        public Tensor? KNorm { get; init; }
        public Tensor? GateW { get; init; }
        public Tensor? GateB { get; init; }
        public Tensor? UpW { get; init; }
        public Tensor? UpB { get; init; }
        public required Tensor DownW { get; init; }
        public Tensor? DownB { get; init; }
    }

    readonly ScalarType _residualDType;
    readonly bool _ownsWeights = true;

    internal CausalLM(ModelConfig cfg, Dictionary<string, Tensor> weights, Device device, ScalarType dtype)
        : this(cfg, weights, device, dtype, trainable: false, residualDType: dtype) { }

    CausalLM(ModelConfig cfg, Dictionary<string, Tensor> weights, Device device, ScalarType dtype, bool trainable, ScalarType residualDType)
    {
        Config = cfg; Device = device; DType = dtype; _w = weights; _residualDType = residualDType;
        if (trainable) _ownsWeights = false;
        else foreach (var t in _w.Values) t.requires_grad = false;
        Tensor W(string k) => _w[k];
        Tensor? O(string k) => _w.TryGetValue(k, out var t) ? t : null;
        _layers = new Layer[cfg.NumLayers];
        if (cfg.Family == ArchFamily.Gpt2)
        {
            _embed = W("transformer.wte.weight"); _wpe = W("transformer.wpe.weight");
            _finalNormW = W("transformer.ln_f.weight"); _finalNormB = W("transformer.ln_f.bias");
            _lmHead = O("lm_head.weight") ?? _embed;
            for (int i = 0; i < cfg.NumLayers; i++)
            {
                string p = $"transformer.h.{i}.";
                _layers[i] = new Layer
                {
                    Norm1W = W(p + "ln_1.weight"), Norm1B = W(p + "ln_1.bias"), Norm2W = W(p + "ln_2.weight"), Norm2B = W(p + "ln_2.bias"),
                    QkvW = W(p + "attn.c_attn.weight"), QkvB = W(p + "attn.c_attn.bias"),
                    OW = W(p + "attn.c_proj.weight"), OB = W(p + "attn.c_proj.bias"),
                    UpW = W(p + "mlp.c_fc.weight"), UpB = W(p + "mlp.c_fc.bias"), DownW = W(p + "mlp.c_proj.weight"), DownB = W(p + "mlp.c_proj.bias"),
                };
            }
        }
        else if (cfg.Family == ArchFamily.GptNeoX)
        {
            _embed = W("gpt_neox.embed_in.weight"); _finalNormW = W("gpt_neox.final_layer_norm.weight"); _finalNormB = W("gpt_neox.final_layer_norm.bias");
            _lmHead = cfg.TieWordEmbeddings ? _embed : W("embed_out.weight");
            for (int i = 0; i < cfg.NumLayers; i++)
            {
                string p = $"gpt_neox.layers.{i}.";
                _layers[i] = new Layer
                {
                    Norm1W = W(p + "input_layernorm.weight"), Norm1B = W(p + "input_layernorm.bias"),
                    Norm2W = W(p + "post_attention_layernorm.weight"), Norm2B = W(p + "post_attention_layernorm.bias"),
                    QkvW = W(p + "attention.query_key_value.weight"), QkvB = O(p + "attention.query_key_value.bias"),
                    OW = W(p + "attention.dense.weight"), OB = O(p + "attention.dense.bias"),
                    UpW = W(p + "mlp.dense_h_to_4h.weight"), UpB = W(p + "mlp.dense_h_to_4h.bias"),
                    DownW = W(p + "mlp.dense_4h_to_h.weight"), DownB = W(p + "mlp.dense_4h_to_h.bias"),
                };
            }
            _invFreq = RopeInvFreq(cfg, null).to(device).DetachFromDisposeScope();
        }
        else
        {
            _embed = W("model.embed_tokens.weight"); _finalNormW = W("model.norm.weight");
            _lmHead = cfg.TieWordEmbeddings ? _embed : W("lm_head.weight");
            for (int i = 0; i < cfg.NumLayers; i++)
            {
                string p = $"model.layers.{i}.";
                bool fused = cfg.FusedProjections;
                _layers[i] = new Layer
                {
                    // Gemma 2's post_attention_layernorm normalises the attention output; its MLP input norm is pre_feedforward_layernorm.
                    Norm1W = W(p + "input_layernorm.weight"), Norm2W = W(p + (cfg.SandwichNorms ? "pre_feedforward_layernorm.weight" : "post_attention_layernorm.weight")),
                    AttnOutNormW = cfg.SandwichNorms ? W(p + "post_attention_layernorm.weight") : null,
                    MlpOutNormW = cfg.SandwichNorms ? W(p + "post_feedforward_layernorm.weight") : null,
                    QkvW = fused ? W(p + "self_attn.qkv_proj.weight") : null,
                    QW = fused ? null : W(p + "self_attn.q_proj.weight"), QB = O(p + "self_attn.q_proj.bias"),
                    KW = fused ? null : W(p + "self_attn.k_proj.weight"), KB = O(p + "self_attn.k_proj.bias"),
                    VW = fused ? null : W(p + "self_attn.v_proj.weight"), VB = O(p + "self_attn.v_proj.bias"),
                    OW = W(p + "self_attn.o_proj.weight"), OB = O(p + "self_attn.o_proj.bias"),
                    QNorm = O(p + "self_attn.q_norm.weight"), KNorm = O(p + "self_attn.k_norm.weight"),
                    GateUpW = fused ? W(p + "mlp.gate_up_proj.weight") : null,
                    GateW = fused ? null : W(p + "mlp.gate_proj.weight"), GateB = O(p + "mlp.gate_proj.bias"),
                    UpW = fused ? null : W(p + "mlp.up_proj.weight"), UpB = O(p + "mlp.up_proj.bias"),
                    DownW = W(p + "mlp.down_proj.weight"), DownB = O(p + "mlp.down_proj.bias"),
                };
            }
            _invFreq = RopeInvFreq(cfg, cfg.RopeScaling?.ShortFactor).to(device).DetachFromDisposeScope();
            if (cfg.RopeScaling is { Type: "longrope", LongFactor: { } lf }) _invFreqLong = RopeInvFreq(cfg, lf).to(device).DetachFromDisposeScope();
        }
        // HF: hidden * torch.tensor(hidden_size ** 0.5, dtype=hidden.dtype): the factor is rounded to the activations' dtype.
        if (cfg.ScaleEmbeddings)
            _embedScale = torch.tensor(Math.Sqrt(cfg.HiddenSize), ScalarType.Float64, device).to(residualDType).DetachFromDisposeScope();
    }

    /// <summary>The checkpoint name of the input embedding matrix.</summary>
    public static string EmbeddingKey(ModelConfig cfg) => cfg.Family switch
    {
        ArchFamily.Gpt2 => "transformer.wte.weight",
        ArchFamily.GptNeoX => "gpt_neox.embed_in.weight",
        _ => "model.embed_tokens.weight",
    };

    /// <summary>
    /// A model whose weights take part in autograd, for full-parameter training (pretraining). The weights are used as
    /// given and their <c>requires_grad</c> is left alone: leaf parameters, or differentiable casts of them (e.g. bf16
    /// copies of fp32 master weights made inside each step). Matmuls run in the weights' dtype; the residual stream
    /// (embeddings and the sums of the blocks) stays in <paramref name="residualDType"/>, as under autocast.
    /// The caller owns the weights: <see cref="Dispose"/> frees only the model's own buffers.
    /// The frozen default (<see cref="ModelLoader.Load"/>) is unchanged.
    /// </summary>
    public static CausalLM ForTraining(ModelConfig cfg, Dictionary<string, Tensor> weights, ScalarType residualDType = ScalarType.Float32)
    {
        var key = EmbeddingKey(cfg);
        if (!weights.TryGetValue(key, out var embed)) throw new ArgumentException($"weights lack '{key}'.");
        if (cfg.Family is ArchFamily.Gpt2 or ArchFamily.GptNeoX && embed.dtype != residualDType)
            throw new NotSupportedException($"{cfg.ModelType} training with a residual dtype other than the weights' is not supported (LayerNorm needs matching dtypes).");
        return new CausalLM(cfg, weights, embed.device, embed.dtype, trainable: true, residualDType);
    }

    /// <summary>Token embeddings [.., hidden] of ids (without GPT-2's position embeddings, which the forward adds).</summary>
    public Tensor Embed(Tensor ids) => EmbedRows(_embed, ids);

    static Tensor EmbedRows(Tensor table, Tensor ids)
    {
        var shape = ids.shape.Append(table.shape[1]).ToArray();
        return table.index_select(0, ids.reshape(-1)).view(shape);
    }

    /// <summary>The input embedding matrix [vocab, hidden] (frozen).</summary>
    public Tensor EmbeddingMatrix => _embed;

    const long TransposedHeadMinRows = 128;

    /// <summary>Vocabulary logits (fp32) for final hidden states [.., hidden], soft-capped where the model caps them
    /// (Gemma 2). Without autograd on the CPU the result may be a non-contiguous view (use reshape, not view).</summary>
    public Tensor Logits(Tensor hidden)
    {
        var logits = HeadLogits(hidden);
        return Config.FinalLogitSoftcap is double cap ? (logits / cap).tanh() * cap : logits;
    }

    Tensor HeadLogits(Tensor hidden)
    {
        var h = hidden.to(DType);
        long rows = h.NumberOfElements / Math.Max(1, h.shape[^1]);
        if (torch.is_grad_enabled() || Device.type != DeviceType.CPU || rows < TransposedHeadMinRows)
            return F.linear(h, _lmHead).to(ScalarType.Float32);
        // Forward-only on the CPU with many rows: logits^T = W @ h^T, returned as its transposed view. The same
        // products, but the BLAS then streams the [vocab, hidden] head once as its left operand instead of as a
        // transposed right one: measured 20-25 % less CPU for head + log-softmax at GPT-2 shape with 128 and 1016
        // rows (MKL, 1 thread; docs/benchmarks.md), but 5-20 % more with 8-32 rows (decoding), hence the threshold.
        // cross_entropy / log_softmax take the view as is. With autograd the training path stays F.linear.
        var shape = h.shape[..^1].Append(_lmHead.shape[0]).ToArray();
        return _lmHead.mm(h.reshape(-1, h.shape[^1]).t()).t().reshape(shape).to(ScalarType.Float32);
    }

    /// <summary>Runs the transformer; returns the final-normed hidden states. Use <see cref="Logits"/> on the
    /// positions that need them (computing the head everywhere is most of the cost for small models).</summary>
    public ForwardResult Forward(ForwardArgs a)
    {
        var cfg = Config;
        Tensor h;
        if (a.InputIds is not null && a.InputsEmbeds is not null) throw new ArgumentException("Give InputIds or InputsEmbeds, not both (use PrefixEmbeds for extra embeddings).");
        if (a.InputIds is not null) h = Embed(a.InputIds);
        else if (a.InputsEmbeds is not null) h = a.InputsEmbeds;
        else if (a.PrefixEmbeds is not null) h = a.PrefixEmbeds.narrow(1, 0, 0);
        else throw new ArgumentException("Forward needs InputIds or InputsEmbeds.");
        h = h.to(_residualDType);
        if (a.PrefixEmbeds is not null)
        {
            var pe = a.PrefixEmbeds.to(_residualDType);
            if (pe.shape[0] != h.shape[0]) pe = pe.expand(h.shape[0], -1, -1);
            h = torch.cat(new[] { pe, h }, 1);
        }
        // Gemma scales every input embedding, a prepended soft prompt's included (what HF + PEFT compute).
        if (_embedScale is not null) h = h * _embedScale;
        long B = h.shape[0], T = h.shape[1];
        int past = a.Cache?.Length ?? 0;
        long S = past + T;
        if (cfg.Family == ArchFamily.Gpt2 && S > cfg.MaxPositions && a.PositionIds is null)
            throw new SoftPromptException($"Sequence of {S} positions exceeds the model's {cfg.MaxPositions} learned positions (n_positions).");

        var pos = a.PositionIds ?? torch.arange(past, S, ScalarType.Int64, Device).unsqueeze(0).expand(B, -1);
        if (_wpe is not null) h = h + EmbedRows(_wpe, pos);
        (Tensor cos, Tensor sin)? rope = _invFreq is null ? null : RopeCosSin(pos);

        // One mask for global layers and, when some layers slide and others do not (Gemma 2), one for the sliding ones.
        var mask = BuildMask(a.AttentionMask, B, T, past, cfg.UniformSlidingWindow, 0);
        var slidingMask = cfg.MixedSlidingLayers ? BuildMask(a.AttentionMask, B, T, past, cfg.SlidingWindow, 1) : mask;
        var states = a.OutputHiddenStates ? new List<Tensor> { h } : null;
        // One dispose scope per layer: TorchSharp frees a tensor when its scope ends, not when it is last used, so
        // under the caller's one scope every intermediate of every layer (q, k, v, attention output, the MLP's wide
        // activations) stayed allocated until the whole forward ended: at GPT-2-small shape, batch 4 x 148, that was
        // ~370 MB of a forward-only pass's peak (docs/benchmarks.md, "Memory"). Each layer's output moves out; the
        // previous one is released unless the caller keeps hidden states. Under autograd, what backward needs stays
        // alive through the graph's own references. A growing cache keeps its tensors in the caller's scope, so that
        // one path stays unscoped.
        bool scoped = a.Cache is null || a.Cache.InPlace;
        for (int i = 0; i < _layers.Length; i++)
        {
            var m = cfg.IsSlidingLayer(i) ? slidingMask : mask;
            Tensor Block(Tensor x) => cfg.Family switch
            {
                ArchFamily.Gpt2 => Gpt2Block(i, x, m, a.Cache),
                ArchFamily.GptNeoX => NeoXBlock(i, x, m, rope!.Value, a.Cache),
                _ => LlamaBlock(i, x, m, rope!.Value, a.Cache),
            };
            if (!scoped) h = Block(h);
            else
            {
                var prev = h;
                using (var layerScope = torch.NewDisposeScope())
                    h = Block(h).MoveToOuterDisposeScope();
                if (i > 0 && states == null) prev.Dispose(); // the previous layer's output (ours); layer 0's input may be the caller's
            }
            if (states != null && i < _layers.Length - 1) states.Add(h);
        }
        a.Cache?.Commit();
        h = Norm(h, _finalNormW!, _finalNormB);
        states?.Add(h);
        return new ForwardResult { Hidden = h, HiddenStates = states };
    }

    /// <summary>
    /// Boolean attention mask [B or 1, 1, T, S] (true = attend), or null when plain causal attention applies.
    /// Causality is by cache index (a query at index past+i sees keys 0..past+i), and so is a sliding window (keys at
    /// indices past+i-w+1..past+i; a prefix's entries are indices 0..P-1); padded keys are excluded;
    /// every query may attend to itself, so rows of padding never become all-masked (which gives NaN in softmax).
    /// A complete 4-D mask is used as given; one with two channels (<see cref="KvCache.BeginRaggedStep"/> for a model
    /// whose layers mix global and sliding attention) gives channel <paramref name="channel"/> (0 global, 1 sliding).
    /// </summary>
    Tensor? BuildMask(Tensor? attentionMask, long B, long T, int past, int? slidingWindow, int channel)
    {
        if (attentionMask is { } full && full.dim() == 4)
            return (full.shape[1] == 2 ? full.narrow(1, channel, 1) : full).to(ScalarType.Bool).to(Device);
        long S = past + T;
        bool window = slidingWindow is int w && S > w;
        // Without padding or a window, a single query attends to the whole cache, and a cache-free pass is
        // plain causal attention (SDPA's is_causal path, see Attend): no mask tensor is built.
        if (attentionMask is null && !window && (T == 1 || past == 0)) return null;
        var q = torch.arange(past, S, ScalarType.Int64, Device).unsqueeze(1);   // [T,1]
        var k = torch.arange(0, S, ScalarType.Int64, Device).unsqueeze(0);      // [1,S]
        var m = k <= q;
        if (window) m = m & (k > q - slidingWindow!.Value);
        var m4 = m.unsqueeze(0).unsqueeze(0);                                  // [1,1,T,S]
        if (attentionMask is not null)
        {
            if (attentionMask.shape[1] != S)
                throw new ArgumentException($"attention mask covers {attentionMask.shape[1]} positions, but cache + inputs have {S}.");
            var keep = attentionMask.to(ScalarType.Bool).to(Device).view(B, 1, 1, S);
            m4 = (m4 & keep) | (k == q).unsqueeze(0).unsqueeze(0);
        }
        return m4;
    }

    Tensor Attend(Tensor q, Tensor k, Tensor v, Tensor? mask, long T, int past)
    {
        // q [B,H,T,d], k/v [B,Hkv,S,d]. Grouped-query attention: repeat each KV head for its group of query heads.
        int groups = Config.NumHeads / Config.NumKvHeads;
        if (groups > 1)
        {
            long B = k.shape[0], S = k.shape[2], d = k.shape[3];
            k = k.unsqueeze(2).expand(B, Config.NumKvHeads, groups, S, d).reshape(B, Config.NumHeads, S, d);
            v = v.unsqueeze(2).expand(B, Config.NumKvHeads, groups, S, d).reshape(B, Config.NumHeads, S, d);
        }
        bool causal = mask is null && T > 1 && past == 0;
        if (Config.AttnLogitSoftcap is double cap) return SoftcappedAttention(q, k, v, mask, causal, cap);
        // SDPA scales by 1/sqrt(head_dim); another scale (Gemma 2's query_pre_attn_scalar) is folded into q.
        if (Config.AttnScale is double scale) q = q * (scale * Math.Sqrt(Config.HeadDim));
        return F.scaled_dot_product_attention(q, k, v, attn_mask: mask, is_casual: causal);
    }

    /// <summary>Gemma 2's eager attention, which SDPA cannot express: scores = scale·q·kᵀ, then cap·tanh(scores/cap),
    /// then the mask, then a softmax in fp32.</summary>
    Tensor SoftcappedAttention(Tensor q, Tensor k, Tensor v, Tensor? mask, bool causal, double cap)
    {
        double scale = Config.AttnScale ?? 1.0 / Math.Sqrt(Config.HeadDim);
        var s = q.matmul(k.transpose(-2, -1)) * scale;
        s = (s / cap).tanh() * cap;
        if (causal)
        {
            long T = q.shape[2], S = k.shape[2];
            mask = torch.ones(new long[] { T, S }, ScalarType.Bool, q.device).tril(S - T);
        }
        if (mask is not null) s = s.masked_fill(mask.logical_not(), double.NegativeInfinity);
        return s.softmax(-1, ScalarType.Float32).to(q.dtype).matmul(v);
    }

    Tensor Gpt2Block(int i, Tensor h, Tensor? mask, KvCache? cache)
    {
        var L = _layers[i];
        var cfg = Config;
        long B = h.shape[0], T = h.shape[1];
        int past = cache?.Length ?? 0;
        var x = F.layer_norm(h, new long[] { cfg.HiddenSize }, L.Norm1W, L.Norm1B, cfg.NormEps);
        var qkv = F.linear(x, L.QkvW!, L.QkvB).view(B, T, 3, cfg.NumHeads, cfg.HeadDim).permute(2, 0, 3, 1, 4); // [3,B,H,T,d]
        var q = qkv[0]; var k = qkv[1]; var v = qkv[2];
        double scale = 1.0;
        if (!cfg.ScaleAttnWeights) scale *= Math.Sqrt(cfg.HeadDim);
        if (cfg.ScaleAttnByInverseLayerIdx) scale /= i + 1;
        if (scale != 1.0) q = q * scale;
        if (cache is not null) (k, v) = cache.Update(i, k, v);
        var y = Attend(q, k, v, mask, T, past).transpose(1, 2).reshape(B, T, cfg.HiddenSize);
        h = h + F.linear(y, L.OW, L.OB);
        x = F.layer_norm(h, new long[] { cfg.HiddenSize }, L.Norm2W, L.Norm2B, cfg.NormEps);
        return h + F.linear(Act(F.linear(x, L.UpW!, L.UpB)), L.DownW, L.DownB);
    }

    Tensor LlamaBlock(int i, Tensor h, Tensor? mask, (Tensor cos, Tensor sin) rope, KvCache? cache)
    {
        var L = _layers[i];
        var cfg = Config;
        long B = h.shape[0], T = h.shape[1];
        int past = cache?.Length ?? 0;
        var x = RmsNorm(h, L.Norm1W);
        Tensor q, k, v;
        if (L.QkvW is not null)
        {
            // Phi-3: one matmul, rows q | k | v.
            int qd = cfg.NumHeads * cfg.HeadDim, kvd = cfg.KvDim;
            var qkv = F.linear(x, L.QkvW);
            q = qkv.narrow(-1, 0, qd).view(B, T, cfg.NumHeads, cfg.HeadDim);
            k = qkv.narrow(-1, qd, kvd).view(B, T, cfg.NumKvHeads, cfg.HeadDim);
            v = qkv.narrow(-1, qd + kvd, kvd).view(B, T, cfg.NumKvHeads, cfg.HeadDim).transpose(1, 2);
        }
        else
        {
            q = F.linear(x, L.QW!, L.QB).view(B, T, cfg.NumHeads, cfg.HeadDim);
            k = F.linear(x, L.KW!, L.KB).view(B, T, cfg.NumKvHeads, cfg.HeadDim);
            v = F.linear(x, L.VW!, L.VB).view(B, T, cfg.NumKvHeads, cfg.HeadDim).transpose(1, 2);
        }
        if (L.QNorm is not null) q = RmsNorm(q, L.QNorm);
        if (L.KNorm is not null) k = RmsNorm(k, L.KNorm!);
        q = ApplyRope(q.transpose(1, 2), rope);
        k = ApplyRope(k.transpose(1, 2), rope);
        if (cache is not null) (k, v) = cache.Update(i, k, v);
        var y = Attend(q, k, v, mask, T, past).transpose(1, 2).reshape(B, T, cfg.NumHeads * cfg.HeadDim);
        var attn = F.linear(y, L.OW, L.OB);
        if (L.AttnOutNormW is not null) attn = RmsNorm(attn, L.AttnOutNormW);
        h = h + attn;
        x = RmsNorm(h, L.Norm2W);
        Tensor gate, up;
        if (L.GateUpW is not null)
        {
            var gu = F.linear(x, L.GateUpW);   // Phi-3: rows gate | up
            gate = gu.narrow(-1, 0, cfg.IntermediateSize); up = gu.narrow(-1, cfg.IntermediateSize, cfg.IntermediateSize);
        }
        else { gate = F.linear(x, L.GateW!, L.GateB); up = F.linear(x, L.UpW!, L.UpB); }
        var mlp = F.linear(Act(gate) * up, L.DownW, L.DownB);
        if (L.MlpOutNormW is not null) mlp = RmsNorm(mlp, L.MlpOutNormW);
        return h + mlp;
    }

    Tensor NeoXBlock(int i, Tensor h, Tensor? mask, (Tensor cos, Tensor sin) rope, KvCache? cache)
    {
        var L = _layers[i];
        var cfg = Config;
        long B = h.shape[0], T = h.shape[1];
        int past = cache?.Length ?? 0;
        var x = F.layer_norm(h, new long[] { cfg.HiddenSize }, L.Norm1W, L.Norm1B, cfg.NormEps);
        // query_key_value's rows are interleaved per head: head j's q, k, v are rows 3·d·j + [0, d), [d, 2d), [2d, 3d).
        var qkv = F.linear(x, L.QkvW!, L.QkvB).view(B, T, cfg.NumHeads, 3 * cfg.HeadDim).transpose(1, 2); // [B,H,T,3d]
        var q = ApplyRope(qkv.narrow(-1, 0, cfg.HeadDim), rope);
        var k = ApplyRope(qkv.narrow(-1, cfg.HeadDim, cfg.HeadDim), rope);
        var v = qkv.narrow(-1, 2 * cfg.HeadDim, cfg.HeadDim);
        if (cache is not null) (k, v) = cache.Update(i, k, v);
        var y = Attend(q, k, v, mask, T, past).transpose(1, 2).reshape(B, T, cfg.HiddenSize);
        var attn = F.linear(y, L.OW, L.OB);
        if (cfg.ParallelResidual)
        {
            var x2 = F.layer_norm(h, new long[] { cfg.HiddenSize }, L.Norm2W, L.Norm2B, cfg.NormEps);
            return h + attn + F.linear(Act(F.linear(x2, L.UpW!, L.UpB)), L.DownW, L.DownB);
        }
        h = h + attn;
        x = F.layer_norm(h, new long[] { cfg.HiddenSize }, L.Norm2W, L.Norm2B, cfg.NormEps);
        return h + F.linear(Act(F.linear(x, L.UpW!, L.UpB)), L.DownW, L.DownB);
    }

    Tensor Norm(Tensor h, Tensor w, Tensor? b) =>
        Config.Family is ArchFamily.Gpt2 or ArchFamily.GptNeoX ? F.layer_norm(h, new long[] { Config.HiddenSize }, w, b, Config.NormEps) : RmsNorm(h, w);

    /// <summary>Hugging Face's RMSNorm: normalise in fp32, cast to the weight's dtype (the input's, except in mixed-precision
    /// training, where an fp32 residual feeds bf16 matmuls), then scale. Gemma's: scale by (1 + w) in fp32, then cast.</summary>
    Tensor RmsNorm(Tensor x, Tensor w)
    {
        var xf = x.to(ScalarType.Float32);
        xf = xf * torch.rsqrt(xf.pow(2).mean(new long[] { -1 }, keepdim: true) + Config.NormEps);
        if (Config.NormAddsOne) return (xf * (w.to(ScalarType.Float32) + 1.0)).to(w.dtype);
        return w * xf.to(w.dtype);
    }

    Tensor Act(Tensor x) => Config.Activation switch
    {
        "gelu_new" or "gelu_pytorch_tanh" or "gelu_fast" => F.gelu(x, TorchSharp.Modules.GELU.Approximate.tanh),
        "gelu" => F.gelu(x),
        "relu" => F.relu(x),
        _ => F.silu(x),
    };

    /// <summary>RoPE inverse frequencies over the rotated dimensions, with Llama 3.x / linear frequency scaling or
    /// LongRoPE's per-frequency divisors (<paramref name="longRopeFactors"/>), in fp32 (as Hugging Face computes them).</summary>
    static Tensor RopeInvFreq(ModelConfig cfg, IReadOnlyList<double>? longRopeFactors)
    {
        int d = cfg.RotaryDim;
        var inv = new double[d / 2];
        for (int j = 0; j < d / 2; j++) inv[j] = 1.0 / ((longRopeFactors?[j] ?? 1.0) * Math.Pow(cfg.RopeTheta, 2.0 * j / d));
        var invF = inv.Select(x => (float)x).ToArray(); // HF computes in fp32
        var s = cfg.RopeScaling;
        if (s is { Type: "linear" }) invF = invF.Select(x => (float)(x / s.Factor)).ToArray();
        else if (s is { Type: "llama3" })
        {
            double lowWl = s.OriginalMaxPositions / s.LowFreqFactor, highWl = s.OriginalMaxPositions / s.HighFreqFactor;
            for (int j = 0; j < invF.Length; j++)
            {
                float f = invF[j];
                float wl = (float)(2 * Math.PI) / f;
                float scaled = wl > lowWl ? (float)(f / s.Factor) : f;
                if (!(wl < highWl) && !(wl > lowWl))
                {
                    float smooth = (float)((s.OriginalMaxPositions / wl - s.LowFreqFactor) / (s.HighFreqFactor - s.LowFreqFactor));
                    scaled = (1 - smooth) * scaled / (float)s.Factor + smooth * scaled;
                }
                invF[j] = scaled;
            }
        }
        return torch.tensor(invF, device: torch.CPU);
    }

    (Tensor cos, Tensor sin) RopeCosSin(Tensor pos)
    {
        var inv = _invFreq!;
        // LongRoPE: one set of frequencies per forward, the long one when its last position (max + 1) is past the
        // original context, as Hugging Face does (chosen on the device: no host sync).
        if (_invFreqLong is not null) inv = torch.where(pos.max() >= Config.RopeScaling!.OriginalMaxPositions, _invFreqLong, inv);
        var ang = pos.to(ScalarType.Float32).unsqueeze(-1) * inv;           // [B,T,r/2]
        var emb = torch.cat(new[] { ang, ang }, -1);                        // [B,T,r]
        Tensor cos = emb.cos(), sin = emb.sin();
        if (Config.RopeScaling is { Type: "longrope", AttentionFactor: var af } && af != 1.0) { cos = cos * af; sin = sin * af; }
        return (cos.to(DType).unsqueeze(1), sin.to(DType).unsqueeze(1)); // [B,1,T,r]
    }

    /// <summary>Rotates the first r dimensions of each head (r = the cos/sin width: all of them, or a part with partial
    /// rotary); the rest pass through.</summary>
    static Tensor ApplyRope(Tensor x, (Tensor cos, Tensor sin) r)
    {
        long d = x.shape[^1], rd = r.cos.shape[^1];
        if (rd < d)
            return torch.cat(new[] { ApplyRope(x.narrow(-1, 0, rd), r), x.narrow(-1, rd, d - rd) }, -1);
        long half = d / 2;
        var x1 = x.narrow(-1, 0, half); var x2 = x.narrow(-1, half, half);
        var rot = torch.cat(new[] { -x2, x1 }, -1);
        return x * r.cos + rot * r.sin;
    }

    public long ParameterCount => _w.Where(kv => !ReferenceEquals(kv.Value, null)).Sum(kv => kv.Value.NumberOfElements);

    public void Dispose()
    {
        if (_ownsWeights) foreach (var t in _w.Values) t.Dispose();
        _invFreq?.Dispose();
        _invFreqLong?.Dispose();
        _embedScale?.Dispose();
    }
}
