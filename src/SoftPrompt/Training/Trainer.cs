using System.Diagnostics;
using System.Globalization;
using System.Text.Json.Nodes;
using System.Text.Json;
using SoftPrompt.Data;
using SoftPrompt.IO;
using SoftPrompt.Models;
using SoftPrompt.Optimization;
using SoftPrompt.Distributed;
using SoftPrompt.Runs;
using SoftPrompt.Scoring;
using SoftPrompt.Tuning;
using TorchSharp;
using static TorchSharp.torch;

namespace SoftPrompt.Training;

/// <summary>Receives progress from a <see cref="Trainer"/> (a progress line, a log, a UI).</summary>
public interface ITrainingReporter
{
    void Step(int step, int totalSteps, double loss, double lr, double tokensPerSecond, TimeSpan eta);
    void Eval(int step, IReadOnlyDictionary<string, double> metrics, bool best);
    void Message(string text);
}

public sealed record TrainResult(int Steps, double? BestValidationLoss, IReadOnlyDictionary<string, double>? BestMetrics, string AdapterDir, string StopReason)
{
    /// <summary>The step of the exported adapter (the selected checkpoint with validation, else the last step).</summary>
    public int AdapterStep { get; init; }
    /// <summary>What chose the exported adapter: a metric name ("accuracy", "eval_loss") or "last step" without validation.</summary>
    public string SelectedBy { get; init; } = "last step";

    /// <summary>The closing line: what was saved, chosen how, with that checkpoint's metrics (not the best of each metric
    /// over the run, which may come from different checkpoints).</summary>
    public string Summary()
    {
        var how = SelectedBy == "last step" ? "the last step (no validation data)"
            : SelectedBy == "eval_loss" ? "lowest validation loss" : $"highest validation {SelectedBy}, ties broken by validation loss";
        var metrics = BestMetrics is { Count: > 0 } m
            ? ": " + string.Join(", ", m.Where(kv => kv.Key != "step").Select(kv => string.Create(System.Globalization.CultureInfo.InvariantCulture, $"{kv.Key} {kv.Value:F4}")))
            : "";
        return $"done: {Steps} steps ({StopReason}); exported adapter = step {AdapterStep}, chosen by {how}{metrics}";
    }
}

/// <summary>
/// Trains the parameters of an <see cref="IPromptMethod"/> on a frozen model. Knows nothing of which method it
/// trains: it asks the method for parameters and for what to inject, and <see cref="PromptLoss"/> does the rest.
/// One dispose scope per step; parameters and optimizer state live outside it.
/// Resumable: checkpoints hold parameters, optimizer state and the data position (epoch, batch), and the data
/// order is a pure function of (seed, epoch), so a resumed run ends at the same prompt as an uninterrupted one.
/// </summary>
public sealed class Trainer
{
    readonly IPromptableModel _model;
    readonly IPromptMethod _method;
    readonly IReadOnlyList<TokenizedExample> _train;
    readonly IReadOnlyList<TokenizedExample>? _val;
    readonly TrainOptions _o;
    readonly int _padId;
    readonly string _runDir;
    /// <summary>The data settings the prompt is trained under, written into every saved adapter so that eval can say
    /// when it scores the prompt under others.</summary>
    readonly AdapterMetadata _recorded;
    readonly ITrainingReporter? _reporter;

    /// <summary>Extra validation metrics (e.g. accuracy from rank classification), computed with the current prompt.
    /// The first key is the one "best" is judged by (higher is better); without it, validation loss (lower is better).</summary>
    public Func<IPromptMethod, IReadOnlyDictionary<string, double>>? ExtraMetrics { get; init; }

    /// <summary>The ranks this run is spread over (one process by default). Each rank trains on its share of every
    /// batch; the trainer's only other contact with it is "sum this over the ranks" (gradients, loss, counts) and
    /// "am I the writer" (rank 0 alone writes the run folder).</summary>
    public ICommunicator Communicator { get; init; } = SingleProcess.Instance;
    bool Writer => Communicator.IsWriter;

    public string CheckpointDir => Path.Combine(_runDir, "checkpoint");
    public string BestDir => Path.Combine(_runDir, "best");
    public string AdapterDir => Path.Combine(_runDir, "adapter");
    public string MetricsPath => Path.Combine(_runDir, "metrics.jsonl");
    public string PlotPath => Path.Combine(_runDir, "training.png");

