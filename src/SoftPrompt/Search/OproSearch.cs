using System.Diagnostics;
using System.Globalization;
using System.Text.Json.Nodes;
using System.Text.Json;
using Microsoft.Extensions.AI;
using SoftPrompt.Data;
using SoftPrompt.IO;
using SoftPrompt.Llm;

namespace SoftPrompt.Search;

/// <summary>
/// The trajectory of an OPRO run as written after every step (atomically, so killing the process loses at most the
/// step in flight): every scored instruction, the dedup keys of every proposal seen, and the calls and tokens used.
/// </summary>
public sealed class OproTrajectory
{
    public const string FileName = "opro_trajectory.json";
    public int Version { get; set; } = 1;
    public string Metric { get; set; } = "";
    public int Step { get; set; } = -1;
    public List<ScoredInstruction> Entries { get; set; } = new();
    public List<string> Seen { get; set; } = new();
    public int OptimizerCalls { get; set; }
    public int JudgeCalls { get; set; }
    public long InputTokens { get; set; }
    public long OutputTokens { get; set; }
    public double WallSeconds { get; set; }
    public int Proposed { get; set; }
    public int ParseFailures { get; set; }
    public int Duplicates { get; set; }
    public int Rejected { get; set; }
    public int JudgeFailures { get; set; }

    static readonly JsonSerializerOptions Json = new() { PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower, WriteIndented = true };

    public void Save(string path) => AtomicFile.WriteAllText(path, JsonSerializer.Serialize(this, Json) + "\n");

    public static OproTrajectory Load(string path)
    {
        if (!File.Exists(path)) throw new SoftPromptException($"--resume: {path} not found; was the run started with --strategy opro?");
        try
        {
            var t = JsonSerializer.Deserialize<OproTrajectory>(File.ReadAllText(path), Json) ?? throw new SoftPromptException($"{path}: empty file.");
            if (t.Version != 1) throw new SoftPromptException($"{path}: version {t.Version} is not supported (expected 1).");
            if (t.Entries.Any(e => e.Text is null || double.IsNaN(e.Score))) throw new SoftPromptException($"{path}: an entry has no text or no score.");
            return t;
        }
        catch (JsonException e) { throw new SoftPromptException($"{path}: invalid JSON ({e.Message})."); }
    }
}

