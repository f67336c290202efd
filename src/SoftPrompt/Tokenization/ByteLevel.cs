using System.Text;

namespace SoftPrompt.Tokenization;

/// <summary>GPT-2's reversible byte-to-printable-character mapping used by byte-level BPE vocabularies
/// (a space becomes 'Ġ' (U+0120), a newline 'Ċ' (U+010A), printable Latin-1 maps to itself).</summary>
public static class ByteLevel
{
    /// <summary>The GPT-2 pre-tokenizer pattern (ByteLevel with use_regex = true).</summary>
    public const string Gpt2Pattern = @"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

    private static readonly char[] ByteToChar = BuildByteToChar();
    private static readonly Dictionary<char, byte> CharToByte = Enumerable.Range(0, 256).ToDictionary(b => ByteToChar[b], b => (byte)b);

    private static char[] BuildByteToChar()
    {
        var map = new char[256];
        var assigned = new bool[256];
        for (int b = 0; b < 256; b++)
        {
            bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
            if (printable) { map[b] = (char)b; assigned[b] = true; }
        }
        int next = 0;
        for (int b = 0; b < 256; b++)
            if (!assigned[b]) map[b] = (char)(256 + next++);
        return map;
    }

    public static char MapByte(byte b) => ByteToChar[b];

    /// <summary>UTF-8 encode <paramref name="text"/> and map every byte to its printable character.</summary>
    public static string Encode(string text)
    {
        var bytes = Encoding.UTF8.GetBytes(text);
        var chars = new char[bytes.Length];
        for (int i = 0; i < bytes.Length; i++) chars[i] = ByteToChar[bytes[i]];
        return new string(chars);
    }

    /// <summary>Inverse of <see cref="Encode"/>: appends the bytes of a byte-level token string. Returns false if a
    /// character is outside the 256-character alphabet.</summary>
    public static bool TryAppendBytes(string token, List<byte> into)
    {
        foreach (var c in token)
        {
            if (!CharToByte.TryGetValue(c, out var b)) return false;
            into.Add(b);
        }
        return true;
    }
}
