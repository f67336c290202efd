using System.Text;

namespace SoftPrompt.Tokenization;

/// <summary>
/// Hugging Face <c>tokenizers</c>' BPE model as used by SentencePiece-converted tokenizer.json files (Llama 2,
/// TinyLlama, Mistral): initial symbols are Unicode characters (not bytes), merges are applied by their rank in
/// <c>model.merges</c> (lowest rank first, leftmost pair on ties), characters missing from the vocabulary become
/// <c>&lt;0xNN&gt;</c> byte tokens (byte_fallback) or the unk token (consecutive unks fused when fuse_unk).
/// </summary>
/// <remarks>
/// Why not Microsoft.ML.Tokenizers' <c>LlamaTokenizer</c> fed with a ModelProto synthesised from tokenizer.json
/// (pieces scored by merge rank): its SentencePiece BPE (2.0.1) breaks ties between equal-score pairs toward the
/// <b>rightmost</b> pair, whereas HF tokenizers (and google/sentencepiece) take the leftmost. Overlapping pairs that
/// form the same piece tie, so e.g. Mistral-7B encodes "zzzz" as [▁z, zz, z] in HF but [▁z, z, zz] there ("......",
/// "????", "____" differ too). It also merges any adjacent pair whose concatenation is a piece, not only listed merges.
/// Scores cannot express "leftmost first", so the encoder is implemented here; it is exact by construction.
/// </remarks>
internal sealed class MergeRankBpe
{
    private readonly Dictionary<string, int> _vocab;
    private readonly Dictionary<long, (int Rank, int NewId)> _merges;
    private readonly int[]? _byteIds; // id of <0xNN> for each byte, -1 when absent; null without byte_fallback
    private readonly int? _unkId;
    private readonly bool _fuseUnk, _ignoreMerges;

    /// <param name="merges">(left, right) in rank order; both parts and their concatenation must be in the vocabulary.</param>
    /// <exception cref="ArgumentException">with the index of the first bad merge in the message.</exception>
    public MergeRankBpe(Dictionary<string, int> vocab, IReadOnlyList<(string A, string B)> merges, bool byteFallback, int? unkId, bool fuseUnk, bool ignoreMerges)
    {
        _vocab = vocab;
        _unkId = unkId;
        _fuseUnk = fuseUnk;
        _ignoreMerges = ignoreMerges;
        _merges = new Dictionary<long, (int, int)>(merges.Count);
        for (int i = 0; i < merges.Count; i++)
        {
            var (a, b) = merges[i];
            if (!vocab.TryGetValue(a, out var ia)) throw new ArgumentException($"merges[{i}]: '{a}' is not in the vocabulary");
            if (!vocab.TryGetValue(b, out var ib)) throw new ArgumentException($"merges[{i}]: '{b}' is not in the vocabulary");
            if (!vocab.TryGetValue(a + b, out var inew)) throw new ArgumentException($"merges[{i}]: '{a + b}' is not in the vocabulary");
            _merges.TryAdd(Key(ia, ib), (i, inew)); // HF keeps the first rank of a repeated pair
        }
        if (byteFallback)
        {
            _byteIds = new int[256];
            for (int b = 0; b < 256; b++) _byteIds[b] = vocab.TryGetValue(ByteToken((byte)b), out var id) ? id : -1;
        }
    }

    public static string ByteToken(byte b) => $"<0x{b:X2}>";

    /// <summary>Parses "&lt;0xNN&gt;" (either hex case, as HF's ByteFallback decoder does).</summary>
    public static bool TryParseByteToken(string token, out byte b)
    {
        b = 0;
        return token.Length == 6 && token.StartsWith("<0x", StringComparison.Ordinal) && token[5] == '>' &&
               byte.TryParse(token.AsSpan(3, 2), System.Globalization.NumberStyles.AllowHexSpecifier, null, out b);
    }

    private static long Key(int a, int b) => ((long)a << 32) | (uint)b;

