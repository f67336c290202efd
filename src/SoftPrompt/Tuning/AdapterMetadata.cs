using System.Globalization;
using SoftPrompt.Data;
using SoftPrompt.IO;
using SoftPrompt.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace SoftPrompt.Tuning;

/// <summary>
/// What SoftPrompt records about an adapter in its safetensors metadata, next to PEFT's <c>{"format": "pt"}</c>
/// (PEFT ignores the rest): the base model's fingerprint (so an adapter loaded onto the wrong model is a clear
/// error), how it was trained (method, step) and the data settings it was trained with (templates, label words,
/// fields, columns — the defaults for eval/score/generate/serve). This type owns every <c>softprompt.*</c> key: the
/// only place that reads or writes them. Adapters written by PEFT or by hand carry none, and every field is null.
/// </summary>
public sealed record AdapterMetadata
{
    public const string KeyPrefix = "softprompt.";
    /// <summary>The metadata layout version this code writes.</summary>
    public const string CurrentVersion = "1";

    // The base model's fingerprint.
    public string? ModelType { get; init; }
    public int? HiddenSize { get; init; }
    public int? NumLayers { get; init; }
    public int? KvDim { get; init; }
    public int? VocabSize { get; init; }
    public double? EmbeddingMean { get; init; }
    public double? EmbeddingStd { get; init; }

    // How it was trained.
    public string? Version { get; init; }
    public TuningMethod? Method { get; init; }
    public int? Step { get; init; }

    // The data settings (compared at eval time) and the data layout (fields and columns: only used to read data alike).
    public string? PromptTemplate { get; init; }
    public string? TargetTemplate { get; init; }
    /// <summary>LABEL -> WORD, as <see cref="DataOptions.LabelWords"/>.</summary>
    public IReadOnlyDictionary<string, string>? LabelWords { get; init; }
    public string? InputField { get; init; }
    public string? OutputField { get; init; }
    public IReadOnlyList<string>? Columns { get; init; }

    /// <summary><c>softprompt.*</c> keys this version does not know (written by a newer one): kept and shown, not used.</summary>
    public IReadOnlyDictionary<string, string> Unknown { get; init; } = new Dictionary<string, string>();

    /// <summary>True when SoftPrompt's trainer wrote this adapter (it then records its method and data settings).</summary>
    public bool IsTrained => Method is not null;

    /// <summary>The fingerprint of <paramref name="model"/> (shape and embedding statistics).</summary>
    public static AdapterMetadata Of(IPromptableModel model)
    {
        var c = model.Config;
        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        var e = model.EmbeddingMatrix.to(ScalarType.Float64);
        // Rounded as written (G6), so a fingerprint compares the same before and after a round trip through the file.
        static double R(double x) => double.Parse(x.ToString("G6", CultureInfo.InvariantCulture), CultureInfo.InvariantCulture);
        return new AdapterMetadata
        {
            Version = CurrentVersion, ModelType = c.ModelType, HiddenSize = c.HiddenSize, NumLayers = c.NumLayers, KvDim = c.KvDim,
            VocabSize = c.VocabSize, EmbeddingMean = R(e.mean().item<double>()), EmbeddingStd = R(e.std().item<double>()),
        };
    }

    /// <summary>These metadata with <paramref name="model"/>'s fingerprint and this code's layout version.</summary>
    public AdapterMetadata WithFingerprintOf(IPromptableModel model)
    {
        var f = Of(model);
        return this with
        {
            Version = CurrentVersion, ModelType = f.ModelType, HiddenSize = f.HiddenSize, NumLayers = f.NumLayers, KvDim = f.KvDim,
            VocabSize = f.VocabSize, EmbeddingMean = f.EmbeddingMean, EmbeddingStd = f.EmbeddingStd,
        };
    }

    /// <summary>These metadata with the data settings and layout of <paramref name="d"/>.</summary>
    public AdapterMetadata WithData(DataOptions d) => this with
    {
        PromptTemplate = d.PromptTemplate, TargetTemplate = d.TargetTemplate,
        LabelWords = d.LabelWords is null ? null : new SortedDictionary<string, string>(d.LabelWords.ToDictionary(kv => kv.Key, kv => kv.Value), StringComparer.Ordinal),
        InputField = d.InputField, OutputField = d.OutputField, Columns = d.Columns?.ToArray(),
    };

    /// <summary>The recorded data settings as data options (defaults where nothing is recorded).</summary>
    public DataOptions ToDataOptions() => new()
    {
        PromptTemplate = PromptTemplate, TargetTemplate = TargetTemplate,
        LabelWords = LabelWords?.ToDictionary(kv => kv.Key, kv => kv.Value),
        InputField = InputField ?? new DataOptions().InputField, OutputField = OutputField ?? new DataOptions().OutputField, Columns = Columns?.ToArray(),
    };

