using System.Globalization;
using System.Text;

namespace SoftPrompt.Scoring;

/// <summary>Precision, recall and F1 of one class, with its support (gold count).</summary>
public sealed record ClassScores(string Label, double Precision, double Recall, double F1, int Support);

/// <summary>Classification metrics from gold and predicted class indices.</summary>
public sealed record ClassificationMetrics(double Accuracy, double MacroF1, IReadOnlyList<ClassScores> PerClass, int[][] Confusion)
{
    /// <summary>
    /// Accuracy, macro-F1 (the unweighted mean of per-class F1 over every label of the label set, so a class that is
    /// never predicted counts with F1 = 0), per-class scores and the confusion matrix (rows = gold, columns =
    /// predicted). A class with no gold and no predicted example has precision = recall = F1 = 0 and still counts in
    /// the mean (scikit-learn's zero_division=0 with labels= given).
    /// </summary>
    public static ClassificationMetrics Compute(IReadOnlyList<int> gold, IReadOnlyList<int> predicted, IReadOnlyList<string> labels)
    {
        if (gold.Count != predicted.Count) throw new ArgumentException("gold and predicted differ in length.");
        int k = labels.Count;
        var cm = Enumerable.Range(0, k).Select(_ => new int[k]).ToArray();
        int correct = 0;
        for (int i = 0; i < gold.Count; i++)
        {
            cm[gold[i]][predicted[i]]++;
            if (gold[i] == predicted[i]) correct++;
        }
        var per = new List<ClassScores>();
        for (int c = 0; c < k; c++)
        {
            int tp = cm[c][c], support = cm[c].Sum(), predictedC = cm.Sum(r => r[c]);
            double p = predictedC == 0 ? 0 : (double)tp / predictedC;
            double r = support == 0 ? 0 : (double)tp / support;
            double f = p + r == 0 ? 0 : 2 * p * r / (p + r);
            per.Add(new ClassScores(labels[c], p, r, f, support));
        }
        return new ClassificationMetrics(gold.Count == 0 ? double.NaN : (double)correct / gold.Count, k == 0 ? double.NaN : per.Average(x => x.F1), per, cm);
    }

    /// <summary>Accuracy of always predicting the most frequent gold class.</summary>
    public static double MajorityClassAccuracy(IReadOnlyList<int> gold) =>
        gold.Count == 0 ? double.NaN : gold.GroupBy(g => g).Max(g => g.Count()) / (double)gold.Count;
}

/// <summary>
/// Answer comparison for generation tasks (SQuAD-style): normalise, then exact match or bag-of-tokens F1, and
/// "any of several gold answers" (the best over a set of acceptable answers).
/// </summary>
public static class AnswerMetrics
{
    static readonly HashSet<string> Articles = new() { "a", "an", "the" };

    /// <summary>Applies the normalisation steps in a fixed order: lowercase, punctuation (removed), articles (a/an/the
    /// removed as words), whitespace (runs collapsed, ends trimmed). Any subset may be given.</summary>
    public static string Normalize(string s, IReadOnlyCollection<string> steps)
    {
        if (steps.Contains("lowercase")) s = s.ToLowerInvariant();
        if (steps.Contains("punctuation"))
        {
            var sb = new StringBuilder(s.Length);
            foreach (var c in s) if (!char.IsPunctuation(c) && !char.IsSymbol(c)) sb.Append(c);
            s = sb.ToString();
        }
        if (steps.Contains("articles"))
            s = string.Join(" ", s.Split((char[]?)null, StringSplitOptions.RemoveEmptyEntries).Where(w => !Articles.Contains(w.ToLowerInvariant())));
        if (steps.Contains("whitespace")) s = string.Join(" ", s.Split((char[]?)null, StringSplitOptions.RemoveEmptyEntries));
        return s;
    }

    public static bool ExactMatch(string prediction, string gold, IReadOnlyCollection<string> steps) =>
        Normalize(prediction, steps) == Normalize(gold, steps);

    /// <summary>F1 of the multiset of whitespace tokens of the normalised strings; 1 when both are empty.</summary>
    public static double TokenF1(string prediction, string gold, IReadOnlyCollection<string> steps)
    {
        var p = Normalize(prediction, steps).Split((char[]?)null, StringSplitOptions.RemoveEmptyEntries);
        var g = Normalize(gold, steps).Split((char[]?)null, StringSplitOptions.RemoveEmptyEntries);
        if (p.Length == 0 || g.Length == 0) return p.Length == g.Length ? 1 : 0;
        var counts = g.GroupBy(x => x).ToDictionary(x => x.Key, x => x.Count());
        int common = 0;
        foreach (var t in p)
            if (counts.TryGetValue(t, out var c) && c > 0) { common++; counts[t] = c - 1; }
        if (common == 0) return 0;
        double precision = (double)common / p.Length, recall = (double)common / g.Length;
        return 2 * precision * recall / (precision + recall);
    }

    public static bool AnyExactMatch(string prediction, IEnumerable<string> golds, IReadOnlyCollection<string> steps) =>
        golds.Any(g => ExactMatch(prediction, g, steps));

    public static double BestTokenF1(string prediction, IEnumerable<string> golds, IReadOnlyCollection<string> steps) =>
        golds.Select(g => TokenF1(prediction, g, steps)).DefaultIfEmpty(0).Max();

    /// <summary>The answers one gold field holds: split on <paramref name="separator"/> (trimmed, empty parts dropped), or the whole value.</summary>
    public static IReadOnlyList<string> SplitAnswers(string gold, string? separator) =>
        string.IsNullOrEmpty(separator) ? new[] { gold.Trim() }
            : gold.Split(separator, StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries) is { Length: > 0 } parts ? parts : new[] { gold.Trim() };

    internal static string F(double x) => x.ToString("F4", CultureInfo.InvariantCulture);
}
