using System.ComponentModel;
using System.Globalization;
using System.Reflection;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace SoftPrompt.Training;

/// <summary>
/// Everything a training run is configured by. Each property is a config-file key (snake_case, e.g.
/// <c>virtual_tokens</c>) and a CLI option (kebab-case, <c>--virtual-tokens</c>): the CLI generates its options from
/// this record, so the two cannot drift apart. The resolved values are written to the run folder.
/// </summary>
public sealed record TrainOptions
{
    [Description("Hugging Face model folder.")] public string? Model { get; init; }
    [Description("Training data (JSONL, TSV or CSV).")] public string? Train { get; init; }
    [Description("Validation data; without it, validation_split of the training data is held out.")] public string? Validation { get; init; }
    [Description("Fraction of the training data held out for validation when no validation file is given (0 = none).")] public double ValidationSplit { get; init; } = 0.1;
    [Description("Run folder (checkpoints, metrics, plots, adapter/).")] public string? Output { get; init; }

    [Description("prompt (prompt tuning) or prefix (prefix tuning).")] public string Method { get; init; } = "prompt";
    [Description("Number of virtual tokens.")] public int VirtualTokens { get; init; } = 20;
    [Description("Prompt-tuning init: random, sample_vocab, text or class_labels.")] public string Init { get; init; } = "sample_vocab";
    [Description("Text for init=text.")] public string? InitText { get; init; }
    [Description("Prefix tuning: reparameterise the prefix through an MLP (only its output is exported).")] public bool PrefixProjection { get; init; }
    [Description("Prefix tuning: hidden size of the projection MLP.")] public int EncoderHiddenSize { get; init; } = 512;

    [Description("Field of each example holding the input.")] public string InputField { get; init; } = "input";
    [Description("Field of each example holding the target.")] public string OutputField { get; init; } = "output";
    [Description("Template of the prompt side, e.g. \"Review: {review}\\nSentiment:\" (default: the input field).")] public string? PromptTemplate { get; init; }
    [Description("Template of the target side, e.g. \" {label}\" (default: the output field after one space).")] public string? TargetTemplate { get; init; }
    [Description("Column names for headerless TSV/CSV files, comma-separated (default input,output).")] public string? Columns { get; init; }
    [Description("Skip malformed lines (reported with a count) instead of refusing to start.")] public bool SkipBadLines { get; init; }
    [Description("Append the end-of-sequence token to each target.")] public bool AddEos { get; init; }
    [Description("Also compute the loss on prompt tokens.")] public bool LossOnPrompt { get; init; }
    [Description("Maximum tokens per example (prompts are truncated from the left).")] public int MaxLength { get; init; } = 256;
    [Description("Label set for rank-classification metrics, comma-separated (default: distinct targets).")] public string? Labels { get; init; }

    [Description("adamw or adafactor.")] public string Optimizer { get; init; } = "adamw";
    [Description("Learning rate (prompt tuning wants large ones: ~0.3 with Adafactor, 1e-3..3e-2 with AdamW).")] public double Lr { get; init; } = 0.01;
    [Description("Weight decay (decoupled).")] public double WeightDecay { get; init; }
    [Description("Learning-rate schedule: constant, constant_with_warmup, linear or cosine.")] public string Schedule { get; init; } = "linear";
    [Description("Warm-up steps.")] public int WarmupSteps { get; init; }
    [Description("Optimizer steps (0 = use epochs).")] public int Steps { get; init; } = 200;
    [Description("Epochs, used when steps is 0.")] public int Epochs { get; init; } = 1;
    [Description("Examples per micro-batch.")] public int BatchSize { get; init; } = 8;
    [Description("Micro-batches per optimizer step.")] public int GradAccum { get; init; } = 1;
    [Description("Clip the gradient norm to this (0 = off).")] public double MaxGradNorm { get; init; } = 1.0;
    [Description("Batch examples of similar length together (less padding).")] public bool SortByLength { get; init; } = true;
    [Description("Random seed: same seed, same data, same result.")] public int Seed { get; init; } = 42;

    [Description("Evaluate on the validation set every N steps (0 = only at the end).")] public int EvalEvery { get; init; } = 50;
    [Description("Stop after N evaluations without improvement (0 = off).")] public int EarlyStoppingPatience { get; init; }
    [Description("Write a checkpoint every N steps (0 = at evaluations and at the end).")] public int CheckpointEvery { get; init; }
    [Description("Log a line every N steps when output is not a terminal.")] public int LogEvery { get; init; } = 10;

    [Description("auto, cpu, cuda or cuda:N.")] public string Device { get; init; } = "auto";
    [Description("Frozen weights dtype: fp32, bf16, fp16 or auto (trainable prompts stay fp32).")] public string Dtype { get; init; } = "fp32";
    [Description("CPU threads for libtorch (0 = all cores).")] public int Threads { get; init; }

    public static string Key(PropertyInfo p) => string.Concat(p.Name.Select((c, i) => char.IsUpper(c) && i > 0 ? "_" + char.ToLowerInvariant(c) : char.ToLowerInvariant(c).ToString()));
    public static string OptionName(PropertyInfo p) => "--" + Key(p).Replace('_', '-');
    public static IEnumerable<PropertyInfo> Properties => typeof(TrainOptions).GetProperties(BindingFlags.Public | BindingFlags.Instance).Where(p => p.CanWrite);

