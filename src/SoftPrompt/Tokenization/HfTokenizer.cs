using System.Text.Json;
using Microsoft.ML.Tokenizers;

namespace SoftPrompt.Tokenization;

/// <summary>
/// A tokenizer loaded from a Hugging Face model folder, reproducing <c>tokenizer(text).input_ids</c>.
/// Sources, first found wins: <c>tokenizer.json</c> (byte-level BPE such as GPT-2 / Llama 3 / Qwen, or SentencePiece-style
/// BPE such as Llama 2 / TinyLlama / Mistral: <c>▁</c> pieces, Prepend+Replace normalizer or Metaspace, byte fallback),
/// <c>vocab.json</c> + <c>merges.txt</c> (GPT-2 style), <c>tokenizer.model</c> (SentencePiece BPE). A tokenizer.json this
/// class cannot reproduce exactly (Unigram, WordPiece, unsupported components) falls back to tokenizer.model when
/// present, else is rejected.
/// Also read: tokenizer_config.json, special_tokens_map.json, generation_config.json and config.json (stop ids).
/// Nothing is executed and no pickle is read.
/// </summary>
public sealed class HfTokenizer
{
    public const string TokenizerJson = "tokenizer.json", VocabJson = "vocab.json", MergesTxt = "merges.txt",
        SentencePieceModel = "tokenizer.model", T5SentencePieceModel = "spiece.model", TokenizerConfigJson = "tokenizer_config.json",
        SpecialTokensMapJson = "special_tokens_map.json", GenerationConfigJson = "generation_config.json", ConfigJson = "config.json";

    private readonly ITokenizerBackend _backend;
    private readonly AddedTokenSplitter _splitter;
    private readonly Dictionary<int, AddedToken> _addedById;
    private readonly int[] _prefix, _suffix;

    public string Kind { get; }
    public int VocabSize { get; }
    public int? BosId { get; }
    public int? EosId { get; }
    public int? PadId { get; }
    public int? UnkId { get; }
    public string? BosToken { get; }
    public string? EosToken { get; }
    public string? PadToken { get; }
    public IReadOnlyList<int> EosIds { get; }
    public bool AddBos { get; }
    public bool AddEos { get; }
    /// <summary>All added tokens (special or not) by text; they are never split by the model.</summary>
    public IReadOnlyDictionary<string, int> SpecialTokens { get; }
    /// <summary>The added tokens with their flags, ordered by id.</summary>
    public IReadOnlyList<AddedToken> AddedTokens { get; }
    /// <summary>Ids prepended / appended when <c>addSpecialTokens</c> is true (from the post-processor and tokenizer_config).</summary>
    public IReadOnlyList<int> PrefixIds => _prefix;
    public IReadOnlyList<int> SuffixIds => _suffix;
    /// <summary>tokenizer_config.json <c>model_max_length</c> when it is a sensible integer.</summary>
    public long? ModelMaxLength { get; }

    private HfTokenizer(string kind, ITokenizerBackend backend, IEnumerable<AddedToken> added, Specials sp, int[] prefix, int[] suffix,
        IReadOnlyList<int> eosIds, long? modelMaxLength)
    {
        Kind = kind;
        _backend = backend;
        var addedList = added.GroupBy(a => a.Content).Select(g => g.Last()).OrderBy(a => a.Id).ToList();
        AddedTokens = addedList;
        _addedById = new Dictionary<int, AddedToken>();
        foreach (var a in addedList) _addedById[a.Id] = a;
        _splitter = new AddedTokenSplitter(addedList);
        SpecialTokens = addedList.ToDictionary(a => a.Content, a => a.Id, StringComparer.Ordinal);
        VocabSize = Math.Max(backend.MaxId, addedList.Count == 0 ? -1 : addedList.Max(a => a.Id)) + 1;
        (BosToken, BosId, EosToken, EosId, PadToken, PadId, UnkId) = (sp.Bos, sp.BosId, sp.Eos, sp.EosId, sp.Pad, sp.PadId, sp.UnkId);
        _prefix = prefix;
        _suffix = suffix;
        AddBos = BosId is int b && prefix.Contains(b);
        AddEos = EosId is int e && suffix.Contains(e);
        EosIds = eosIds;
        ModelMaxLength = modelMaxLength;
    }

    // ------------------------------------------------------------------ public API

    public int[] Encode(string text, bool addSpecialTokens = true)
    {
        ArgumentNullException.ThrowIfNull(text);
        var ids = new List<int>();
        if (addSpecialTokens) ids.AddRange(_prefix);
        bool atStart = true;
        foreach (var (segment, token) in _splitter.Split(text))
        {
            if (token is not null) ids.Add(token.Id);
            else _backend.EncodeOrdinary(segment, ids, atStart);
            atStart = false;
        }
        if (addSpecialTokens) ids.AddRange(_suffix);
        return ids.ToArray();
    }

