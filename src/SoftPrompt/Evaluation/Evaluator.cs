using System.Text.Json.Nodes;
using SoftPrompt.Data;
using SoftPrompt.Inference;
using SoftPrompt.IO;
using SoftPrompt.Models;
using SoftPrompt.Distributed;
using SoftPrompt.Runs;
using SoftPrompt.Runtime;
using SoftPrompt.Scoring;
using SoftPrompt.Tokenization;
using SoftPrompt.Tuning;
using TorchSharp;

namespace SoftPrompt.Evaluation;

/// <summary>One prediction: an example under a condition.</summary>
public sealed record PredictionRow(string Condition, string Input, string Gold, string Prediction, bool Correct,
    IReadOnlyDictionary<string, double>? Scores, string? Generated);

/// <summary>The results of one condition on the test examples.</summary>
public sealed record ConditionResult(string Name, string Kind, int N, IReadOnlyDictionary<string, double> Metrics, string? PromptText,
    ClassificationMetrics? Classification, IReadOnlyList<PredictionRow> Predictions)
{
    public static readonly string[] HardKinds = { "zero-shot", "instruction", "few-shot", "projected", "searched" };
    public static readonly string[] SoftKinds = { "soft-prompt", "prefix" };
    /// <summary>The adapter folder a soft, prefix or projected condition comes from (full path).</summary>
    public string? AdapterPath { get; init; }
    /// <summary>That adapter's adapter_config.json and the settings it records (softprompt.* metadata: method, step,
    /// templates, label words, ...).</summary>
    public JsonObject? AdapterSettings { get; init; }
    public bool IsHard => HardKinds.Contains(Kind);
    public bool IsSoft => SoftKinds.Contains(Kind);
}

/// <summary>Progress of an evaluation: condition <paramref name="Index"/> (0-based) of <paramref name="Count"/>, and
/// within it <paramref name="Done"/> of <paramref name="Total"/> units (a loss pass over the examples, then scoring or
/// generating each one: 2 units per example).</summary>
public sealed record EvalProgress(string Condition, int Index, int Count, int Done, int Total, int Examples);

/// <summary>What <see cref="Evaluator.Run"/> found: every condition on the same examples.</summary>
public sealed record EvalResult(TaskKind Task, string TaskReason, IReadOnlyList<string>? Labels, double? ClassPrior, string Model, string Data,
    DateTimeOffset Created, IReadOnlyList<ConditionResult> Conditions, IReadOnlyList<string> Notes)
{
    /// <summary>The metric conditions are ranked by: accuracy (classification) or any_gold_match (generation).</summary>
    public string MainMetric => Task == TaskKind.Classification ? "accuracy" : "any_gold_match";
    public ConditionResult? BestHard => Conditions.Where(c => c.IsHard).OrderByDescending(c => c.Metrics[MainMetric]).FirstOrDefault();
    public ConditionResult? BestSoft => Conditions.Where(c => c.IsSoft).OrderByDescending(c => c.Metrics[MainMetric]).FirstOrDefault();
    /// <summary>The options the evaluation ran with (every key, as a config file would hold them).</summary>
    public JsonObject? Config { get; init; }
    public int Seed { get; init; }
    /// <summary>The SoftPrompt library version that produced the result.</summary>
    public string ToolVersion { get; init; } = Evaluator.Version;
}

/// <summary>
/// Evaluates prompts against hard-prompt baselines on one test set: zero-shot, instructions, few-shot
/// demonstrations, soft prompts / prefixes, the projected hard prompt of each soft prompt, and searched prompts.
/// Every hard prompt (the empty one of zero-shot included) is placed by <see cref="HardPrompt.BuildPromptIds"/>,
/// as the hard-prompt search places it. Classification by rank classification (<see cref="RankClassifier"/>),
/// generation by <see cref="Generator"/>, loss by <see cref="PromptLoss.ValidationLoss"/> (the trainer's code path).
/// Nothing is written here: see <see cref="EvalReport"/>.
/// </summary>
public static class Evaluator
{
    sealed class Condition
    {
        public required string Name { get; init; }
        public required string Kind { get; init; }
        public IPromptMethod? Method { get; init; }
        public HardPrompt? Hard { get; init; }
        /// <summary>Few-shot: a per-example hard prompt (demonstrations never equal to the example itself).</summary>
        public Func<int, HardPrompt>? PerExample { get; init; }
        public string? AdapterDir { get; init; }
        public HardPrompt HardFor(int i) => PerExample?.Invoke(i) ?? Hard ?? new HardPrompt();
    }

