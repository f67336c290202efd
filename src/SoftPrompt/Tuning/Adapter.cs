using System.Globalization;
using System.Text.Json.Nodes;
using System.Text.Json;
using SoftPrompt.IO;
using SoftPrompt.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace SoftPrompt.Tuning;

/// <summary>
/// Saves and loads prompt adapters in PEFT's on-disk format: <c>adapter_config.json</c> (sorted keys,
/// inference_mode true) and <c>adapter_model.safetensors</c> holding one fp32 tensor <c>prompt_embeddings</c> with
/// metadata <c>{"format":"pt"}</c>. PEFT ignores extra metadata, so we add a fingerprint of the base model there
/// (<c>softprompt.*</c> keys) that turns "loaded onto the wrong model" into a clear error.
/// </summary>
public static class Adapter
{
    public const string ConfigFile = "adapter_config.json";
    public const string WeightsFile = "adapter_model.safetensors";
    const string TensorName = "prompt_embeddings";

    public static void Save(string dir, IPromptMethod method, IPromptableModel model, IReadOnlyDictionary<string, string>? extraMetadata = null)
    {
        Directory.CreateDirectory(dir);
        using var scope = torch.NewDisposeScope();
        var cfg = method.AdapterConfig(model.Config);
        using var emb0 = method.ExportEmbeddings();
        // PEFT's SEQ_2_SEQ_LM layout: 2n rows (one block per transformer submodule), prompt tuning uses the first n.
        // The second block is never read by the forward; it repeats the first so the file is PEFT's shape.
        using var emb = SeqToSeqRows(model, method.PeftType) ? torch.cat(new[] { emb0, emb0 }, 0) : emb0.alias();
        var meta = new Dictionary<string, string>(Fingerprint(model)) { ["format"] = "pt", ["softprompt.version"] = "1" };
        if (extraMetadata != null) foreach (var (k, v) in extraMetadata) meta[k] = v;
        SafeTensors.Save(Path.Combine(dir, WeightsFile), new Dictionary<string, Tensor> { [TensorName] = emb }, meta);
        AtomicFile.WriteAllText(Path.Combine(dir, ConfigFile), SortedJson(cfg));
    }

