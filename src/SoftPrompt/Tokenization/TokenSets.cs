namespace SoftPrompt.Tokenization;

/// <summary>Sets of vocabulary ids derived from a tokenizer: the tokens a hard prompt may use, and the tokens that end a line.</summary>
public static class TokenSets
{
    /// <summary>Tokens a prompt may use: real vocabulary entries below the tokenizer's size, not special/added, and
    /// (readable filter) decoding to letters, spaces and punctuation only (no digits, control characters, partial bytes).</summary>
    public static bool[] AllowedTokens(HfTokenizer tok, int modelVocab, bool readableOnly)
    {
        var allowed = new bool[modelVocab];
        var special = new HashSet<int>(tok.AddedTokens.Select(a => a.Id));
        foreach (var id in new[] { tok.BosId, tok.EosId, tok.PadId, tok.UnkId }) if (id is int i) special.Add(i);
        for (int id = 0; id < Math.Min(modelVocab, tok.VocabSize); id++)
        {
            if (special.Contains(id) || tok.IdToToken(id) is null) continue;
            allowed[id] = !readableOnly || IsReadable(tok.TokenText(id));
        }
        return allowed;
    }

    public static bool IsReadable(string s) =>
        s.Length > 0 && !string.IsNullOrWhiteSpace(s) && s.All(c => c == ' ' || char.IsLetter(c) || char.IsPunctuation(c));

    static readonly System.Runtime.CompilerServices.ConditionalWeakTable<HfTokenizer, int[]> NewlineCache = new();

    /// <summary>Ids of every token whose text contains a newline (generation stops after one).</summary>
    public static int[] NewlineIds(HfTokenizer tok) => NewlineCache.GetValue(tok, t =>
        Enumerable.Range(0, t.VocabSize).Where(id => { try { return t.Decode(new[] { id }).Contains('\n'); } catch { return false; } }).ToArray());
}
