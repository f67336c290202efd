using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using SoftPrompt.Data;
using SoftPrompt.Inference;
using SoftPrompt.IO;
using SoftPrompt.Runtime;
using SoftPrompt.Tokenization;
using TorchSharp;

namespace SoftPrompt.Evaluation;

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
        Action<string>? message = null, CancellationToken cancel = default, IHardPromptOptimizer? optimizer = null)
    {
        o.Validate();
        var runDir = o.Output!;
        if (File.Exists(runDir)) throw new SoftPromptException($"--output {runDir}: is a file, expected a run folder.");
        // Locked (created, proven writable) before anything is read; held to the end. A failed search leaves no folder
        // it created (a search has no checkpoint to resume).
        var runLock = RunLock.Acquire(runDir);
        bool ok = false;
        try
        {
            var r = RunLocked(o, progress, message, cancel, optimizer, runDir);
            ok = true;
            return r;
        }
        finally
        {
            runLock.Dispose();
            if (!ok) runLock.RemoveWhatThisRunAdded();
        }
    }

    static HardPromptSearchResult RunLocked(HardPromptSearchOptions o, IProgress<HardPromptSearchProgress>? progress,
        Action<string>? message, CancellationToken cancel, IHardPromptOptimizer? optimizer, string runDir)
    {
        if (File.Exists(Path.Combine(runDir, HardPrompt.FileName)))
            throw new SoftPromptException($"{runDir} already holds a search result ({HardPrompt.FileName}); choose another --output.");
        torch.manual_seed(o.Seed);

        // Data first: a broken dataset stops the run before the model is loaded.
        var dataOptions = o.DataOptions();
        var read = DatasetReader.Read(o.Train!, dataOptions);
        if (read.Skipped > 0) message?.Invoke($"{o.Train}: skipped {read.Skipped} bad line(s); first: {read.Problems[0]}");
        IReadOnlyList<Example> search = read.Examples, heldOut = Array.Empty<Example>();
        if (o.Validation is not null) heldOut = DatasetReader.Read(o.Validation, dataOptions).Examples;
        else if (o.ValidationSplit > 0 && search.Count >= 2) (search, heldOut) = DatasetSplit.Split(search, o.ValidationSplit, o.Seed);
        // --labels: every label must occur in the data (as train and eval require). Without a target template a label is
        // the label field's value; with one, the rendered target text.
        if (o.Labels is not null)
        {
            if (o.TargetTemplate is null) ClassificationTask.CheckLabels(search.Concat(heldOut).ToList(), dataOptions, o.Labels, o.Train!);
            else
            {
                var targets = search.Concat(heldOut).Select(e => e.Target).ToHashSet(StringComparer.Ordinal);
                foreach (var l in o.Labels.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries))
                    if (!targets.Contains(l)) throw new SoftPromptException($"--labels: label \"{l}\" is not the target of any example in {o.Train} (with --target-template a label is the rendered target text).");
            }
        }

        TorchRuntime.SetThreads(o.Threads, message);
        using var lm = LanguageModel.Load(o.Model!, o.Device, o.Dtype);
        var tok = lm.RequireTokenizer();
        var objective = new TargetLossObjective(lm.Model, tok, search, heldOut, o);
        var init = InitialIds(tok, objective.Allowed, o.PromptLength, o.Init);
        message?.Invoke($"{search.Count} search examples ({objective.ScoreSet.Count} in the score set), {heldOut.Count} held out; " +
                        $"{objective.Allowed.Count(a => a)} allowed tokens; model {lm.Model.Config.ModelType} on {lm.Model.Device}");
        message?.Invoke($"initial prompt ({o.PromptLength} tokens): \"{tok.Decode(init)}\"");

        AtomicFile.WriteAllText(Path.Combine(runDir, ConfigFile), OptionsRecord.ToJson(o));
        var logPath = Path.Combine(runDir, LogFile);
        var rows = new List<string>();
        var logger = new LogWriter(rows, logPath, progress);
        var result = (optimizer ?? new GradientGuidedSearch()).Optimize(objective, o, init, logger, cancel);
        WriteLog(rows, logPath);

        var hp = new HardPrompt
        {
            Text = result.Text, TokenIds = result.TokenIds, Score = result.Score, Objective = "target_loss",
            Source = $"search-hard-prompt (gradient-guided, k={o.PromptLength}, {result.Steps} steps, seed {o.Seed}, {Path.GetFileName(Path.GetFullPath(o.Train!))})",
        };
        var summary = new JsonObject
        {
            ["strategy"] = "gradient_guided", ["steps"] = result.Steps, ["accepted_swaps"] = result.Accepted, ["stop_reason"] = result.StopReason,
            ["initial_text"] = tok.Decode(result.InitialIds), ["initial_token_ids"] = new JsonArray(result.InitialIds.Select(i => (JsonNode)i).ToArray()),
            ["initial_score"] = result.InitialScore, ["score"] = result.Score, ["objective"] = "target_loss",
            ["score_examples"] = objective.ScoreSet.Count, ["held_out_examples"] = objective.HeldOutCount,
            ["select_metric"] = result.SelectMetric, ["select_value"] = result.SelectValue,
        };
        AtomicFile.WriteAllText(Path.Combine(runDir, SummaryFile), JsonFile.Write(summary, indented: true) + "\n");
        hp.Save(Path.Combine(runDir, HardPrompt.FileName)); // last: its presence marks a finished search
        return result;
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
    sealed class LogWriter(List<string> rows, string path, IProgress<HardPromptSearchProgress>? next) : IProgress<HardPromptSearchProgress>
    {
        public void Report(HardPromptSearchProgress p)
        {
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

    /// <summary>A one-line summary of a progress report, for consoles and logs.</summary>
    public static string Line(HardPromptSearchProgress p) => string.Format(CultureInfo.InvariantCulture,
        "step {0,4}/{1}  loss {2,8:F4}  best {3,8:F4}  ETA {4}  \"{5}\"",
        p.Step, p.TotalSteps, p.Loss, p.BestScore, p.Eta.TotalHours >= 1 ? $"{(int)p.Eta.TotalHours}h{p.Eta.Minutes:D2}m" : $"{p.Eta.Minutes}m{p.Eta.Seconds:D2}s",
        p.BestText.Replace("\n", "\\n"));
}
