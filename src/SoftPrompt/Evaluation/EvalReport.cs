using System.Globalization;
using System.Text.Encodings.Web;
using System.Text.Json.Nodes;
using System.Text.Json;
using System.Text;
using ScottPlot;
using SoftPrompt.IO;
using SoftPrompt.Scoring;
using SoftPrompt.Runs;

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
            if (c.AdapterPath is not null) o["adapter"] = c.AdapterPath;
            if (c.AdapterSettings is not null) o["adapter_settings"] = c.AdapterSettings.DeepClone();
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
            ["task"] = OptionsRecord.EnumName(r.Task),
            ["labels"] = r.Labels is null ? null : new JsonArray(r.Labels.Select(l => (JsonNode)l).ToArray()),
            ["class_prior"] = r.ClassPrior,
            ["model"] = r.Model,
            ["data"] = r.Data,
            ["created"] = r.Created.ToString("o", CultureInfo.InvariantCulture),
            ["softprompt_version"] = r.ToolVersion,
            ["seed"] = r.Seed,
            ["eval_config"] = r.Config?.DeepClone(),
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
        sb.AppendLine($"- task: {OptionsRecord.EnumName(r.Task)} ({r.TaskReason}); main metric: {r.MainMetric}");
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
        sb.AppendLine(r.Task == TaskKind.Classification
            ? "- Rank classification: each label is scored by the model's log-probability of its target-side text after the prompt; the best label is the prediction."
            : "- Generation: answers are compared after normalisation; exact_match and token_f1 use the example's own answer(s), any_gold_match any answer given for the same input.");
        sb.AppendLine("- loss: mean negative log-likelihood per target token (nats), the trainer's validation-loss code path; perplexity = exp(loss).");
        foreach (var n in r.Notes) sb.AppendLine($"- {n}");
        if (runs.Count > 0)
        {
            sb.AppendLine().AppendLine("## Training").AppendLine();
            sb.AppendLine($"![training: {string.Join(", ", runs.Select(RunName))}](training.png)").AppendLine();
            sb.AppendLine("Training loss is the mean over each log interval; dashed vertical lines mark the checkpoint each run exported.").AppendLine();
        }
        return sb.ToString();
    }

    static string Esc(string s) => s.Replace("|", "\\|");
    static string TrainingName(int i, int count) => count == 1 ? "training" : $"training-{i + 1}";
    static string RunName(string runDir) => Path.GetFileName(Path.GetFullPath(runDir).TrimEnd(Path.DirectorySeparatorChar));

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
            File.WriteAllText(Path.Combine(tmp, "metrics.json"), IO.JsonFile.Write(MetricsJson(r), Indented) + "\n");
            using (var w = new StreamWriter(Path.Combine(tmp, "predictions.jsonl"), false, new UTF8Encoding(false)))
                foreach (var c in r.Conditions)
                    foreach (var p in c.Predictions)
                    {
                        var o = new JsonObject { ["condition"] = p.Condition, ["input"] = p.Input, ["gold"] = p.Gold, ["prediction"] = p.Prediction };
                        if (p.Scores is not null) o["scores"] = new JsonObject(p.Scores.Select(kv => KeyValuePair.Create(kv.Key, (JsonNode?)kv.Value)));
                        if (p.Generated is not null) o["generated"] = p.Generated;
                        o["correct"] = p.Correct;
                        w.Write(IO.JsonFile.Write(o, Compact)); w.Write('\n');
                    }
            MetricsPlot(r, Path.Combine(tmp, "metrics.png"));
            // One training.png with every run passed (--run, repeatable); each run's curve is copied beside it.
            var plotted = new List<TrainingPlot.Run>();
            for (int i = 0; i < runs.Count; i++)
            {
                var curve = Path.Combine(tmp, TrainingName(i, runs.Count) + "_metrics.jsonl");
                File.Copy(Path.Combine(runs[i], "metrics.jsonl"), curve);
                var log = new MetricsLog(curve);
                if (!log.Series("train", "loss").Any() && !log.Series("eval", "eval_loss").Any())
                    throw new SoftPromptException($"--run {runs[i]}: metrics.jsonl has no training or evaluation rows to plot.");
                plotted.Add(new TrainingPlot.Run(runs.Count == 1 ? "" : RunName(runs[i]), log, TrainingPlot.SelectedStep(runs[i], preferExported: true)));
            }
            if (plotted.Count > 0) TrainingPlot.WriteRuns(plotted, Path.Combine(tmp, "training.png"));
            File.WriteAllText(Path.Combine(tmp, "report.md"), Markdown(r, runs));
            // The judge's verdict cache, written into the folder during the evaluation, is kept with the report.
            var cache = Path.Combine(full, Llm.VerdictCache.FileName);
            if (File.Exists(cache)) File.Copy(cache, Path.Combine(tmp, Llm.VerdictCache.FileName));

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

    /// <summary>The two metrics drawn per condition: accuracy and macro-F1 (classification), any-gold match and
    /// token F1 (generation).</summary>
    public static (string Key, string Label)[] PlotMetrics(EvalResult r) => r.Task == TaskKind.Classification
        ? new[] { ("accuracy", "accuracy"), ("macro_f1", "macro-F1") }
        : new[] { ("any_gold_match", "any-gold match"), ("token_f1", "token F1") };

    /// <summary>
    /// Two bars per condition (accuracy solid, macro-F1 light; or the generation pair), coloured by kind with the
    /// best hard prompt in its own colour, every value written on its bar, the class prior as a dashed line. The value
    /// axis runs from 0 to 1; condition names are wrapped, never cut; the legend sits outside the data.
    /// </summary>
    public static void MetricsPlot(EvalResult r, string path)
    {
        Fonts.Default = "DejaVu Sans";
        var plt = new Plot();
        var best = r.BestHard;
        var hardColor = Colors.SteelBlue; var softColor = Colors.DarkOrange; var bestColor = Colors.SeaGreen;
        var metrics = PlotMetrics(r);
        const double width = 0.38;
        var bars = new List<Bar>();
        for (int i = 0; i < r.Conditions.Count; i++)
        {
            var c = r.Conditions[i];
            var color = ReferenceEquals(c, best) ? bestColor : c.IsSoft ? softColor : hardColor;
            for (int m = 0; m < metrics.Length; m++)
            {
                double v = c.Metrics.TryGetValue(metrics[m].Key, out var x) && double.IsFinite(x) ? x : 0;
                double pos = i + (m - 0.5) * width;
                bars.Add(new Bar { Position = pos, Value = v, Size = width * 0.95, FillColor = m == 0 ? color : color.WithAlpha(0.45), LineWidth = 0 });
                // Values on the bars: above short ones, inside the top of tall ones, so none leaves the 0..1 axis.
                bool inside = v > 0.9;
                var t = plt.Add.Text(v.ToString("0.000", CultureInfo.InvariantCulture), pos, inside ? v - 0.01 : v + 0.01);
                t.LabelFontSize = 10; t.LabelRotation = -90;
                t.LabelAlignment = inside ? Alignment.MiddleRight : Alignment.MiddleLeft;
                t.LabelFontColor = inside && m == 0 ? Colors.White : Colors.Black;
            }
        }
        plt.Add.Bars(bars);
        int lines = 1;
        var ticks = r.Conditions.Select((c, i) =>
        {
            var text = WrapWords((ReferenceEquals(c, best) ? "★ " : "") + c.Name, 20);
            lines = Math.Max(lines, text.Split('\n').Length);
            return new Tick(i, text);
        }).ToArray();
        plt.Axes.Bottom.TickGenerator = new ScottPlot.TickGenerators.NumericManual(ticks);
        plt.Axes.Bottom.MinimumSize = 18 * lines + 16;
        plt.Axes.Left.TickGenerator = new ScottPlot.TickGenerators.NumericManual(Enumerable.Range(0, 6).Select(k => new Tick(k * 0.2, (k * 0.2).ToString("0.0", CultureInfo.InvariantCulture))).ToArray());
        if (r.ClassPrior is double prior)
        {
            var line = plt.Add.HorizontalLine(prior);
            line.LinePattern = LinePattern.Dashed; line.Color = Colors.Gray; line.LineWidth = 1.5f;
            plt.Legend.ManualItems.Add(new LegendItem { LabelText = $"class prior {F(prior)}", LineColor = Colors.Gray, LineWidth = 1.5f, LinePattern = LinePattern.Dashed });
        }
        plt.Legend.ManualItems.Add(new LegendItem { LabelText = $"{metrics[0].Label} (solid)", FillColor = Colors.DimGray });
        plt.Legend.ManualItems.Add(new LegendItem { LabelText = $"{metrics[1].Label} (light)", FillColor = Colors.DimGray.WithAlpha(0.45) });
        plt.Legend.ManualItems.Add(new LegendItem { LabelText = "hard prompt", FillColor = hardColor });
        plt.Legend.ManualItems.Add(new LegendItem { LabelText = "soft prompt / prefix", FillColor = softColor });
        if (best is not null) plt.Legend.ManualItems.Add(new LegendItem { LabelText = "★ best hard prompt", FillColor = bestColor });
        plt.ShowLegend(Edge.Right);
        plt.Axes.SetLimitsY(0, 1);
        plt.Axes.SetLimitsX(-0.6, r.Conditions.Count - 0.4);
        plt.Title($"{metrics[0].Label} and {metrics[1].Label} per condition ({OptionsRecord.EnumName(r.Task)}, n = {r.Conditions.FirstOrDefault()?.N ?? 0})");
        plt.YLabel("score (0 to 1)");
        plt.SavePng(path, Math.Max(900, 150 * r.Conditions.Count + 220), 560);
    }

    /// <summary>Word-wraps a name into lines of about <paramref name="max"/> characters (a longer word keeps its line).</summary>
    public static string WrapWords(string s, int max)
    {
        var lines = new List<string>(); var cur = "";
        foreach (var w in s.Split(' ', StringSplitOptions.RemoveEmptyEntries))
        {
            if (cur.Length > 0 && cur.Length + 1 + w.Length > max) { lines.Add(cur); cur = w; }
            else cur = cur.Length == 0 ? w : cur + " " + w;
        }
        if (cur.Length > 0) lines.Add(cur);
        return string.Join("\n", lines);
    }
}