    /// <summary>Decodes ids to text. Added tokens are written as their content (special ones dropped when
    /// <paramref name="skipSpecialTokens"/>). SentencePiece-style tokenizer.json files run their decoder chain over all
    /// tokens as HF does (so Llama 2 / Mistral give "&lt;s&gt; Hello" with special tokens and "Hello" without).
    /// No <c>clean_up_tokenization_spaces</c> is applied, so <c>Decode(Encode(s, false)) == s</c> for byte-level
    /// tokenizers and, for text without added tokens, for SentencePiece-style ones.</summary>
    public string Decode(IEnumerable<int> ids, bool skipSpecialTokens = false)
    {
        if (_backend is ITokenSequenceDecoder seq)
        {
            var tokens = new List<string>();
            foreach (var id in ids)
            {
                if (_addedById.TryGetValue(id, out var added)) { if (!(skipSpecialTokens && added.Special)) tokens.Add(added.Content); }
                else if (_backend.IdToToken(id) is { } piece) tokens.Add(piece); // HF skips unknown ids
            }
            return seq.DecodeTokens(tokens);
        }
        var sb = new System.Text.StringBuilder();
        var run = new List<int>();
        foreach (var id in ids)
        {
            if (_addedById.TryGetValue(id, out var a))
            {
                Flush();
                if (!(skipSpecialTokens && a.Special)) sb.Append(a.Content);
            }
            else run.Add(id);
        }
        Flush();
        return sb.ToString();

        void Flush()
        {
            if (run.Count == 0) return;
            sb.Append(_backend.DecodeOrdinary(run));
            run.Clear();
        }
    }

    /// <summary>Display text of one token, e.g. " world" (partial UTF-8 bytes show as U+FFFD).</summary>
    public string TokenText(int id) => _addedById.TryGetValue(id, out var a) ? a.Content : _backend.TokenText(id);

    public string? IdToToken(int id) => _addedById.TryGetValue(id, out var a) ? a.Content : _backend.IdToToken(id);

    public int? TokenToId(string token) => SpecialTokens.TryGetValue(token, out var id) ? id : _backend.TokenToId(token);

    public override string ToString() => $"{Kind}, vocab {VocabSize}, bos {BosId?.ToString() ?? "-"}, eos {EosId?.ToString() ?? "-"}";

    // ------------------------------------------------------------------ loading

    /// <summary>Loads the tokenizer of <paramref name="modelDir"/>; throws <see cref="TokenizerLoadException"/> when
    /// files are absent, malformed or unsupported.</summary>
    public static HfTokenizer Load(string modelDir)
    {
        if (!Directory.Exists(modelDir)) throw new TokenizerLoadException($"{modelDir}: folder not found", modelDir);
        return TryLoad(modelDir) ?? throw new TokenizerLoadException(
            $"{modelDir}: no tokenizer files (expected {TokenizerJson}, {VocabJson} + {MergesTxt}, or {SentencePieceModel})", modelDir);
    }

    /// <summary>Null when the folder holds no tokenizer files at all; throws on malformed files.</summary>
    public static HfTokenizer? TryLoad(string modelDir)
    {
        if (!Directory.Exists(modelDir)) return null;
        string P(string n) => Path.Combine(modelDir, n);
        // T5 names its SentencePiece (Unigram) model spiece.model.
        string spFile = File.Exists(P(SentencePieceModel)) || !File.Exists(P(T5SentencePieceModel)) ? SentencePieceModel : T5SentencePieceModel;
        bool hasJson = File.Exists(P(TokenizerJson)), hasVocab = File.Exists(P(VocabJson)), hasMerges = File.Exists(P(MergesTxt)),
             hasSp = File.Exists(P(spFile));
        if (!hasJson && !hasVocab && !hasMerges && !hasSp) return null;

        var cfg = new ConfigFiles(modelDir);
        if (hasJson)
        {
            var r = TryLoadTokenizerJson(P(TokenizerJson), cfg, out var unsupported);
            if (r != null) return r;
            if (hasSp) return LoadSentencePiece(P(spFile), cfg, $"; {TokenizerJson} not used: {unsupported}");
            throw new TokenizerLoadException(
                $"{P(TokenizerJson)}: unsupported tokenizer ({unsupported}) and no {SentencePieceModel} to fall back to", P(TokenizerJson));
        }
        if (hasVocab || hasMerges)
        {
            if (!hasVocab) throw new TokenizerLoadException($"{P(MergesTxt)} found but {P(VocabJson)} is missing", P(VocabJson));
            if (!hasMerges) throw new TokenizerLoadException($"{P(VocabJson)} found but {P(MergesTxt)} is missing", P(MergesTxt));
            return LoadVocabMerges(P(VocabJson), P(MergesTxt), cfg);
        }
        return LoadSentencePiece(P(spFile), cfg, "");
    }

