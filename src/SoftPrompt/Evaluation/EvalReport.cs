using System.Globalization;
using System.Text;
using System.Text.Encodings.Web;
using System.Text.Json;
using System.Text.Json.Nodes;
using ScottPlot;
using SoftPrompt.Training;

namespace SoftPrompt.Evaluation;

/// <summary>
/// Writes an evaluation's report folder: metrics.json, report.md, predictions.jsonl, metrics.png and, per training
/// run given, training.png (+ the curve's rows). Everything is written into a sibling temp folder first and renamed
/// into place only when complete; an existing report folder is replaced only then.
/// </summary>
public static class EvalReport
{
    static readonly JsonSerializerOptions Indented = new() { WriteIndented = true, Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping };
    static readonly JsonSerializerOptions Compact = new() { WriteIndented = false, Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping };
    static string F(double x) => double.IsFinite(x) ? x.ToString("F4", CultureInfo.InvariantCulture) : "-";

    /// <summary>Metric keys judge_rating_1..10 hold the judge's rating counts: metrics.json lists them as judge_histogram.</summary>
    public const string JudgeRating = "judge_rating_";

    /// <summary>metrics.json's object.</summary>
    public static JsonObject MetricsJson(EvalResult r)
    {
        var conds = new JsonArray();
        foreach (var c in r.Conditions)
        {
            var m = new JsonObject();
            foreach (var (k, v) in c.Metrics) if (!k.StartsWith(JudgeRating, StringComparison.Ordinal)) m[k] = double.IsFinite(v) ? v : null;
            var o = new JsonObject { ["name"] = c.Name, ["kind"] = c.Kind, ["n"] = c.N, ["metrics"] = m };
            if (c.Metrics.ContainsKey(JudgeRating + "1"))
                o["judge_histogram"] = new JsonArray(Enumerable.Range(1, 10).Select(i => (JsonNode)(int)c.Metrics[JudgeRating + i]).ToArray());
            if (c.PromptText is not null) o["prompt_text"] = c.PromptText;
            if (c.Classification is { } cm)
            {
                o["per_class"] = new JsonArray(cm.PerClass.Select(p => (JsonNode)new JsonObject
                    { ["label"] = p.Label, ["precision"] = p.Precision, ["recall"] = p.Recall, ["f1"] = p.F1, ["support"] = p.Support }).ToArray());
                o["confusion"] = new JsonArray(cm.Confusion.Select(row => (JsonNode)new JsonArray(row.Select(x => (JsonNode)x).ToArray())).ToArray());
            }
            conds.Add(o);
        }
        return new JsonObject
        {
            ["conditions"] = conds,
            ["task"] = r.Task,
            ["labels"] = r.Labels is null ? null : new JsonArray(r.Labels.Select(l => (JsonNode)l).ToArray()),
            ["class_prior"] = r.ClassPrior,
            ["model"] = r.Model,
            ["data"] = r.Data,
            ["created"] = r.Created.ToString("o", CultureInfo.InvariantCulture),
        };
    }

    /// <summary>The metrics table with aligned columns (text) or as Markdown.</summary>
    public static string Table(EvalResult r, bool markdown)
    {
        var keys = r.Conditions.SelectMany(c => c.Metrics.Keys).Where(k => !k.StartsWith(JudgeRating, StringComparison.Ordinal)).Distinct().ToList();
        var head = new[] { "condition", "kind", "n" }.Concat(keys).ToArray();
        var rows = r.Conditions.Select(c => new[] { c.Name, c.Kind, c.N.ToString(CultureInfo.InvariantCulture) }
            .Concat(keys.Select(k => c.Metrics.TryGetValue(k, out var v) ? F(v) : "-")).ToArray()).ToList();
        var sb = new StringBuilder();
        if (markdown)
        {
            sb.AppendLine("| " + string.Join(" | ", head) + " |");
            sb.AppendLine("|" + string.Join("|", head.Select((_, i) => i < 2 ? "---" : "---:")) + "|");
            foreach (var row in rows) sb.AppendLine("| " + string.Join(" | ", row.Select(x => x.Replace("|", "\\|"))) + " |");
            return sb.ToString();
        }
        var width = head.Select((h, i) => Math.Max(h.Length, rows.Select(x => x[i].Length).DefaultIfEmpty(0).Max())).ToArray();
        string Line(string[] cells) => string.Join("  ", cells.Select((x, i) => i < 2 ? x.PadRight(width[i]) : x.PadLeft(width[i]))).TrimEnd();
        sb.AppendLine(Line(head));
        sb.AppendLine(string.Join("  ", width.Select(w => new string('-', w))));
        foreach (var row in rows) sb.AppendLine(Line(row));
        return sb.ToString();
    }