    public Trainer(IPromptableModel model, IPromptMethod method, IReadOnlyList<TokenizedExample> train, IReadOnlyList<TokenizedExample>? validation,
        TrainOptions options, int padId, string runDir, ITrainingReporter? reporter = null)
    {
        if (train.Count == 0) throw new SoftPromptException("The training set is empty.");
        _model = model; _method = method; _train = train; _val = validation is { Count: > 0 } ? validation : null;
        _o = options; _padId = padId; _runDir = runDir; _reporter = reporter;
        _recorded = new AdapterMetadata { Method = options.Method }.WithData(options.DataOptions());
    }

    sealed class State
    {
        public int Step { get; set; }
        public int Epoch { get; set; }
        public int Batch { get; set; }
        public double? BestScore { get; set; }
        /// <summary>Validation loss of the best checkpoint: breaks ties of the selection metric (small validation sets tie often).</summary>
        public double? BestLoss { get; set; }
        public int? BestStep { get; set; }
        public string? BestKey { get; set; }
        public Dictionary<string, double>? BestMetrics { get; set; }
        public int BadEvals { get; set; }
        public long TokensSeen { get; set; }
    }

    IPromptOptimizer CreateOptimizer() => _o.Optimizer switch
    {
        "adafactor" => new Adafactor(_method.Parameters, weightDecay: _o.WeightDecay),
        _ => new AdamW(_method.Parameters, weightDecay: _o.WeightDecay),
    };

    public int TotalSteps(BatchSampler sampler) =>
        _o.Steps > 0 ? _o.Steps : (int)Math.Ceiling(_o.Epochs * (double)sampler.BatchesPerEpoch / _o.GradAccum);