    /// <summary>The library's informational version (the package version).</summary>
    public static string Version { get; } = typeof(Evaluator).Assembly
        .GetCustomAttributes(typeof(System.Reflection.AssemblyInformationalVersionAttribute), false)
        .OfType<System.Reflection.AssemblyInformationalVersionAttribute>().FirstOrDefault()?.InformationalVersion.Split('+')[0]
        ?? typeof(Evaluator).Assembly.GetName().Version?.ToString() ?? "unknown";

    /// <summary>Evaluates every condition. Under MPI (<paramref name="comm"/> of several ranks) every rank calls this with
    /// the same options; the examples are shared out and the results gathered, so every rank returns the one-process
    /// result (rank 0 writes the report).</summary>
    public static EvalResult Run(EvalOptions o, Action<string>? log = null, IProgress<EvalProgress>? progress = null, ICommunicator? comm = null)
    {
        var run = new RunScaffold(comm, log);
        log = run.Message;
        if (!run.IsWriter) progress = null;
        run.Agree(() => o.Validate());
        var dataOptions = o.DataOptions();

        // Data and every named file first: bad input must stop before the model is loaded (every rank, said once).
        var (all, examples, instructions, shots, searched, task, reason) = run.Agree(() => ReadInputs(o, run, dataOptions));
        var judgeMeter = new Llm.CallMeter { MaxCalls = o.MaxCalls };
        // The judge rates rank 0's gathered answers: the other ranks have no judge and no verdict cache.
        using var judge = o.Rubric is null ? null : run.Agree(() => run.IsWriter ? JudgeClient(o, judgeMeter) : null);
        var judgeCache = judge is null ? null
            : new Llm.VerdictCache($"{o.JudgeProvider}:{o.JudgeModel}", o.JudgeCache ?? Path.Combine(o.Output!, Llm.VerdictCache.FileName));
        return Evaluate(o, log, progress, run, dataOptions, all, examples, instructions, shots, searched, task, reason, judge, judgeCache);
    }

    static (IReadOnlyList<Example> All, List<Example> Examples, List<string> Instructions, IReadOnlyList<Example>? Shots, List<(string Path, HardPrompt Prompt)> Searched, TaskKind Task, string Reason)
        ReadInputs(EvalOptions o, RunScaffold run, DataOptions dataOptions)
    {
        // --max-examples takes a seeded sample (files are often sorted by label), kept in file order; the label set and
        // the task kind are still decided on the whole file.
        var all = run.ReadData(dataOptions, o.Data!, null, 0, o.Seed).Train;
        var examples = DatasetSplit.SampleIndices(all.Count, o.MaxExamples, o.Seed, stream: 0x5A4D).Select(i => all[i]).ToList();
        var instructions = o.Instruction.ToList();
        if (o.InstructionsFile is not null)
        {
            var lines = IO.InputFile.ReadText(o.InstructionsFile, "--instructions-file").Split('\n').Select(l => l.TrimEnd('\r')).Where(l => l.Trim().Length > 0 && !l.TrimStart().StartsWith('#')).ToList();
            if (lines.Count == 0) throw new SoftPromptException($"--instructions-file {o.InstructionsFile}: no instructions in it.");
            instructions.AddRange(lines);
        }
        IReadOnlyList<Example>? shots = o.FewShot > 0 ? DatasetReader.Read(o.ShotsFrom!, dataOptions).Examples : null;
        var searched = o.Searched.Select(s => (Path: s, Prompt: HardPrompt.Load(s))).ToList();

        var labelField = o.Task == TaskKind.Generation ? o.OutputField : SafeLabelField(dataOptions, o.Task);
        TaskKind task; string reason;
        if (o.Task == TaskKind.Auto)
        {
            var (isClass, why) = o.Labels is not null ? (true, "--labels given")
                : ClassificationTask.Detect(all.Select(e => ClassificationTask.LabelOf(e, labelField)).ToList());
            task = isClass ? TaskKind.Classification : TaskKind.Generation;
            reason = $"auto: {why}";
        }
        else { task = o.Task; reason = "--task"; }
        if (task == TaskKind.Generation && o.Labels is not null) throw new SoftPromptException("--labels applies to classification; this evaluation is a generation task (--task).");

        if (task == TaskKind.Classification && o.Labels is not null) ClassificationTask.CheckLabels(all, dataOptions, o.Labels, o.Data!); // before the model load
        if (o.Rubric is not null && task != TaskKind.Generation) throw new SoftPromptException("--rubric (the judge metric) applies to generation tasks; this evaluation is classification.");
        return (all, examples, instructions, shots, searched, task, reason);
    }

