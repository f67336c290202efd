using ScottPlot;

namespace SoftPrompt.Search;

/// <summary>opro.png: every scored instruction's score against its step (dots) and the best so far (line), as in the
/// OPRO paper's optimisation curves.</summary>
public static class OproPlot
{
    public static void Write(OproTrajectory t, string path)
    {
        if (t.Entries.Count == 0) return;
        bool loss = t.Metric == "neg_loss";
        double Y(double s) => loss ? -s : s;
        Fonts.Default = "DejaVu Sans"; // before the plot is made: its title and labels take the default then
        var plt = new Plot();
        var all = plt.Add.ScatterPoints(t.Entries.Select(e => (double)e.Step).ToArray(), t.Entries.Select(e => Y(e.Score)).ToArray());
        all.LegendText = "instructions scored"; all.MarkerSize = 5; all.Color = Colors.Gray.WithAlpha(0.6);
        var steps = Enumerable.Range(0, t.Step + 1).ToArray();
        var perStep = steps.Where(s => t.Entries.Any(e => e.Step == s)).ToArray();
        var stepBest = plt.Add.Scatter(perStep.Select(s => (double)s).ToArray(), perStep.Select(s => Y(t.Entries.Where(e => e.Step == s).Max(e => e.Score))).ToArray());
        stepBest.LegendText = "best of the step"; stepBest.LineWidth = 1; stepBest.MarkerSize = 4;
        double run = double.NegativeInfinity;
        var best = steps.Select(s => { foreach (var e in t.Entries.Where(e => e.Step == s)) run = Math.Max(run, e.Score); return Y(run); }).ToArray();
        var bl = plt.Add.Scatter(steps.Select(s => (double)s).ToArray(), best);
        bl.LegendText = "best so far"; bl.LineWidth = 2.5f; bl.MarkerSize = 0;
        plt.Title("OPRO optimisation");
        plt.XLabel("step");
        plt.Axes.Bottom.TickGenerator = new ScottPlot.TickGenerators.NumericAutomatic { IntegerTicksOnly = true };
        plt.YLabel(t.Metric switch { "neg_loss" => "target loss (lower is better)", "judge" => "mean judge rating (1-10)", "exact_match" => "exact match", _ => t.Metric });
        plt.ShowLegend(loss ? Alignment.UpperRight : Alignment.LowerRight);
        var tmp = path + ".tmp.png";
        plt.SavePng(tmp, 900, 500);
        File.Move(tmp, path, overwrite: true);
    }
}
