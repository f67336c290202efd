namespace SoftPrompt.Data;

/// <summary>Token ids of one example: the prompt (with the tokenizer's special tokens, e.g. BOS) and the target
/// (without special tokens, plus EOS when asked).</summary>
public sealed record TokenizedExample(int[] PromptIds, int[] TargetIds)
{
    public int Length => PromptIds.Length + TargetIds.Length;
}

/// <summary>
/// Turns <see cref="Example"/>s into token ids through an encoder delegate <c>encode(text, addSpecialTokens)</c>, so
/// this code does not depend on any tokenizer class.
/// </summary>
/// <remarks>
/// Naming note: from code in namespace <c>SoftPrompt</c> or below (other than SoftPrompt.Data) the name
/// <c>Tokenization</c> binds to the namespace <c>SoftPrompt.Tokenization</c> first; write
/// <c>Data.Tokenization.TokenizeExample</c> or add a using alias there.
/// </remarks>
public static class ExampleTokenizer
{
    /// <summary>
    /// Encodes the prompt WITH special tokens (BOS as the tokenizer adds it) and the target WITHOUT, then appends EOS to
    /// the target when <paramref name="addEos"/>. <paramref name="maxLength"/> counts real tokens (prompt + target), not
    /// virtual prompt tokens. When too long, the prompt is cut from the LEFT (its end, next to the target, is kept);
    /// the leading special tokens the tokenizer adds to any text (those of <c>encode("", true)</c>, e.g. BOS) are kept
    /// in front. The target is never cut: if it does not fit, this throws naming file:line.
    /// </summary>
    public static TokenizedExample TokenizeExample(Example e, Func<string, bool, int[]> encode, bool addEos, int? eosId, int maxLength)
    {
        ArgumentNullException.ThrowIfNull(e);
        ArgumentNullException.ThrowIfNull(encode);
        if (maxLength < 1) throw new SoftPromptException($"max length must be at least 1 (got {maxLength}).");
        if (addEos && eosId == null) throw new SoftPromptException("addEos is set but the tokenizer has no EOS id.");

        var prompt = encode(e.Prompt, true) ?? Array.Empty<int>();
        var target = encode(e.Target, false) ?? Array.Empty<int>();
        if (addEos) target = [.. target, eosId!.Value];
        if (target.Length == 0) throw new SoftPromptException($"{e.Location}: target \"{e.Target}\" encodes to no tokens.");

        int room = maxLength - target.Length;
        if (room < 0)
            throw new SoftPromptException($"{e.Location}: the target is {target.Length} tokens{(addEos ? " (with EOS)" : "")}, longer than the max length {maxLength}; raise the max length or shorten the target.");
        if (prompt.Length > room)
        {
            var special = encode("", true) ?? Array.Empty<int>();
            int keepFront = special.Length <= room && prompt.AsSpan().StartsWith(special) ? special.Length : 0;
            prompt = TruncateLeft(prompt, keepFront, room);
        }
        return new TokenizedExample(prompt, target);
    }

    /// <summary>Cuts <paramref name="ids"/> to <paramref name="budget"/> tokens by dropping tokens after the first
    /// <paramref name="keepFront"/> (the tokenizer's leading special tokens), i.e. from the left of the text, so the end
    /// nearest the target survives. Shared by training (here) and evaluation (<c>PromptBuilder</c>).</summary>
    public static int[] TruncateLeft(int[] ids, int keepFront, int budget)
    {
        if (ids.Length <= budget) return ids;
        var cut = new int[budget];
        ids.AsSpan(0, keepFront).CopyTo(cut);
        ids.AsSpan(ids.Length - (budget - keepFront)).CopyTo(cut.AsSpan(keepFront));
        return cut;
    }

    /// <summary>Tokenizes every example (see <see cref="TokenizeExample"/>).</summary>
    public static List<TokenizedExample> TokenizeAll(IEnumerable<Example> examples, Func<string, bool, int[]> encode, bool addEos, int? eosId, int maxLength) =>
        examples.Select(x => TokenizeExample(x, encode, addEos, eosId, maxLength)).ToList();
}