    private static HfTokenizer? TryLoadTokenizerJson(string file, ConfigFiles cfg, out string unsupported)
    {
        unsupported = "";
        using var doc = HfJson.Read(file);
        var root = doc.RootElement;
        if (root.ValueKind != JsonValueKind.Object) throw new TokenizerLoadException($"{file}: top level must be an object", file);
        var model = HfJson.RequireObject(root, "model", file, "model");
        var type = HfJson.String(model, "type", file, "model.type");
        if (type is null)
        {
            // Old files omit model.type; BPE is recognisable by its merges.
            type = HfJson.Has(model, "merges", out _) ? "BPE" : null;
        }
        if (type == "Unigram") return BuildUnigramJson(root, model, file, cfg, out unsupported);
        if (type != "BPE") { unsupported = $"model.type '{type ?? "(missing)"}'"; return null; }
        if (HfJson.Has(model, "dropout", out var dropout) && dropout.ValueKind == JsonValueKind.Number && dropout.GetDouble() > 0)
        {
            unsupported = "BPE dropout"; return null;
        }
        foreach (var k in new[] { "continuing_subword_prefix", "end_of_word_suffix" })
            if (!string.IsNullOrEmpty(HfJson.String(model, k, file, "model." + k))) { unsupported = $"model.{k}"; return null; }

        var vocab = ParseVocab(model, file);
        var merges = ParseMerges(model, file);
        var added = ParseAddedTokens(root, file);
        bool ignoreMerges = HfJson.Bool(model, "ignore_merges", file, "model.ignore_merges") ?? false;
        var unkToken = HfJson.String(model, "unk_token", file, "model.unk_token");

        // Byte-level BPE (GPT-2, Llama 3, Qwen) has a ByteLevel pre-tokenizer; everything else with a BPE model is
        // treated as character-level BPE, SentencePiece style (Llama 2, Mistral: byte_fallback, Metaspace / Prepend).
        bool byteLevel = HfJson.Has(root, "pre_tokenizer", out var preEl) && ContainsType(preEl, "ByteLevel");
        bool byteFallback = HfJson.Bool(model, "byte_fallback", file, "model.byte_fallback") ?? false;
        if (byteFallback || !byteLevel)
        {
            if (byteLevel) { unsupported = "BPE with both byte_fallback and a ByteLevel pre_tokenizer"; return null; }
            return BuildSentencePieceJson(root, model, file, vocab, merges, added, ignoreMerges, unkToken, byteFallback, cfg, out unsupported);
        }

        Func<string, string>? normalizer;
        TextPipeline pipeline;
        try
        {
            normalizer = TextPipeline.ParseNormalizer(root, file);
            var pre = TextPipeline.ParsePreTokenizer(root, file);
            pipeline = new TextPipeline { Normalizer = normalizer, Splitters = pre.Splitters, SawByteLevel = pre.SawByteLevel };
        }
        catch (UnsupportedComponentException e) { unsupported = e.Message; return null; }
        if (!pipeline.SawByteLevel) { unsupported = "BPE without a ByteLevel pre_tokenizer (not byte-level)"; return null; }
        foreach (var (m, i) in merges.Select((m, i) => (m, i)))
            if (m.A.Contains(' ') || m.B.Contains(' '))
                throw new TokenizerLoadException($"{file}: key 'model.merges[{i}]' holds a space, which a byte-level vocabulary never has", file);

        ITokenizerBackend backend;
        try { backend = new ByteLevelBpeBackend(vocab, merges.Select(m => m.A + " " + m.B), pipeline, ignoreMerges); }
        catch (Exception e) when (e is ArgumentException or InvalidOperationException or FormatException)
        {
            throw new TokenizerLoadException($"{file}: the BPE model could not be built ({e.Message})", file, e);
        }

        int? Lookup(string tok) => added.LastOrDefault(a => a.Content == tok)?.Id ?? backend.TokenToId(tok);
        var (prefix, suffix) = ParsePostProcessor(root, file, Lookup);
        var sp0 = cfg.ResolveSpecials(Lookup, defaultUnk: unkToken);
        // GPT-2-style files without a config: <|endoftext|> is bos and eos.
        if (sp0.Bos is null && sp0.Eos is null && Lookup("<|endoftext|>") is int eot && cfg.TokenizerConfig is null)
            sp0 = sp0 with { Bos = "<|endoftext|>", BosId = eot, Eos = "<|endoftext|>", EosId = eot };
        (prefix, suffix) = cfg.ApplyAddFlags(prefix, suffix, sp0, defaultBos: null, defaultEos: null);

        var kind = "byte-level BPE (tokenizer.json)";
        return new HfTokenizer(kind, backend, added.Concat(cfg.ExtraAddedTokens(Lookup)), sp0, prefix, suffix,
            cfg.EosIds(sp0.EosId, Lookup), cfg.ModelMaxLength);
    }

