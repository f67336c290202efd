using SoftPrompt.Data;
using SoftPrompt.IO;
using SoftPrompt.Inference;
using SoftPrompt.Distributed;
using SoftPrompt.Runs;
using SoftPrompt.Runtime;
using SoftPrompt.Scoring;
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

    /// <summary>Below this many validation examples the trainer warns that checkpoint selection is noisy.</summary>
    public const int MinValidationExamples = 50;

    /// <summary>Runs the job. Under MPI (<paramref name="comm"/> of several ranks) every rank calls this with the same
    /// options; each trains on its shard of every batch, and rank 0 alone writes the run folder.</summary>
    public static TrainResult Run(TrainOptions o, ITrainingReporter? reporter = null, bool resume = false, CancellationToken cancel = default,
        ICommunicator? comm = null)
    {
        var run = new RunScaffold(comm, reporter is null ? null : reporter.Message);
        run.Agree(() => o.Validate());
        var runDir = o.Output!;
        // A run that failed before its first checkpoint leaves nothing behind; with a checkpoint the folder stays for --resume.
        return run.InRunFolder(runDir, () => RunLocked(o, run.IsWriter ? reporter : null, resume, cancel, runDir, run),
            keepOnFailure: () => resume || Directory.Exists(Path.Combine(runDir, "checkpoint")) || Directory.Exists(Path.Combine(runDir, "checkpoint.old")));
    }

    static TrainResult RunLocked(TrainOptions o, ITrainingReporter? reporter, bool resume, CancellationToken cancel, string runDir, RunScaffold run)
    {
        // The checks and the data, agreed on by every rank (a bad file stops all of them, said once).
        var (dataOptions, trainEx, valEx, maxLength) = run.Agree(() => Prepare(o, reporter, resume, runDir, run));
        RunScaffold.Seed(o.Seed);

        // What every rank must agree on: the options that change the result (not where it is written, nor threads; the data
        // and model by their contents, not their paths, which may differ from node to node).
        var agreed = (o with { Output = null, Threads = 0, Device = "auto", Train = null, Validation = null, Model = null }).ToJson();
        using var lm = run.LoadModel(o.Model!, o.Device, o.Dtype, o.CheckFinite, o.Threads, agreed,
            new[] { o.Train! }.Concat(o.Validation is null ? Array.Empty<string>() : new[] { o.Validation }), reporter is null ? null : reporter.Message);
        return Train(o, reporter, resume, cancel, runDir, run, lm, dataOptions, trainEx, valEx, maxLength);
    }

    static (DataOptions, IReadOnlyList<Example>, IReadOnlyList<Example>, int) Prepare(TrainOptions o, ITrainingReporter? reporter, bool resume, string runDir, RunScaffold run)
    {
        if (!resume && Directory.Exists(Path.Combine(runDir, "checkpoint")))
            throw new SoftPromptException($"{runDir} already holds a run (checkpoint/). Use --resume {runDir} to continue it, or another --output.");
        if (resume && !Directory.Exists(Path.Combine(runDir, "checkpoint")) && !Directory.Exists(Path.Combine(runDir, "checkpoint.old")))
            throw new SoftPromptException($"--resume {runDir}: no checkpoint to resume from (expected {Path.Combine(runDir, "checkpoint")}).");

        // Data first: a broken dataset must stop the run before the model is loaded.
        var dataOptions = o.DataOptions();
        var data = run.ReadData(dataOptions, o.Train!, o.Validation, o.ValidationSplit, o.Seed);
        IReadOnlyList<Example> trainEx = data.Train, valEx = data.Validation;
        RunScaffold.CheckLabels(data, dataOptions, o.Labels, o.Train!);
        if (valEx.Count is > 0 and < MinValidationExamples)
            reporter?.Message($"warning: only {valEx.Count} validation examples choose the best checkpoint: accuracy moves in steps of {100.0 / valEx.Count:F0} points " +
                              $"and results vary a lot from seed to seed; give --validation with at least {MinValidationExamples} examples (or a larger --validation-split).");

        // Virtual tokens occupy positions too (the prompt's, or the prefix's past keys, come first): the text gets what
        // the model's positions leave, and a prompt that leaves no room is refused here, from config.json alone, before
        // the weights or anything the size of the prompt are allocated.
        int maxPositions = Models.ModelConfig.Load(o.Model!).MaxPositions;
        int maxLength = (int)Math.Min(o.MaxLength, (long)maxPositions - o.VirtualTokens);
        if (maxLength < 2)
            throw new SoftPromptException($"--virtual-tokens {o.VirtualTokens} leaves no room for text in the model's {maxPositions} positions " +
                                          $"(max_position_embeddings in {Path.Combine(o.Model!, "config.json")}): use at most {maxPositions - 2} virtual tokens.");
        if (maxLength < o.MaxLength)
            reporter?.Message($"note: examples are truncated to {maxLength} tokens: {o.VirtualTokens} virtual tokens + --max-length {o.MaxLength} exceed the model's {maxPositions} positions.");
        return (dataOptions, trainEx, valEx, maxLength);
    }

    static TrainResult Train(TrainOptions o, ITrainingReporter? reporter, bool resume, CancellationToken cancel, string runDir, RunScaffold run, LanguageModel lm,
        DataOptions dataOptions, IReadOnlyList<Example> trainEx, IReadOnlyList<Example> valEx, int maxLength)
    {
        var tok = run.Agree(() => lm.RequireTokenizer());
        int padId = tok.PadId ?? tok.EosId ?? 0;
        Func<string, bool, int[]> encode = (text, special) => tok.Encode(text, special);
        // An encoder-decoder model learns where its output ends: its targets always end with EOS (transformers' T5
        // tokenizer writes labels that way).
        bool addEos = o.AddEos || lm.IsEncoderDecoder;
        var (train, val) = run.Agree(() => (ExampleTokenizer.TokenizeAll(trainEx, encode, addEos, tok.EosId, maxLength), ExampleTokenizer.TokenizeAll(valEx, encode, addEos, tok.EosId, maxLength)));
        reporter?.Message($"{train.Count} training examples, {val.Count} validation examples; model {lm.Base.Config.ModelType} " +
                          $"({lm.Base.ParameterCount / 1e6:F1} M parameters, frozen, {TorchRuntime.DTypeName(lm.Base.DType)}) on {lm.Base.Device}");

        using var method = run.Agree(() => { CheckMethodSize(o, lm.Base.Config); return CreateMethod(o, lm, trainEx); });
        long trainable = method.Parameters.Sum(p => p.Param.NumberOfElements);
        reporter?.Message($"{OptionsRecord.EnumName(o.Method)} tuning: {method.NumVirtualTokens} virtual tokens, {trainable:N0} trainable parameters");

        if (!resume && run.IsWriter) AtomicFile.WriteAllText(Path.Combine(runDir, ResolvedConfigFile), o.ToJson());
        var trainer = new Trainer(lm.Base, method, train, val, o, padId, runDir, reporter)
        {
            ExtraMetrics = run.Agree(() => ClassificationMetrics(o, dataOptions, lm, trainEx, valEx, reporter, run.Comm)),
            Communicator = run.Comm,
        };
        return trainer.Run(resume, cancel);
    }

    /// <summary>
    /// The trainable tensors' size from the options and the model's shape, in checked arithmetic, against the memory
    /// there is (parameters, gradients and two optimizer moments in fp32), before anything is allocated: an absurd
    /// --virtual-tokens or --encoder-hidden-size is an error naming the option, not a crash.
    /// </summary>
    public static void CheckMethodSize(TrainOptions o, Models.ModelConfig c)
    {
        long width = o.Method == TuningMethod.Prefix ? MemoryBudget.Product(2, c.NumLayers, c.KvDim) : c.HiddenSize;
        long elements = MemoryBudget.Product(o.VirtualTokens, width);
        bool mlp = o.Method == TuningMethod.Prefix ? o.PrefixProjection : o.PromptProjection;
        if (mlp)
        {
            long mlpElems = MemoryBudget.Product(o.EncoderHiddenSize, c.HiddenSize + width + 2);
            elements = elements == long.MaxValue || mlpElems == long.MaxValue ? long.MaxValue : elements + mlpElems + MemoryBudget.Product(o.VirtualTokens, c.HiddenSize);
        }
        var what = $"--virtual-tokens {o.VirtualTokens}{(mlp ? $" with --encoder-hidden-size {o.EncoderHiddenSize}" : "")} ({OptionsRecord.EnumName(o.Method)} tuning on this model)";
        MemoryBudget.Check(MemoryBudget.Product(elements, 4 * 4), what);
    }

    /// <summary>Number of validation examples rank-classified at each evaluation (the loss uses them all).</summary>
    public const int ClassificationValidationCap = 200;

    /// <summary>
    /// For a classification task (TrainOptions.Labels given, or the same automatic rule as <c>eval</c>), validation
    /// accuracy and macro-F1 by rank classification, the code <c>eval</c> uses; accuracy then decides the best
    /// checkpoint. Null for other tasks or without validation data.
    /// </summary>
    static Func<IPromptMethod, IReadOnlyDictionary<string, double>>? ClassificationMetrics(TrainOptions o, DataOptions d, LanguageModel lm,
        IReadOnlyList<Example> trainEx, IReadOnlyList<Example> valEx, ITrainingReporter? reporter, ICommunicator comm)
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
        return task.TrainerMetrics(lm.Base, lm.RequireTokenizer(), valEx, o.MaxLength, cap: ClassificationValidationCap, comm: comm);
    }

    public static IPromptMethod CreateMethod(TrainOptions o, LanguageModel lm, IReadOnlyList<Example> trainExamples)
    {
        if (o.Method == TuningMethod.Prefix)
            return PrefixTuning.Create(lm.Base.Config, o.VirtualTokens, o.PrefixProjection, o.EncoderHiddenSize, o.Seed, lm.Base.Device);
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
        return PromptTuning.Create(lm.Base, o.VirtualTokens, init, o.Seed, ids, o.InitText, o.PromptProjection ? o.EncoderHiddenSize : 0);
    }
}
