using SoftPrompt.Data;
using SoftPrompt.Models;
using SoftPrompt.Distributed;
using SoftPrompt.Tokenization;
using SoftPrompt.Tuning;

namespace SoftPrompt.Scoring;

/// <summary>
/// A classification task over a dataset: the label set, each label's token ids (the target-side rendering of the
/// label, i.e. exactly the text the trainer trains on), and the gold label of each example. Used by
/// <c>eval</c> and by the trainer's periodic validation, so both compute accuracy the same way.
/// </summary>
public sealed class ClassificationTask
{
    /// <summary>The labels as written in the data (or given with --labels).</summary>
    public IReadOnlyList<string> Labels { get; }
    /// <summary>Token ids of each label's target-side text (no special tokens).</summary>
    public IReadOnlyList<int[]> LabelIds { get; }
    /// <summary>The data field that holds the label.</summary>
    public string Field { get; }

    ClassificationTask(IReadOnlyList<string> labels, IReadOnlyList<int[]> ids, string field) { Labels = labels; LabelIds = ids; Field = field; }

    public const int MaxAutoLabels = 20;


    /// <summary>The target-side text of a label (its label word when the options have them): the target template
    /// with the label in its field, or the default target (one leading space).</summary>
    public static string RenderTarget(DataOptions o, string label)
    {
        label = o.Verbalize(label);
        if (o.TargetTemplate is null) return DatasetReader.DefaultTarget(label);
        var t = new Template(o.TargetTemplate);
        return t.Render(new Dictionary<string, string> { [t.Fields[0]] = label }, out _)!;
    }

    public static string LabelOf(Example e, string field) =>
        e.Fields.TryGetValue(field, out var v) ? v : throw new SoftPromptException($"{e.Location}: missing field \"{field}\" (the label).");

    /// <summary>
    /// The automatic task choice: classification when there are at most <see cref="MaxAutoLabels"/> distinct outputs,
    /// every output is a short label (one line, at most 3 words and 40 characters) and at least one output repeats
    /// (so a handful of all-different free-text answers is not mistaken for a label set). Returns the reason too.
    /// </summary>
    public static (bool IsClassification, string Reason) Detect(IReadOnlyList<string> outputs)
    {
        var distinct = outputs.Distinct(StringComparer.Ordinal).ToList();
        var longOne = distinct.FirstOrDefault(s => s.Contains('\n') || s.Length > 40 || s.Split((char[]?)null, StringSplitOptions.RemoveEmptyEntries).Length > 3);
        if (distinct.Count > MaxAutoLabels) return (false, $"{distinct.Count} distinct outputs (> {MaxAutoLabels})");
        if (longOne is not null) return (false, $"output \"{Shorten(longOne)}\" is not a short label");
        if (distinct.Count == outputs.Count && outputs.Count > 2) return (false, $"all {outputs.Count} outputs are different");
        return (true, $"{distinct.Count} distinct short outputs");
    }

    static string Shorten(string s) => s.Length <= 30 ? s.Replace("\n", "\\n") : s[..30].Replace("\n", "\\n") + "...";

    /// <summary>
    /// Builds the task: labels from <paramref name="labelsOption"/> (comma-separated; each must occur in the data)
    /// or the distinct label values of <paramref name="examples"/> in ordinal order. Every example's label must be in
    /// the set.
    /// </summary>
    public static ClassificationTask Create(IReadOnlyList<Example> examples, DataOptions o, HfTokenizer tok, string? labelsOption, string dataName)
    {
        var field = o.LabelField();
        var labels = labelsOption is not null ? CheckLabels(examples, o, labelsOption, dataName)
            : examples.Select(e => LabelOf(e, field)).Distinct(StringComparer.Ordinal).OrderBy(s => s, StringComparer.Ordinal).ToList();
        var ids = labels.Select(l =>
        {
            var t = tok.Encode(RenderTarget(o, l), addSpecialTokens: false);
            return t.Length > 0 ? t : throw new SoftPromptException($"label \"{l}\" tokenizes to no tokens.");
        }).ToList();
        for (int a = 0; a < ids.Count; a++)
            for (int b = a + 1; b < ids.Count; b++)
                if (ids[a].SequenceEqual(ids[b])) throw new SoftPromptException($"labels \"{labels[a]}\" and \"{labels[b]}\" tokenize identically; rank classification cannot tell them apart.");
        return new ClassificationTask(labels, ids, field);
    }