    /// <summary>Reads the metadata of the adapter in <paramref name="dir"/> (a run folder stands for its adapter/).</summary>
    public static AdapterMetadata Read(string dir)
    {
        var path = Path.Combine(Adapter.ResolveDir(dir), Adapter.WeightsFile);
        return Parse(SafeTensors.ReadHeader(path).Metadata, path);
    }

    /// <summary>Like <see cref="Read"/>, or null when <paramref name="dir"/> holds no adapter weights (yet): for
    /// defaults taken before the adapter is loaded, where the loader then says what is missing.</summary>
    public static AdapterMetadata? TryRead(string dir) =>
        File.Exists(Path.Combine(Adapter.ResolveDir(dir), Adapter.WeightsFile)) ? Read(dir) : null;

    /// <summary>Parses the <c>softprompt.*</c> keys of a safetensors metadata block; a malformed value is an error
    /// naming the file and the key.</summary>
    public static AdapterMetadata Parse(IReadOnlyDictionary<string, string> meta, string path)
    {
        string? S(string key) => meta.TryGetValue(KeyPrefix + key, out var v) ? v : null;
        int? I(string key)
        {
            if (S(key) is not { } v) return null;
            return int.TryParse(v, NumberStyles.Integer, CultureInfo.InvariantCulture, out var i)
                ? i : throw new SoftPromptException($"{path}: metadata '{KeyPrefix}{key}' is \"{v}\"; expected an integer.");
        }
        double? D(string key)
        {
            if (S(key) is not { } v) return null;
            return double.TryParse(v, NumberStyles.Float, CultureInfo.InvariantCulture, out var d) && double.IsFinite(d)
                ? d : throw new SoftPromptException($"{path}: metadata '{KeyPrefix}{key}' is \"{v}\"; expected a finite number.");
        }
        TuningMethod? method = S("method") switch
        {
            null => null,
            "prompt" => TuningMethod.Prompt,
            "prefix" => TuningMethod.Prefix,
            var v => throw new SoftPromptException($"{path}: metadata '{KeyPrefix}method' is \"{v}\"; expected prompt or prefix."),
        };
        Dictionary<string, string>? words = null;
        if (S("label_words") is { } lw)
        {
            words = new Dictionary<string, string>(StringComparer.Ordinal);
            foreach (var line in lw.Split('\n', StringSplitOptions.RemoveEmptyEntries))
            {
                var kv = line.Split('=', 2);
                if (kv.Length != 2 || kv[0].Length == 0 || !words.TryAdd(kv[0], kv[1]))
                    throw new SoftPromptException($"{path}: metadata '{KeyPrefix}label_words' entry \"{line}\"; expected one LABEL=WORD per line, each label once.");
            }
        }
        var known = new HashSet<string>(Keys.Select(k => KeyPrefix + k), StringComparer.Ordinal);
        return new AdapterMetadata
        {
            ModelType = S("model_type"), HiddenSize = I("hidden_size"), NumLayers = I("num_layers"), KvDim = I("kv_dim"), VocabSize = I("vocab_size"),
            EmbeddingMean = D("embedding_mean"), EmbeddingStd = D("embedding_std"),
            Version = S("version"), Method = method, Step = I("step"),
            PromptTemplate = S("prompt_template"), TargetTemplate = S("target_template"), LabelWords = words,
            InputField = S("input_field"), OutputField = S("output_field"),
            Columns = S("columns")?.Split(','),
            Unknown = meta.Where(kv => kv.Key.StartsWith(KeyPrefix, StringComparison.Ordinal) && !known.Contains(kv.Key))
                .ToDictionary(kv => kv.Key, kv => kv.Value, StringComparer.Ordinal),
        };
    }

    /// <summary>Every key this type reads and writes, without the prefix.</summary>
    static readonly string[] Keys =
    {
        "model_type", "hidden_size", "num_layers", "kv_dim", "vocab_size", "embedding_mean", "embedding_std",
        "version", "method", "step", "prompt_template", "target_template", "label_words", "input_field", "output_field", "columns",
    };