    static EvalResult Evaluate(EvalOptions o, Action<string>? log, IProgress<EvalProgress>? progress, RunScaffold run, DataOptions dataOptions,
        IReadOnlyList<Example> all, List<Example> examples, List<string> instructions, IReadOnlyList<Example>? shots, List<(string Path, HardPrompt Prompt)> searched,
        TaskKind task, string reason, Microsoft.Extensions.AI.IChatClient? judge, Llm.VerdictCache? judgeCache)
    {
        // Threads: warnings only (null log): the report's stderr stays for the evaluation's own notes.
        var agreed = IO.OptionsRecord.ToJson(o with { Output = null, Threads = 0, Device = "auto", Data = null, ShotsFrom = null, InstructionsFile = null, Model = null, JudgeCache = null });
        var inputs = new[] { o.Data! }.Concat(o.ShotsFrom is null ? Array.Empty<string>() : new[] { o.ShotsFrom }).Concat(o.InstructionsFile is null ? Array.Empty<string>() : new[] { o.InstructionsFile });
        using var lm = run.LoadModel(o.Model!, o.Device, o.Dtype, o.CheckFinite, o.Threads, agreed, inputs);
        var model = lm.Base;
        var notes = new List<string>();
        var (tok, ct) = run.Agree(() =>
        {
            var tok = lm.RequireTokenizer();
            var ct = task == TaskKind.Classification ? ClassificationTask.Create(all, dataOptions, tok, o.Labels, o.Data!) : null;
            if (ct is { Labels.Count: < 2 })
                throw new SoftPromptException($"{o.Data}: classification needs at least two labels, found {ct.Labels.Count} ('{string.Join("', '", ct.Labels)}'); give --labels or use --task generation.");
            return (tok, ct);
        });
        if (ct is not null && dataOptions.LabelWords is not null)
            notes.Add("label words: " + string.Join(", ", ct.Labels.Select(l => $"{l} → \"{dataOptions.Verbalize(l).Trim()}\"")) + " (the model is scored on the words; metrics use the labels).");

        var conditions = new List<Condition>();
        var methods = new List<IPromptMethod>();
        try
        {
            // The conditions (adapters loaded, prompts checked against the model), agreed on by every rank.
            run.Agree(() =>
            {
                conditions.Add(new Condition { Name = "zero-shot", Kind = "zero-shot", Hard = new HardPrompt { Source = "bare template" } });
                for (int i = 0; i < instructions.Count; i++)
                    conditions.Add(new Condition { Name = $"instruction {i + 1}", Kind = "instruction", Hard = HardPrompt.FromText(tok, instructions[i] + "\n", "instruction") });
                if (shots is not null)
                {
                    var (hard, per, substituted) = FewShot(tok, shots, examples, o.FewShot, o.Seed, o.ShotsFrom!);
                    conditions.Add(new Condition { Name = $"few-shot k={o.FewShot}", Kind = "few-shot", Hard = hard, PerExample = per });
                    if (substituted > 0) notes.Add($"few-shot: for {substituted} example(s) a drawn demonstration had the example's own prompt and was replaced by the next draw.");
                }
                var projected = new List<Condition>();
                foreach (var dir in o.Prompt)
                {
                    var m = Adapter.Load(dir, model, checkFinite: o.CheckFinite);
                    methods.Add(m);
                    foreach (var mismatch in AdapterMetadata.Read(dir).DataSettingMismatches(dataOptions, dir))
                    {
                        notes.Add("warning: " + mismatch + "; the prompt is scored on text it was not trained on.");
                        log?.Invoke("warning: " + mismatch);
                    }
                    var label = AdapterDescription(dir, m);
                    var kind = m.Method == TuningMethod.Prefix ? "prefix" : "soft-prompt";
                    var full = Path.GetFullPath(Adapter.ResolveDir(dir));
                    conditions.Add(new Condition { Name = label, Kind = kind, Method = m, AdapterDir = full });
                    var ids = PromptProjection.Project(model, m);
                    if (ids is null) notes.Add($"{dir}: a prefix-tuning adapter has no input-embedding vectors, so it has no projected hard prompt.");
                    else projected.Add(new Condition { Name = $"{label} projected onto tokens", Kind = "projected", AdapterDir = full, Hard = new HardPrompt { Text = tok.Decode(ids), TokenIds = ids, Source = dir, Objective = "nearest token (cosine) of each virtual token" } });
                }
                conditions.AddRange(projected);
                NameByFolderWhereAlike(conditions);
                foreach (var (path, hp0) in searched)
                {
                    var hp = hp0.TokenIds.Length > 0 ? hp0 : hp0 with { TokenIds = tok.Encode(hp0.Text, addSpecialTokens: false) };
                    var bad = hp.TokenIds.FirstOrDefault(id => id < 0 || id >= model.Config.VocabSize, -1);
                    if (bad != -1) throw new SoftPromptException($"--searched {path}: token id {bad} is outside the model's vocabulary (size {model.Config.VocabSize}); was it searched on another model?");
                    conditions.Add(new Condition { Name = SearchedName(hp, path), Kind = "searched", Hard = hp });
                }
                MakeNamesUnique(conditions);
            });
            log?.Invoke($"task: {OptionsRecord.EnumName(task)} ({reason}); {conditions.Count} conditions on {examples.Count} examples");

            var results = new List<ConditionResult>();
            int padId = tok.PadId ?? tok.EosId ?? 0;
            for (int ci = 0; ci < conditions.Count; ci++)
            {
                var c = conditions[ci];
                int index = ci, n = examples.Count;
                progress?.Report(new EvalProgress(c.Name, index, conditions.Count, 0, 2 * n, n));
                Action<int> done = units => progress?.Report(new EvalProgress(c.Name, index, conditions.Count, units, 2 * n, n));
                var result = EvaluateCondition(c, examples, o, lm, tok, ct, padId, notes, done, run.Comm);
                results.Add(c.AdapterDir is null ? result : result with { AdapterPath = c.AdapterDir, AdapterSettings = AdapterSettings(c.AdapterDir) });
                // Rank 0 judges (the other ranks wait at this point): a judge failure ends every rank with its exit code.
                if (o.Rubric is not null) run.Comm.OnRoot(() => { AddJudgeScore(results[^1], judge!, Llm.Judge.ReadRubric(o.Rubric!), judgeCache, notes); return true; });
            }
            double? prior = ct is null ? null : ClassificationMetrics.MajorityClassAccuracy(examples.Select(ct.Gold).ToList());
            return new EvalResult(task, reason, ct?.Labels, prior, Path.GetFullPath(o.Model!), Path.GetFullPath(o.Data!), DateTimeOffset.Now, results, notes.Distinct().ToList())
            {
                Config = JsonNode.Parse(IO.OptionsRecord.ToJson(o)) as JsonObject, Seed = o.Seed,
            };
        }
        finally
        {
            foreach (var m in methods) m.Dispose();
        }
    }

