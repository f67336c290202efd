using System.Globalization;

namespace SoftPrompt.Training;

/// <summary>A live progress line on a terminal; plain log lines (every <c>logEvery</c> steps) when output is redirected.
/// The loss shown is the last step's (metrics.jsonl logs the mean per log interval). The CLI uses its own
/// Spectre.Console progress (SoftPrompt.Cli.TrainProgress); this one is for library users.</summary>
public sealed class ConsoleReporter(int logEvery = 10, TextWriter? output = null) : ITrainingReporter
{
    readonly TextWriter _out = output ?? Console.Out;
    readonly bool _live = output is null && !Console.IsOutputRedirected;
    bool _lineOpen;

    public void Step(int step, int totalSteps, double loss, double lr, double tokensPerSecond, TimeSpan eta)
    {
        string line = string.Format(CultureInfo.InvariantCulture, "step {0,5}/{1}  step loss {2,8:F4}  lr {3:0.###e+0}  {4,8:F0} tok/s  ETA {5}",
            step, totalSteps, loss, lr, tokensPerSecond, Eta(eta));
        if (_live)
        {
            int width = 30, filled = (int)Math.Round(width * (double)step / Math.Max(1, totalSteps));
            _out.Write($"\r[{new string('#', filled)}{new string('.', width - filled)}] {line}   ");
            _lineOpen = true;
        }
        else if (step % logEvery == 0 || step == totalSteps) _out.WriteLine(line);
    }

    public void Eval(int step, IReadOnlyDictionary<string, double> metrics, bool best)
    {
        EndLine();
        var parts = metrics.Where(kv => kv.Key != "step").Select(kv => string.Format(CultureInfo.InvariantCulture, "{0} {1:F4}", kv.Key, kv.Value));
        if (metrics.Count > 1) _out.WriteLine($"eval @ step {step}: {string.Join("  ", parts)}{(best ? "  (best so far)" : "")}");
    }

    public void Message(string text) { EndLine(); _out.WriteLine(text); }

    void EndLine() { if (_lineOpen) { _out.WriteLine(); _lineOpen = false; } }

    static string Eta(TimeSpan t) => t.TotalHours >= 1 ? $"{(int)t.TotalHours}h{t.Minutes:D2}m" : $"{t.Minutes}m{t.Seconds:D2}s";
}
