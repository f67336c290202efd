using System.Text;
using System.Text.Json;
using System.Text.RegularExpressions;

namespace SoftPrompt.Tokenization;

/// <summary>An added token as Hugging Face describes it (tokenizer.json "added_tokens" or tokenizer_config "added_tokens_decoder").</summary>
public sealed record AddedToken(int Id, string Content, bool Special, bool LStrip = false, bool RStrip = false);

/// <summary>Splits text into ordinary segments and added tokens, the way HF does before normalisation:
/// leftmost match first, the longest token when several start at the same place.</summary>
internal sealed class AddedTokenSplitter
{
    private readonly Regex? _regex;
    private readonly Dictionary<string, AddedToken> _byContent;

    public AddedTokenSplitter(IEnumerable<AddedToken> tokens)
    {
        _byContent = new Dictionary<string, AddedToken>(StringComparer.Ordinal);
        foreach (var t in tokens) if (t.Content.Length > 0) _byContent[t.Content] = t;
        if (_byContent.Count == 0) return;
        // .NET alternation takes the first alternative that matches at the leftmost position: sort longest first.
        var alternatives = _byContent.Keys.OrderByDescending(k => k.Length).ThenBy(k => k, StringComparer.Ordinal).Select(Regex.Escape);
        _regex = new Regex(string.Join("|", alternatives), RegexOptions.CultureInvariant);
    }

    /// <summary>Yields (segment, null) for ordinary text and (content, token) for added tokens, in order.</summary>
    public IEnumerable<(string Text, AddedToken? Token)> Split(string text)
    {
        if (_regex is null) { if (text.Length > 0) yield return (text, null); yield break; }
        int pos = 0;
        var m = _regex.Match(text);
        while (m.Success)
        {
            var tok = _byContent[m.Value];
            int start = m.Index, end = m.Index + m.Length;
            if (tok.LStrip) while (start > pos && char.IsWhiteSpace(text[start - 1])) start--;
            if (tok.RStrip) while (end < text.Length && char.IsWhiteSpace(text[end])) end++;
            if (start > pos) yield return (text[pos..start], null);
            yield return (tok.Content, tok);
            pos = end;
            m = _regex.Match(text, pos);
        }
        if (pos < text.Length) yield return (text[pos..], null);
    }
}

/// <summary>The normalizer and pre-tokenizer of a byte-level BPE tokenizer.json, implemented here so that the
/// behaviour is exactly what the JSON says (unsupported components are rejected, never approximated).</summary>
internal sealed class TextPipeline
{
    public Func<string, string>? Normalizer { get; init; }
    public required List<Func<string, IEnumerable<string>>> Splitters { get; init; }
    public bool SawByteLevel { get; init; }

    public IEnumerable<string> PreTokenize(string text)
    {
        IEnumerable<string> pieces = new[] { text };
        foreach (var split in Splitters)
        {
            var current = pieces;
            pieces = current.SelectMany(split).Where(p => p.Length > 0).ToList();
        }
        return pieces;
    }

    public static Regex CompileHfRegex(string pattern, string file, string key)
    {
        try { return new Regex(pattern, RegexOptions.CultureInvariant | RegexOptions.Compiled); }
        catch (ArgumentException e)
        {
            throw new TokenizerLoadException($"{file}: key '{key}' holds a regex .NET cannot compile ({e.Message}): {pattern}", file, e);
        }
    }

    public static Func<string, string>? ParseNormalizer(JsonElement root, string file)
    {
        if (!HfJson.Has(root, "normalizer", out var n)) return null;
        return NormalizerOf(n, file, "normalizer");
    }

    private static Func<string, string>? NormalizerOf(JsonElement n, string file, string key)
    {
        var type = HfJson.String(n, "type", file, key + ".type");
        switch (type)
        {
            case "NFC": return s => s.Normalize(NormalizationForm.FormC);
            case "NFD": return s => s.Normalize(NormalizationForm.FormD);
            case "NFKC": return s => s.Normalize(NormalizationForm.FormKC);
            case "NFKD": return s => s.Normalize(NormalizationForm.FormKD);
            case "Lowercase": return s => s.ToLowerInvariant();
            case "Sequence":
                if (!HfJson.Has(n, "normalizers", out var list) || list.ValueKind != JsonValueKind.Array)
                    throw new TokenizerLoadException($"{file}: key '{key}.normalizers' must be an array", file);
                var parts = list.EnumerateArray().Select((e, i) => NormalizerOf(e, file, $"{key}.normalizers[{i}]")).Where(f => f != null).ToList();
                return parts.Count == 0 ? null : s => { foreach (var f in parts) s = f!(s); return s; };
            default:
                throw new UnsupportedComponentException($"normalizer type '{type}' (key '{key}.type')");
        }
    }

