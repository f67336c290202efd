using SoftPrompt.Models;
using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace SoftPrompt.Tuning;

/// <summary>
/// Prefix tuning (Li &amp; Liang 2021): trainable keys and values for every layer, sized by the model's KV heads
/// (grouped-query aware), optionally produced by a reparameterisation MLP (embedding [n, kv_dim] → Linear → tanh →
/// Linear → [n, 2·layers·kv_dim]) whose output is what gets exported. PEFT's layout: per virtual token,
/// layer0.K, layer0.V, layer1.K, ...; each block is [kv_heads, head_dim]. Keys are used as given (no RoPE), and real
/// tokens take positions n.. after the prefix.
/// </summary>
public sealed class PrefixTuning : IPromptMethod
{
    readonly ModelConfig _cfg;
    readonly Tensor _embedding;                  // [n, 2·L·kv_dim] without projection, [n, kv_dim] with it
    readonly Tensor? _w1, _b1, _w2, _b2;         // projection MLP
    public TuningMethod Method => TuningMethod.Prefix;
    public int NumVirtualTokens { get; }
    public bool Projection => _w1 is not null;
    public int EncoderHiddenSize { get; }
    public IReadOnlyList<(string Name, Tensor Param)> Parameters { get; }

    PrefixTuning(ModelConfig cfg, Tensor embedding, Tensor? w1, Tensor? b1, Tensor? w2, Tensor? b2, int encoderHidden)
    {
        _cfg = cfg;
        var P = TrainableTensors.Parameter;
        _embedding = P(embedding);
        NumVirtualTokens = (int)embedding.shape[0];
        EncoderHiddenSize = encoderHidden;
        var ps = new List<(string, Tensor)> { ("prompt_embeddings", _embedding) };
        if (w1 is not null)
        {
            _w1 = P(w1); _b1 = P(b1!); _w2 = P(w2!); _b2 = P(b2!);
            ps.Add(("transform.0.weight", _w1)); ps.Add(("transform.0.bias", _b1)); ps.Add(("transform.2.weight", _w2)); ps.Add(("transform.2.bias", _b2));
        }
        Parameters = ps;
    }

    int Width => 2 * _cfg.NumLayers * _cfg.KvDim;

    /// <summary>A new prefix. Without projection: N(0, 1) rows like PEFT's nn.Embedding, scaled by <paramref name="initScale"/>.
    /// With projection: an embedding of kv_dim and an MLP with nn.Linear's default (Kaiming-uniform) init.</summary>
    public static PrefixTuning Create(ModelConfig cfg, int n, bool projection, int encoderHiddenSize, long seed, Device device, double initScale = 1.0)
    {
        RefuseEncoderDecoder(cfg);
        if (n < 1) throw new SoftPromptException("num_virtual_tokens must be at least 1.");
        using var scope = torch.NewDisposeScope();
        var gen = new torch.Generator((ulong)seed);
        int width = 2 * cfg.NumLayers * cfg.KvDim;
        if (!projection)
            return new PrefixTuning(cfg, (torch.randn(new long[] { n, width }, generator: gen, device: torch.CPU) * initScale).to(device), null, null, null, null, 0);
        if (encoderHiddenSize < 1) throw new SoftPromptException("encoder_hidden_size must be at least 1 with prefix_projection.");
        Tensor Uniform(long[] shape, double bound) => TrainableTensors.Uniform(shape, bound, gen, device);
        int d = cfg.KvDim, h = encoderHiddenSize;
        return new PrefixTuning(cfg, (torch.randn(new long[] { n, d }, generator: gen, device: torch.CPU) * initScale).to(device),
            Uniform(new long[] { h, d }, 1 / Math.Sqrt(d)), Uniform(new long[] { h }, 1 / Math.Sqrt(d)),
            Uniform(new long[] { width, h }, 1 / Math.Sqrt(h)), Uniform(new long[] { width }, 1 / Math.Sqrt(h)), h);
    }

    /// <summary>The reason prefix tuning stops at encoder-decoder models (T5).</summary>
    public const string EncoderDecoderRefusal =
        "prefix tuning is not supported for encoder-decoder (T5) models: PEFT's seq2seq prefix feeds keys/values to the decoder's " +
        "self- and cross-attention in a layout tied to transformers' cache classes, and no reference output exists here to check an " +
        "implementation to 1e-4; use prompt tuning (--method prompt), the method Lester et al. introduced on T5.";

    static void RefuseEncoderDecoder(ModelConfig cfg)
    {
        if (cfg.IsEncoderDecoder) throw new SoftPromptException($"{cfg.ModelType}: {EncoderDecoderRefusal}");
    }

    /// <summary>A prefix from exported embeddings [n, 2·L·kv_dim] (what PEFT saves); no projection.</summary>
    public static PrefixTuning FromEmbeddings(ModelConfig cfg, Tensor embeddings)
    {
        RefuseEncoderDecoder(cfg);
        int width = 2 * cfg.NumLayers * cfg.KvDim;
        if (embeddings.dim() != 2 || embeddings.shape[1] != width)
            throw new SoftPromptException($"prefix embeddings have shape [{string.Join(", ", embeddings.shape)}]; this model needs [n, {width}] (2 x {cfg.NumLayers} layers x {cfg.KvDim} kv_dim).");
        return new PrefixTuning(cfg, embeddings, null, null, null, null, 0);
    }

    /// <summary>[n, 2·L·kv_dim]: the embedding itself, or the projection MLP's output.</summary>
    Tensor Table() => _w1 is null ? _embedding : F.linear(F.linear(_embedding, _w1, _b1).tanh(), _w2!, _b2);

    public PromptInjection Inject(int batchSize)
    {
        int n = NumVirtualTokens, L = _cfg.NumLayers, kvh = _cfg.NumKvHeads, hd = _cfg.HeadDim;
        // [n, 2L·kvh·hd] -> [n, 2L, kvh, hd] -> [2L, kvh, n, hd]; layer l's key is block 2l, its value block 2l+1.
        var kv = Table().view(n, 2 * L, kvh, hd).permute(1, 2, 0, 3);
        var pairs = new List<(Tensor, Tensor)>(L);
        for (int l = 0; l < L; l++)
            pairs.Add((kv[2 * l].unsqueeze(0).expand(batchSize, -1, -1, -1), kv[2 * l + 1].unsqueeze(0).expand(batchSize, -1, -1, -1)));
        return new PromptInjection { VirtualTokens = n, PastKeyValues = pairs };
    }

    public Tensor ExportEmbeddings()
    {
        using var noGrad = torch.no_grad();
        return Table().detach().to(ScalarType.Float32).cpu().clone();
    }

    public AdapterConfig AdapterConfig(ModelConfig model) => new()
    {
        PeftType = Method.PeftType(), NumVirtualTokens = NumVirtualTokens,
        // PEFT, for grouped-query attention: token_dim = kv_dim and num_attention_heads = KV heads, so that
        // token_dim / num_attention_heads is the head size of the cache entries.
        TokenDim = model.KvDim, NumAttentionHeads = model.NumKvHeads, NumLayers = model.NumLayers,
        PrefixProjection = Projection, EncoderHiddenSize = Projection ? EncoderHiddenSize : model.KvDim,
        BaseModelNameOrPath = model.NameOrPath,
    };

    public void SetTrainable(bool trainable)
    {
        foreach (var (_, p) in Parameters) p.requires_grad = trainable;
    }

    public void Dispose()
    {
        foreach (var (_, p) in Parameters) p.Dispose();
    }
}
