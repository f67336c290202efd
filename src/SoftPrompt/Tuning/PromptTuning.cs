using SoftPrompt.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace SoftPrompt.Tuning;

/// <summary>How prompt-tuning embeddings start (Lester et al. 2021; PEFT's PromptTuningInit plus class labels).</summary>
public enum PromptInit { Random, SampleVocab, Text, ClassLabels }

/// <summary>
/// Prompt tuning (Lester et al. 2021): <c>n</c> trainable embedding rows prepended to the input embeddings.
/// Virtual tokens take positions 0..n-1 and real tokens follow, as in PEFT. The trainable copy is fp32; the model
/// casts it to its own dtype in the forward.
/// Optional residual reparameterisation (Razdaibiedina et al. 2023, "Residual Prompt Tuning"): the prompt is
/// <c>P + W2·relu(W1·P + b1) + b2</c>, a bottleneck MLP shared by the virtual tokens, with W2 and b2 starting at zero so
/// training starts exactly at the initial prompt. Small models are hard to prompt-tune (Lester et al.), and the shared
/// MLP conditions the optimisation better, like prefix tuning's projection. Only the MLP's output is exported, as a
/// plain PEFT PROMPT_TUNING adapter.
/// </summary>
public sealed class PromptTuning : IPromptMethod
{
    readonly Tensor _embedding;            // [n, hidden] fp32
    readonly Tensor? _w1, _b1, _w2, _b2;   // residual reparameterisation
    public TuningMethod Method => TuningMethod.Prompt;
    public int NumVirtualTokens { get; }
    public PromptInit Init { get; }
    public string? InitText { get; }
    public bool Projection => _w1 is not null;
    public IReadOnlyList<(string Name, Tensor Param)> Parameters { get; }

    public PromptTuning(Tensor embedding, PromptInit init = PromptInit.Random, string? initText = null)
        : this(embedding, init, initText, 0, 0) { }

    PromptTuning(Tensor embedding, PromptInit init, string? initText, int encoderHidden, long seed)
    {
        if (embedding.dim() != 2) throw new ArgumentException("prompt embeddings must be [n, hidden].");
        var P = TrainableTensors.Parameter;
        _embedding = P(embedding);
        NumVirtualTokens = (int)embedding.shape[0];
        Init = init; InitText = initText;
        var ps = new List<(string, Tensor)> { ("prompt_embeddings", _embedding) };
        if (encoderHidden > 0)
        {
            using var scope = torch.NewDisposeScope();
            var gen = new torch.Generator((ulong)seed ^ 0x5EED_2E5Dul);
            long d = embedding.shape[1];
            double bound = 1 / Math.Sqrt(d); // nn.Linear's default (Kaiming-uniform) bound for the first layer
            var dev = embedding.device;
            _w1 = P(TrainableTensors.Uniform(new long[] { encoderHidden, d }, bound, gen, dev));
            _b1 = P(TrainableTensors.Uniform(new long[] { encoderHidden }, bound, gen, dev));
            _w2 = P(torch.zeros(d, encoderHidden, device: dev));
            _b2 = P(torch.zeros(d, device: dev));
            ps.Add(("reparam.0.weight", _w1)); ps.Add(("reparam.0.bias", _b1)); ps.Add(("reparam.2.weight", _w2)); ps.Add(("reparam.2.bias", _b2));
        }
        Parameters = ps;
    }

    /// <summary>[n, hidden]: the prompt the model sees.</summary>
    Tensor Table() => _w1 is null ? _embedding : _embedding + nn.functional.linear(nn.functional.linear(_embedding, _w1, _b1).relu(), _w2!, _b2);

