using System.Globalization;
using SoftPrompt.Training;

namespace SoftPrompt.Cli;

/// <summary>
/// The trainer's progress on the shared <see cref="ConsoleProgress"/>: a bar on a terminal, otherwise a line every
/// <c>log_every</c> steps. The loss shown is the <b>last step's</b> mean target-token loss and is labelled so;
/// metrics.jsonl and training.png hold the mean over the <c>log_every</c> steps before each logged step.
/// </summary>
public sealed class TrainProgress(ConsoleProgress progress, int logEvery) : ITrainingReporter
{
    bool _begun;

    public void Step(int step, int totalSteps, double loss, double lr, double tokensPerSecond, TimeSpan eta)
    {
        if (!_begun) { progress.Begin("training", totalSteps); _begun = true; }
        var line = string.Format(CultureInfo.InvariantCulture, "step {0,5}/{1}  step loss {2,8:F4}  lr {3:0.###e+0}  {4,8:F0} tok/s  ETA {5}",
            step, totalSteps, loss, lr, tokensPerSecond, ConsoleProgress.Duration(eta));
        var status = string.Format(CultureInfo.InvariantCulture, "step {0}/{1}  step loss {2:F4}  {3:F0} tok/s", step, totalSteps, loss, tokensPerSecond);
        progress.Update(step, status, line, force: step % Math.Max(1, logEvery) == 0 || step == totalSteps);
    }

    public void Eval(int step, IReadOnlyDictionary<string, double> metrics, bool best)
    {
        var parts = metrics.Where(kv => kv.Key != "step").Select(kv => string.Format(CultureInfo.InvariantCulture, "{0} {1:F4}", kv.Key, kv.Value));
        if (metrics.Count > 1) progress.Message($"eval @ step {step}: {string.Join("  ", parts)}{(best ? "  (best so far)" : "")}");
    }

    public void Message(string text) => progress.Message(text);
}
