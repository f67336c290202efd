using System.Globalization;
using System.Text.Json.Nodes;
using System.Text.Json;
using SoftPrompt.Data;
using SoftPrompt.IO;
using SoftPrompt.Inference;
using SoftPrompt.Distributed;
using SoftPrompt.Runs;
using SoftPrompt.Runtime;
using SoftPrompt.Scoring;
using SoftPrompt.Tokenization;
using SoftPrompt.Tuning;
using TorchSharp;

namespace SoftPrompt.Search;

/// <summary>
/// A whole hard-prompt search from <see cref="HardPromptSearchOptions"/>: read the data, load the frozen model and
/// tokenizer, search, and write the run folder: <c>hard_prompt.json</c> (a <see cref="HardPrompt"/> that
/// <c>eval</c> reads), <c>search_log.jsonl</c> (one row per step), <c>search_summary.json</c> and the resolved
/// <c>config.json</c>, each written atomically. What <c>softprompt search-hard-prompt</c> calls.
/// </summary>
public static class HardPromptSearchJob
{
    public const string LogFile = "search_log.jsonl", SummaryFile = "search_summary.json", ConfigFile = "config.json";

    public static HardPromptSearchResult Run(HardPromptSearchOptions o, IProgress<HardPromptSearchProgress>? progress = null,
        Action<string>? message = null, CancellationToken cancel = default, IHardPromptOptimizer? optimizer = null, bool resume = false,
        ICommunicator? comm = null)
    {
        var run = new RunScaffold(comm, message);
        bool opro = o.Strategy == SearchStrategy.Opro;
        var runDir = o.Output!;
        var trajectoryPath = Path.Combine(runDir ?? "", OproTrajectory.FileName);
        run.Agree(() =>
        {
            o.Validate();
            if (resume && !opro) throw new SoftPromptException("--resume continues an OPRO run (--strategy opro); a gradient search is restarted instead.");
            if (resume && !File.Exists(trajectoryPath)) throw new SoftPromptException($"--resume {runDir}: no {OproTrajectory.FileName} there; is it an OPRO run folder?");
        });
        o = o with { ScoreExamples = o.ResolvedScoreExamples };
        // Locked (created, proven writable) before anything is read; held to the end. A failed gradient search leaves no
        // folder it created (it has no checkpoint to resume); a failed OPRO run keeps its trajectory for --resume.
        return run.InRunFolder(runDir, () => RunLocked(o, run.IsWriter ? progress : null, run.Message, cancel, optimizer, runDir, resume, trajectoryPath, run),
            keepOnFailure: () => File.Exists(trajectoryPath));
    }

    static HardPromptSearchResult RunLocked(HardPromptSearchOptions o, IProgress<HardPromptSearchProgress>? progress,
        Action<string>? message, CancellationToken cancel, IHardPromptOptimizer? optimizer, string runDir, bool resume, string trajectoryPath, RunScaffold run)
    {
        bool opro = o.Strategy == SearchStrategy.Opro;
        // The checks and the data, agreed on by every rank (a bad file stops all of them, said once).
        var (search, heldOut) = run.Agree(() => Prepare(o, runDir, resume, trajectoryPath, run, opro));
        RunScaffold.Seed(o.Seed);

        var agreed = OptionsRecord.ToJson(o with { Output = null, Threads = 0, Device = "auto", Train = null, Validation = null, Model = null });
        using var lm = run.LoadModel(o.Model!, o.Device, o.Dtype, o.CheckFinite, o.Threads, agreed,
            new[] { o.Train! }.Concat(o.Validation is null ? Array.Empty<string>() : new[] { o.Validation }), message);
        var (tok, objective) = run.Agree(() => { var t = lm.RequireTokenizer(); return (t, new TargetLossObjective(lm.Model, t, search, heldOut, o) { Communicator = run.Comm }); });
        return Search(o, progress, message, cancel, optimizer, runDir, resume, trajectoryPath, run, lm, tok, objective, search, heldOut);
    }