    public TrainResult Run(bool resume = false, CancellationToken cancel = default)
    {
        if (Writer) Directory.CreateDirectory(_runDir);
        _method.SetTrainable(true);
        using var optimizer = CreateOptimizer();
        var sampler = new BatchSampler(_train.Select(e => e.PromptIds.Length + e.TargetIds.Length).ToArray(), _o.BatchSize, _o.Seed, _o.SortByLength);
        int total = TotalSteps(sampler);
        var st = new State();
        if (resume)
        {
            st = LoadCheckpoint(optimizer) ?? throw new SoftPromptException($"{_runDir}: no checkpoint to resume from (expected {CheckpointDir}).");
            _reporter?.Message($"resumed at step {st.Step} (epoch {st.Epoch}, batch {st.Batch})");
        }
        if (!resume && Writer && File.Exists(MetricsPath)) File.Delete(MetricsPath);
        var log = new MetricsLog(MetricsPath, resume ? st.Step : null, write: Writer);

        var batches = BatchStream(sampler, st);
        string stopReason = "max_steps";
        var clock = Stopwatch.StartNew();
        long tokensSinceLog = 0; double nllSinceLog = 0; long countSinceLog = 0; int stepsSinceLog = 0;
        var logClock = Stopwatch.StartNew();
        int startStep = st.Step;
        bool lastGood = true;

        while (st.Step < total)
        {
            // A stop request seen by any rank stops every rank at the same step.
            if (Communicator.Any(cancel.IsCancellationRequested)) { stopReason = "cancelled"; break; }
            double lr = LearningRateSchedule.At(_o.Schedule, st.Step, total, _o.WarmupSteps, _o.Lr);
            double stepNll; long stepCount; long stepTokens = 0;
            using (var scope = torch.NewDisposeScope())
            {
                optimizer.ZeroGrad();
                // The global batch is the one a single process draws; this rank takes every Size-th example of each
                // micro-batch (all of it in one process).
                var micro = new List<(Batch? Batch, int Epoch, int Index)>();
                for (int m = 0; m < _o.GradAccum; m++)
                {
                    var (idx, ep, bi) = batches.Next();
                    var mine = Communicator.Size == 1 ? idx : idx.Where((_, j) => Communicator.Owns(j)).ToArray();
                    micro.Add((mine.Length == 0 ? null : PromptLoss.Collate(_model, mine.Select(i => _train[i]).ToList(), _padId, _o.LossOnPrompt), ep, bi));
                }
                // The positions the loss actually counts, over the whole global batch (all ranks): each rank's gradient
                // is its share of the global mean, so their sum is the single-process gradient.
                var counts = new long[] { micro.Sum(x => (long)(x.Batch?.LossCount ?? 0)) };
                Communicator.AllReduceSum(counts);
                long totalTargets = counts[0];
                var nllAcc = torch.zeros(1, ScalarType.Float32, _model.Device).sum();
                long counted = 0;
                foreach (var (batch, _, _) in micro)
                {
                    if (batch is null) continue;
                    var (nll, count) = PromptLoss.Compute(_model, _method, batch);
                    counted += count;
                    if (count > 0) (nll / Math.Max(1, totalTargets)).backward();
                    nllAcc = nllAcc + nll.detach();
                    stepTokens += batch.RealTokens;
                    batch.Dispose();
                }
                Communicator.AllReduceGradients(_method.Parameters.Select(p => p.Param));
                if (_o.MaxGradNorm > 0) GradientClipping.ClipGradNorm(_method.Parameters.Select(p => p.Param), _o.MaxGradNorm);
                optimizer.Step(lr);
                var sums = new double[] { nllAcc.item<float>(), counted, stepTokens }; // one host sync per step: the NaN guard needs it
                Communicator.AllReduceSum(sums);
                stepNll = sums[0];
                stepCount = (long)sums[1];
                stepTokens = (long)sums[2];
                var last = micro[^1];
                st.Epoch = last.Epoch; st.Batch = last.Index + 1;
            }
            st.Step++;
            st.TokensSeen += stepTokens;
            double stepLoss = stepCount > 0 ? stepNll / stepCount : 0;
            if (!double.IsFinite(stepLoss))
            {
                stopReason = "non_finite_loss";
                lastGood = false;
                break;
            }
            nllSinceLog += stepNll; countSinceLog += stepCount; tokensSinceLog += stepTokens; stepsSinceLog++;

            bool logNow = st.Step % _o.LogEvery == 0 || st.Step == total;
            double tps = tokensSinceLog / Math.Max(1e-9, logClock.Elapsed.TotalSeconds);
            var eta = TimeSpan.FromSeconds((total - st.Step) * clock.Elapsed.TotalSeconds / Math.Max(1, st.Step - startStep));
            _reporter?.Step(st.Step, total, stepLoss, lr, tps, eta);
            if (logNow)
            {
                log.Append(new JsonObject
                {
                    ["kind"] = "train", ["step"] = st.Step, ["epoch"] = st.Epoch, ["loss"] = countSinceLog > 0 ? nllSinceLog / countSinceLog : 0,
                    ["lr"] = lr, ["tokens_per_s"] = Math.Round(tps, 1), ["tokens_seen"] = st.TokensSeen, ["elapsed_s"] = Math.Round(clock.Elapsed.TotalSeconds, 2),
                });
                nllSinceLog = 0; countSinceLog = 0; tokensSinceLog = 0; stepsSinceLog = 0; logClock.Restart();
            }

            bool evalNow = _o.EvalEvery > 0 && st.Step % _o.EvalEvery == 0 || st.Step == total;
            if (evalNow)
            {
                var (metrics, isBest) = Evaluate(st);
                metrics["step"] = st.Step;
                var row = new JsonObject { ["kind"] = "eval", ["step"] = st.Step };
                foreach (var (k, v) in metrics) if (k != "step") row[k] = v;
                log.Append(row);
                _reporter?.Eval(st.Step, metrics, isBest);
                if (Writer) TrainingPlot.Write(log, PlotPath, ExtraMetrics is null ? null : metrics.Keys.FirstOrDefault(k => k is not ("eval_loss" or "step")));
                SaveCheckpoint(optimizer, st);
                if (_o.EarlyStoppingPatience > 0 && st.BadEvals >= _o.EarlyStoppingPatience) { stopReason = "early_stopping"; break; }
            }
            else if (_o.CheckpointEvery > 0 && st.Step % _o.CheckpointEvery == 0) SaveCheckpoint(optimizer, st);
        }

        if (!lastGood)
        {
            // st.Step is the step whose loss was not finite; the checkpoint on disk (if any) is from an earlier step.
            var saved = CheckpointStep();
            throw new TrainingDivergedException($"Training stopped at step {st.Step} of {total}: the loss became NaN or infinite. " + (saved is int s
                ? $"The last good checkpoint (step {s}) is in {CheckpointDir}; resume from it with a lower --lr: softprompt train --resume {_runDir} --lr {_o.Lr / 10:G3}."
                : $"No checkpoint was written before it; start again with a lower --lr (e.g. {_o.Lr / 10:G3}) or --max-grad-norm."));
        }
        if (stopReason == "cancelled") SaveCheckpoint(optimizer, st);
        // The adapter is the best validated prompt when there is validation, else the last one.
        if (Writer)
        {
            if (_val is not null && Directory.Exists(BestDir)) CopyDir(BestDir, AdapterDir);
            else Adapter.Save(AdapterDir, _method, _model, Provenance(st));
        }
        bool selected = _val is not null && st.BestStep is not null;
        var selectedBy = !selected ? "last step" : st.BestKey ?? "eval_loss";
        var summary = new JsonObject
        {
            ["steps"] = st.Step, ["stop_reason"] = stopReason, ["best_score"] = st.BestScore, ["tokens_seen"] = st.TokensSeen,
            ["adapter"] = Path.GetFullPath(AdapterDir), ["adapter_step"] = selected ? st.BestStep : st.Step, ["selected_by"] = selectedBy,
            ["adapter_metrics"] = selected && st.BestMetrics is not null ? new JsonObject(st.BestMetrics.Select(kv => KeyValuePair.Create(kv.Key, (JsonNode?)kv.Value))) : null,
            ["elapsed_s"] = Math.Round(clock.Elapsed.TotalSeconds, 2),
        };
        if (Writer) AtomicFile.WriteAllText(Path.Combine(_runDir, "summary.json"), JsonFile.Write(summary, indented: true) + "\n");
        var best = log.Rows.Where(r => r["kind"]?.GetValue<string>() == "eval").Select(r => r["eval_loss"]?.GetValue<double>()).Where(v => v.HasValue).Select(v => v!.Value).DefaultIfEmpty(double.NaN).Min();
        return new TrainResult(st.Step, double.IsNaN(best) ? null : best, selected ? st.BestMetrics : null, AdapterDir, stopReason)
        {
            AdapterStep = selected ? st.BestStep!.Value : st.Step, SelectedBy = selectedBy,
        };
    }