    public static TextPipeline ParsePreTokenizer(JsonElement root, string file)
    {
        var splitters = new List<Func<string, IEnumerable<string>>>();
        bool byteLevel = false;
        if (HfJson.Has(root, "pre_tokenizer", out var p)) Add(p, "pre_tokenizer");
        return new TextPipeline { Splitters = splitters, SawByteLevel = byteLevel };

        void Add(JsonElement e, string key)
        {
            var type = HfJson.String(e, "type", file, key + ".type");
            switch (type)
            {
                case "Sequence":
                    if (!HfJson.Has(e, "pretokenizers", out var list) || list.ValueKind != JsonValueKind.Array)
                        throw new TokenizerLoadException($"{file}: key '{key}.pretokenizers' must be an array", file);
                    int i = 0;
                    foreach (var sub in list.EnumerateArray()) Add(sub, $"{key}.pretokenizers[{i++}]");
                    break;
                case "ByteLevel":
                {
                    byteLevel = true;
                    bool prefix = HfJson.Bool(e, "add_prefix_space", file, key + ".add_prefix_space") ?? false;
                    bool useRegex = HfJson.Bool(e, "use_regex", file, key + ".use_regex") ?? true;
                    var regex = useRegex ? new Regex(ByteLevel.Gpt2Pattern, RegexOptions.CultureInvariant | RegexOptions.Compiled) : null;
                    splitters.Add(s =>
                    {
                        if (prefix && !s.StartsWith(' ')) s = " " + s;
                        return regex is null ? new[] { s } : SplitIsolated(s, regex);
                    });
                    break;
                }
                case "Split":
                {
                    if (!HfJson.Has(e, "pattern", out var pat) || pat.ValueKind != JsonValueKind.Object)
                        throw new TokenizerLoadException($"{file}: key '{key}.pattern' must be an object with 'Regex' or 'String'", file);
                    Regex regex;
                    var rx = HfJson.String(pat, "Regex", file, key + ".pattern.Regex");
                    var lit = HfJson.String(pat, "String", file, key + ".pattern.String");
                    if (rx != null) regex = CompileHfRegex(rx, file, key + ".pattern.Regex");
                    else if (lit != null) regex = new Regex(Regex.Escape(lit), RegexOptions.CultureInvariant);
                    else throw new TokenizerLoadException($"{file}: key '{key}.pattern' must hold 'Regex' or 'String'", file);
                    if (HfJson.Bool(e, "invert", file, key + ".invert") == true)
                        throw new UnsupportedComponentException($"Split pre-tokenizer with invert=true (key '{key}.invert')");
                    var behavior = HfJson.String(e, "behavior", file, key + ".behavior") ?? "Isolated";
                    Func<string, IEnumerable<string>> f = behavior switch
                    {
                        "Isolated" => s => SplitIsolated(s, regex),
                        "Removed" => s => SplitRemoved(s, regex),
                        "MergedWithPrevious" => s => SplitMerged(s, regex, withPrevious: true),
                        "MergedWithNext" => s => SplitMerged(s, regex, withPrevious: false),
                        _ => throw new UnsupportedComponentException($"Split behavior '{behavior}' (key '{key}.behavior')"),
                    };
                    splitters.Add(f);
                    break;
                }
                case "Digits":
                {
                    bool individual = HfJson.Bool(e, "individual_digits", file, key + ".individual_digits") ?? false;
                    var regex = new Regex(individual ? @"\p{N}" : @"\p{N}+", RegexOptions.CultureInvariant | RegexOptions.Compiled);
                    splitters.Add(s => SplitIsolated(s, regex));
                    break;
                }
                default:
                    throw new UnsupportedComponentException($"pre_tokenizer type '{type}' (key '{key}.type')");
            }
        }
    }

    internal static IEnumerable<string> SplitIsolated(string s, Regex regex)
    {
        int pos = 0;
        for (var m = regex.Match(s); m.Success; m = m.NextMatch())
        {
            if (m.Length == 0) continue;
            if (m.Index > pos) yield return s[pos..m.Index];
            yield return m.Value;
            pos = m.Index + m.Length;
        }
        if (pos < s.Length) yield return s[pos..];
    }

    private static IEnumerable<string> SplitRemoved(string s, Regex regex)
    {
        int pos = 0;
        for (var m = regex.Match(s); m.Success; m = m.NextMatch())
        {
            if (m.Length == 0) continue;
            if (m.Index > pos) yield return s[pos..m.Index];
            pos = m.Index + m.Length;
        }
        if (pos < s.Length) yield return s[pos..];
    }

    private static IEnumerable<string> SplitMerged(string s, Regex regex, bool withPrevious)
    {
        // MergedWithPrevious: a piece ends where a match ends; MergedWithNext: a piece starts where a match starts.
        var cuts = new List<int>();
        for (var m = regex.Match(s); m.Success; m = m.NextMatch())
            if (m.Length > 0) cuts.Add(withPrevious ? m.Index + m.Length : m.Index);
        int pos = 0;
        foreach (var c in cuts)
        {
            if (c > pos) yield return s[pos..c];
            pos = Math.Max(pos, c);
        }
        if (pos < s.Length) yield return s[pos..];
    }
}

/// <summary>A tokenizer.json component this loader does not implement; the loader falls back to tokenizer.model or reports it.</summary>
internal sealed class UnsupportedComponentException(string what) : Exception(what);
