using SoftPrompt.Data;
using SoftPrompt.Evaluation;
using SoftPrompt.Inference;
using SoftPrompt.IO;
using SoftPrompt.Runtime;
using SoftPrompt.Tuning;
using TorchSharp;

namespace SoftPrompt.Training;

/// <summary>
/// A whole training run from <see cref="TrainOptions"/>: load the frozen model and tokenizer, read and tokenize the
/// data, create the prompt method, train, export. What <c>softprompt train</c> calls; usable from any .NET app.
/// </summary>
public static class TrainingJob
{
    public const string ResolvedConfigFile = "config.json";

    /// <summary>Options of an existing run folder (its resolved config), for --resume.</summary>
    public static TrainOptions ResumeOptions(string runDir)
    {
        var path = Path.Combine(runDir, ResolvedConfigFile);
        if (!File.Exists(path)) throw new SoftPromptException($"--resume {runDir}: no {ResolvedConfigFile} there; is it a run folder?");
        return TrainOptions.FromFile(path) with { Output = runDir };
    }

    public static TrainResult Run(TrainOptions o, ITrainingReporter? reporter = null, bool resume = false, CancellationToken cancel = default)
    {
        o.Validate();
        TorchRuntime.SetThreads(o.Threads);
        torch.manual_seed(o.Seed);
        var runDir = o.Output!;
        if (!resume && Directory.Exists(Path.Combine(runDir, "checkpoint")))
            throw new SoftPromptException($"{runDir} already holds a run (checkpoint/). Use --resume {runDir} to continue it, or another --output.");

        // Data first: a broken dataset must stop the run before the model is loaded.
        var dataOptions = o.DataOptions();
        var trainRead = DatasetReader.Read(o.Train!, dataOptions);
        Report(reporter, o.Train!, trainRead);
        IReadOnlyList<Example> trainEx = trainRead.Examples, valEx;
        if (o.Validation is not null)
        {
            var valRead = DatasetReader.Read(o.Validation, dataOptions);
            Report(reporter, o.Validation, valRead);
            valEx = valRead.Examples;
        }
        else if (o.ValidationSplit > 0 && trainEx.Count >= 2)
            (trainEx, valEx) = DatasetSplit.Split(trainEx, o.ValidationSplit, o.Seed);
        else valEx = Array.Empty<Example>();

        using var lm = LanguageModel.Load(o.Model!, o.Device, o.Dtype);
        var tok = lm.RequireTokenizer();
        int padId = tok.PadId ?? tok.EosId ?? 0;
        Func<string, bool, int[]> encode = (text, special) => tok.Encode(text, special);
        // Virtual tokens occupy positions too: models with learned positions (GPT-2) have room for fewer real ones.
        int maxLength = lm.Model.Config.Family == Models.ArchFamily.Gpt2 ? Math.Min(o.MaxLength, lm.Model.Config.MaxPositions - o.VirtualTokens) : o.MaxLength;
        if (maxLength < 2) throw new SoftPromptException($"--virtual-tokens {o.VirtualTokens} leaves no room for text in the model's {lm.Model.Config.MaxPositions} positions.");
        var train = ExampleTokenizer.TokenizeAll(trainEx, encode, o.AddEos, tok.EosId, maxLength);
        var val = ExampleTokenizer.TokenizeAll(valEx, encode, o.AddEos, tok.EosId, maxLength);
        reporter?.Message($"{train.Count} training examples, {val.Count} validation examples; model {lm.Model.Config.ModelType} " +
                          $"({lm.Model.ParameterCount / 1e6:F1} M parameters, frozen, {TorchRuntime.DTypeName(lm.Model.DType)}) on {lm.Model.Device}");

        using var method = CreateMethod(o, lm, trainEx);
        long trainable = method.Parameters.Sum(p => p.Param.NumberOfElements);
        reporter?.Message($"{o.Method} tuning: {method.NumVirtualTokens} virtual tokens, {trainable:N0} trainable parameters");

        Directory.CreateDirectory(runDir);
        if (!resume) AtomicFile.WriteAllText(Path.Combine(runDir, ResolvedConfigFile), o.ToJson());
        var trainer = new Trainer(lm.Model, method, train, val, o, padId, runDir, reporter)
        {
            ExtraMetrics = ClassificationMetrics(o, dataOptions, lm, trainEx, valEx, reporter),
        };
        return trainer.Run(resume, cancel);
    }