    /// <summary>The LLM judge of --rubric (--judge-provider; errors are one-line, the key never shown), bounded by --max-calls.</summary>
    static Microsoft.Extensions.AI.IChatClient JudgeClient(EvalOptions o, Llm.CallMeter meter)
    {
        var (client, info) = Llm.ChatProviders.Create(new Llm.ChatEndpoint(o.JudgeProvider, o.JudgeEndpoint, o.JudgeModel!, o.JudgeApiKeyEnv, 3, TimeSpan.FromSeconds(120), "judge"));
        return new Llm.MeteredChatClient(client, meter, judge: true, 4, info);
    }

    /// <summary>judge_score (mean 1-10 rating of the answers against the rubric, each judged with its input and gold
    /// answer), judge_failures (verdicts that could not be had: left out of the mean), judge_not_called (outputs left
    /// when --max-calls was spent) and the mean answer length in characters, into the condition's metrics, with the
    /// rating counts (metrics.json's judge_histogram; a note in the report). Verdicts go through the cache.</summary>
    static void AddJudgeScore(ConditionResult r, Microsoft.Extensions.AI.IChatClient judge, string rubric, Llm.VerdictCache? cache, List<string> notes)
    {
        var items = r.Predictions.Select(p => new Llm.JudgeItem(p.Input, p.Prediction, p.Gold)).ToList();
        var verdicts = Llm.Judge.RateAll(judge, rubric, items, 4, cache).GetAwaiter().GetResult();
        cache?.Save();
        var m = (Dictionary<string, double>)r.Metrics;
        m["judge_score"] = Llm.Judge.Mean(verdicts);
        m["judge_failures"] = verdicts.Count(v => v.Failure is not null);
        int notCalled = verdicts.Count(v => v.NotCalled);
        if (notCalled > 0)
        {
            m["judge_not_called"] = notCalled;
            notes.Add($"{r.Name}: {notCalled} of {verdicts.Length} answers not judged: --max-calls reached (judge_score is over the judged ones).");
        }
        m["judge_answer_chars"] = r.Predictions.Count == 0 ? double.NaN : r.Predictions.Average(p => (double)p.Prediction.Length);
        var hist = Llm.Judge.Histogram(verdicts);
        for (int i = 0; i < 10; i++) m[EvalReport.JudgeRating + (i + 1)] = hist[i];
        notes.Add($"{r.Name}: judge ratings 1..10: [{string.Join(", ", hist)}]");
        var failure = verdicts.FirstOrDefault(v => v.Failure is not null)?.Failure;
        if (failure is not null) notes.Add($"{r.Name}: {m["judge_failures"]} judge verdict(s) failed, left out of the mean (first: {failure})");
    }

