using static TorchSharp.torch;

namespace SoftPrompt.Models;

/// <summary>
/// What prompt methods, adapters, the trainer and the loss need of a frozen model whatever its architecture: its
/// config, device and dtype, the input embedding table (prompt initialisation, fingerprints, projections) and the LM
/// head. How the forward runs differs: a decoder-only <see cref="CausalLM"/> takes extra input embeddings or past
/// keys/values; an encoder-decoder <see cref="T5Model"/> takes extra encoder input embeddings. The one place that
/// runs either over a batch is Scoring's PromptLoss (and RankClassifier), which dispatch on the concrete type.
/// </summary>
public interface IPromptableModel : IDisposable
{
    ModelConfig Config { get; }
    Device Device { get; }
    ScalarType DType { get; }
    /// <summary>The input embedding matrix [vocab, hidden] (frozen).</summary>
    Tensor EmbeddingMatrix { get; }
    /// <summary>Token embeddings [.., hidden] of ids.</summary>
    Tensor Embed(Tensor ids);
    /// <summary>Vocabulary logits (fp32) of final hidden states [.., hidden].</summary>
    Tensor Logits(Tensor hidden);
    long ParameterCount { get; }
}
