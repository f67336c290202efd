using TorchSharp;
using static TorchSharp.torch;

namespace SoftPrompt.Tuning;

/// <summary>
/// What a prompt method adds to a forward pass, for a batch: extra input embeddings placed before the tokens
/// (prompt tuning) or per-layer past keys/values (prefix tuning). Both occupy <see cref="VirtualTokens"/>
/// positions before the real tokens (positions 0..n-1, real tokens from n on, as PEFT does), and both are covered
/// by ones in the attention mask.
/// </summary>
public sealed class PromptInjection
{
    public static readonly PromptInjection None = new() { VirtualTokens = 0 };

    public required int VirtualTokens { get; init; }
    /// <summary>[B or 1, n, hidden] embeddings prepended to the token embeddings; the model returns hidden states for them too.</summary>
    public Tensor? PrefixEmbeds { get; init; }
    /// <summary>Per layer (key, value), each [B or 1, kv_heads, n, head_dim]; used as already-rotated cache entries.</summary>
    public IReadOnlyList<(Tensor Key, Tensor Value)>? PastKeyValues { get; init; }

    /// <summary>How many leading rows of the model's hidden output belong to virtual tokens (not to input tokens).</summary>
    public int HiddenOffset => PrefixEmbeds is null ? 0 : VirtualTokens;
}