    static string SafeLabelField(DataOptions d, TaskKind task)
    {
        try { return d.LabelField(); }
        catch (SoftPromptException) when (task == TaskKind.Auto) { return d.OutputField; }
    }

    static ConditionResult EvaluateCondition(Condition c, IReadOnlyList<Example> examples, EvalOptions o, LanguageModel lm, HfTokenizer tok,
        ClassificationTask? ct, int padId, List<string> notes, Action<int> done, ICommunicator comm)
    {
        var model = lm.Base;
        int virtualTokens = c.Method?.NumVirtualTokens ?? 0;
        int maxLen = o.MaxLength;
        if (model.Config.Family == ArchFamily.Gpt2) maxLen = Math.Min(maxLen, model.Config.MaxPositions - virtualTokens);
        var targets = examples.Select(e => tok.Encode(e.Target, addSpecialTokens: false)).ToList();
        int truncated = 0;
        int[] Prompt(int i, int reserve)
        {
            var ids = PromptBuilder.Truncate(c.HardFor(i).PromptIds(tok, examples[i].Prompt), tok.PrefixIds.Count, maxLen - reserve, out bool cut);
            if (cut) truncated++;
            return ids;
        }

        // Loss on the data's targets: the trainer's validation-loss code path, hard prompt in the prompt ids.
        var lossData = examples.Select((e, i) => new TokenizedExample(Prompt(i, targets[i].Length), targets[i])).ToList();
        int n0 = examples.Count;
        double loss = PromptLoss.ValidationLoss(model, c.Method, lossData, o.BatchSize, padId, done, comm);
        int truncatedForLoss = truncated;

        var rows = new List<PredictionRow>();
        var metrics = new Dictionary<string, double>();
        ClassificationMetrics? cm = null;
        if (ct is not null)
        {
            truncated = 0;
            var prompts = examples.Select((_, i) => Prompt(i, ct.MaxLabelTokens)).ToList();
            // Each rank scores its share of the examples; every rank gets every example's scores.
            var scores = comm.Map(prompts.Count, i => { var sc = RankClassifier.Score(model, c.Method, prompts[i], ct.LabelIds); done(n0 + i + 1); return sc; }).ToList();
            var gold = examples.Select(ct.Gold).ToList();
            var pred = scores.Select(s => s.Best(o.LengthNormalize)).ToList();
            cm = ClassificationMetrics.Compute(gold, pred, ct.Labels);
            metrics["accuracy"] = cm.Accuracy;
            metrics["macro_f1"] = cm.MacroF1;
            for (int i = 0; i < examples.Count; i++)
                rows.Add(new PredictionRow(c.Name, examples[i].Prompt, ct.Labels[gold[i]], ct.Labels[pred[i]], gold[i] == pred[i],
                    ct.Labels.Select((l, k) => (l, k)).ToDictionary(x => x.l, x => scores[i].Score(x.k, o.LengthNormalize)), null));
        }
        else
        {
            truncated = 0;
            var steps = o.NormalizeSteps.ToList();
            var field = o.OutputField;
            var own = examples.Select(e => AnswerMetrics.SplitAnswers(ClassificationTask.LabelOf(e, field), o.AnswerSeparator)).ToList();
            // "Any of several gold answers": every answer given for the same input anywhere in the file.
            var byInput = examples.Select((e, i) => (e.Prompt, i)).GroupBy(x => x.Prompt)
                .ToDictionary(g => g.Key, g => g.SelectMany(x => own[x.i]).Distinct().ToList());
            var eos = lm.EosIds.ToList();
            if (o.StopAtNewline) eos.AddRange(TokenSets.NewlineIds(tok));
            // Every continuation in one continuously batched run (BatchEngine: the tokens of one-at-a-time generation);
            // greedy decoding generates each distinct prompt once.
            var prompts = examples.Select((_, i) => Prompt(i, o.MaxNewTokens)).ToList();
            var firstOf = new Dictionary<string, int>();
            var todo = Enumerable.Range(0, examples.Count).Where(i => o.Temperature > 0 || firstOf.TryAdd(string.Join(",", prompts[i]), i)).ToList();
            GenerationOptions Options(int i) => new() { MaxNewTokens = o.MaxNewTokens, Temperature = o.Temperature, Seed = o.Seed + i, EosIds = eos };
            // Each rank generates its share of the continuations; every rank gets all their tokens.
            int[][] generated;
            if (lm.Seq2Seq is { } t5)
            {
                // Encoder-decoder: the prompt is the encoder input; each is decoded with its own decoder cache.
                generated = comm.MapShare(todo.Count, share => share.Select(j =>
                {
                    int i = todo[j];
                    using var scope = TorchSharp.torch.NewDisposeScope();
                    return Seq2SeqGenerator.Generate(t5, prompts[i], Options(i), c.Method?.Inject(1)).NewIds.ToArray();
                }).ToList());
            }
            else
            {
                using var attached = c.Method is null ? null : AttachedPrompt.From(c.Method, lm.Model);
                generated = comm.MapShare(todo.Count, share => BatchEngine.GenerateAll(lm.Model, share.Select(j => todo[j]).Select(i => new SequenceRequest
                {
                    PromptIds = prompts[i], Prompt = attached, Options = Options(i),
                }).ToList()).Select(g => g.NewIds.ToArray()).ToList());
            }
            var texts = todo.Zip(generated).ToDictionary(x => x.First, x => tok.Decode(x.Second, skipSpecialTokens: true));
            double em = 0, f1 = 0, any = 0;
            for (int i = 0; i < examples.Count; i++)
            {
                var text = texts.TryGetValue(i, out var t) ? t : texts[firstOf[string.Join(",", prompts[i])]];
                var answer = (o.StopAtNewline && text.IndexOf('\n') is int nl and >= 0 ? text[..nl] : text).Trim();
                bool exact = AnswerMetrics.AnyExactMatch(answer, own[i], steps);
                bool anyGold = AnswerMetrics.AnyExactMatch(answer, byInput[examples[i].Prompt], steps);
                em += exact ? 1 : 0; any += anyGold ? 1 : 0; f1 += AnswerMetrics.BestTokenF1(answer, own[i], steps);
                rows.Add(new PredictionRow(c.Name, examples[i].Prompt, ClassificationTask.LabelOf(examples[i], field), answer, anyGold, null, text));
                done(n0 + i + 1);
            }
            int n = examples.Count;
            metrics["exact_match"] = em / n;
            metrics["any_gold_match"] = any / n;
            metrics["token_f1"] = f1 / n;
        }
        metrics["loss"] = loss;
        metrics["perplexity"] = Math.Exp(loss);
        int cutCount = Math.Max(truncated, truncatedForLoss);
        if (cutCount > 0) notes.Add($"{c.Name}: {cutCount} prompt(s) were longer than --max-length {maxLen} and were cut from the left (the hard prompt first).");
        string? promptText = c.Method is null ? c.Hard?.Text ?? "" : null;
        return new ConditionResult(c.Name, c.Kind, examples.Count, metrics, promptText, cm, rows);
    }