/// <summary>
/// OPRO (Yang et al. 2023, "Large Language Models as Optimizers"): an LLM proposes instructions from a meta-prompt
/// holding the best ones so far with their scores, the frozen target model scores them, repeat. Step 0 scores the
/// zero-shot (empty) instruction and any --init-instruction; each later step samples --candidates-per-step replies at
/// --temperature (up to --parallel at a time), parses the instruction between the markers, drops duplicates (exact and
/// case/whitespace-normalised, against everything seen), empty and over-long ones (each logged as a failed candidate),
/// and scores the rest together on the fixed score set. At the end the best --validate-top by score are scored on the
/// held-out data (when there is some) and --select-by's metric picks the result.
/// </summary>
public sealed class OproSearch(IChatClient optimizer, CallMeter meter, bool plainMetaPrompt, string? trajectoryPath = null, bool resume = false) : IHardPromptOptimizer
{
    public HardPromptSearchResult Optimize(IPromptObjective objective, HardPromptSearchOptions o, int[] initialIds,
        IProgress<HardPromptSearchProgress>? progress = null, CancellationToken cancel = default)
    {
        if (objective is not IInstructionObjective io)
            throw new SoftPromptException("OPRO needs an objective that scores instructions (text).");
        o.Validate(needPaths: false);
        var clock = Stopwatch.StartNew();
        var t = resume && trajectoryPath is not null ? OproTrajectory.Load(trajectoryPath) : new OproTrajectory { Metric = io.Metric };
        if (t.Metric != io.Metric) throw new SoftPromptException($"--resume: the trajectory was scored by {t.Metric}, this run by {io.Metric}; keep the objective of the run.");
        double wallBefore = t.WallSeconds;
        meter.Restore(t.OptimizerCalls, t.JudgeCalls, t.InputTokens, t.OutputTokens);
        var seen = new HashSet<string>(t.Seen);
        string stop = "max_steps";
        int stepsThisRun = 0;
        int firstStep = t.Step + 1;

        void Save()
        {
            (t.OptimizerCalls, t.JudgeCalls, t.InputTokens, t.OutputTokens) = (meter.OptimizerCalls, meter.JudgeCalls, meter.InputTokens, meter.OutputTokens);
            t.WallSeconds = wallBefore + clock.Elapsed.TotalSeconds;
            t.Seen = seen.ToList();
            if (trajectoryPath is not null) t.Save(trajectoryPath);
        }

        ScoredInstruction? Best() => t.Entries.Count == 0 ? null : t.Entries.OrderByDescending(e => e.Score).ThenBy(e => e.Step).First();

        void Report(int step, List<SearchCandidate> rows, double? stepBest, double? bestBefore)
        {
            var best = Best()!;
            var ids = io.InstructionIds(best.Text);
            double perStep = clock.Elapsed.TotalSeconds / Math.Max(1, stepsThisRun);
            progress?.Report(new HardPromptSearchProgress
            {
                Step = step, TotalSteps = o.Steps, LossBefore = bestBefore ?? double.NaN, Loss = stepBest ?? double.NaN,
                Accepted = bestBefore is double b && best.Score > b, Ids = ids, Text = best.Text, Score = stepBest,
                BestScore = best.Score, BestIds = ids, BestText = best.Text, Elapsed = TimeSpan.FromSeconds(wallBefore) + clock.Elapsed,
                Eta = TimeSpan.FromSeconds(perStep * Math.Max(0, o.Steps - step)), Candidates = rows, HigherIsBetter = true,
                Status = string.Format(CultureInfo.InvariantCulture, "{0} scored, {1} calls, {2} tokens", rows.Count(r => r.Score is not null), meter.Calls, meter.TotalTokens),
            });
        }

        if (t.Step < 0)
        {
            // Step 0: the zero-shot prompt and the given initial instructions.
            var initial = new List<string> { "" };
            foreach (var i in o.InitInstruction.Select(i => i.Trim()))
                if (!initial.Any(x => MetaPrompt.Normalize(x) == MetaPrompt.Normalize(i))) initial.Add(i);
            var scores = io.ScoreInstructions(initial, cancel);
            var rows = new List<SearchCandidate>();
            for (int i = 0; i < initial.Count; i++)
            {
                seen.Add(MetaPrompt.Normalize(initial[i]));
                t.Entries.Add(new ScoredInstruction(initial[i], scores[i].Score, 0));
                t.JudgeFailures += scores[i].Failures;
                rows.Add(new SearchCandidate(0, initial[i], scores[i].Score, "initial", scores[i].Note));
            }
            t.Step = 0;
            stepsThisRun++;
            Report(0, rows, scores.Max(s => s.Score), null);
            Save();
            firstStep = 1;
        }

        // Ctrl+C ends the step in flight (lost, as when killed); the steps done compete for the result as usual.
        try
        {
            for (int step = firstStep; step <= o.Steps; step++)
            {
                if (cancel.IsCancellationRequested) { stop = "cancelled"; break; }
                if (meter.Exhausted() is string why) { stop = why; break; }
                var kept = MetaPrompt.Kept(t.Entries, o.Keep);
                var rng = SplitMix64.For(o.Seed, stream: 0x0970_0000 + step);
                var exemplarIdx = Enumerable.Range(0, io.ExampleCount).ToArray();
                rng.Shuffle(exemplarIdx);
                var exemplars = exemplarIdx.Take(Math.Min(o.Exemplars, io.ExampleCount)).Select(io.ExampleText).ToList();
                string meta = plainMetaPrompt ? MetaPrompt.Plain(kept, io.Metric, o.TaskDescription) : MetaPrompt.Chat(kept, exemplars, io.Metric, o.InstructionPosition, o.TaskDescription);

                var replies = Sample(meta, o, step, cancel, out var budgetStop);
                var rows = new List<SearchCandidate>();
                var fresh = new List<string>();
                foreach (var (reply, error) in replies)
                {
                    if (error is not null) { rows.Add(new SearchCandidate(step, "", null, "skipped", error)); continue; }
                    t.Proposed++;
                    var text = MetaPrompt.Parse(reply, plainMetaPrompt);
                    string? status = text switch
                    {
                        null => "parse_failed",
                        "" => "empty",
                        _ when text.Length > o.MaxInstructionChars => "too_long",
                        _ when !seen.Add(MetaPrompt.Normalize(text)) => "duplicate",
                        _ => null,
                    };
                    if (status is null) { fresh.Add(text!); continue; }
                    if (status == "parse_failed") t.ParseFailures++; else if (status == "duplicate") t.Duplicates++; else t.Rejected++;
                    rows.Add(new SearchCandidate(step, text ?? "", null, status, status is "parse_failed" ? Shorten(reply) : status == "too_long" ? $"{text!.Length} characters > --max-instruction-chars {o.MaxInstructionChars}" : null));
                }
                double? bestBefore = Best()?.Score, stepBest = null;
                if (fresh.Count > 0)
                {
                    var scores = io.ScoreInstructions(fresh, cancel);
                    for (int i = 0; i < fresh.Count; i++)
                    {
                        t.Entries.Add(new ScoredInstruction(fresh[i], scores[i].Score, step));
                        t.JudgeFailures += scores[i].Failures;
                        rows.Add(new SearchCandidate(step, fresh[i], scores[i].Score, "scored", scores[i].Note));
                    }
                    stepBest = scores.Max(s => s.Score);
                }
                t.Step = step;
                stepsThisRun++;
                Report(step, rows, stepBest, bestBefore);
                Save();
                if (budgetStop is not null) { stop = budgetStop; break; }
            }
        }
        catch (OperationCanceledException) when (cancel.IsCancellationRequested) { stop = "cancelled"; }

        // Selection: the best few by score, then the held-out metric when there is held-out data.
        var top = t.Entries.GroupBy(e => MetaPrompt.Normalize(e.Text)).Select(g => g.OrderByDescending(e => e.Score).First())
            .OrderByDescending(e => e.Score).ThenBy(e => e.Step).Take(o.ValidateTop).ToList();
        var chosen = top[0];
        double? chosenSelect = null;
        if (io.SelectMetric is not null)
        {
            foreach (var c in top)
            {
                var v = io.Select(io.InstructionIds(c.Text));
                if (chosenSelect is null || v > chosenSelect + 1e-12) { chosen = c; chosenSelect = v; }
            }
        }
        Save();
        var initialEntry = t.Entries.First(e => e.Step == 0 && e.Text.Length == 0);
        var details = new JsonObject
        {
            ["instruction"] = chosen.Text, ["instruction_position"] = o.InstructionPosition, ["metric"] = io.Metric,
            ["calls"] = meter.Calls, ["optimizer_calls"] = meter.OptimizerCalls, ["judge_calls"] = meter.JudgeCalls,
            ["input_tokens"] = meter.InputTokens, ["output_tokens"] = meter.OutputTokens, ["total_tokens"] = meter.TotalTokens,
            ["wall_s"] = Math.Round(wallBefore + clock.Elapsed.TotalSeconds, 3),
            ["candidates_proposed"] = t.Proposed, ["candidates_scored"] = t.Entries.Count(e => e.Step > 0),
            ["parse_failures"] = t.ParseFailures, ["duplicates"] = t.Duplicates, ["rejected_empty_or_too_long"] = t.Rejected,
            ["judge_failures"] = t.JudgeFailures, ["score_examples"] = io.ScoreSetCount,
            ["validated"] = new JsonArray(top.Select(c => (JsonNode)c.Text).ToArray()),
        };
        var chosenIds = io.InstructionIds(chosen.Text);
        return new HardPromptSearchResult
        {
            TokenIds = chosenIds, Text = chosen.Text.Length == 0 ? "" : io.Decode(chosenIds), Score = chosen.Score,
            InitialIds = Array.Empty<int>(), InitialScore = initialEntry.Score, SelectValue = chosenSelect, SelectMetric = io.SelectMetric,
            Steps = t.Step, Accepted = t.Entries.Count(e => e.Step > 0), StopReason = stop, Objective = io.Metric, Details = details,
        };
    }

