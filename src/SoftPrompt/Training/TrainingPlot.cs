using ScottPlot;

namespace SoftPrompt.Training;

/// <summary>Loss (and metric) curves of a run as a PNG, refreshed at each evaluation.</summary>
public static class TrainingPlot
{
    public static void Write(MetricsLog log, string path, string? metricKey = null)
    {
        var train = log.Series("train", "loss").ToArray();
        var eval = log.Series("eval", "eval_loss").ToArray();
        if (train.Length == 0 && eval.Length == 0) return;
        var plt = new Plot();
        Fonts.Default = "DejaVu Sans";
        if (train.Length > 0)
        {
            var s = plt.Add.Scatter(train.Select(p => p.Step).ToArray(), train.Select(p => p.Value).ToArray());
            s.LegendText = "train loss"; s.MarkerSize = 0; s.LineWidth = 1.5f;
        }
        if (eval.Length > 0)
        {
            var s = plt.Add.Scatter(eval.Select(p => p.Step).ToArray(), eval.Select(p => p.Value).ToArray());
            s.LegendText = "validation loss"; s.MarkerSize = 6; s.LineWidth = 2f;
        }
        if (metricKey is not null)
        {
            var m = log.Series("eval", metricKey).ToArray();
            if (m.Length > 0)
            {
                var s = plt.Add.Scatter(m.Select(p => p.Step).ToArray(), m.Select(p => p.Value).ToArray());
                s.LegendText = $"validation {metricKey} (right axis)"; s.Axes.YAxis = plt.Axes.Right; s.MarkerSize = 6;
                plt.Axes.Right.Label.Text = metricKey;
            }
        }
        plt.Title("Training");
        plt.XLabel("optimizer step");
        plt.YLabel("loss (nats / target token)");
        plt.ShowLegend(Alignment.UpperRight);
        var tmp = path + ".tmp.png";
        plt.SavePng(tmp, 900, 500);
        File.Move(tmp, path, overwrite: true);
    }
}