    /// <summary>What the saved adapter records: method, data settings and the step it was taken at.</summary>
    AdapterMetadata Provenance(State st) => _recorded with { Step = st.Step };

    (Dictionary<string, double> Metrics, bool IsBest) Evaluate(State st)
    {
        var metrics = new Dictionary<string, double>();
        if (_val is null)
        {
            // No validation set: the "best" prompt is simply the latest.
            return (metrics, false);
        }
        metrics["eval_loss"] = PromptLoss.ValidationLoss(_model, _method, _val, _o.BatchSize, _padId, comm: Communicator);
        if (ExtraMetrics is not null)
            foreach (var (k, v) in ExtraMetrics(_method)) metrics[k] = v;
        string? key = ExtraMetrics is null ? null : metrics.Keys.FirstOrDefault(k => k != "eval_loss");
        st.BestKey = key ?? "eval_loss";
        double score = key is null ? -metrics["eval_loss"] : metrics[key];
        double loss = metrics["eval_loss"];
        // A higher score wins; an equal score (common on a small validation set, where accuracy moves in coarse steps)
        // goes to the lower validation loss, so selection does not freeze at the first checkpoint that reached it.
        const double eps = 1e-12;
        bool isBest = st.BestScore is null || score > st.BestScore.Value + eps
            || (key is not null && Math.Abs(score - st.BestScore.Value) <= eps && double.IsFinite(loss) && loss < (st.BestLoss ?? double.PositiveInfinity));
        if (isBest)
        {
            bool improved = st.BestScore is null || score > st.BestScore.Value + eps;
            st.BestScore = score; st.BestLoss = loss; st.BestStep = st.Step;
            st.BestMetrics = metrics.Where(kv => double.IsFinite(kv.Value)).ToDictionary(kv => kv.Key, kv => kv.Value);
            if (improved) st.BadEvals = 0; else st.BadEvals++; // a tie-break is not progress for early stopping
            if (Writer) Adapter.Save(BestDir, _method, _model, Provenance(st));
        }
        else st.BadEvals++;
        return (metrics, isBest);
    }

    /// <summary>Endless stream of (indices, epoch, batch index), starting at the saved position.</summary>
    sealed class Cursor(BatchSampler sampler, int epoch, int batch)
    {
        int _epoch = epoch, _batch = batch;
        List<int[]>? _current;
        public (int[] Indices, int Epoch, int Batch) Next()
        {
            while (true)
            {
                _current ??= sampler.Batches(_epoch).ToList();
                if (_batch < _current.Count) { var r = (_current[_batch], _epoch, _batch); _batch++; return r; }
                _epoch++; _batch = 0; _current = null;
            }
        }
    }

    static Cursor BatchStream(BatchSampler sampler, State st) => new(sampler, st.Epoch, st.Batch);