    /// <summary>The <c>softprompt.*</c> keys (set fields only), as written into the safetensors metadata.</summary>
    public SortedDictionary<string, string> ToDictionary()
    {
        static string I(int v) => v.ToString(CultureInfo.InvariantCulture);
        static string D(double v) => v.ToString("G6", CultureInfo.InvariantCulture);
        var m = new SortedDictionary<string, string>(StringComparer.Ordinal);
        void Put(string key, string? v) { if (v is not null) m[KeyPrefix + key] = v; }
        Put("model_type", ModelType); Put("hidden_size", HiddenSize is { } h ? I(h) : null); Put("num_layers", NumLayers is { } l ? I(l) : null);
        Put("kv_dim", KvDim is { } k ? I(k) : null); Put("vocab_size", VocabSize is { } vs ? I(vs) : null);
        Put("embedding_mean", EmbeddingMean is { } em ? D(em) : null); Put("embedding_std", EmbeddingStd is { } es ? D(es) : null);
        Put("version", Version); Put("method", Method switch { TuningMethod.Prompt => "prompt", TuningMethod.Prefix => "prefix", _ => null });
        Put("step", Step is { } s ? I(s) : null);
        Put("prompt_template", PromptTemplate); Put("target_template", TargetTemplate);
        Put("label_words", LabelWords is null ? null : string.Join("\n", LabelWords.OrderBy(kv => kv.Key, StringComparer.Ordinal).Select(kv => kv.Key + "=" + kv.Value)));
        Put("input_field", InputField); Put("output_field", OutputField); Put("columns", Columns is null ? null : string.Join(",", Columns));
        foreach (var (key, v) in Unknown) m[key] = v;
        return m;
    }

    /// <summary>
    /// The recorded data settings as config keys of <see cref="DataFields"/> (prompt_template, target_template,
    /// label_words as LABEL=WORD entries, input_field, output_field, columns as one comma-separated string). Empty
    /// for adapters SoftPrompt did not train.
    /// </summary>
    public Dictionary<string, object> DataSettingsAsConfig()
    {
        var result = new Dictionary<string, object>();
        if (!IsTrained) return result;
        if (PromptTemplate is not null) result["prompt_template"] = PromptTemplate;
        if (TargetTemplate is not null) result["target_template"] = TargetTemplate;
        if (InputField is not null) result["input_field"] = InputField;
        if (OutputField is not null) result["output_field"] = OutputField;
        if (Columns is not null) result["columns"] = string.Join(",", Columns);
        if (LabelWords is not null) result["label_words"] = LabelWords.OrderBy(kv => kv.Key, StringComparer.Ordinal).Select(kv => kv.Key + "=" + kv.Value).ToArray();
        return result;
    }

    /// <summary>Where the recorded data settings (templates and label words; not fields, since other field names can
    /// give the same text) differ from <paramref name="d"/>: one sentence each; empty when they agree or none is recorded.</summary>
    public List<string> DataSettingMismatches(DataOptions d, string dir)
    {
        var result = new List<string>();
        if (!IsTrained) return result;
        var now = new AdapterMetadata().WithData(d).ToDictionary();
        var was = ToDictionary();
        foreach (var (key, name) in new[] { ("prompt_template", "prompt template"), ("target_template", "target template"), ("label_words", "label words") })
        {
            was.TryGetValue(KeyPrefix + key, out var a);
            now.TryGetValue(KeyPrefix + key, out var b);
            if (a != b) result.Add($"{dir}: trained with {name} {Show(a)}, evaluated with {Show(b)}");
        }
        return result;
        static string Show(string? v) => v is null ? "(none)" : "\"" + v.Replace("\n", "\\n") + "\"";
    }

    /// <summary>Refuses an adapter whose recorded fingerprint is not <paramref name="model"/>'s: another architecture
    /// or shape, or the same shape with other embedding weights. Adapters without a fingerprint pass (their tensor
    /// shapes are still checked by the loader).</summary>
    public void CheckFingerprint(IPromptableModel model, string path)
    {
        if (HiddenSize is null) return; // written by PEFT or by hand
        var mine = Of(model);
        void Same<T>(string key, T? theirs, T? ours) where T : struct
        {
            if (theirs is { } t && !EqualityComparer<T>.Default.Equals(t, ours!.Value))
                throw new SoftPromptException($"{path}: this adapter was trained on another model ({key} {Str(t)}, this model has {Str(ours.Value)}).");
        }
        if (ModelType is not null && ModelType != mine.ModelType)
            throw new SoftPromptException($"{path}: this adapter was trained on another model (model_type {ModelType}, this model has {mine.ModelType}).");
        Same("hidden_size", HiddenSize, mine.HiddenSize); Same("num_layers", NumLayers, mine.NumLayers);
        Same("kv_dim", KvDim, mine.KvDim); Same("vocab_size", VocabSize, mine.VocabSize);
        double scale = Math.Max(Math.Abs(EmbeddingStd ?? 0), Math.Abs(mine.EmbeddingStd!.Value));
        foreach (var (key, theirs, ours) in new[] { ("embedding_mean", EmbeddingMean, mine.EmbeddingMean), ("embedding_std", EmbeddingStd, mine.EmbeddingStd) })
            if (theirs is { } t && Math.Abs(t - ours!.Value) > 1e-2 * scale + 1e-6)
                throw new SoftPromptException($"{path}: this adapter was trained on a model with other embedding weights ({key} {Str(t)}, this model {Str(ours.Value)}): same shape, different model.");
        static string Str(object v) => Convert.ToString(v, CultureInfo.InvariantCulture)!;
    }
}