    /// <summary>Encodes one pre-tokenized word (already normalized).</summary>
    public void Encode(string word, List<int> into)
    {
        if (word.Length == 0) return;
        if (_ignoreMerges && _vocab.TryGetValue(word, out var whole)) { into.Add(whole); return; }

        var ids = new List<int>(word.Length);
        bool prevUnk = false;
        Span<byte> utf8 = stackalloc byte[4];
        foreach (var rune in word.EnumerateRunes())
        {
            if (_vocab.TryGetValue(rune.ToString(), out var id)) { ids.Add(id); prevUnk = false; continue; }
            if (_byteIds is not null)
            {
                int n = rune.EncodeToUtf8(utf8);
                bool all = true;
                for (int i = 0; i < n; i++) all &= _byteIds[utf8[i]] >= 0;
                if (all)
                {
                    for (int i = 0; i < n; i++) ids.Add(_byteIds[utf8[i]]);
                    prevUnk = false;
                    continue;
                }
            }
            if (_unkId is not int unk)
                throw new InvalidOperationException($"character U+{rune.Value:X4} is not in the vocabulary and the tokenizer has no unk_token");
            if (!(_fuseUnk && prevUnk)) ids.Add(unk);
            prevUnk = true;
        }
        if (ids.Count > 1 && _merges.Count > 0) MergeAll(ids);
        into.AddRange(ids);
    }

    /// <summary>Applies merges in rank order, leftmost first among equal ranks (HF's Word::merge_all without dropout).</summary>
    private void MergeAll(List<int> ids)
    {
        int n = ids.Count;
        var id = ids.ToArray();
        var prev = new int[n];
        var next = new int[n];
        var alive = new bool[n];
        for (int i = 0; i < n; i++) { prev[i] = i - 1; next[i] = i + 1 < n ? i + 1 : -1; alive[i] = true; }
        var queue = new PriorityQueue<(int Pos, int Left, int Right, int NewId), (int Rank, int Pos)>();
        for (int i = 0; i + 1 < n; i++) Push(i);
        while (queue.TryDequeue(out var m, out _))
        {
            int p = m.Pos, q = alive[p] ? next[p] : -1;
            if (q < 0 || id[p] != m.Left || id[q] != m.Right) continue; // stale entry
            id[p] = m.NewId;
            alive[q] = false;
            next[p] = next[q];
            if (next[q] >= 0) prev[next[q]] = p;
            if (prev[p] >= 0) Push(prev[p]);
            Push(p);
        }
        ids.Clear();
        for (int i = 0; i >= 0 && i < n; i = next[i]) ids.Add(id[i]);

        void Push(int pos)
        {
            int r = next[pos];
            if (r < 0) return;
            if (_merges.TryGetValue(Key(id[pos], id[r]), out var mg)) queue.Enqueue((pos, id[pos], id[r], mg.NewId), (mg.Rank, pos));
        }
    }
}

/// <summary>tokenizer.json "pre_tokenizer": {"type": "Metaspace"}: spaces become the replacement character, which is
/// prepended per <c>prepend_scheme</c>; with <c>split</c> the text is cut before every replacement character.</summary>
internal sealed record Metaspace(char Replacement, string PrependScheme, bool Split)
{
    public IEnumerable<string> Apply(string s, bool atTextStart)
    {
        s = s.Replace(' ', Replacement);
        if (s.Length == 0) return [];
        bool prepend = PrependScheme == "always" || (PrependScheme == "first" && atTextStart);
        if (prepend && s[0] != Replacement) s = Replacement + s;
        if (!Split) return [s];
        var parts = new List<string>();
        int start = 0;
        for (int i = 1; i < s.Length; i++)
            if (s[i] == Replacement) { parts.Add(s[start..i]); start = i; }
        parts.Add(s[start..]);
        return parts;
    }
}

/// <summary>One step of a tokenizer.json "decoder" chain, applied to the list of token strings as HF does.</summary>
internal abstract record DecodeStep
{
    public abstract List<string> Apply(List<string> tokens);

    public sealed record Replace(string Pattern, string Content) : DecodeStep
    {
        public override List<string> Apply(List<string> tokens) => tokens.Select(t => t.Replace(Pattern, Content, StringComparison.Ordinal)).ToList();
    }

    /// <summary>Runs of &lt;0xNN&gt; tokens become their UTF-8 text; an invalid run becomes one U+FFFD per byte (as HF).</summary>
    public sealed record ByteFallback : DecodeStep
    {
        private static readonly UTF8Encoding Strict = new(false, throwOnInvalidBytes: true);