    void SaveCheckpoint(IPromptOptimizer optimizer, State st)
    {
        if (!Writer) return;
        using var scope = torch.NewDisposeScope();
        // Write a complete new checkpoint folder, then swap it in: a crash leaves either the old or the new one.
        var tmp = CheckpointDir + ".tmp";
        if (Directory.Exists(tmp)) Directory.Delete(tmp, true);
        Directory.CreateDirectory(tmp);
        var tensors = new Dictionary<string, Tensor>();
        foreach (var (name, p) in _method.Parameters) tensors["param." + name] = p.detach();
        var optState = optimizer.StateDict();
        foreach (var (k, v) in optState) tensors["optim." + k] = v;
        SafeTensors.Save(Path.Combine(tmp, "state.safetensors"), tensors);
        AtomicFile.WriteAllText(Path.Combine(tmp, "trainer_state.json"), JsonSerializer.Serialize(st, new JsonSerializerOptions { WriteIndented = true }) + "\n");
        var old = CheckpointDir + ".old";
        if (Directory.Exists(old)) Directory.Delete(old, true);
        if (Directory.Exists(CheckpointDir)) Directory.Move(CheckpointDir, old);
        Directory.Move(tmp, CheckpointDir);
        if (Directory.Exists(old)) Directory.Delete(old, true);
    }

    /// <summary>The step of the checkpoint on disk, or null when there is none (or it cannot be read).</summary>
    int? CheckpointStep()
    {
        try { return ReadState(Path.Combine(CheckpointDir, "trainer_state.json")).Step; }
        catch (Exception e) when (e is SoftPromptException or IOException) { return null; }
    }

    static State ReadState(string statePath)
    {
        var text = InputFile.ReadAllText(statePath);
        State? st;
        try { st = JsonSerializer.Deserialize<State>(text, new JsonSerializerOptions { AllowDuplicateProperties = false }); }
        catch (JsonException e) { throw new SoftPromptException($"{statePath}: corrupt trainer state ({InputFile.OneLine(e.Message)}); delete the checkpoint folder to start again."); }
        if (st is null) throw new SoftPromptException($"{statePath}: empty trainer state.");
        if (st.Step < 0 || st.Epoch < 0 || st.Batch < 0 || st.BadEvals < 0 || st.TokensSeen < 0)
            throw new SoftPromptException($"{statePath}: corrupt trainer state (negative step, epoch, batch or counter).");
        return st;
    }

    State? LoadCheckpoint(IPromptOptimizer optimizer)
    {
        using var scope = torch.NewDisposeScope();
        var dir = Directory.Exists(CheckpointDir) ? CheckpointDir : Directory.Exists(CheckpointDir + ".old") ? CheckpointDir + ".old" : null;
        if (dir is null) return null;
        var st = ReadState(Path.Combine(dir, "trainer_state.json"));
        var statePath = Path.Combine(dir, "state.safetensors");
        var tensors = SafeTensors.Load(statePath);
        using (torch.no_grad())
            foreach (var (name, p) in _method.Parameters)
            {
                if (!tensors.TryGetValue("param." + name, out var t) || !t.shape.SequenceEqual(p.shape))
                    throw new SoftPromptException($"{dir}: checkpoint has no parameter '{name}' of shape [{string.Join(", ", p.shape)}]; was it written by another method or model?");
                ModelLoader.CheckFinite(t, statePath, "param." + name, " (the checkpoint cannot be resumed)");
                p.copy_(t);
            }
        try { optimizer.LoadStateDict(tensors.Where(kv => kv.Key.StartsWith("optim.")).ToDictionary(kv => kv.Key[6..], kv => kv.Value)); }
        catch (Exception e) when (e is KeyNotFoundException or ArgumentException or InvalidOperationException or System.Runtime.InteropServices.ExternalException)
        {
            throw new SoftPromptException($"{statePath}: the optimizer state does not fit this run ({InputFile.OneLine(e.Message)}); was it written with another --optimizer?");
        }
        return st;
    }

    /// <summary>Copies the adapter's two files (and nothing else: a kill -9 can leave an atomic writer's temp file behind).</summary>
    static void CopyDir(string from, string to)
    {
        var tmp = to + ".tmp";
        if (Directory.Exists(tmp)) Directory.Delete(tmp, true);
        Directory.CreateDirectory(tmp);
        foreach (var name in new[] { Adapter.ConfigFile, Adapter.WeightsFile }) File.Copy(Path.Combine(from, name), Path.Combine(tmp, name));
        if (Directory.Exists(to)) Directory.Delete(to, true);
        Directory.Move(tmp, to);
    }
}

public sealed class TrainingDivergedException(string message) : SoftPromptException(message);