    /// <summary>
    /// Creates the initial prompt. <paramref name="tokenIds"/> supplies ids for <see cref="PromptInit.Text"/> (the
    /// tokenized init text) and, per label, for <see cref="PromptInit.ClassLabels"/> (each label's tokens).
    /// </summary>
    public static PromptTuning Create(IPromptableModel model, int n, PromptInit init, long seed, IReadOnlyList<int[]>? tokenIds = null, string? initText = null,
        int projectionHidden = 0)
    {
        if (projectionHidden < 0) throw new SoftPromptException("the projection's hidden size must be >= 0 (0 = no projection).");
        if (n < 1) throw new SoftPromptException("num_virtual_tokens must be at least 1.");
        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        var gen = new torch.Generator((ulong)seed);
        var emb = model.EmbeddingMatrix;
        long vocab = emb.shape[0], hidden = emb.shape[1];
        Tensor SampleRows(int count) => emb.index_select(0, torch.randint(0, vocab, new long[] { count }, generator: gen, device: torch.CPU).to(emb.device)).to(ScalarType.Float32).cpu();
        Tensor init0;
        switch (init)
        {
            case PromptInit.Random:
                init0 = torch.randn(new long[] { n, hidden }, generator: gen, device: torch.CPU); // PEFT's RANDOM: nn.Embedding's N(0, 1)
                break;
            case PromptInit.SampleVocab:
                init0 = SampleRows(n);
                break;
            case PromptInit.Text:
            {
                var ids = tokenIds is { Count: 1 } t && t[0].Length > 0 ? t[0] : throw new SoftPromptException("init 'text' needs a non-empty --init-text.");
                // PEFT: repeat the text's tokens to fill n, then truncate.
                var rep = Enumerable.Range(0, n).Select(i => (long)ids[i % ids.Length]).ToArray();
                init0 = emb.index_select(0, torch.tensor(rep, device: emb.device)).to(ScalarType.Float32).cpu();
                break;
            }
            case PromptInit.ClassLabels:
            {
                if (tokenIds is not { Count: > 0 }) throw new SoftPromptException("init 'class_labels' needs the task's labels.");
                // Lester et al.: each label's embedding (the mean over a multi-token label), then sampled vocabulary rows.
                var rows = new List<Tensor>();
                foreach (var ids in tokenIds.Take(n))
                {
                    if (ids.Length == 0) continue;
                    rows.Add(emb.index_select(0, torch.tensor(ids.Select(i => (long)i).ToArray(), device: emb.device)).to(ScalarType.Float32).mean(new long[] { 0 }).cpu());
                }
                if (rows.Count < n) rows.Add(SampleRows(n - rows.Count));
                init0 = torch.cat(rows.Select(r => r.dim() == 1 ? r.unsqueeze(0) : r).ToArray(), 0);
                break;
            }
            default: throw new ArgumentOutOfRangeException(nameof(init));
        }
        return new PromptTuning(init0.to(model.Device), init, initText, projectionHidden, seed);
    }

    public PromptInjection Inject(int batchSize) => new()
    {
        VirtualTokens = NumVirtualTokens,
        PrefixEmbeds = Table().unsqueeze(0).expand(batchSize, -1, -1),
    };

    public Tensor ExportEmbeddings()
    {
        using var noGrad = torch.no_grad();
        return Table().detach().to(ScalarType.Float32).cpu().clone();
    }

    public AdapterConfig AdapterConfig(ModelConfig model) => new()
    {
        PeftType = Method.PeftType(), NumVirtualTokens = NumVirtualTokens, TokenDim = model.HiddenSize, NumLayers = model.NumLayers,
        NumAttentionHeads = model.NumHeads,
        PromptTuningInit = Init switch { PromptInit.SampleVocab => "SAMPLE_VOCAB", PromptInit.Text => "TEXT", _ => "RANDOM" },
        PromptTuningInitText = Init == PromptInit.Text ? InitText : null,
        BaseModelNameOrPath = model.NameOrPath,
        // PEFT's SEQ_2_SEQ_LM: two transformer submodules, a table of 2n rows of which prompt tuning uses the first n
        // (Adapter writes and reads that layout).
        TaskType = model.IsEncoderDecoder ? "SEQ_2_SEQ_LM" : "CAUSAL_LM",
        NumTransformerSubmodules = model.IsEncoderDecoder ? 2 : 1,
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