        public override List<string> Apply(List<string> tokens)
        {
            var result = new List<string>(tokens.Count);
            var bytes = new List<byte>();
            foreach (var t in tokens)
            {
                if (MergeRankBpe.TryParseByteToken(t, out var b)) { bytes.Add(b); continue; }
                Flush();
                result.Add(t);
            }
            Flush();
            return result;

            void Flush()
            {
                if (bytes.Count == 0) return;
                try { result.Add(Strict.GetString(bytes.ToArray())); }
                catch (DecoderFallbackException) { result.AddRange(Enumerable.Repeat("\uFFFD", bytes.Count)); }
                bytes.Clear();
            }
        }
    }

    public sealed record Fuse : DecodeStep
    {
        public override List<string> Apply(List<string> tokens) => [string.Concat(tokens)];
    }

    /// <summary>Removes up to <c>Start</c> leading and <c>Stop</c> trailing <c>Content</c> characters of every token.</summary>
    public sealed record Strip(char Content, int Start, int Stop) : DecodeStep
    {
        public override List<string> Apply(List<string> tokens) => tokens.Select(t =>
        {
            int a = 0, z = t.Length;
            while (a < Start && a < z && t[a] == Content) a++;
            int cut = 0;
            while (cut < Stop && z > a && t[z - 1] == Content) { z--; cut++; }
            return t[a..z];
        }).ToList();
    }

    /// <summary>Metaspace decoder: the replacement character becomes a space; the first token loses a leading space
    /// unless prepend_scheme is "never".</summary>
    public sealed record MetaspaceDecode(char Replacement, bool StripFirst) : DecodeStep
    {
        public override List<string> Apply(List<string> tokens) => tokens.Select((t, i) =>
        {
            t = t.Replace(Replacement, ' ');
            return i == 0 && StripFirst && t.StartsWith(' ') ? t[1..] : t;
        }).ToList();
    }
}

/// <summary>SentencePiece-style BPE from tokenizer.json (normalizer + optional Metaspace + <see cref="MergeRankBpe"/>).</summary>
internal sealed class SentencePieceJsonBackend : ITokenizerBackend, ITokenSequenceDecoder
{
    private readonly MergeRankBpe _bpe;
    private readonly Func<string, string>? _normalizer;
    private readonly Metaspace? _metaspace;
    private readonly IReadOnlyList<DecodeStep> _decoder;
    private readonly Dictionary<string, int> _vocab;
    private readonly Dictionary<int, string> _reverse;

    public SentencePieceJsonBackend(Dictionary<string, int> vocab, MergeRankBpe bpe, Func<string, string>? normalizer, Metaspace? metaspace, IReadOnlyList<DecodeStep> decoder)
    {
        _vocab = vocab;
        _bpe = bpe;
        _normalizer = normalizer;
        _metaspace = metaspace;
        _decoder = decoder;
        _reverse = new Dictionary<int, string>(vocab.Count);
        foreach (var (k, v) in vocab) _reverse.TryAdd(v, k);
        MaxId = vocab.Count == 0 ? -1 : vocab.Values.Max();
    }

    public int MaxId { get; }

    public void EncodeOrdinary(string segment, List<int> into, bool atTextStart)
    {
        var text = _normalizer is null ? segment : _normalizer(segment);
        if (_metaspace is null) { _bpe.Encode(text, into); return; }
        foreach (var piece in _metaspace.Apply(text, atTextStart)) _bpe.Encode(piece, into);
    }

    public string DecodeTokens(List<string> tokens)
    {
        foreach (var step in _decoder) tokens = step.Apply(tokens);
        return string.Concat(tokens);
    }

    public string DecodeOrdinary(IReadOnlyList<int> ids) =>
        DecodeTokens(ids.Select(IdToToken).Where(t => t is not null).ToList()!);

    public string TokenText(int id)
    {
        var piece = IdToToken(id);
        if (piece is null) return "";
        if (MergeRankBpe.TryParseByteToken(piece, out var b)) return Encoding.UTF8.GetString([b]);
        return _metaspace is { } m ? piece.Replace(m.Replacement, ' ') : piece.Replace('\u2581', ' ');
    }

    public string? IdToToken(int id) => _reverse.GetValueOrDefault(id);
    public int? TokenToId(string token) => _vocab.TryGetValue(token, out var id) ? id : null;
}
