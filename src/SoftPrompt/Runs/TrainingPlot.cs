using ScottPlot;
using SoftPrompt.Tuning;

namespace SoftPrompt.Runs;

/// <summary>
/// Loss (and metric) curves of one or more runs as a PNG: per run, the training loss (the mean over each
/// <c>log_every</c> steps, as metrics.jsonl logs it), the validation loss, the validation metric on the right axis,
/// and the step of the selected checkpoint (the prompt that was exported) as a vertical line. The legend sits below
/// the plot, off the data. Refreshed by the trainer at each evaluation; eval's report draws every run passed to it.
/// </summary>
public static class TrainingPlot
{
    /// <summary>One run to draw: a legend name ("" for a lone run), its log and the selected checkpoint's step.</summary>
    public sealed record Run(string Name, MetricsLog Log, int? SelectedStep);

    /// <summary>The trainer's plot of its own run folder (the folder of <paramref name="path"/>).</summary>
    public static void Write(MetricsLog log, string path, string? metricKey = null) =>
        WriteRuns(new[] { new Run("", log, SelectedStep(Path.GetDirectoryName(Path.GetFullPath(path))!, preferExported: false)) }, path, metricKey);

    /// <summary>
    /// The step recorded in a run's selected adapter: the exported <c>adapter/</c> when <paramref name="preferExported"/>
    /// (what a report evaluates), else the running <c>best/</c> (during training), falling back to the other.
    /// Null when neither records a step.
    /// </summary>
    public static int? SelectedStep(string runDir, bool preferExported)
    {
        var order = preferExported ? new[] { "adapter", "best" } : new[] { "best", "adapter" };
        foreach (var sub in order)
        {
            var f = Path.Combine(runDir, sub, Tuning.Adapter.WeightsFile);
            if (!File.Exists(f)) continue;
            try
            {
                if (Tuning.AdapterMetadata.Read(Path.Combine(runDir, sub)).Step is { } step) return step;
            }
            catch (Exception e) when (e is IOException or SoftPromptException or System.Text.Json.JsonException) { /* no step to mark */ }
        }
        return null;
    }

    public static void WriteRuns(IReadOnlyList<Run> runs, string path, string? metricKey = null)
    {
        if (runs.All(r => !r.Log.Series("train", "loss").Any() && !r.Log.Series("eval", "eval_loss").Any())) return;
        Fonts.Default = "DejaVu Sans";
        var plt = new Plot();
        var palette = new ScottPlot.Palettes.Category10();
        for (int i = 0; i < runs.Count; i++)
        {
            var run = runs[i];
            var color = palette.GetColor(i);
            string Prefix(string s) => run.Name.Length == 0 ? s : $"{run.Name}: {s}";
            var train = run.Log.Series("train", "loss").ToArray();
            var eval = run.Log.Series("eval", "eval_loss").ToArray();
            if (train.Length > 0)
            {
                var s = plt.Add.Scatter(train.Select(p => p.Step).ToArray(), train.Select(p => p.Value).ToArray());
                s.LegendText = Prefix("train loss (mean per log interval)"); s.MarkerSize = 0; s.LineWidth = 1.2f; s.Color = color.WithAlpha(0.6);
            }
            if (eval.Length > 0)
            {
                var s = plt.Add.Scatter(eval.Select(p => p.Step).ToArray(), eval.Select(p => p.Value).ToArray());
                s.LegendText = Prefix("validation loss"); s.MarkerSize = 6; s.LineWidth = 2f; s.Color = color;
            }
            var key = metricKey ?? run.Log.Rows.Where(x => x["kind"]?.GetValue<string>() == "eval").SelectMany(x => x.Select(kv => kv.Key))
                .FirstOrDefault(k => k is not ("kind" or "step" or "eval_loss"));
            if (key is not null && run.Log.Series("eval", key).ToArray() is { Length: > 0 } m)
            {
                var s = plt.Add.Scatter(m.Select(p => p.Step).ToArray(), m.Select(p => p.Value).ToArray());
                s.LegendText = Prefix($"validation {key} (right axis)"); s.Axes.YAxis = plt.Axes.Right; s.MarkerSize = 6;
                s.MarkerShape = MarkerShape.OpenSquare; s.LinePattern = LinePattern.Dotted; s.Color = color;
                plt.Axes.Right.Label.Text = key;
            }
            if (run.SelectedStep is int step)
            {
                var v = plt.Add.VerticalLine(step);
                v.Color = color; v.LinePattern = LinePattern.Dashed; v.LineWidth = 1.5f;
                v.LegendText = Prefix($"selected checkpoint (step {step})");
            }
        }
        plt.Title(runs.Count == 1 ? "Training" : $"Training ({runs.Count} runs)");
        plt.XLabel("optimizer step");
        plt.YLabel("loss (nats / target token)");
        plt.ShowLegend(Edge.Bottom);
        var tmp = path + ".tmp.png";
        plt.SavePng(tmp, 1000, 560 + 22 * Math.Max(0, runs.Count - 1) * 2);
        File.Move(tmp, path, overwrite: true);
    }
}
