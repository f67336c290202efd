using System.Text;
using Microsoft.ML.Tokenizers;

namespace SoftPrompt.Tokenization;

/// <summary>Encodes ordinary text (no added tokens) and maps ids to strings.</summary>
internal interface ITokenizerBackend
{
    void EncodeOrdinary(string segment, List<int> into);
    /// <summary>Decodes a run of ordinary (non-added) token ids.</summary>
    string DecodeOrdinary(IReadOnlyList<int> ids);
    string TokenText(int id);
    string? IdToToken(int id);
    int? TokenToId(string token);
    int MaxId { get; }
}

/// <summary>Byte-level BPE: our own normalizer/pre-tokenizer pipeline, Microsoft.ML.Tokenizers' BpeTokenizer for the merges.</summary>
internal sealed class ByteLevelBpeBackend : ITokenizerBackend
{
    private readonly BpeTokenizer _bpe;
    private readonly TextPipeline _pipeline;
    private readonly Dictionary<string, int> _vocab;
    private readonly Dictionary<int, string> _reverse;
    private readonly bool _ignoreMerges;

    public ByteLevelBpeBackend(Dictionary<string, int> vocab, IEnumerable<string> merges, TextPipeline pipeline, bool ignoreMerges)
    {
        _vocab = vocab;
        _reverse = new Dictionary<int, string>(vocab.Count);
        foreach (var (k, v) in vocab) _reverse.TryAdd(v, k);
        _pipeline = pipeline;
        _ignoreMerges = ignoreMerges;
        _bpe = BpeTokenizer.Create(new BpeOptions(vocab) { Merges = merges, ByteLevel = true });
        MaxId = vocab.Count == 0 ? -1 : vocab.Values.Max();
    }

    public int MaxId { get; }

    public void EncodeOrdinary(string segment, List<int> into)
    {
        var text = _pipeline.Normalizer is null ? segment : _pipeline.Normalizer(segment);
        foreach (var piece in _pipeline.PreTokenize(text))
        {
            if (_ignoreMerges && _vocab.TryGetValue(ByteLevel.Encode(piece), out var whole)) { into.Add(whole); continue; }
            into.AddRange(_bpe.EncodeToIds(piece, considerPreTokenization: false, considerNormalization: false));
        }
    }

    public string DecodeOrdinary(IReadOnlyList<int> ids)
    {
        var bytes = new List<byte>();
        var sb = new StringBuilder();
        foreach (var id in ids)
        {
            if (!_reverse.TryGetValue(id, out var tok)) continue; // HF skips unknown ids
            if (!ByteLevel.TryAppendBytes(tok, bytes))
            {
                Flush();
                sb.Append(tok);
            }
        }
        Flush();
        return sb.ToString();

        void Flush()
        {
            if (bytes.Count == 0) return;
            sb.Append(Encoding.UTF8.GetString(bytes.ToArray())); // invalid sequences become U+FFFD, as HF's errors="replace"
            bytes.Clear();
        }
    }

    public string TokenText(int id) => DecodeOrdinary(new[] { id });
    public string? IdToToken(int id) => _reverse.GetValueOrDefault(id);
    public int? TokenToId(string token) => _vocab.TryGetValue(token, out var id) ? id : null;
}

/// <summary>SentencePiece BPE from tokenizer.model via Microsoft.ML.Tokenizers' LlamaTokenizer (byte fallback included).</summary>
internal sealed class SentencePieceBackend : ITokenizerBackend
{
    private readonly SentencePieceTokenizer _sp;
    private readonly Dictionary<int, string> _reverse;

    public SentencePieceBackend(SentencePieceTokenizer sp)
    {
        _sp = sp;
        _reverse = new Dictionary<int, string>(sp.Vocabulary.Count);
        foreach (var (k, v) in sp.Vocabulary) _reverse.TryAdd(v, k);
        MaxId = _reverse.Count == 0 ? -1 : _reverse.Keys.Max();
    }

    public SentencePieceTokenizer Inner => _sp;
    public int MaxId { get; }

    public void EncodeOrdinary(string segment, List<int> into) =>
        into.AddRange(_sp.EncodeToIds(segment, addBeginningOfSentence: false, addEndOfSentence: false, considerPreTokenization: true, considerNormalization: true));

    public string DecodeOrdinary(IReadOnlyList<int> ids) => _sp.Decode(ids, considerSpecialTokens: true);

    public string TokenText(int id)
    {
        var piece = IdToToken(id);
        if (piece is null) return "";
        if (piece.Length == 6 && piece.StartsWith("<0x", StringComparison.Ordinal) && piece.EndsWith('>') &&
            byte.TryParse(piece.AsSpan(3, 2), System.Globalization.NumberStyles.HexNumber, null, out var b))
            return Encoding.UTF8.GetString(new[] { b });
        return piece.Replace('\u2581', ' ');
    }

    public string? IdToToken(int id) => _reverse.GetValueOrDefault(id);
    public int? TokenToId(string token) => _sp.Vocabulary.TryGetValue(token, out var id) ? id : null;
}