    /// <summary>Loads an adapter folder onto <paramref name="model"/>; the result is frozen (inference) unless made trainable.</summary>
    public static IPromptMethod Load(string dir, IPromptableModel model, bool checkFingerprint = true)
    {
        dir = ResolveDir(dir);
        var cfgPath = Path.Combine(dir, ConfigFile);
        var wPath = Path.Combine(dir, WeightsFile);
        if (!Directory.Exists(dir)) throw new SoftPromptException($"Prompt adapter folder '{dir}' does not exist.");
        if (!File.Exists(cfgPath)) throw new SoftPromptException($"{cfgPath}: not found; an adapter folder holds {ConfigFile} and {WeightsFile}.");
        if (!File.Exists(wPath))
        {
            if (File.Exists(Path.Combine(dir, "adapter_model.bin"))) throw new SoftPromptException($"{dir}: only adapter_model.bin (pickle) found; pickle can execute code and is not loaded. Save with safe_serialization=True.");
            throw new SoftPromptException($"{wPath}: not found.");
        }
        var c = JsonFile.ReadObject(cfgPath);
        string? Str(string key)
        {
            var v = c[key];
            if (v is null) return null;
            return v is JsonValue jv && jv.TryGetValue<string>(out var s) ? s : throw new SoftPromptException($"{cfgPath}: '{key}' must be a string, got {JsonFile.Kind(v)}.");
        }
        int? Int(string key)
        {
            var v = c[key];
            if (v is null) return null;
            return v is JsonValue jv && jv.TryGetValue<int>(out var i) ? i : throw new SoftPromptException($"{cfgPath}: '{key}' must be an integer, got {JsonFile.Kind(v)}.");
        }
        string type = Str("peft_type") ?? throw new SoftPromptException($"{cfgPath}: missing 'peft_type'.");
        if (type is not ("PROMPT_TUNING" or "PREFIX_TUNING"))
            throw new SoftPromptException($"{cfgPath}: peft_type '{type}' is not supported (PROMPT_TUNING or PREFIX_TUNING).");
        string? task = Str("task_type");
        bool seq2seq = model.Config.IsEncoderDecoder;
        if (seq2seq)
        {
            if (task is not null && task != "SEQ_2_SEQ_LM")
                throw new SoftPromptException($"{cfgPath}: task_type '{task}' does not fit this encoder-decoder ({model.Config.ModelType}) model (expected SEQ_2_SEQ_LM).");
            if (type == "PREFIX_TUNING") throw new SoftPromptException($"{cfgPath}: {PrefixTuning.EncoderDecoderRefusal}");
        }
        else if (task is not null && task != "CAUSAL_LM")
            throw new SoftPromptException($"{cfgPath}: task_type '{task}' is not supported (CAUSAL_LM only{(task == "SEQ_2_SEQ_LM" ? "; SEQ_2_SEQ_LM adapters belong to encoder-decoder models such as T5" : "")}).");
        int n = Int("num_virtual_tokens") ?? throw new SoftPromptException($"{cfgPath}: missing 'num_virtual_tokens'.");
        if (n < 1) throw new SoftPromptException($"{cfgPath}: num_virtual_tokens is {n}; expected at least 1.");
        int subs = Int("num_transformer_submodules") ?? 1;
        if (seq2seq ? subs is not (1 or 2) : subs != 1)
            throw new SoftPromptException($"{cfgPath}: num_transformer_submodules {subs} is not supported ({(seq2seq ? "1 or 2 for an encoder-decoder model" : "1 for a decoder-only model")}).");
        // PEFT stores n rows per transformer submodule (2n for SEQ_2_SEQ_LM); prompt tuning uses the first n.
        int rows = n * subs;
        var initName = Str("prompt_tuning_init");
        var initText = Str("prompt_tuning_init_text");

        var header = SafeTensors.ReadHeader(wPath);
        if (checkFingerprint) CheckFingerprint(header.Metadata, model, wPath);
        // Shapes from the header before reading any data: a wrong adapter is refused without allocating it.
        if (!header.Tensors.TryGetValue(TensorName, out var info))
            throw new SoftPromptException($"{wPath}: no tensor '{TensorName}' (found: {string.Join(", ", header.Tensors.Keys)}).");
        if (info.Shape.Length != 2 || info.Shape[0] != rows)
            throw new SoftPromptException($"{wPath}: '{TensorName}' has shape [{string.Join(", ", info.Shape)}], but {ConfigFile} says {n} virtual tokens{(subs > 1 ? $" x {subs} transformer submodules" : "")}.");
        long expectedWidth = type == "PROMPT_TUNING" ? model.Config.HiddenSize : 2L * model.Config.NumLayers * model.Config.KvDim;
        if (info.Shape[1] != expectedWidth)
            throw new SoftPromptException(type == "PROMPT_TUNING"
                ? $"{wPath}: prompt embeddings are {info.Shape[1]} wide, but the model's hidden size is {model.Config.HiddenSize}: the adapter was made for another model."
                : $"{wPath}: prefix embeddings are {info.Shape[1]} wide, but this model needs {expectedWidth} (2 x {model.Config.NumLayers} layers x {model.Config.KvDim} kv_dim): the adapter was made for another model.");
        if (info.DType is not ("F32" or "F16" or "BF16" or "F64"))
            throw new SoftPromptException($"{wPath}: '{TensorName}' has dtype {info.DType}; expected floating point.");
        using var scope = torch.NewDisposeScope();
        var tensors = SafeTensors.Load(wPath, name => name == TensorName);
        var emb = tensors[TensorName];
        if (ModelLoader.CheckFiniteByDefault) ModelLoader.CheckFinite(emb, wPath, TensorName);
        emb = emb.narrow(0, 0, n).to(ScalarType.Float32).to(model.Device).contiguous();
        var cfg = model.Config;
        switch (type)
        {
            case "PROMPT_TUNING":
                if (emb.shape[1] != cfg.HiddenSize)
                    throw new SoftPromptException($"{wPath}: prompt embeddings are {emb.shape[1]} wide, but the model's hidden size is {cfg.HiddenSize}: the adapter was made for another model.");
                var init = initName switch { "SAMPLE_VOCAB" => PromptInit.SampleVocab, "TEXT" => PromptInit.Text, _ => PromptInit.Random };
                var pt = new PromptTuning(emb, init, initText);
                pt.SetTrainable(false);
                return pt;
            case "PREFIX_TUNING":
            {
                int width = 2 * cfg.NumLayers * cfg.KvDim;
                if (emb.shape[1] != width)
                    throw new SoftPromptException($"{wPath}: prefix embeddings are {emb.shape[1]} wide, but this model needs {width} (2 x {cfg.NumLayers} layers x {cfg.KvDim} kv_dim): the adapter was made for another model.");
                var pf = PrefixTuning.FromEmbeddings(cfg, emb);
                pf.SetTrainable(false);
                return pf;
            }
            default:
                throw new SoftPromptException($"{cfgPath}: peft_type '{type}' is not supported (PROMPT_TUNING or PREFIX_TUNING).");
        }
    }