    /// <summary>Number of validation examples rank-classified at each evaluation (the loss uses them all).</summary>
    public const int ClassificationValidationCap = 200;

    /// <summary>
    /// For a classification task (TrainOptions.Labels given, or the same automatic rule as <c>eval</c>), validation
    /// accuracy and macro-F1 by rank classification, the code <c>eval</c> uses; accuracy then decides the best
    /// checkpoint. Null for other tasks or without validation data.
    /// </summary>
    static Func<IPromptMethod, IReadOnlyDictionary<string, double>>? ClassificationMetrics(TrainOptions o, DataOptions d, LanguageModel lm,
        IReadOnlyList<Example> trainEx, IReadOnlyList<Example> valEx, ITrainingReporter? reporter)
    {
        if (valEx.Count == 0) return null;
        string why;
        if (o.Labels is not null) why = "--labels given";
        else
        {
            string field;
            try { field = d.LabelField(); }
            catch (SoftPromptException) { return null; }
            var (isClass, reason) = ClassificationTask.Detect(trainEx.Concat(valEx).Select(e => ClassificationTask.LabelOf(e, field)).ToList());
            if (!isClass) return null;
            why = reason;
        }
        var task = ClassificationTask.Create(trainEx.Concat(valEx).ToList(), d, lm.RequireTokenizer(), o.Labels, o.Train!);
        reporter?.Message($"classification task ({why}): validation accuracy and macro-F1 by rank classification over {task.Labels.Count} labels " +
                          $"on {Math.Min(valEx.Count, ClassificationValidationCap)} validation examples; the best checkpoint is the most accurate");
        return task.TrainerMetrics(lm.Model, lm.RequireTokenizer(), valEx, o.MaxLength, cap: ClassificationValidationCap);
    }

    static void Report(ITrainingReporter? r, string path, DatasetReadResult read)
    {
        if (read.Skipped > 0) r?.Message($"{path}: skipped {read.Skipped} bad line{(read.Skipped == 1 ? "" : "s")} (--skip-bad-lines); first: {read.Problems.FirstOrDefault()}");
    }

    public static IPromptMethod CreateMethod(TrainOptions o, LanguageModel lm, IReadOnlyList<Example> trainExamples)
    {
        if (o.Method == "prefix")
            return PrefixTuning.Create(lm.Model.Config, o.VirtualTokens, o.PrefixProjection, o.EncoderHiddenSize, o.Seed, lm.Model.Device);
        var tok = lm.RequireTokenizer();
        var init = o.Init switch { "random" => PromptInit.Random, "text" => PromptInit.Text, "class_labels" => PromptInit.ClassLabels, _ => PromptInit.SampleVocab };
        IReadOnlyList<int[]>? ids = null;
        if (init == PromptInit.Text) ids = new[] { tok.Encode(o.InitText!, false) };
        if (init == PromptInit.ClassLabels)
        {
            // Targets are already verbalized (label words); labels given with --labels are mapped the same way.
            var data = o.DataOptions();
            var labels = o.Labels is not null
                ? o.Labels.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries).Select(l => data.Verbalize(l).Trim()).ToList()
                : trainExamples.Select(e => e.Target.Trim()).Distinct().OrderBy(s => s, StringComparer.Ordinal).ToList();
            ids = labels.Select(l => tok.Encode(" " + l, false)).ToList();
        }
        return PromptTuning.Create(lm.Model, o.VirtualTokens, init, o.Seed, ids, o.InitText, o.PromptProjection ? o.EncoderHiddenSize : 0);
    }
}