    /// <summary>One line comparing the best hard prompt with the best soft prompt, or null without both.</summary>
    public static string? Verdict(EvalResult r)
    {
        var (h, s) = (r.BestHard, r.BestSoft);
        if (h is null || s is null) return null;
        double hm = h.Metrics[r.MainMetric], sm = s.Metrics[r.MainMetric];
        return $"best soft prompt \"{s.Name}\" {r.MainMetric} {F(sm)} vs best hard prompt \"{h.Name}\" {F(hm)}: margin {(sm - hm >= 0 ? "+" : "")}{F(sm - hm)}";
    }

    public static string Markdown(EvalResult r, IReadOnlyList<string> runs)
    {
        var sb = new StringBuilder();
        sb.AppendLine("# Evaluation report").AppendLine();
        sb.AppendLine($"- model: `{r.Model}`");
        sb.AppendLine($"- data: `{r.Data}` ({r.Conditions.FirstOrDefault()?.N ?? 0} examples, the same for every condition)");
        sb.AppendLine($"- task: {r.Task} ({r.TaskReason}); main metric: {r.MainMetric}");
        if (r.Labels is not null) sb.AppendLine($"- labels: {string.Join(", ", r.Labels.Select(l => $"`{l}`"))}");
        if (r.ClassPrior is double p) sb.AppendLine($"- class prior (majority-class accuracy): {F(p)}");
        sb.AppendLine($"- created: {r.Created:yyyy-MM-dd HH:mm:ss zzz}").AppendLine();
        sb.AppendLine("## Metrics").AppendLine().Append(Table(r, true)).AppendLine();
        sb.AppendLine("![metrics](metrics.png)").AppendLine();
        sb.AppendLine("## Hard prompt vs soft prompt").AppendLine();
        var verdict = Verdict(r);
        if (verdict is not null) sb.AppendLine(verdict + ".");
        else sb.AppendLine(r.BestHard is { } bh ? $"Best hard prompt: \"{bh.Name}\" ({r.MainMetric} {F(bh.Metrics[r.MainMetric])}); no soft prompt was given (--prompt)." : "No hard-prompt condition.");
        if (r.ClassPrior is double cp && r.BestHard is { } h2)
            sb.AppendLine().AppendLine($"Always answering the majority class would score {F(cp)}; the best hard prompt is {(h2.Metrics["accuracy"] - cp >= 0 ? "+" : "")}{F(h2.Metrics["accuracy"] - cp)} above it.");
        sb.AppendLine();
        var prompts = r.Conditions.Where(c => !string.IsNullOrEmpty(c.PromptText)).ToList();
        if (prompts.Count > 0)
        {
            sb.AppendLine("## Hard prompts").AppendLine();
            foreach (var c in prompts) sb.AppendLine($"- **{c.Name}** ({c.Kind}): `{c.PromptText!.Replace("\n", "\\n").Replace("`", "'")}`");
            sb.AppendLine();
        }
        if (r.Conditions.Any(c => c.Classification is not null))
        {
            sb.AppendLine("## Confusion matrices").AppendLine().AppendLine("Rows: gold label; columns: predicted label.").AppendLine();
            foreach (var c in r.Conditions.Where(c => c.Classification is not null))
            {
                var cm = c.Classification!;
                sb.AppendLine($"### {c.Name}").AppendLine();
                sb.AppendLine("| gold \\ predicted | " + string.Join(" | ", r.Labels!.Select(Esc)) + " | recall |");
                sb.AppendLine("|---|" + string.Join("|", r.Labels!.Select(_ => "---:")) + "|---:|");
                for (int i = 0; i < cm.Confusion.Length; i++)
                    sb.AppendLine($"| {Esc(r.Labels![i])} | " + string.Join(" | ", cm.Confusion[i]) + $" | {F(cm.PerClass[i].Recall)} |");
                sb.AppendLine("| precision | " + string.Join(" | ", cm.PerClass.Select(x => F(x.Precision))) + " | |");
                sb.AppendLine("| F1 | " + string.Join(" | ", cm.PerClass.Select(x => F(x.F1))) + " | |").AppendLine();
            }
        }
        sb.AppendLine("## Notes").AppendLine();
        sb.AppendLine("- Every hard prompt (zero-shot's empty one included) is placed after the tokenizer's BOS and before the example's prompt text.");
        sb.AppendLine(r.Task == "classification"
            ? "- Rank classification: each label is scored by the model's log-probability of its target-side text after the prompt; the best label is the prediction."
            : "- Generation: answers are compared after normalisation; exact_match and token_f1 use the example's own answer(s), any_gold_match any answer given for the same input.");
        sb.AppendLine("- loss: mean negative log-likelihood per target token (nats), the trainer's validation-loss code path; perplexity = exp(loss).");
        foreach (var n in r.Notes) sb.AppendLine($"- {n}");
        if (runs.Count > 0)
        {
            sb.AppendLine().AppendLine("## Training").AppendLine();
            for (int i = 0; i < runs.Count; i++) sb.AppendLine($"![training {runs[i]}]({TrainingName(i, runs.Count)}.png)").AppendLine();
        }
        return sb.ToString();
    }

    static string Esc(string s) => s.Replace("|", "\\|");
    static string TrainingName(int i, int count) => count == 1 ? "training" : $"training-{i + 1}";

    /// <summary>Writes the report folder atomically; returns its full path.</summary>
    public static string Write(EvalResult r, string outputDir, IReadOnlyList<string> runs)
    {
        var full = Path.GetFullPath(outputDir).TrimEnd(Path.DirectorySeparatorChar);
        var parent = Path.GetDirectoryName(full)!;
        Directory.CreateDirectory(parent);
        var tmp = $"{full}.tmp-{Guid.NewGuid().ToString("N")[..8]}";
        Directory.CreateDirectory(tmp);
        try
        {
            File.WriteAllText(Path.Combine(tmp, "metrics.json"), MetricsJson(r).ToJsonString(Indented) + "\n");
            using (var w = new StreamWriter(Path.Combine(tmp, "predictions.jsonl"), false, new UTF8Encoding(false)))
                foreach (var c in r.Conditions)
                    foreach (var p in c.Predictions)
                    {
                        var o = new JsonObject { ["condition"] = p.Condition, ["input"] = p.Input, ["gold"] = p.Gold, ["prediction"] = p.Prediction };
                        if (p.Scores is not null) o["scores"] = new JsonObject(p.Scores.Select(kv => KeyValuePair.Create(kv.Key, (JsonNode?)kv.Value)));
                        if (p.Generated is not null) o["generated"] = p.Generated;
                        o["correct"] = p.Correct;
                        w.Write(o.ToJsonString(Compact)); w.Write('\n');
                    }
            MetricsPlot(r, Path.Combine(tmp, "metrics.png"));
            for (int i = 0; i < runs.Count; i++)
            {
                var name = TrainingName(i, runs.Count);
                var curve = Path.Combine(tmp, name + "_metrics.jsonl");
                File.Copy(Path.Combine(runs[i], "metrics.jsonl"), curve);
                var log = new MetricsLog(curve);
                var metricKey = log.Rows.Where(x => x["kind"]?.GetValue<string>() == "eval").SelectMany(x => x.Select(kv => kv.Key))
                    .FirstOrDefault(k => k is not ("kind" or "step" or "eval_loss"));
                TrainingPlot.Write(log, Path.Combine(tmp, name + ".png"), metricKey);
                if (!File.Exists(Path.Combine(tmp, name + ".png")))
                    throw new SoftPromptException($"--run {runs[i]}: metrics.jsonl has no training or evaluation rows to plot.");
            }
            File.WriteAllText(Path.Combine(tmp, "report.md"), Markdown(r, runs));

            string? old = null;
            if (Directory.Exists(full)) { old = $"{full}.old-{Guid.NewGuid().ToString("N")[..8]}"; Directory.Move(full, old); }
            Directory.Move(tmp, full);
            if (old is not null) Directory.Delete(old, true);
            return full;
        }
        catch
        {
            try { Directory.Delete(tmp, true); } catch { /* best effort */ }
            throw;
        }
    }

    /// <summary>Bars of the main metric per condition; the best hard prompt in a contrasting colour; the class prior as a dashed line.</summary>
    public static void MetricsPlot(EvalResult r, string path)
    {
        Fonts.Default = "DejaVu Sans";
        var plt = new Plot();
        var best = r.BestHard;
        var hardColor = Colors.SteelBlue; var softColor = Colors.DarkOrange; var bestColor = Colors.SeaGreen;
        var bars = new List<Bar>();
        for (int i = 0; i < r.Conditions.Count; i++)
        {
            var c = r.Conditions[i];
            double v = c.Metrics[r.MainMetric];
            bars.Add(new Bar
            {
                Position = i, Value = double.IsFinite(v) ? v : 0,
                FillColor = ReferenceEquals(c, best) ? bestColor : c.IsSoft ? softColor : hardColor,
                Label = F(v),
            });
        }
        var bp = plt.Add.Bars(bars);
        bp.ValueLabelStyle.FontSize = 11;
        var ticks = r.Conditions.Select((c, i) => new Tick(i, (ReferenceEquals(c, best) ? "★ " : "") + Wrap(c.Name))).ToArray();
        plt.Axes.Bottom.TickGenerator = new ScottPlot.TickGenerators.NumericManual(ticks);
        plt.Axes.Bottom.TickLabelStyle.Rotation = r.Conditions.Count > 4 ? 30 : 0;
        plt.Axes.Bottom.TickLabelStyle.Alignment = r.Conditions.Count > 4 ? Alignment.UpperLeft : Alignment.UpperCenter;
        plt.Axes.Bottom.MinimumSize = r.Conditions.Count > 4 ? 150 : 40; // room for the rotated names
        if (r.ClassPrior is double prior)
        {
            var line = plt.Add.HorizontalLine(prior);
            line.LinePattern = LinePattern.Dashed; line.Color = Colors.Gray; line.LineWidth = 1.5f;
            plt.Legend.ManualItems.Add(new LegendItem { LabelText = $"class prior (majority class) {F(prior)}", LineColor = Colors.Gray, LineWidth = 1.5f, LinePattern = LinePattern.Dashed });
        }
        plt.Legend.ManualItems.Add(new LegendItem { LabelText = "hard prompt", FillColor = hardColor });
        plt.Legend.ManualItems.Add(new LegendItem { LabelText = "soft prompt / prefix", FillColor = softColor });
        if (best is not null) plt.Legend.ManualItems.Add(new LegendItem { LabelText = $"best hard prompt ({best.Name})", FillColor = bestColor });
        plt.ShowLegend(Alignment.UpperRight);
        plt.Axes.SetLimitsY(0, 1.15);
        plt.Axes.SetLimitsX(-0.6, r.Conditions.Count - 0.4 + (r.Conditions.Count > 4 ? 0.6 : 0)); // rotated names run to the right
        plt.Title($"{r.MainMetric} per condition ({r.Task}, n = {r.Conditions.FirstOrDefault()?.N ?? 0})");
        plt.YLabel(r.MainMetric);
        plt.SavePng(path, Math.Max(700, 130 * r.Conditions.Count), 520);
    }

    static string Wrap(string s) => s.Length <= 24 ? s : s[..23] + "…";
}