    /// <summary>A training run folder stands for its exported adapter: <c>RUN/adapter/</c> when <paramref name="dir"/>
    /// has no adapter_config.json of its own but that subfolder has one; otherwise <paramref name="dir"/> unchanged.</summary>
    public static string ResolveDir(string dir) =>
        !File.Exists(Path.Combine(dir, ConfigFile)) && File.Exists(Path.Combine(dir, "adapter", ConfigFile)) ? Path.Combine(dir, "adapter") : dir;

    /// <summary>
    /// The data settings an adapter records (written by <see cref="Save"/> from training), as the config keys of
    /// <see cref="Data.DataFields"/>: prompt_template, target_template, label_words (one LABEL=WORD per entry),
    /// input_field, output_field, columns. Empty for adapters SoftPrompt did not train (e.g. made by PEFT).
    /// </summary>
    public static Dictionary<string, object> RecordedDataSettings(string dir)
    {
        var path = Path.Combine(ResolveDir(dir), WeightsFile);
        var result = new Dictionary<string, object>();
        if (!File.Exists(path)) return result;
        var meta = SafeTensors.ReadHeader(path).Metadata;
        if (!meta.ContainsKey("softprompt.method")) return result;
        foreach (var key in new[] { "prompt_template", "target_template", "input_field", "output_field", "columns" })
            if (meta.TryGetValue("softprompt." + key, out var v)) result[key] = v;
        if (meta.TryGetValue("softprompt.label_words", out var lw)) result["label_words"] = lw.Split('\n');
        return result;
    }

    /// <summary>Metadata keys recording the data settings a prompt was trained with (prompt template, target template,
    /// label words); absent settings are absent keys. PEFT ignores them.</summary>
    public static Dictionary<string, string> DataSettings(Data.DataOptions d)
    {
        var m = new Dictionary<string, string>();
        if (d.PromptTemplate is not null) m["softprompt.prompt_template"] = d.PromptTemplate;
        if (d.TargetTemplate is not null) m["softprompt.target_template"] = d.TargetTemplate;
        if (d.LabelWords is not null) m["softprompt.label_words"] = string.Join("\n", d.LabelWords.OrderBy(kv => kv.Key, StringComparer.Ordinal).Select(kv => kv.Key + "=" + kv.Value));
        return m;
    }

    /// <summary>The fields and columns a prompt was trained on (only needed to read data the same way; not compared
    /// by <see cref="DataSettingMismatches"/>, since other field names can give the same text).</summary>
    public static Dictionary<string, string> DataLayout(Data.DataOptions d)
    {
        var m = new Dictionary<string, string> { ["softprompt.input_field"] = d.InputField, ["softprompt.output_field"] = d.OutputField };
        if (d.Columns is not null) m["softprompt.columns"] = string.Join(",", d.Columns);
        return m;
    }

