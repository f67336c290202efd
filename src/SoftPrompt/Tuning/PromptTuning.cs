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
/// </summary>
public sealed class PromptTuning : IPromptMethod
{
    readonly Tensor _embedding; // [n, hidden] fp32
    public string PeftType => "PROMPT_TUNING";
    public int NumVirtualTokens { get; }
    public PromptInit Init { get; }
    public string? InitText { get; }
    public IReadOnlyList<(string Name, Tensor Param)> Parameters { get; }

    public PromptTuning(Tensor embedding, PromptInit init = PromptInit.Random, string? initText = null)
    {
        if (embedding.dim() != 2) throw new ArgumentException("prompt embeddings must be [n, hidden].");
        _embedding = embedding.detach().to(ScalarType.Float32).clone().requires_grad_(true).DetachFromDisposeScope();
        NumVirtualTokens = (int)embedding.shape[0];
        Init = init; InitText = initText;
        Parameters = new[] { ("prompt_embeddings", _embedding) };
    }

    /// <summary>
    /// Creates the initial prompt. <paramref name="tokenIds"/> supplies ids for <see cref="PromptInit.Text"/> (the
    /// tokenized init text) and, per label, for <see cref="PromptInit.ClassLabels"/> (each label's tokens).
    /// </summary>
    public static PromptTuning Create(CausalLM model, int n, PromptInit init, long seed, IReadOnlyList<int[]>? tokenIds = null, string? initText = null)
    {
        if (n < 1) throw new SoftPromptException("num_virtual_tokens must be at least 1.");
        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        var gen = new torch.Generator((ulong)seed);
        var emb = model.EmbeddingMatrix;
        long vocab = emb.shape[0], hidden = emb.shape[1];
        Tensor SampleRows(int count) => emb.index_select(0, torch.randint(0, vocab, new long[] { count }, generator: gen).to(emb.device)).to(ScalarType.Float32).cpu();
        Tensor init0;
        switch (init)
        {
            case PromptInit.Random:
                init0 = torch.randn(new long[] { n, hidden }, generator: gen); // PEFT's RANDOM: nn.Embedding's N(0, 1)
                break;
            case PromptInit.SampleVocab:
                init0 = SampleRows(n);
                break;
            case PromptInit.Text:
            {
                var ids = tokenIds is { Count: 1 } t && t[0].Length > 0 ? t[0] : throw new SoftPromptException("init 'text' needs a non-empty --init-text.");
                // PEFT: repeat the text's tokens to fill n, then truncate.
                var rep = Enumerable.Range(0, n).Select(i => (long)ids[i % ids.Length]).ToArray();
                init0 = emb.index_select(0, torch.tensor(rep).to(emb.device)).to(ScalarType.Float32).cpu();
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
                    rows.Add(emb.index_select(0, torch.tensor(ids.Select(i => (long)i).ToArray()).to(emb.device)).to(ScalarType.Float32).mean(new long[] { 0 }).cpu());
                }
                if (rows.Count < n) rows.Add(SampleRows(n - rows.Count));
                init0 = torch.cat(rows.Select(r => r.dim() == 1 ? r.unsqueeze(0) : r).ToArray(), 0);
                break;
            }
            default: throw new ArgumentOutOfRangeException(nameof(init));
        }
        var result = new PromptTuning(init0.to(model.Device), init, initText);
        return result;
    }

    public PromptInjection Inject(int batchSize) => new()
    {
        VirtualTokens = NumVirtualTokens,
        PrefixEmbeds = _embedding.unsqueeze(0).expand(batchSize, -1, -1),
    };

    public Tensor ExportEmbeddings() => _embedding.detach().to(ScalarType.Float32).cpu().clone();

    public AdapterConfig AdapterConfig(ModelConfig model) => new()
    {
        PeftType = PeftType, NumVirtualTokens = NumVirtualTokens, TokenDim = model.HiddenSize, NumLayers = model.NumLayers,
        NumAttentionHeads = model.NumHeads,
        PromptTuningInit = Init switch { PromptInit.SampleVocab => "SAMPLE_VOCAB", PromptInit.Text => "TEXT", _ => "RANDOM" },
        PromptTuningInitText = Init == PromptInit.Text ? InitText : null,
        BaseModelNameOrPath = model.NameOrPath,
    };

    public void SetTrainable(bool trainable) => _embedding.requires_grad = trainable;

    public void Dispose() => _embedding.Dispose();
}