    static (IReadOnlyList<Example> Search, IReadOnlyList<Example> HeldOut) Prepare(HardPromptSearchOptions o, string runDir, bool resume, string trajectoryPath, RunScaffold run, bool opro)
    {
        if (!resume && File.Exists(Path.Combine(runDir, HardPrompt.FileName)))
            throw new SoftPromptException($"{runDir} already holds a search result ({HardPrompt.FileName}); choose another --output.");
        if (!resume && opro && File.Exists(trajectoryPath))
            throw new SoftPromptException($"{runDir} holds an unfinished OPRO run; continue it with --resume {runDir}, or choose another --output.");

        // Data first: a broken dataset stops the run before the model is loaded.
        var dataOptions = o.DataOptions();
        var data = run.ReadData(dataOptions, o.Train!, o.Validation, o.ValidationSplit, o.Seed);
        IReadOnlyList<Example> search = data.Train, heldOut = data.Validation;
        // --labels: every label must occur in the data (as train and eval require). Without a target template a label is
        // the label field's value; with one, the rendered target text.
        if (o.Labels is not null)
        {
            if (o.TargetTemplate is null) RunScaffold.CheckLabels(data, dataOptions, o.Labels, o.Train!);
            else
            {
                var targets = search.Concat(heldOut).Select(e => e.Target).ToHashSet(StringComparer.Ordinal);
                foreach (var l in o.Labels.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries))
                    if (!targets.Contains(l)) throw new SoftPromptException($"--labels: label \"{l}\" is not the target of any example in {o.Train} (with --target-template a label is the rendered target text).");
            }
        }
        return (search, heldOut);
    }

    static HardPromptSearchResult Search(HardPromptSearchOptions o, IProgress<HardPromptSearchProgress>? progress, Action<string>? message, CancellationToken cancel,
        IHardPromptOptimizer? optimizer, string runDir, bool resume, string trajectoryPath, RunScaffold run, LanguageModel lm, HfTokenizer tok,
        TargetLossObjective objective, IReadOnlyList<Example> search, IReadOnlyList<Example> heldOut)
    {
        bool opro = o.Strategy == SearchStrategy.Opro;
        message?.Invoke($"{search.Count} search examples ({objective.ScoreSet.Count} in the score set), {heldOut.Count} held out; " +
                        (opro ? $"objective {objective.Metric}; " : $"{objective.Allowed.Count(a => a)} allowed tokens; ") + $"model {lm.Model.Config.ModelType} on {lm.Model.Device}");
        using var oproRun = opro && optimizer is null ? OproRun.Create(o, lm, objective, trajectoryPath, resume, message) : null;
        var init = opro ? Array.Empty<int>() : run.Agree(() => InitialIds(tok, objective.Allowed, o.PromptLength, o.Init));
        if (!opro) message?.Invoke($"initial prompt ({o.PromptLength} tokens): \"{tok.Decode(init)}\"");

        if (run.IsWriter) AtomicFile.WriteAllText(Path.Combine(runDir, ConfigFile), OptionsRecord.ToJson(o));
        var logPath = Path.Combine(runDir, LogFile);
        var rows = new List<string>();
        if (resume && run.IsWriter && File.Exists(logPath))
        {
            // Keep the rows of the steps the trajectory holds (a step in flight when the run stopped is redone).
            int done = OproTrajectory.Load(trajectoryPath).Step;
            rows.AddRange(File.ReadAllLines(logPath).Where(l => l.Length > 0 && RowStep(l) is int st && st <= done));
        }
        var logger = new LogWriter(rows, logPath, progress, run.IsWriter);
        var result = (optimizer ?? (IHardPromptOptimizer?)oproRun?.Search ?? new GradientGuidedSearch(run.Comm)).Optimize(oproRun?.Objective ?? objective, o, init, logger, cancel);
        if (!run.IsWriter) return result; // rank 0 writes the folder
        WriteLog(rows, logPath);

        var trainName = Path.GetFileName(Path.GetFullPath(o.Train!));
        var hp = new HardPrompt
        {
            Text = result.Text, TokenIds = result.TokenIds, Score = result.Score, Objective = result.Objective, Position = opro ? objective.HardPromptPosition : null,
            Source = opro
                ? $"search-hard-prompt (opro, optimizer {oproRun?.OptimizerName ?? "custom"}, {result.Steps} steps, seed {o.Seed}, {trainName}{(result.Details?["demos"] is JsonArray d ? $", instruction + {d.Count} demonstrations" : "")})"
                : $"search-hard-prompt (gradient-guided, k={o.PromptLength}, {result.Steps} steps, seed {o.Seed}, {trainName})",
        };
        var summary = new JsonObject
        {
            ["strategy"] = opro ? "opro" : "gradient_guided", ["steps"] = result.Steps, ["accepted_swaps"] = result.Accepted, ["stop_reason"] = result.StopReason,
            ["initial_text"] = tok.Decode(result.InitialIds), ["initial_token_ids"] = new JsonArray(result.InitialIds.Select(i => (JsonNode)i).ToArray()),
            ["initial_score"] = result.InitialScore, ["score"] = result.Score, ["objective"] = result.Objective,
            ["score_examples"] = objective.ScoreSet.Count, ["held_out_examples"] = objective.HeldOutCount,
            ["select_metric"] = result.SelectMetric, ["select_value"] = result.SelectValue,
        };
        if (opro) summary.Remove("accepted_swaps");
        if (result.Details is not null) foreach (var kv in result.Details) summary[kv.Key] = kv.Value?.DeepClone();
        var summaryText = JsonFile.Write(summary, indented: true) + "\n";
        AtomicFile.WriteAllText(Path.Combine(runDir, SummaryFile), summaryText);
        if (opro)
        {
            AtomicFile.WriteAllText(Path.Combine(runDir, "summary.json"), summaryText);
            if (File.Exists(trajectoryPath))
                try { OproPlot.Write(OproTrajectory.Load(trajectoryPath), Path.Combine(runDir, "opro.png")); }
                catch (Exception e) when (e is not SoftPromptException) { message?.Invoke($"warning: opro.png not written ({e.GetType().Name}: {e.Message})"); }
        }
        hp.Save(Path.Combine(runDir, HardPrompt.FileName)); // last: its presence marks a finished search
        return result;
    }

    static int? RowStep(string line)
    {
        try { return JsonNode.Parse(line)?["step"]?.GetValue<int>(); }
        catch (Exception e) when (e is JsonException or InvalidOperationException or FormatException) { return null; }
    }

    /// <summary>The starting prompt: the init text's tokens repeated / truncated to k, else k copies of " the"
    /// (or another allowed single token when " the" is not one).</summary>
    public static int[] InitialIds(HfTokenizer tok, IReadOnlyList<bool> allowed, int k, string? initText)
    {
        int[] ids;
        if (initText is not null)
        {
            ids = tok.Encode(initText, false);
            if (ids.Length == 0) throw new SoftPromptException($"--init \"{initText}\" encodes to no tokens.");
        }
        else
        {
            var the = tok.Encode(" the", false);
            int neutral = the.Length == 1 && the[0] < allowed.Count && allowed[the[0]] ? the[0] : Enumerable.Range(0, allowed.Count).First(i => allowed[i]);
            ids = new[] { neutral };
        }
        return Enumerable.Range(0, k).Select(i => ids[i % ids.Length]).ToArray();
    }

    static void WriteLog(List<string> rows, string path) => AtomicFile.WriteAllText(path, string.Concat(rows.Select(r => r + "\n")));

    /// <summary>Records each step as a log row (the file is rewritten atomically at evaluation steps and at the end)
    /// and forwards it. Synchronous, unlike <see cref="Progress{T}"/>.</summary>
    sealed class LogWriter(List<string> rows, string path, IProgress<HardPromptSearchProgress>? next, bool write) : IProgress<HardPromptSearchProgress>
    {
        public void Report(HardPromptSearchProgress p)
        {
            if (!write) return;
            if (p.Candidates is not null)
            {
                // One row per proposed candidate (parse failures and duplicates too), then the file is rewritten.
                foreach (var c in p.Candidates)
                {
                    var r = new JsonObject { ["step"] = c.Step, ["text"] = c.Text, ["score"] = c.Score, ["status"] = c.Status };
                    if (c.Detail is not null) r["detail"] = c.Detail;
                    if (c.MeanOutputTokens is double mot) r["mean_output_tokens"] = Math.Round(mot, 3);
                    if (c.ParsedRate is double pr) r["parsed"] = Math.Round(pr, 4);
                    if (c.Demos is { } demos) r["demos"] = new JsonArray(demos.Select(d => (JsonNode)d).ToArray());
                    r["best"] = p.BestScore; r["elapsed_s"] = Math.Round(p.Elapsed.TotalSeconds, 3);
                    rows.Add(r.ToJsonString());
                }
                WriteLog(rows, path);
                next?.Report(p);
                return;
            }
            var row = new JsonObject
            {
                ["step"] = p.Step, ["loss"] = p.Loss, ["loss_before"] = p.LossBefore, ["accepted"] = p.Accepted, ["position"] = p.Position,
                ["prompt"] = p.Text, ["token_ids"] = new JsonArray(p.Ids.Select(i => (JsonNode)i).ToArray()),
                ["best"] = p.BestScore, ["best_prompt"] = p.BestText,
                ["elapsed_s"] = Math.Round(p.Elapsed.TotalSeconds, 3),
            };
            if (p.Score is double s) row["score"] = s;
            if (p.SelectValue is double v) row["select"] = v;
            rows.Add(JsonFile.Write(row));
            if (p.Score is not null) WriteLog(rows, path);
            next?.Report(p);
        }
    }

    /// <summary>A one-line summary of a progress report, for consoles and logs. Each number says what it is: for the
    /// gradient search the current prompt's loss on this step's minibatch and the best prompt's loss on the fixed score
    /// set (measured on different examples); for OPRO the best instruction's score and the step's counts.</summary>
    public static string Line(HardPromptSearchProgress p) => p.Candidates is not null ? string.Format(CultureInfo.InvariantCulture,
        "step {0,3}/{1}  best: score {2,8:F4}  {3}  ETA {4}  best prompt: \"{5}\"", p.Step, p.TotalSteps, p.BestScore, p.Status,
        p.Eta.TotalHours >= 1 ? $"{(int)p.Eta.TotalHours}h{p.Eta.Minutes:D2}m" : $"{p.Eta.Minutes}m{p.Eta.Seconds:D2}s", p.BestText.Replace("\n", "\\n"))
        : string.Format(CultureInfo.InvariantCulture,
        "step {0,4}/{1}  current: minibatch loss {2,8:F4}  best: score-set loss {3,8:F4}  ETA {4}  best prompt: \"{5}\"",
        p.Step, p.TotalSteps, p.Loss, p.BestScore, p.Eta.TotalHours >= 1 ? $"{(int)p.Eta.TotalHours}h{p.Eta.Minutes:D2}m" : $"{p.Eta.Minutes}m{p.Eta.Seconds:D2}s",
        p.BestText.Replace("\n", "\\n"));
}