    static string Shorten(string? s)
    {
        s = (s ?? "").Replace("\n", "\\n");
        return s.Length <= 200 ? s : s[..200] + "...";
    }

    /// <summary>--candidates-per-step optimizer replies (null text with a reason for a call skipped by the budget).
    /// A service failure (RemoteServiceException) ends the run; the trajectory on disk is that of the last step.</summary>
    List<(string? Reply, string? Error)> Sample(string meta, HardPromptSearchOptions o, int step, CancellationToken cancel, out string? budgetStop)
    {
        var result = new (string? Reply, string? Error)[o.CandidatesPerStep];
        string? stopped = null;
        var messages = new[] { new ChatMessage(ChatRole.User, meta) };
        try
        {
            Parallel.ForEachAsync(Enumerable.Range(0, o.CandidatesPerStep), new ParallelOptions { MaxDegreeOfParallelism = o.Parallel, CancellationToken = cancel }, async (i, ct) =>
            {
                try
                {
                    var r = await optimizer.GetResponseAsync(messages, new ChatOptions
                    {
                        Temperature = (float)o.Temperature, MaxOutputTokens = o.OptimizerMaxTokens,
                        Seed = (long)o.Seed * 1_000_003 + (long)step * 1009 + i,
                        StopSequences = plainMetaPrompt ? new List<string> { "\n" } : null,
                    }, ct).ConfigureAwait(false);
                    result[i] = (r.Text, null);
                }
                catch (BudgetExhaustedException b) { stopped = b.Reason; result[i] = (null, $"not called: {b.Reason} reached"); }
            }).GetAwaiter().GetResult();
        }
        catch (AggregateException ae) when (ae.InnerExceptions.Count >= 1) { throw ae.InnerExceptions[0]; }
        budgetStop = stopped;
        return result.ToList();
    }
}
