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
/// (<see cref="AdapterMetadata"/>, the <c>softprompt.*</c> keys) that turns "loaded onto the wrong model" into a clear error.
/// </summary>
public static class Adapter
{
    public const string ConfigFile = "adapter_config.json";
    public const string WeightsFile = "adapter_model.safetensors";
    const string TensorName = "prompt_embeddings";

    /// <summary>Writes <paramref name="method"/> as a PEFT adapter folder; the metadata get <paramref name="model"/>'s
    /// fingerprint, plus whatever <paramref name="recorded"/> says (the trainer's method, step and data settings).</summary>
    public static void Save(string dir, IPromptMethod method, IPromptableModel model, AdapterMetadata? recorded = null)
    {
        Directory.CreateDirectory(dir);
        using var scope = torch.NewDisposeScope();
        var cfg = method.AdapterConfig(model.Config);
        using var emb0 = method.ExportEmbeddings();
        // PEFT's SEQ_2_SEQ_LM layout: 2n rows (one block per transformer submodule), prompt tuning uses the first n.
        // The second block is never read by the forward; it repeats the first so the file is PEFT's shape.
        using var emb = SeqToSeqRows(model, method.Method) ? torch.cat(new[] { emb0, emb0 }, 0) : emb0.alias();
        var meta = new Dictionary<string, string>((recorded ?? new AdapterMetadata()).WithFingerprintOf(model).ToDictionary()) { ["format"] = "pt" };
        SafeTensors.Save(Path.Combine(dir, WeightsFile), new Dictionary<string, Tensor> { [TensorName] = emb }, meta);
        AtomicFile.WriteAllText(Path.Combine(dir, ConfigFile), SortedJson(cfg));
    }

    /// <summary>Loads an adapter folder onto <paramref name="model"/>; the result is frozen (inference) unless made trainable.</summary>
    public static IPromptMethod Load(string dir, IPromptableModel model, bool checkFingerprint = true, bool checkFinite = true)
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
        string typeName = Str("peft_type") ?? throw new SoftPromptException($"{cfgPath}: missing 'peft_type'.");
        var type = TuningMethods.FromPeftType(typeName)
            ?? throw new SoftPromptException($"{cfgPath}: peft_type '{typeName}' is not supported (PROMPT_TUNING or PREFIX_TUNING).");
        string? task = Str("task_type");
        bool seq2seq = model.Config.IsEncoderDecoder;
        if (seq2seq)
        {
            if (task is not null && task != "SEQ_2_SEQ_LM")
                throw new SoftPromptException($"{cfgPath}: task_type '{task}' does not fit this encoder-decoder ({model.Config.ModelType}) model (expected SEQ_2_SEQ_LM).");
            if (type == TuningMethod.Prefix) throw new SoftPromptException($"{cfgPath}: {PrefixTuning.EncoderDecoderRefusal}");
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
        if (checkFingerprint) AdapterMetadata.Parse(header.Metadata, wPath).CheckFingerprint(model, wPath);
        // Shapes from the header before reading any data: a wrong adapter is refused without allocating it.
        if (!header.Tensors.TryGetValue(TensorName, out var info))
            throw new SoftPromptException($"{wPath}: no tensor '{TensorName}' (found: {string.Join(", ", header.Tensors.Keys)}).");
        if (info.Shape.Length != 2 || info.Shape[0] != rows)
            throw new SoftPromptException($"{wPath}: '{TensorName}' has shape [{string.Join(", ", info.Shape)}], but {ConfigFile} says {n} virtual tokens{(subs > 1 ? $" x {subs} transformer submodules" : "")}.");
        long expectedWidth = type == TuningMethod.Prompt ? model.Config.HiddenSize : 2L * model.Config.NumLayers * model.Config.KvDim;
        if (info.Shape[1] != expectedWidth)
            throw new SoftPromptException(type == TuningMethod.Prompt
                ? $"{wPath}: prompt embeddings are {info.Shape[1]} wide, but the model's hidden size is {model.Config.HiddenSize}: the adapter was made for another model."
                : $"{wPath}: prefix embeddings are {info.Shape[1]} wide, but this model needs {expectedWidth} (2 x {model.Config.NumLayers} layers x {model.Config.KvDim} kv_dim): the adapter was made for another model.");
        if (info.DType is not ("F32" or "F16" or "BF16" or "F64"))
            throw new SoftPromptException($"{wPath}: '{TensorName}' has dtype {info.DType}; expected floating point.");
        using var scope = torch.NewDisposeScope();
        var tensors = SafeTensors.Load(wPath, name => name == TensorName);
        var emb = tensors[TensorName];
        if (checkFinite) ModelLoader.CheckFinite(emb, wPath, TensorName);
        emb = emb.narrow(0, 0, n).to(ScalarType.Float32).to(model.Device).contiguous();
        var cfg = model.Config;
        switch (type)
        {
            case TuningMethod.Prompt:
                if (emb.shape[1] != cfg.HiddenSize)
                    throw new SoftPromptException($"{wPath}: prompt embeddings are {emb.shape[1]} wide, but the model's hidden size is {cfg.HiddenSize}: the adapter was made for another model.");
                var init = initName switch { "SAMPLE_VOCAB" => PromptInit.SampleVocab, "TEXT" => PromptInit.Text, _ => PromptInit.Random };
                var pt = new PromptTuning(emb, init, initText);
                pt.SetTrainable(false);
                return pt;
            case TuningMethod.Prefix:
            {
                int width = 2 * cfg.NumLayers * cfg.KvDim;
                if (emb.shape[1] != width)
                    throw new SoftPromptException($"{wPath}: prefix embeddings are {emb.shape[1]} wide, but this model needs {width} (2 x {cfg.NumLayers} layers x {cfg.KvDim} kv_dim): the adapter was made for another model.");
                var pf = PrefixTuning.FromEmbeddings(cfg, emb);
                pf.SetTrainable(false);
                return pf;
            }
            default:
                throw new SoftPromptException($"{cfgPath}: peft_type '{typeName}' is not supported (PROMPT_TUNING or PREFIX_TUNING).");
        }
    }

    /// <summary>A training run folder stands for its exported adapter: <c>RUN/adapter/</c> when <paramref name="dir"/>
    /// has no adapter_config.json of its own but that subfolder has one; otherwise <paramref name="dir"/> unchanged.</summary>
    public static string ResolveDir(string dir) =>
        !File.Exists(Path.Combine(dir, ConfigFile)) && File.Exists(Path.Combine(dir, "adapter", ConfigFile)) ? Path.Combine(dir, "adapter") : dir;

    static bool SeqToSeqRows(IPromptableModel model, TuningMethod method) => model.Config.IsEncoderDecoder && method == TuningMethod.Prompt;

    static string SortedJson(AdapterConfig cfg)
    {
        var node = JsonSerializer.SerializeToNode(cfg)!.AsObject();
        var sorted = new JsonObject();
        foreach (var kv in node.OrderBy(kv => kv.Key, StringComparer.Ordinal)) sorted[kv.Key] = kv.Value?.DeepClone();
        return sorted.ToJsonString(new JsonSerializerOptions { WriteIndented = true }) + "\n";
    }
}