    /// <summary>
    /// The labels of a --labels option (comma-separated), checked against the data: each must occur in the label
    /// field, none twice, and every example's label must be one of them. The same rule for train, search-hard-prompt
    /// and eval, and it needs no model, so it runs before the model is loaded.
    /// </summary>
    public static List<string> CheckLabels(IReadOnlyList<Example> examples, DataOptions o, string labelsOption, string dataName)
    {
        var field = o.LabelField();
        var values = examples.Select(e => LabelOf(e, field)).ToList();
        List<string> labels;
        {
            labels = labelsOption.Split(',', StringSplitOptions.RemoveEmptyEntries).ToList();
            if (labels.Count == 0) throw new SoftPromptException("--labels: no labels given.");
            var present = values.ToHashSet(StringComparer.Ordinal);
            // Tolerate "a, b" on the command line when the data says "a" and "b".
            labels = labels.Select(l => present.Contains(l) ? l : l.Trim()).ToList();
            foreach (var l in labels)
                if (!present.Contains(l))
                    throw new SoftPromptException($"--labels: label \"{l}\" never occurs in {dataName} (field \"{field}\" has: {string.Join(", ", present.Take(20).Select(p => $"\"{p}\""))}{(present.Count > 20 ? ", ..." : "")}).");
            var dup = labels.GroupBy(l => l).FirstOrDefault(g => g.Count() > 1);
            if (dup is not null) throw new SoftPromptException($"--labels: label \"{dup.Key}\" is given twice.");
            var set = labels.ToHashSet(StringComparer.Ordinal);
            var outside = examples.FirstOrDefault(e => !set.Contains(LabelOf(e, field)));
            if (outside is not null)
                throw new SoftPromptException($"{outside.Location}: label \"{LabelOf(outside, field)}\" is not in --labels ({string.Join(", ", labels)}).");
        }
        return labels;
    }

    public int Gold(Example e)
    {
        var v = LabelOf(e, Field);
        for (int i = 0; i < Labels.Count; i++) if (Labels[i] == v) return i;
        throw new SoftPromptException($"{e.Location}: label \"{v}\" is not in the label set.");
    }

    public int MaxLabelTokens => LabelIds.Max(l => l.Length);

    /// <summary>Rank-classifies prompts (already built, hard prompt included); <paramref name="method"/> is attached when given.</summary>
    public List<LabelScores> Score(IPromptableModel model, IPromptMethod? method, IReadOnlyList<int[]> promptIds) =>
        promptIds.Select(p => RankClassifier.Score(model, method, p, LabelIds)).ToList();

    /// <summary>
    /// Validation metrics for the trainer: accuracy and macro-F1 by rank classification with the current prompt, on
    /// at most <paramref name="cap"/> examples, evenly spaced over the validation set (files are often sorted by label,
    /// so the first ones would be a biased sample; the selection is fixed for the whole run). Keys in order:
    /// accuracy first (the one "best checkpoint" is judged by), then macro_f1.
    /// </summary>
    public Func<IPromptMethod, IReadOnlyDictionary<string, double>> TrainerMetrics(IPromptableModel model, HfTokenizer tok, IReadOnlyList<Example> validation, int maxLength, bool lengthNormalize = false, int cap = 200,
        ICommunicator? comm = null)
    {
        var used = validation.Count <= cap ? validation.ToList()
            : Enumerable.Range(0, cap).Select(i => validation[(int)((long)i * validation.Count / cap)]).ToList();
        var prompts = used.Select(e => PromptBuilder.Build(tok, Array.Empty<int>(), e.Prompt, maxLength - MaxLabelTokens)).ToList();
        var gold = used.Select(Gold).ToList();
        return method =>
        {
            // Each rank scores its share of the examples; every rank gets all the scores, as one process computes them.
            var scores = (comm ?? SingleProcess.Instance).Map(prompts.Count, i => RankClassifier.Score(model, method, prompts[i], LabelIds));
            var m = ClassificationMetrics.Compute(gold, scores.Select(s => s.Best(lengthNormalize)).ToList(), Labels);
            // An ordered list of pairs keeps "accuracy" first whatever dictionary the caller copies it into.
            return new OrderedDictionary<string, double> { ["accuracy"] = m.Accuracy, ["macro_f1"] = m.MacroF1 };
        };
    }
}

/// <summary>Prompt ids of an example with a hard prompt, truncated from the left to a length budget.</summary>
public static class PromptBuilder
{
    /// <summary>
    /// <see cref="HardPrompt.BuildPromptIds"/> (tokenizer prefix + hard prompt + example prompt), cut from the left to
    /// at most <paramref name="budget"/> tokens when longer, keeping the tokenizer's leading special tokens (BOS) in
    /// front, as <see cref="ExampleTokenizer"/> truncates training prompts.
    /// </summary>
    public static int[] Build(HfTokenizer tok, IReadOnlyList<int> hardPromptIds, string promptText, int budget) =>
        Truncate(HardPrompt.BuildPromptIds(tok, hardPromptIds, promptText), tok.PrefixIds.Count, budget, out _);

    public static int[] Truncate(int[] ids, int keepFront, int budget, out bool truncated)
    {
        truncated = false;
        budget = Math.Max(1, budget);
        if (ids.Length <= budget) return ids;
        truncated = true;
        return ExampleTokenizer.TruncateLeft(ids, Math.Min(keepFront, budget - 1), budget);
    }
}

/// <summary>What a dataset asks of the model: a label out of a small set (scored by rank over the labels), or free
/// text (generated and compared with the gold answers). <see cref="Auto"/> decides from the data
/// (<see cref="ClassificationTask.Detect"/>).</summary>
public enum TaskKind { Auto, Classification, Generation }