    /// <summary>
    /// Where the data settings recorded in an adapter differ from <paramref name="d"/>: one sentence each (empty when they
    /// agree, or when the adapter records none, e.g. one made by PEFT).
    /// </summary>
    public static List<string> DataSettingMismatches(string dir, Data.DataOptions d)
    {
        var path = Path.Combine(ResolveDir(dir), WeightsFile);
        var recorded = SafeTensors.ReadHeader(path).Metadata;
        if (!recorded.ContainsKey("softprompt.method")) return new(); // not trained by SoftPrompt: nothing recorded
        var now = DataSettings(d);
        var names = new[] { ("softprompt.prompt_template", "prompt template"), ("softprompt.target_template", "target template"), ("softprompt.label_words", "label words") };
        var result = new List<string>();
        foreach (var (key, name) in names)
        {
            recorded.TryGetValue(key, out var was);
            now.TryGetValue(key, out var isNow);
            if (was != isNow)
                result.Add($"{dir}: trained with {name} {Show(was)}, evaluated with {Show(isNow)}");
        }
        return result;
        static string Show(string? v) => v is null ? "(none)" : "\"" + v.Replace("\n", "\\n") + "\"";
    }

    public static Dictionary<string, string> Fingerprint(IPromptableModel model)
    {
        var c = model.Config;
        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        var e = model.EmbeddingMatrix.to(ScalarType.Float64);
        string F(double x) => x.ToString("G6", CultureInfo.InvariantCulture);
        return new Dictionary<string, string>
        {
            ["softprompt.model_type"] = c.ModelType,
            ["softprompt.hidden_size"] = c.HiddenSize.ToString(CultureInfo.InvariantCulture),
            ["softprompt.num_layers"] = c.NumLayers.ToString(CultureInfo.InvariantCulture),
            ["softprompt.kv_dim"] = c.KvDim.ToString(CultureInfo.InvariantCulture),
            ["softprompt.vocab_size"] = c.VocabSize.ToString(CultureInfo.InvariantCulture),
            ["softprompt.embedding_mean"] = F(e.mean().item<double>()),
            ["softprompt.embedding_std"] = F(e.std().item<double>()),
        };
    }

    static void CheckFingerprint(IReadOnlyDictionary<string, string> meta, IPromptableModel model, string path)
    {
        if (!meta.ContainsKey("softprompt.hidden_size")) return; // written by PEFT or by hand: shapes are still checked
        var mine = Fingerprint(model);
        foreach (var key in new[] { "softprompt.model_type", "softprompt.hidden_size", "softprompt.num_layers", "softprompt.kv_dim", "softprompt.vocab_size" })
            if (meta.TryGetValue(key, out var v) && v != mine[key])
                throw new SoftPromptException($"{path}: this adapter was trained on another model ({key[11..]} {v}, this model has {mine[key]}).");
        foreach (var key in new[] { "softprompt.embedding_mean", "softprompt.embedding_std" })
        {
            if (!meta.TryGetValue(key, out var v) || !double.TryParse(v, NumberStyles.Float, CultureInfo.InvariantCulture, out var theirs)) continue;
            double ours = double.Parse(mine[key], CultureInfo.InvariantCulture);
            double scale = Math.Max(Math.Abs(theirs), Math.Abs(double.Parse(mine["softprompt.embedding_std"], CultureInfo.InvariantCulture)));
            if (Math.Abs(theirs - ours) > 1e-2 * scale + 1e-6)
                throw new SoftPromptException($"{path}: this adapter was trained on a model with other embedding weights ({key[11..]} {v}, this model {mine[key]}): same shape, different model.");
        }
    }

    static bool SeqToSeqRows(IPromptableModel model, string peftType) => model.Config.IsEncoderDecoder && peftType == "PROMPT_TUNING";

    static string SortedJson(AdapterConfig cfg)
    {
        var node = JsonSerializer.SerializeToNode(cfg)!.AsObject();
        var sorted = new JsonObject();
        foreach (var kv in node.OrderBy(kv => kv.Key, StringComparer.Ordinal)) sorted[kv.Key] = kv.Value?.DeepClone();
        return sorted.ToJsonString(new JsonSerializerOptions { WriteIndented = true }) + "\n";
    }
}