    /// <summary>Reads a JSON config file; unknown keys and wrong types are errors naming the key and file.</summary>
    public static TrainOptions FromFile(string path, TrainOptions? baseOptions = null)
    {
        if (!File.Exists(path)) throw new SoftPromptException($"{path}: config file not found.");
        JsonObject o;
        try { o = JsonNode.Parse(File.ReadAllText(path), documentOptions: new JsonDocumentOptions { CommentHandling = JsonCommentHandling.Skip, AllowTrailingCommas = true }) as JsonObject ?? throw new SoftPromptException($"{path}: expected a JSON object."); }
        catch (JsonException e) { throw new SoftPromptException($"{path}: invalid JSON ({e.Message})."); }
        var values = new Dictionary<string, object?>();
        var byKey = Properties.ToDictionary(Key);
        foreach (var (rawKey, node) in o)
        {
            if (rawKey.StartsWith("//") || rawKey.StartsWith("$") || rawKey == "_comment") continue;
            var key = rawKey.Replace('-', '_');
            if (!byKey.TryGetValue(key, out var p))
                throw new SoftPromptException($"{path}: unknown key '{rawKey}' (known: {string.Join(", ", byKey.Keys)}).");
            values[p.Name] = Convert(node, p.PropertyType, $"{path}: key '{rawKey}'");
        }
        // Relative paths in a config file are relative to the current directory (like CLI options), so that
        // `softprompt train --config configs/x.json` run from the repository root works as written.
        return (baseOptions ?? new TrainOptions()).With(values);
    }

    public TrainOptions With(IReadOnlyDictionary<string, object?> values)
    {
        var copy = this with { };
        foreach (var (name, v) in values)
        {
            var p = typeof(TrainOptions).GetProperty(name)!;
            p.SetValue(copy, v);
        }
        return copy;
    }

    static object? Convert(JsonNode? n, Type t, string where)
    {
        var u = Nullable.GetUnderlyingType(t) ?? t;
        if (n is null) return u == t && t.IsValueType ? throw new SoftPromptException($"{where} must not be null.") : null;
        try
        {
            if (u == typeof(string)) return n is JsonValue v && v.TryGetValue<string>(out var s) ? s : n.ToJsonString();
            if (u == typeof(int)) return n.GetValue<int>();
            if (u == typeof(double)) return n.GetValue<double>();
            if (u == typeof(bool)) return n.GetValue<bool>();
        }
        catch (Exception e) when (e is InvalidOperationException or FormatException)
        {
            throw new SoftPromptException($"{where} must be {(u == typeof(int) ? "an integer" : u == typeof(double) ? "a number" : u == typeof(bool) ? "true or false" : "a string")}, got {n.ToJsonString()}.");
        }
        throw new InvalidOperationException($"unsupported option type {t}");
    }

    public string ToJson()
    {
        var o = new JsonObject();
        // Typed JsonValues: JsonValue.Create(object) needs reflection-based type info at write time and throws
        // ("JsonSerializerOptions instance must specify a TypeInfoResolver") with plain options.
        foreach (var p in Properties) o[Key(p)] = IO.ConfigRecord.ToNode(p.GetValue(this));
        return o.ToJsonString(new JsonSerializerOptions { WriteIndented = true }) + "\n";
    }

    /// <summary>Checks values and combinations; errors name the option.</summary>
    public void Validate()
    {
        void Req(bool ok, string msg) { if (!ok) throw new SoftPromptException(msg); }
        Req(!string.IsNullOrEmpty(Model), "--model (config key 'model') is required.");
        Req(!string.IsNullOrEmpty(Train), "--train (config key 'train') is required.");
        Req(!string.IsNullOrEmpty(Output), "--output (config key 'output') is required.");
        Req(Method is "prompt" or "prefix", $"--method '{Method}': expected prompt or prefix.");
        Req(Init is "random" or "sample_vocab" or "text" or "class_labels", $"--init '{Init}': expected random, sample_vocab, text or class_labels.");
        Req(Init != "text" || !string.IsNullOrEmpty(InitText), "--init text needs --init-text.");
        Req(Optimizer is "adamw" or "adafactor", $"--optimizer '{Optimizer}': expected adamw or adafactor.");
        Req(Schedule is "constant" or "constant_with_warmup" or "linear" or "cosine", $"--schedule '{Schedule}': expected constant, constant_with_warmup, linear or cosine.");
        Req(VirtualTokens >= 1, "--virtual-tokens must be at least 1.");
        Req(Lr > 0 && double.IsFinite(Lr), "--lr must be a positive number.");
        Req(Steps >= 0 && Epochs >= 1, "--steps must be >= 0 and --epochs >= 1.");
        Req(BatchSize >= 1 && GradAccum >= 1, "--batch-size and --grad-accum must be at least 1.");
        Req(ValidationSplit >= 0 && ValidationSplit < 1, "--validation-split must be in [0, 1).");
        Req(MaxLength >= 2, "--max-length must be at least 2.");
        Req(WarmupSteps >= 0 && EvalEvery >= 0 && EarlyStoppingPatience >= 0 && CheckpointEvery >= 0 && LogEvery >= 1, "step counts must be non-negative.");
        Req(EncoderHiddenSize >= 1, "--encoder-hidden-size must be at least 1.");
    }

    public static string FormatValue(object? v) => v switch
    {
        null => "null",
        double d => d.ToString("G", CultureInfo.InvariantCulture),
        _ => v.ToString()!,
    };
}