    /// <summary>A Unigram tokenizer.json (T5, Flan-T5): rebuilt as a SentencePiece model proto for Microsoft.ML.Tokenizers'
    /// Unigram segmentation; special tokens (EOS after the text for T5) come from the post-processor as for BPE.</summary>
    private static HfTokenizer? BuildUnigramJson(JsonElement root, JsonElement model, string file, ConfigFiles cfg, out string unsupported)
    {
        unsupported = "";
        var added = ParseAddedTokens(root, file);
        byte[] proto;
        try { proto = UnigramModel.ProtoFromTokenizerJson(root, model, file, added); }
        catch (UnsupportedComponentException e) { unsupported = e.Message; return null; }
        SentencePieceTokenizer sp;
        try { sp = SentencePieceTokenizer.Create(new MemoryStream(proto), addBeginningOfSentence: false, addEndOfSentence: false); }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            throw new TokenizerLoadException($"{file}: the Unigram model could not be built ({e.GetType().Name}: {e.Message})", file, e);
        }
        var backend = new SentencePieceBackend(sp);
        int? Lookup(string tok) => added.LastOrDefault(a => a.Content == tok)?.Id ?? backend.TokenToId(tok);
        var (prefix, suffix) = ParsePostProcessor(root, file, Lookup);
        var specials = cfg.ResolveSpecials(Lookup, defaultUnk: sp.UnknownToken);
        (prefix, suffix) = cfg.ApplyAddFlags(prefix, suffix, specials, defaultBos: null, defaultEos: null);
        return new HfTokenizer("SentencePiece Unigram (tokenizer.json)", backend, added.Concat(cfg.ExtraAddedTokens(Lookup)), specials, prefix, suffix,
            cfg.EosIds(specials.EosId, Lookup), cfg.ModelMaxLength);
    }

    private static HfTokenizer? BuildSentencePieceJson(JsonElement root, JsonElement model, string file, Dictionary<string, int> vocab,
        List<(string A, string B)> merges, List<AddedToken> added, bool ignoreMerges, string? unkToken, bool byteFallback, ConfigFiles cfg,
        out string unsupported)
    {
        unsupported = "";
        Func<string, string>? normalizer;
        Metaspace? metaspace;
        List<DecodeStep> decoder;
        try
        {
            normalizer = TextPipeline.ParseNormalizer(root, file);
            metaspace = ParseMetaspace(root, file);
            decoder = ParseDecoder(root, file);
        }
        catch (UnsupportedComponentException e) { unsupported = e.Message; return null; }

        for (int i = 0; i < merges.Count; i++)
            foreach (var part in new[] { merges[i].A, merges[i].B, merges[i].A + merges[i].B })
                if (!vocab.ContainsKey(part))
                    throw new TokenizerLoadException($"{file}: key 'model.merges[{i}]' uses '{part}', which is not in model.vocab", file);
        int? unkId = null;
        if (unkToken is not null)
            unkId = vocab.TryGetValue(unkToken, out var u) ? u
                : throw new TokenizerLoadException($"{file}: key 'model.unk_token' names '{unkToken}', which is not in model.vocab", file);
        bool fuseUnk = HfJson.Bool(model, "fuse_unk", file, "model.fuse_unk") ?? false;
        var bpe = new MergeRankBpe(vocab, merges, byteFallback, unkId, fuseUnk, ignoreMerges);
        var backend = new SentencePieceJsonBackend(vocab, bpe, normalizer, metaspace, decoder);

        int? Lookup(string tok) => added.LastOrDefault(a => a.Content == tok)?.Id ?? backend.TokenToId(tok);
        var (prefix, suffix) = ParsePostProcessor(root, file, Lookup);
        var sp = cfg.ResolveSpecials(Lookup, defaultUnk: unkToken);
        (prefix, suffix) = cfg.ApplyAddFlags(prefix, suffix, sp, defaultBos: null, defaultEos: null);
        var kind = byteFallback ? "SentencePiece-style BPE with byte fallback (tokenizer.json)" : "character-level BPE (tokenizer.json)";
        return new HfTokenizer(kind, backend, added.Concat(cfg.ExtraAddedTokens(Lookup)), sp, prefix, suffix,
            cfg.EosIds(sp.EosId, Lookup), cfg.ModelMaxLength);
    }

    /// <summary>pre_tokenizer of a character-level BPE: none, or Metaspace (alone or as the only item of a Sequence).</summary>
    private static Metaspace? ParseMetaspace(JsonElement root, string file)
    {
        if (!HfJson.Has(root, "pre_tokenizer", out var p)) return null;
        var key = "pre_tokenizer";
        var type = HfJson.String(p, "type", file, key + ".type");
        if (type == "Sequence" && HfJson.Has(p, "pretokenizers", out var list) && list.ValueKind == JsonValueKind.Array && list.GetArrayLength() <= 1)
        {
            if (list.GetArrayLength() == 0) return null;
            (p, key) = (list[0], key + ".pretokenizers[0]");
            type = HfJson.String(p, "type", file, key + ".type");
        }
        // Gemma: Split on " " after a normalizer that has already replaced every " " with "▁": the split never
        // matches, so the pre-tokenizer changes nothing (HF normalizes before it pre-tokenizes).
        if (type == "Split" && IsNoOpSplit(root, p, file, key)) return null;
        if (type != "Metaspace")
            throw new UnsupportedComponentException($"pre_tokenizer type '{type}' with a non-byte-level BPE model (key '{key}.type')");
        return new Metaspace(ReplacementChar(p, file, key), PrependScheme(p, file, key), HfJson.Bool(p, "split", file, key + ".split") ?? true);
    }

    /// <summary>A Split on a literal string that the normalizer (a Replace of that string, alone or last in a Sequence)
    /// has removed from every input.</summary>
    private static bool IsNoOpSplit(JsonElement root, JsonElement split, string file, string key)
    {
        static string? Literal(JsonElement e) =>
            e.ValueKind == JsonValueKind.Object && e.TryGetProperty("pattern", out var pat) && pat.ValueKind == JsonValueKind.Object
            && pat.TryGetProperty("String", out var str) && str.ValueKind == JsonValueKind.String ? str.GetString() : null;
        var literal = Literal(split);
        if (string.IsNullOrEmpty(literal) || (HfJson.Bool(split, "invert", file, key + ".invert") ?? false)) return false;
        if (!HfJson.Has(root, "normalizer", out var n)) return false;
        if (HfJson.String(n, "type", file, "normalizer.type") == "Sequence" && HfJson.Has(n, "normalizers", out var list)
            && list.ValueKind == JsonValueKind.Array && list.GetArrayLength() > 0)
            n = list[list.GetArrayLength() - 1];
        if (HfJson.String(n, "type", file, "normalizer.type") != "Replace" || Literal(n) != literal) return false;
        var content = HfJson.String(n, "content", file, "normalizer.content");
        return content is not null && !content.Contains(literal);
    }

    private static char ReplacementChar(JsonElement e, string file, string key)
    {
        var r = HfJson.String(e, "replacement", file, key + ".replacement") ?? "\u2581";
        if (r.Length != 1) throw new TokenizerLoadException($"{file}: key '{key}.replacement' must be one character", file);
        return r[0];
    }

    private static string PrependScheme(JsonElement e, string file, string key)
    {
        var scheme = HfJson.String(e, "prepend_scheme", file, key + ".prepend_scheme");
        if (scheme is null) return HfJson.Bool(e, "add_prefix_space", file, key + ".add_prefix_space") ?? true ? "always" : "never";
        return scheme is "always" or "first" or "never" ? scheme
            : throw new TokenizerLoadException($"{file}: key '{key}.prepend_scheme' must be \"always\", \"first\" or \"never\", got \"{scheme}\"", file);
    }

    /// <summary>The "decoder" of a character-level BPE: Replace (string pattern), ByteFallback, Fuse, Strip, Metaspace, in a Sequence.</summary>
    private static List<DecodeStep> ParseDecoder(JsonElement root, string file)
    {
        var steps = new List<DecodeStep>();
        if (!HfJson.Has(root, "decoder", out var d)) throw new UnsupportedComponentException("no decoder (key 'decoder')");
        Add(d, "decoder");
        return steps;

        void Add(JsonElement e, string key)
        {
            var type = HfJson.String(e, "type", file, key + ".type");
            switch (type)
            {
                case "Sequence":
                    if (!HfJson.Has(e, "decoders", out var list) || list.ValueKind != JsonValueKind.Array)
                        throw new TokenizerLoadException($"{file}: key '{key}.decoders' must be an array", file);
                    int i = 0;
                    foreach (var sub in list.EnumerateArray()) Add(sub, $"{key}.decoders[{i++}]");
                    break;
                case "Replace":
                {
                    var pat = HfJson.RequireObject(e, "pattern", file, key + ".pattern");
                    var str = HfJson.String(pat, "String", file, key + ".pattern.String")
                              ?? throw new UnsupportedComponentException($"decoder Replace without a String pattern (key '{key}.pattern')");
                    var content = HfJson.String(e, "content", file, key + ".content")
                                  ?? throw new TokenizerLoadException($"{file}: key '{key}.content' is missing", file);
                    steps.Add(new DecodeStep.Replace(str, content));
                    break;
                }
                case "ByteFallback": steps.Add(new DecodeStep.ByteFallback()); break;
                case "Fuse": steps.Add(new DecodeStep.Fuse()); break;
                case "Strip":
                {
                    var c = HfJson.String(e, "content", file, key + ".content") ?? " ";
                    if (c.Length != 1) throw new TokenizerLoadException($"{file}: key '{key}.content' must be one character", file);
                    int Count(string k) => HfJson.Has(e, k, out var v) ? HfJson.Int(v, file, $"{key}.{k}") : 0;
                    steps.Add(new DecodeStep.Strip(c[0], Count("start"), Count("stop")));
                    break;
                }
                case "Metaspace":
                    steps.Add(new DecodeStep.MetaspaceDecode(ReplacementChar(e, file, key), PrependScheme(e, file, key) != "never"));
                    break;
                default:
                    throw new UnsupportedComponentException($"decoder type '{type}' (key '{key}.type')");
            }
        }
    }

    private static bool ContainsType(JsonElement e, string type)
    {
        if (e.ValueKind == JsonValueKind.Object)
            return e.EnumerateObject().Any(p => (p.Name == "type" && p.Value.ValueKind == JsonValueKind.String && p.Value.GetString() == type) || ContainsType(p.Value, type));
        return e.ValueKind == JsonValueKind.Array && e.EnumerateArray().Any(x => ContainsType(x, type));
    }

    private static Dictionary<string, int> ParseVocab(JsonElement model, string file)
    {
        var vocabEl = HfJson.RequireObject(model, "vocab", file, "model.vocab");
        var vocab = new Dictionary<string, int>(StringComparer.Ordinal);
        foreach (var p in vocabEl.EnumerateObject()) vocab[p.Name] = HfJson.Int(p.Value, file, $"model.vocab[\"{p.Name}\"]");
        return vocab;
    }

    /// <summary>model.merges as "left right" strings or ["left", "right"] arrays, in rank order.</summary>
    private static List<(string A, string B)> ParseMerges(JsonElement model, string file)
    {
        if (!HfJson.Has(model, "merges", out var mergesEl) || mergesEl.ValueKind != JsonValueKind.Array)
            throw new TokenizerLoadException($"{file}: key 'model.merges' is missing or is not an array", file);
        var merges = new List<(string, string)>(mergesEl.GetArrayLength());
        int mi = 0;
        foreach (var m in mergesEl.EnumerateArray())
        {
            string a, b;
            if (m.ValueKind == JsonValueKind.String)
            {
                var s = m.GetString()!;
                int sp = s.IndexOf(' ');
                if (sp <= 0 || sp == s.Length - 1 || s.IndexOf(' ', sp + 1) >= 0)
                    throw new TokenizerLoadException($"{file}: key 'model.merges[{mi}]' must be \"left right\", got \"{s}\"", file);
                (a, b) = (s[..sp], s[(sp + 1)..]);
            }
            else if (m.ValueKind == JsonValueKind.Array && m.GetArrayLength() == 2 && m[0].ValueKind == JsonValueKind.String && m[1].ValueKind == JsonValueKind.String)
            {
                (a, b) = (m[0].GetString()!, m[1].GetString()!);
                if (a.Length == 0 || b.Length == 0)
                    throw new TokenizerLoadException($"{file}: key 'model.merges[{mi}]' holds an empty part", file);
            }
            else throw new TokenizerLoadException($"{file}: key 'model.merges[{mi}]' must be a string or an array of two strings", file);
            merges.Add((a, b));
            mi++;
        }
        return merges;
    }

    private static List<AddedToken> ParseAddedTokens(JsonElement root, string file)
    {
        var added = new List<AddedToken>();
        if (!HfJson.Has(root, "added_tokens", out var at)) return added;
        if (at.ValueKind != JsonValueKind.Array) throw new TokenizerLoadException($"{file}: key 'added_tokens' must be an array", file);
        int i = 0;
        foreach (var t in at.EnumerateArray())
        {
            var key = $"added_tokens[{i++}]";
            if (!HfJson.Has(t, "id", out var idEl)) throw new TokenizerLoadException($"{file}: key '{key}.id' is missing", file);
            var content = HfJson.String(t, "content", file, key + ".content")
                          ?? throw new TokenizerLoadException($"{file}: key '{key}.content' is missing", file);
            int id = HfJson.Int(idEl, file, key + ".id");
            // An empty added token would match at every position of every text (the splitter cannot make progress on it).
            if (content.Length == 0) throw new TokenizerLoadException($"{file}: key '{key}.content' (added token id {id}) is the empty string; an added token needs at least one character", file);
            added.Add(new AddedToken(id, content,
                HfJson.Bool(t, "special", file, key + ".special") ?? false,
                HfJson.Bool(t, "lstrip", file, key + ".lstrip") ?? false,
                HfJson.Bool(t, "rstrip", file, key + ".rstrip") ?? false));
        }
        return added;
    }

    private static (int[] Prefix, int[] Suffix) ParsePostProcessor(JsonElement root, string file, Func<string, int?> lookup)
    {
        var prefix = new List<int>();
        var suffix = new List<int>();
        if (HfJson.Has(root, "post_processor", out var pp)) Add(pp, "post_processor");
        return (prefix.ToArray(), suffix.ToArray());

        int Resolve(string tok, string key) => lookup(tok) ?? throw new TokenizerLoadException($"{file}: key '{key}' names token '{tok}' that is not in the vocabulary", file);

        void Add(JsonElement p, string key)
        {
            var type = HfJson.String(p, "type", file, key + ".type");
            switch (type)
            {
                case "ByteLevel": break; // only offsets
                case "Sequence":
                    if (!HfJson.Has(p, "processors", out var list) || list.ValueKind != JsonValueKind.Array)
                        throw new TokenizerLoadException($"{file}: key '{key}.processors' must be an array", file);
                    int i = 0;
                    foreach (var sub in list.EnumerateArray()) Add(sub, $"{key}.processors[{i++}]");
                    break;
                case "TemplateProcessing":
                {
                    if (!HfJson.Has(p, "single", out var single) || single.ValueKind != JsonValueKind.Array)
                        throw new TokenizerLoadException($"{file}: key '{key}.single' must be an array", file);
                    HfJson.Has(p, "special_tokens", out var specials);
                    bool afterSequence = false;
                    int j = 0;
                    foreach (var item in single.EnumerateArray())
                    {
                        var ik = $"{key}.single[{j++}]";
                        if (HfJson.Has(item, "Sequence", out _)) { afterSequence = true; continue; }
                        if (!HfJson.Has(item, "SpecialToken", out var st))
                            throw new TokenizerLoadException($"{file}: key '{ik}' must hold 'Sequence' or 'SpecialToken'", file);
                        var name = HfJson.String(st, "id", file, ik + ".SpecialToken.id")
                                   ?? throw new TokenizerLoadException($"{file}: key '{ik}.SpecialToken.id' is missing", file);
                        var ids = new List<int>();
                        if (specials.ValueKind == JsonValueKind.Object && HfJson.Has(specials, name, out var spEntry)
                            && HfJson.Has(spEntry, "ids", out var idsEl) && idsEl.ValueKind == JsonValueKind.Array)
                        {
                            int k = 0;
                            foreach (var x in idsEl.EnumerateArray()) ids.Add(HfJson.Int(x, file, $"{key}.special_tokens[\"{name}\"].ids[{k++}]"));
                        }
                        else ids.Add(Resolve(name, ik + ".SpecialToken.id"));
                        (afterSequence ? suffix : prefix).AddRange(ids);
                    }
                    break;
                }
                case "RobertaProcessing":
                case "BertProcessing":
                {
                    int Tok(string k)
                    {
                        if (!HfJson.Has(p, k, out var pair) || pair.ValueKind != JsonValueKind.Array || pair.GetArrayLength() != 2)
                            throw new TokenizerLoadException($"{file}: key '{key}.{k}' must be [token, id]", file);
                        return HfJson.Int(pair[1], file, $"{key}.{k}[1]");
                    }
                    prefix.Add(Tok("cls"));
                    suffix.Add(Tok("sep"));
                    break;
                }
                default:
                    throw new TokenizerLoadException($"{file}: unsupported post_processor type '{type}' (key '{key}.type')", file);
            }
        }
    }

    private static HfTokenizer LoadVocabMerges(string vocabFile, string mergesFile, ConfigFiles cfg)
    {
        var vocab = new Dictionary<string, int>(StringComparer.Ordinal);
        using (var doc = HfJson.Read(vocabFile))
        {
            if (doc.RootElement.ValueKind != JsonValueKind.Object) throw new TokenizerLoadException($"{vocabFile}: must be a JSON object {{token: id}}", vocabFile);
            foreach (var p in doc.RootElement.EnumerateObject()) vocab[p.Name] = HfJson.Int(p.Value, vocabFile, $"\"{p.Name}\"");
        }
        var merges = new List<string>();
        int lineNo = 0;
        IO.InputFile.RequireRegular(mergesFile);
        foreach (var raw in File.ReadLines(mergesFile))
        {
            lineNo++;
            var line = raw.TrimEnd('\r');
            if (lineNo == 1 && line.StartsWith("#version", StringComparison.Ordinal)) continue;
            if (line.Length == 0) continue;
            var parts = line.Split(' ');
            if (parts.Length != 2 || parts[0].Length == 0 || parts[1].Length == 0)
                throw new TokenizerLoadException($"{mergesFile}: line {lineNo} must be \"left right\", got \"{line}\"", mergesFile);
            merges.Add(line);
        }
        bool prefixSpace = cfg.Bool("add_prefix_space") ?? false;
        var regex = new System.Text.RegularExpressions.Regex(ByteLevel.Gpt2Pattern,
            System.Text.RegularExpressions.RegexOptions.CultureInvariant | System.Text.RegularExpressions.RegexOptions.Compiled);
        var pipeline = new TextPipeline
        {
            SawByteLevel = true,
            Splitters = [s => TextPipeline.SplitIsolated(prefixSpace && !s.StartsWith(' ') ? " " + s : s, regex)],
        };
        ITokenizerBackend backend;
        try { backend = new ByteLevelBpeBackend(vocab, merges, pipeline, ignoreMerges: false); }
        catch (Exception e) when (e is ArgumentException or InvalidOperationException or FormatException)
        {
            throw new TokenizerLoadException($"{vocabFile} / {mergesFile}: the BPE model could not be built ({e.Message})", mergesFile, e);
        }
        int? Lookup(string t) => backend.TokenToId(t) ?? cfg.AddedTokenId(t);
        var sp = cfg.ResolveSpecials(Lookup, defaultUnk: null);
        if (sp.Bos is null && sp.Eos is null && Lookup("<|endoftext|>") is int eot)
            sp = sp with { Bos = "<|endoftext|>", BosId = eot, Eos = "<|endoftext|>", EosId = eot, UnkId = sp.UnkId ?? (cfg.TokenizerConfig is null ? eot : null) };
        // GPT2Tokenizer: add_bos_token defaults to false; nothing is appended.
        var (prefix, suffix) = cfg.ApplyAddFlags(Array.Empty<int>(), Array.Empty<int>(), sp, defaultBos: false, defaultEos: false);
        var added = cfg.ExtraAddedTokens(Lookup).ToList();
        foreach (var (tok, id) in new[] { (sp.Bos, sp.BosId), (sp.Eos, sp.EosId), (sp.Pad, sp.PadId) })
            if (tok != null && id is int i && !added.Any(a => a.Content == tok)) added.Add(new AddedToken(i, tok, true));
        return new HfTokenizer("byte-level BPE (vocab.json + merges.txt)", backend, added, sp, prefix, suffix, cfg.EosIds(sp.EosId, Lookup), cfg.ModelMaxLength);
    }

    private static HfTokenizer LoadSentencePiece(string modelFile, ConfigFiles cfg, string note)
    {
        bool t5 = Path.GetFileName(modelFile) == T5SentencePieceModel;
        SentencePieceTokenizer sp;
        try
        {
            IO.InputFile.RequireRegular(modelFile);
            // spiece.model (T5) is a Unigram model: the general reader; tokenizer.model stays on the Llama reader.
            if (t5)
            {
                using var ms = new MemoryStream(UnigramModel.WithBosAlias(File.ReadAllBytes(modelFile)));
                sp = SentencePieceTokenizer.Create(ms, addBeginningOfSentence: false, addEndOfSentence: false);
            }
            else
            {
                using var s = File.OpenRead(modelFile);
                sp = LlamaTokenizer.Create(s, addBeginOfSentence: false, addEndOfSentence: false);
            }
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            throw new TokenizerLoadException($"{modelFile}: not a SentencePiece {(t5 ? "Unigram" : "BPE")} model this loader can read ({e.GetType().Name}: {e.Message})", modelFile, e);
        }
        var backend = new SentencePieceBackend(sp);
        int? Lookup(string t) => backend.TokenToId(t) ?? cfg.AddedTokenId(t);
        var specials = cfg.ResolveSpecials(Lookup, defaultUnk: sp.UnknownToken);
        if (!t5 && specials.Bos is null && sp.BeginningOfSentenceToken is { } b) specials = specials with { Bos = b, BosId = sp.BeginningOfSentenceId };
        if (specials.Eos is null && sp.EndOfSentenceToken is { } e2) specials = specials with { Eos = e2, EosId = sp.EndOfSentenceId };
        if (specials.UnkId is null && sp.UnknownToken is not null) specials = specials with { UnkId = sp.UnknownId };
        // LlamaTokenizer: add_bos_token defaults to true, add_eos_token to false; T5Tokenizer appends EOS and has no BOS.
        var (prefix, suffix) = cfg.ApplyAddFlags(Array.Empty<int>(), Array.Empty<int>(), specials, defaultBos: !t5, defaultEos: t5);
        var added = cfg.ExtraAddedTokens(Lookup).ToList();
        // SentencePiece control tokens (<s>, </s>, <unk>) are split out of text the way HF's added tokens are.
        foreach (var (tok, id) in new[] { (specials.Bos, specials.BosId), (specials.Eos, specials.EosId), (sp.UnknownToken, (int?)sp.UnknownId) })
            if (tok != null && id is int i && !added.Any(a => a.Content == tok)) added.Add(new AddedToken(i, tok, true));
        return new HfTokenizer($"SentencePiece ({Path.GetFileName(modelFile)})" + note, backend, added, specials, prefix, suffix,
            cfg.EosIds(specials.EosId, Lookup), cfg.ModelMaxLength);
    }
}