    /// <summary>
    /// Few-shot demonstrations: a seeded draw of k examples from the shots file, rendered "prompt+target" and joined
    /// by a blank line, ending with one. The same k are used for every test example, except that a demonstration
    /// whose prompt equals the test example's prompt is replaced by the next draw for that example.
    /// </summary>
    static (HardPrompt Default, Func<int, HardPrompt> PerExample, int Substituted) FewShot(HfTokenizer tok, IReadOnlyList<Example> pool, IReadOnlyList<Example> test, int k, int seed, string path)
    {
        var order = Enumerable.Range(0, pool.Count).ToArray();
        var rng = SplitMix64.For(seed, stream: 0xF3A5_0001);
        rng.Shuffle(order);
        HardPrompt Render(IEnumerable<int> idx) =>
            HardPrompt.FromText(tok, string.Concat(idx.Select(j => pool[j].Prompt + pool[j].Target + "\n\n")), $"{k} demonstrations from {path}");
        List<int> Draw(string? exclude)
        {
            var picked = order.Where(j => exclude is null || pool[j].Prompt != exclude).Take(k).ToList();
            if (picked.Count < k)
                throw new SoftPromptException($"--shots-from {path}: {(exclude is null ? pool.Count : pool.Count(e => e.Prompt != exclude))} usable example(s), fewer than --few-shot {k}{(exclude is null ? "" : " (demonstrations equal to a test example's prompt are never used)")}.");
            return picked;
        }
        var first = Draw(null);
        var defaultPrompt = Render(first);
        var firstPrompts = first.Select(j => pool[j].Prompt).ToHashSet();
        var perInput = new Dictionary<string, HardPrompt>();
        int substituted = 0;
        foreach (var e in test)
            if (firstPrompts.Contains(e.Prompt) && !perInput.ContainsKey(e.Prompt)) perInput[e.Prompt] = Render(Draw(e.Prompt));
        substituted = test.Count(e => perInput.ContainsKey(e.Prompt));
        return (defaultPrompt, i => perInput.TryGetValue(test[i].Prompt, out var hp) ? hp : defaultPrompt, substituted);
    }

    /// <summary>A condition name a reader understands, from what the adapter says of itself: "soft prompt, 8 tokens,
    /// step 300", "prefix, 8 tokens, MLP, step 600" (the step when SoftPrompt trained it).</summary>
    public static string AdapterDescription(string dir, IPromptMethod m)
    {
        var resolved = Adapter.ResolveDir(dir);
        var parts = new List<string> { m.Method.Label(), $"{m.NumVirtualTokens} tokens" };
        try
        {
            if (JsonNode.Parse(File.ReadAllText(Path.Combine(resolved, Adapter.ConfigFile)))?["prefix_projection"]?.GetValue<bool>() == true) parts.Add("MLP");
            if (AdapterMetadata.Read(resolved).Step is { } step) parts.Add($"step {step}");
        }
        catch (Exception e) when (e is IOException or System.Text.Json.JsonException or InvalidOperationException or SoftPromptException) { /* the name is a courtesy; Adapter.Load has checked the files */ }
        return string.Join(", ", parts);
    }

    /// <summary>adapter_config.json plus the adapter's softprompt.* metadata, for metrics.json.</summary>
    static JsonObject? AdapterSettings(string dir)
    {
        try
        {
            var o = new JsonObject { ["adapter_config"] = JsonNode.Parse(File.ReadAllText(Path.Combine(dir, Adapter.ConfigFile))) };
            var rec = new JsonObject();
            foreach (var (k, v) in AdapterMetadata.Read(dir).ToDictionary())
                rec[k[AdapterMetadata.KeyPrefix.Length..]] = v;
            o["recorded"] = rec;
            return o;
        }
        catch (Exception e) when (e is IOException or System.Text.Json.JsonException) { return null; }
    }

    /// <summary>Adapters that describe themselves alike (two runs of the same settings) are told apart by their folder.</summary>
    static void NameByFolderWhereAlike(List<Condition> cs)
    {
        foreach (var group in cs.Where(c => c.AdapterDir is not null).GroupBy(c => c.Name).Where(g => g.Count() > 1).ToList())
            foreach (var c in group)
            {
                int i = cs.IndexOf(c);
                cs[i] = new Condition { Name = $"{c.Name} ({AdapterLabel(c.AdapterDir!)})", Kind = c.Kind, Method = c.Method, Hard = c.Hard, PerExample = c.PerExample, AdapterDir = c.AdapterDir };
            }
    }

    static string AdapterLabel(string dir)
    {
        var full = Path.GetFullPath(dir).TrimEnd(Path.DirectorySeparatorChar);
        var name = Path.GetFileName(full);
        // A run folder's adapter/ or best/: name it by the run.
        if (name is "adapter" or "best" && Path.GetFileName(Path.GetDirectoryName(full)) is { Length: > 0 } run) return $"{run}/{name}";
        return name;
    }

    /// <summary>"searched (OPRO, 21 tokens) opro": how the prompt was found (from the file's "source", written by
    /// search-hard-prompt), its length, and the run folder or file it came from.</summary>
    static string SearchedName(HardPrompt hp, string path)
    {
        var source = hp.Source ?? "";
        string? how = source.StartsWith("search-hard-prompt (opro", StringComparison.Ordinal) ? "OPRO"
            : source.StartsWith("search-hard-prompt (gradient-guided", StringComparison.Ordinal) ? "gradient search" : null;
        return how is null ? $"searched {SearchedLabel(path)}" : $"searched ({how}, {hp.TokenIds.Length} tokens) {SearchedLabel(path)}";
    }

    static string SearchedLabel(string path)
    {
        var full = Path.GetFullPath(path).TrimEnd(Path.DirectorySeparatorChar);
        if (Directory.Exists(full)) return Path.GetFileName(full);
        var name = Path.GetFileNameWithoutExtension(full);
        return name == Path.GetFileNameWithoutExtension(HardPrompt.FileName) ? Path.GetFileName(Path.GetDirectoryName(full)) ?? name : name;
    }

    static void MakeNamesUnique(List<Condition> cs)
    {
        var seen = new Dictionary<string, int>();
        for (int i = 0; i < cs.Count; i++)
        {
            var n = cs[i].Name;
            if (seen.TryGetValue(n, out var k))
            {
                seen[n] = k + 1;
                var c = cs[i];
                cs[i] = new Condition { Name = $"{n} #{k + 1}", Kind = c.Kind, Method = c.Method, Hard = c.Hard, PerExample = c.PerExample, AdapterDir = c.AdapterDir };
            }
            else seen[n] = 1;
        }
    }
}
