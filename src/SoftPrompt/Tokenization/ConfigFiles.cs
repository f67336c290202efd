using System.Text.Json;

namespace SoftPrompt.Tokenization;

internal sealed record Specials(string? Bos, int? BosId, string? Eos, int? EosId, string? Pad, int? PadId, int? UnkId);

/// <summary>tokenizer_config.json, special_tokens_map.json, generation_config.json and config.json of a model folder.</summary>
internal sealed class ConfigFiles
{
    private readonly string _dir;
    private readonly string _configPath, _mapPath;
    public JsonElement? TokenizerConfig { get; }
    private readonly JsonElement? _map;

    public ConfigFiles(string dir)
    {
        _dir = dir;
        _configPath = Path.Combine(dir, HfTokenizer.TokenizerConfigJson);
        _mapPath = Path.Combine(dir, HfTokenizer.SpecialTokensMapJson);
        TokenizerConfig = ReadObject(_configPath);
        _map = ReadObject(_mapPath);
    }

    private static JsonElement? ReadObject(string path)
    {
        if (!File.Exists(path)) return null;
        using var doc = HfJson.Read(path);
        if (doc.RootElement.ValueKind != JsonValueKind.Object) throw new TokenizerLoadException($"{path}: top level must be an object", path);
        return doc.RootElement.Clone();
    }

    public bool? Bool(string key) => TokenizerConfig is { } c ? HfJson.Bool(c, key, _configPath, key) : null;

    /// <summary>A special token named in tokenizer_config.json (an explicit null there means "none"), else in special_tokens_map.json.</summary>
    private string? Token(string key, out string source)
    {
        source = _configPath;
        if (TokenizerConfig is { } c && c.TryGetProperty(key, out _)) return HfJson.TokenContent(c, key, _configPath);
        source = _mapPath;
        return _map is { } m ? HfJson.TokenContent(m, key, _mapPath) : null;
    }

    public Specials ResolveSpecials(Func<string, int?> lookup, string? defaultUnk)
    {
        int? Required(string? tok, string key, string src)
        {
            if (tok is null) return null;
            return lookup(tok) ?? throw new TokenizerLoadException($"{src}: key '{key}' names token '{tok}' that is not in the vocabulary", src);
        }
        var bos = Token("bos_token", out var bosSrc);
        var eos = Token("eos_token", out var eosSrc);
        var pad = Token("pad_token", out _);
        var unk = Token("unk_token", out _) ?? defaultUnk;
        return new Specials(bos, Required(bos, "bos_token", bosSrc), eos, Required(eos, "eos_token", eosSrc),
            pad, pad is null ? null : lookup(pad), unk is null ? null : lookup(unk));
    }

    /// <summary>add_bos_token / add_eos_token from tokenizer_config.json override the post-processor when present.</summary>
    public (int[] Prefix, int[] Suffix) ApplyAddFlags(int[] prefix, int[] suffix, Specials sp, bool? defaultBos, bool? defaultEos)
    {
        var pre = prefix.ToList();
        var suf = suffix.ToList();
        var addBos = Bool("add_bos_token") ?? defaultBos;
        var addEos = Bool("add_eos_token") ?? defaultEos;
        if (sp.BosId is int b)
        {
            if (addBos == true && !pre.Contains(b)) pre.Insert(0, b);
            if (addBos == false) pre.RemoveAll(x => x == b);
        }
        if (sp.EosId is int e)
        {
            if (addEos == true && !suf.Contains(e)) suf.Add(e);
            if (addEos == false) suf.RemoveAll(x => x == e);
        }
        return (pre.ToArray(), suf.ToArray());
    }

    /// <summary>tokenizer_config.json "added_tokens_decoder": {"id": {"content": ..., "special": ...}}.</summary>
    public IEnumerable<AddedToken> ExtraAddedTokens(Func<string, int?> lookup)
    {
        if (TokenizerConfig is not { } c || !HfJson.Has(c, "added_tokens_decoder", out var d)) yield break;
        if (d.ValueKind != JsonValueKind.Object) throw new TokenizerLoadException($"{_configPath}: key 'added_tokens_decoder' must be an object", _configPath);
        foreach (var p in d.EnumerateObject())
        {
            var key = $"added_tokens_decoder[\"{p.Name}\"]";
            if (!int.TryParse(p.Name, out var id) || id < 0) throw new TokenizerLoadException($"{_configPath}: key '{key}' must be a token id", _configPath);
            var content = HfJson.String(p.Value, "content", _configPath, key + ".content")
                          ?? throw new TokenizerLoadException($"{_configPath}: key '{key}.content' is missing", _configPath);
            if (content.Length == 0) throw new TokenizerLoadException($"{_configPath}: key '{key}.content' (added token id {id}) is the empty string; an added token needs at least one character", _configPath);
            yield return new AddedToken(id, content, HfJson.Bool(p.Value, "special", _configPath, key + ".special") ?? false,
                HfJson.Bool(p.Value, "lstrip", _configPath, key + ".lstrip") ?? false, HfJson.Bool(p.Value, "rstrip", _configPath, key + ".rstrip") ?? false);
        }
    }

    public int? AddedTokenId(string token) => ExtraAddedTokens(_ => null).FirstOrDefault(a => a.Content == token)?.Id;

    public long? ModelMaxLength
    {
        get
        {
            if (TokenizerConfig is not { } c || !HfJson.Has(c, "model_max_length", out var v) || v.ValueKind != JsonValueKind.Number) return null;
            return v.TryGetInt64(out var l) && l > 0 && l < 1_000_000_000_000L ? l : null; // HF writes 1e30 for "no limit"
        }
    }

    /// <summary>The eos id, then generation_config.json and config.json "eos_token_id" (an int or a list), without repeats.</summary>
    public IReadOnlyList<int> EosIds(int? eosId, Func<string, int?> lookup)
    {
        var ids = new List<int>();
        if (eosId is int e) ids.Add(e);
        foreach (var name in new[] { HfTokenizer.GenerationConfigJson, HfTokenizer.ConfigJson })
        {
            var path = Path.Combine(_dir, name);
            var obj = ReadObject(path);
            if (obj is not { } o || !HfJson.Has(o, "eos_token_id", out var v)) continue;
            if (v.ValueKind == JsonValueKind.Array)
            {
                int i = 0;
                foreach (var x in v.EnumerateArray()) ids.Add(HfJson.Int(x, path, $"eos_token_id[{i++}]"));
            }
            else ids.Add(HfJson.Int(v, path, "eos_token_id"));
        }
        return ids.Distinct().ToArray();
    }
}
