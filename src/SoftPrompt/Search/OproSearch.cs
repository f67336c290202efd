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
    /// <summary>How often each search example was got wrong by a scored candidate (--exemplar-selection hardest).</summary>
    public Dictionary<int, int> WrongCounts { get; set; } = new();

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
/// zero-shot (empty) instruction and any --init-instruction, or, when none is given, instructions induced from training
/// examples (APE); each later step samples --candidates-per-step replies at the scheduled temperature (up to --parallel
/// at a time), parses the instruction between the markers, drops duplicates (exact and case/whitespace-normalised,
/// against everything seen), empty, marker-holding and over-long ones (each logged as a failed candidate), and scores
/// the rest together on the fixed score set. With --demos, a candidate is an instruction plus k training examples shown
/// as demonstrations (DSPy MIPRO-style): proposals are scored with the best candidate's demonstrations, and
/// --demo-candidates new demonstration sets are tried for the best instruction each step. The run stops at --steps, at
/// --patience steps without a better candidate, when the call / token budget is spent (also mid-scoring), past
/// --max-judge-failures, or on Ctrl+C; in every case the best so far is the result. At the end the best --validate-top by
/// score are scored on the held-out data (when there is some; the judge's rating for a judge objective) and the best
/// there wins. Under MPI (<paramref name="calls"/> over several ranks) every rank runs this same loop: rank 0 alone calls
/// the optimizer and writes the trajectory, every rank gets its replies and scores its share of each candidate's
/// examples, so the run is the one-process run; a stop request is honoured between steps, on every rank at once.
/// </summary>
public sealed class OproSearch(IChatClient optimizer, CallMeter meter, bool plainMetaPrompt, string? trajectoryPath = null, bool resume = false,
    RootCalls? calls = null) : IHardPromptOptimizer
{
    readonly RootCalls _calls = calls ?? new RootCalls(SoftPrompt.Distributed.SingleProcess.Instance, meter);

    /// <summary>An instruction, its demonstrations (indices of search examples) and what proposed it.</summary>
    sealed record Candidate(string Text, int[]? Demos, string Origin);

    public HardPromptSearchResult Optimize(IPromptObjective objective, HardPromptSearchOptions o, int[] initialIds,
        IProgress<HardPromptSearchProgress>? progress = null, CancellationToken cancel = default)
    {
        if (objective is not IInstructionObjective io)
            throw new SoftPromptException("OPRO needs an objective that scores instructions (text).");
        o.Validate(needPaths: false);
        var clock = Stopwatch.StartNew();
        // Rank 0 reads the trajectory it wrote; every rank continues from its copy.
        var t = resume && trajectoryPath is not null ? _calls.Run(() => OproTrajectory.Load(trajectoryPath)) : new OproTrajectory { Metric = io.Metric };
        var work = _calls.InStep(cancel); // what work inside a step looks at (nothing under MPI: ranks stop between steps)
        if (t.Metric != io.Metric) throw new SoftPromptException($"--resume: the trajectory was scored by {t.Metric}, this run by {io.Metric}; keep the objective of the run.");
        double wallBefore = t.WallSeconds;
        meter.Restore(t.OptimizerCalls, t.JudgeCalls, t.InputTokens, t.OutputTokens);
        var seen = new HashSet<string>(t.Seen);
        string stop = "max_steps";
        string? selectionNote = null;
        int stepsThisRun = 0;
        int firstStep = t.Step + 1;
        string? rubric = (io as JudgeObjective)?.Rubric;
        var scoreSet = io.ScoreSetIndices.ToHashSet();
        // Demonstrations come from the search examples outside the score set (a demo would otherwise give its own answer away).
        var demoPool = Enumerable.Range(0, io.ExampleCount).Where(i => !scoreSet.Contains(i)).ToArray();
        if (demoPool.Length < o.Demos) demoPool = Enumerable.Range(0, io.ExampleCount).ToArray();
        if (o.Demos > 0 && demoPool.Length < o.Demos) throw new SoftPromptException($"--demos {o.Demos}: the search data has only {demoPool.Length} examples.");

        void Save()
        {
            (t.OptimizerCalls, t.JudgeCalls, t.InputTokens, t.OutputTokens) = (meter.OptimizerCalls, meter.JudgeCalls, meter.InputTokens, meter.OutputTokens);
            t.WallSeconds = wallBefore + clock.Elapsed.TotalSeconds;
            t.Seen = seen.ToList();
            if (trajectoryPath is not null && _calls.Calls) t.Save(trajectoryPath);
        }

        ScoredInstruction? Best() => t.Entries.Count == 0 ? null : t.Entries.OrderByDescending(e => e.Score).ThenBy(e => e.Step).First();

        int[] DrawDemos(int stream)
        {
            var rng = SplitMix64.For(o.Seed, stream);
            var pool = demoPool.ToArray();
            rng.Shuffle(pool);
            return pool.Take(o.Demos).Order().ToArray();
        }

        void Report(int step, List<SearchCandidate> rows, double? stepBest, double? bestBefore)
        {
            var best = Best();
            var ids = best is null ? Array.Empty<int>() : io.InstructionIds(Compose(io, best.Text, best.Demos));
            double perStep = clock.Elapsed.TotalSeconds / Math.Max(1, stepsThisRun);
            progress?.Report(new HardPromptSearchProgress
            {
                Step = step, TotalSteps = o.Steps, LossBefore = bestBefore ?? double.NaN, Loss = stepBest ?? double.NaN,
                Accepted = bestBefore is double b && best is not null && best.Score > b, Ids = ids, Text = best?.Text ?? "", Score = stepBest,
                BestScore = best?.Score ?? double.NaN, BestIds = ids, BestText = best?.Text ?? "", Elapsed = TimeSpan.FromSeconds(wallBefore) + clock.Elapsed,
                Eta = TimeSpan.FromSeconds(perStep * Math.Max(0, o.Steps - step)), Candidates = rows, HigherIsBetter = true,
                Status = string.Format(CultureInfo.InvariantCulture, "{0} scored, {1} calls, {2} tokens", rows.Count(r => r.Score is not null), meter.Calls, meter.TotalTokens),
            });
        }

        // Scores candidates together; failed ones become rows only. Returns the step's best score and whether the budget ran out.
        (double? Best, bool Budget) ScoreAll(int step, List<Candidate> cands, List<SearchCandidate> rows)
        {
            if (cands.Count == 0) return (null, false);
            var scores = io.ScoreInstructions(cands.Select(c => Compose(io, c.Text, c.Demos)).ToList(), work);
            double? best = null;
            bool budget = false;
            for (int i = 0; i < cands.Count; i++)
            {
                var (c, sc) = (cands[i], scores[i]);
                t.JudgeFailures += sc.Failures;
                if (sc.Failed is string failed)
                {
                    if (failed == "budget") budget = true; else t.Rejected++;
                    rows.Add(new SearchCandidate(step, c.Text, null, failed, sc.Note) { MeanOutputTokens = sc.MeanOutputTokens, Demos = c.Demos });
                    continue;
                }
                t.Entries.Add(new ScoredInstruction(c.Text, sc.Score, step, sc.MeanOutputTokens is double m ? Math.Round(m, 3) : null, c.Demos));
                foreach (var w in sc.Wrong ?? Array.Empty<int>()) t.WrongCounts[w] = t.WrongCounts.GetValueOrDefault(w) + 1;
                rows.Add(new SearchCandidate(step, c.Text, sc.Score, c.Origin, sc.Note) { MeanOutputTokens = sc.MeanOutputTokens, ParsedRate = sc.ParsedRate, Demos = c.Demos });
                best = best is double b ? Math.Max(b, sc.Score) : sc.Score;
            }
            return (best, budget);
        }

        // Parses replies into fresh candidates (rows for the failed ones).
        List<Candidate> Fresh(int step, List<(string? Reply, string? Error)> replies, int[]? demos, string origin, List<SearchCandidate> rows)
        {
            var fresh = new List<Candidate>();
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
                if (status is null) { fresh.Add(new Candidate(text!, demos, origin)); continue; }
                if (status == "parse_failed") t.ParseFailures++; else if (status == "duplicate") t.Duplicates++; else t.Rejected++;
                rows.Add(new SearchCandidate(step, text ?? "", null, status, status is "parse_failed" ? Shorten(reply) : status == "too_long" ? $"{text!.Length} characters > --max-instruction-chars {o.MaxInstructionChars}" : null));
            }
            return fresh;
        }

        string? JudgeStop() => io.Metric == "judge" && t.JudgeFailures > o.MaxJudgeFailures ? "judge_failures" : null;

        try
        {
            if (t.Step < 0)
            {
                // Step 0: the zero-shot prompt, the given initial instructions, or instructions induced from examples (APE).
                var rows = new List<SearchCandidate>();
                var d0 = o.Demos > 0 ? DrawDemos(0x0DE0_0000) : null;
                var initial = new List<Candidate> { new("", null, "initial") };
                if (d0 is not null) initial.Add(new Candidate("", d0, "initial"));
                seen.Add(MetaPrompt.Normalize(""));
                foreach (var i in o.InitInstruction.Select(i => i.Trim()))
                    if (seen.Add(MetaPrompt.Normalize(i))) initial.Add(new Candidate(i, d0, "initial"));
                int ape = o.InitInstruction.Length > 0 ? 0 : o.ApeProposals >= 0 ? o.ApeProposals : plainMetaPrompt ? 0 : o.CandidatesPerStep;
                string? budgetStop = null;
                if (ape > 0)
                {
                    var rng = SplitMix64.For(o.Seed, 0x0A9E_0000);
                    var idx = Enumerable.Range(0, io.ExampleCount).ToArray();
                    rng.Shuffle(idx);
                    var shown = idx.Take(Math.Clamp(o.Exemplars, 1, 5) + 2).Select(io.ExampleText).ToList();
                    var replies = Sample(MetaPrompt.Induce(shown, o.TaskDescription, rubric), ape, o.Temperature, o.OptimizerMaxTokens, o.Parallel, o.Seed, 0, work, out budgetStop);
                    initial.AddRange(Fresh(0, replies, d0, "ape", rows));
                }
                var (best, budget) = ScoreAll(0, initial, rows);
                if (!t.Entries.Any(e => e.Text.Length == 0 && e.Demos is null))
                {
                    var zero = rows.First(r => r.Text.Length == 0 && r.Demos is null);
                    throw zero.Status == "budget"
                        ? new SoftPromptException($"the budget (--max-calls {o.MaxCalls} / --max-tokens-budget {o.MaxTokensBudget}) ran out before the zero-shot instruction was scored ({zero.Detail}); raise it (--dry-run prints what a run needs).")
                        : new RemoteServiceException($"the zero-shot instruction could not be scored: {zero.Detail}.", 6);
                }
                t.Step = 0;
                stepsThisRun++;
                Report(0, rows, best, null);
                Save();
                firstStep = 1;
                if (budget || budgetStop is not null) stop = meter.Exhausted() ?? budgetStop ?? "max_calls";
                else if (JudgeStop() is string js) stop = js;
            }

            // Ctrl+C ends the step in flight (lost, as when killed); the steps done compete for the result as usual.
            for (int step = firstStep; step <= o.Steps && stop == "max_steps"; step++)
            {
                if (_calls.StopRequested(cancel)) { stop = "cancelled"; break; }
                if (meter.Exhausted() is string why) { stop = why; break; }
                if (JudgeStop() is string js) { stop = js; break; }
                if (o.Patience > 0 && t.Step - Best()!.Step >= o.Patience) { stop = "patience"; break; }
                var kept = MetaPrompt.Kept(t.Entries, o.Keep, o.ScoreThreshold);
                var exemplars = Exemplars(io.ExampleCount, o, step, t.WrongCounts).Select(io.ExampleText).ToList();
                string meta = plainMetaPrompt ? MetaPrompt.Plain(kept, io.Metric, o.TaskDescription, rubric) : MetaPrompt.Chat(kept, exemplars, io.Metric, o.InstructionPosition, o.TaskDescription, rubric);
                double temperature = Temperature(o, step);

                var replies = Sample(meta, o.CandidatesPerStep, temperature, o.OptimizerMaxTokens, o.Parallel, o.Seed, step, work, out var budgetStop);
                var rows = new List<SearchCandidate>();
                var bestEntry = Best()!;
                var fresh = Fresh(step, replies, bestEntry.Demos, "scored", rows);
                double? bestBefore = bestEntry.Score;
                var (stepBest, budget) = ScoreAll(step, fresh, rows);
                if (o.Demos > 0 && o.DemoCandidates > 0 && !budget && budgetStop is null)
                {
                    // New demonstration sets for the best instruction so far (kept when they score better).
                    var leader = Best()!;
                    var sets = Enumerable.Range(0, o.DemoCandidates).Select(d => DrawDemos(0x0DE0_0000 + step * 1009 + d + 1)).Where(d => leader.Demos is null || !d.SequenceEqual(leader.Demos))
                        .DistinctBy(d => string.Join(",", d)).Select(d => new Candidate(leader.Text, d, "demos")).ToList();
                    var (demoBest, demoBudget) = ScoreAll(step, sets, rows);
                    if (demoBest is double db) stepBest = stepBest is double sb ? Math.Max(sb, db) : db;
                    budget |= demoBudget;
                }
                t.Step = step;
                stepsThisRun++;
                Report(step, rows, stepBest, bestBefore);
                Save();
                if (budget || budgetStop is not null) { stop = meter.Exhausted() ?? budgetStop ?? "max_calls"; break; }
            }
            if (stop == "max_steps" && JudgeStop() is string last) stop = last;
        }
        catch (OperationCanceledException) when (cancel.IsCancellationRequested) { stop = "cancelled"; }

        // Selection: the best few by score, then the held-out metric when there is held-out data.
        var top = t.Entries.GroupBy(e => e.Key).Select(g => g.OrderByDescending(e => e.Score).First())
            .OrderByDescending(e => e.Score).ThenBy(e => e.Step).Take(o.ValidateTop).ToList();
        var chosen = top[0];
        double? chosenSelect = null;
        var validated = new JsonArray();
        if (io.SelectMetric is not null)
        {
            foreach (var c in top)
            {
                double? v;
                if (work != cancel && _calls.StopRequested(cancel)) { selectionNote = "cancelled during the held-out pick"; break; }
                try { v = io.SelectInstruction(Compose(io, c.Text, c.Demos), work); }
                catch (BudgetExhaustedException) { selectionNote = $"the budget ran out during the held-out pick: {validated.Count} of {top.Count} validated"; break; }
                catch (OperationCanceledException) when (cancel.IsCancellationRequested) { selectionNote = "cancelled during the held-out pick"; break; }
                validated.Add(c.Text);
                if (v is double x && (chosenSelect is null || x > chosenSelect + 1e-12)) { chosen = c; chosenSelect = x; }
            }
        }
        else foreach (var c in top) validated.Add(c.Text);
        Save();
        var initialEntry = t.Entries.First(e => e.Step == 0 && e.Text.Length == 0 && e.Demos is null);
        var details = new JsonObject
        {
            ["instruction"] = chosen.Text, ["instruction_position"] = o.InstructionPosition, ["metric"] = io.Metric,
            ["calls"] = meter.Calls, ["optimizer_calls"] = meter.OptimizerCalls, ["judge_calls"] = meter.JudgeCalls,
            ["input_tokens"] = meter.InputTokens, ["output_tokens"] = meter.OutputTokens, ["total_tokens"] = meter.TotalTokens,
            ["wall_s"] = Math.Round(wallBefore + clock.Elapsed.TotalSeconds, 3),
            ["candidates_proposed"] = t.Proposed, ["candidates_scored"] = t.Entries.Count(e => e.Step > 0),
            ["parse_failures"] = t.ParseFailures, ["duplicates"] = t.Duplicates, ["rejected_empty_or_too_long"] = t.Rejected,
            ["judge_failures"] = t.JudgeFailures, ["score_examples"] = io.ScoreSetCount,
            ["validated"] = validated,
        };
        if (chosen.MeanOutputTokens is double mot) details["mean_output_tokens"] = mot;
        if (chosen.Demos is { Length: > 0 } demos) details["demos"] = new JsonArray(demos.Select(d => (JsonNode)d).ToArray());
        if (selectionNote is not null) details["selection_note"] = selectionNote;
        if ((io as JudgeObjective)?.Cache is { } cache) { details["judge_cache_hits"] = cache.Hits; details["judge_cache_entries"] = cache.Count; }
        var chosenIds = io.InstructionIds(Compose(io, chosen.Text, chosen.Demos));
        return new HardPromptSearchResult
        {
            TokenIds = chosenIds, Text = chosenIds.Length == 0 ? "" : io.Decode(chosenIds), Score = chosen.Score,
            InitialIds = Array.Empty<int>(), InitialScore = initialEntry.Score, SelectValue = chosenSelect, SelectMetric = io.SelectMetric,
            Steps = t.Step, Accepted = t.Entries.Count(e => e.Step > 0), StopReason = stop, Objective = io.Metric, Details = details,
        };
    }

    /// <summary>The text a candidate is scored and exported as: the instruction, then its demonstrations (each the
    /// example's prompt text and target), a blank line before the example that follows.</summary>
    public static string Compose(IInstructionObjective io, string text, IReadOnlyList<int>? demos)
    {
        if (demos is not { Count: > 0 }) return text;
        var shots = demos.Select(i =>
        {
            var (p, tg) = io.ExampleText(i);
            bool joined = p.Length == 0 || tg.Length == 0 || char.IsWhiteSpace(p[^1]) || char.IsWhiteSpace(tg[0]);
            return p + (joined ? "" : " ") + tg;
        });
        return (text.Length > 0 ? text + "\n" : "") + string.Join("\n\n", shots) + "\n";
    }

    /// <summary>The exemplars shown at <paramref name="step"/>: a fresh seeded draw (random), the same draw every step
    /// (fixed), or the examples most often wrong so far, ties by a seeded order (hardest).</summary>
    public static int[] Exemplars(int exampleCount, HardPromptSearchOptions o, int step, IReadOnlyDictionary<int, int> wrong)
    {
        int n = Math.Min(o.Exemplars, exampleCount);
        var idx = Enumerable.Range(0, exampleCount).ToArray();
        var rng = SplitMix64.For(o.Seed, stream: 0x0970_0000 + (o.ExemplarSelection == "fixed" ? 0 : step));
        rng.Shuffle(idx);
        if (o.ExemplarSelection == "hardest")
            idx = idx.Select((e, order) => (e, order)).OrderByDescending(x => wrong.GetValueOrDefault(x.e)).ThenBy(x => x.order).Select(x => x.e).ToArray();
        return idx.Take(n).ToArray();
    }

    /// <summary>The optimizer's temperature at <paramref name="step"/> (1..Steps): constant, or linear / cosine from
    /// --temperature to --temperature-end.</summary>
    public static double Temperature(HardPromptSearchOptions o, int step)
    {
        if (o.TemperatureSchedule == "constant" || o.Steps <= 1) return o.Temperature;
        double f = Math.Clamp((step - 1) / (double)(o.Steps - 1), 0, 1);
        double w = o.TemperatureSchedule == "linear" ? f : (1 - Math.Cos(Math.PI * f)) / 2;
        return o.Temperature + (o.TemperatureEnd - o.Temperature) * w;
    }

    static string Shorten(string? s)
    {
        s = (s ?? "").Replace("\n", "\\n");
        return s.Length <= 200 ? s : s[..200] + "...";
    }

    /// <summary><paramref name="count"/> optimizer replies to <paramref name="prompt"/> (null text with a reason for a
    /// call skipped by the budget). A service failure (RemoteServiceException) ends the run: Parallel.ForEachAsync's
    /// task, awaited, rethrows the first failure itself, so it reaches the CLI with its exit code; the trajectory on
    /// disk is that of the last step.</summary>
    List<(string? Reply, string? Error)> Sample(string prompt, int count, double temperature, int maxTokens, int parallel, int seed, int step,
        CancellationToken cancel, out string? budgetStop)
    {
        // Rank 0 calls the optimizer; every rank gets the replies (and the meter's counts).
        var sampled = _calls.Run(() => { var r = SampleHere(prompt, count, temperature, maxTokens, parallel, seed, step, cancel, out var stop); return new Sampled(r.Select(x => x.Reply).ToList(), r.Select(x => x.Error).ToList(), stop); });
        budgetStop = sampled.BudgetStop;
        return sampled.Replies.Zip(sampled.Errors, (r, e) => (r, e)).ToList();
    }

    sealed record Sampled(List<string?> Replies, List<string?> Errors, string? BudgetStop);

    List<(string? Reply, string? Error)> SampleHere(string prompt, int count, double temperature, int maxTokens, int parallel, int seed, int step,
        CancellationToken cancel, out string? budgetStop)
    {
        var result = new (string? Reply, string? Error)[count];
        string? stopped = null;
        var messages = new[] { new ChatMessage(ChatRole.User, prompt) };
        Parallel.ForEachAsync(Enumerable.Range(0, count), new ParallelOptions { MaxDegreeOfParallelism = parallel, CancellationToken = cancel }, async (i, ct) =>
        {
            try
            {
                var r = await optimizer.GetResponseAsync(messages, new ChatOptions
                {
                    Temperature = (float)temperature, MaxOutputTokens = maxTokens,
                    Seed = (long)seed * 1_000_003 + (long)step * 1009 + i,
                    StopSequences = plainMetaPrompt ? new List<string> { "\n" } : null,
                }, ct).ConfigureAwait(false);
                result[i] = (r.Text, null);
            }
            catch (BudgetExhaustedException b) { stopped = b.Reason; result[i] = (null, $"not called: {b.Reason} reached"); }
        }).GetAwaiter().GetResult();
        budgetStop = stopped;
        return result.ToList();
    }
}
