using System.CommandLine;
using System.Globalization;
using System.Reflection;
using SoftPrompt.Evaluation;
using SoftPrompt.IO;

namespace SoftPrompt.Cli.Commands;

/// <summary>
/// <c>softprompt search-hard-prompt</c>: gradient-guided discrete search for a readable k-token prompt on the frozen
/// model. Options are generated from <see cref="HardPromptSearchOptions"/> (config key <c>prompt_length</c> ⇔
/// <c>--prompt-length</c>); precedence: defaults &lt; --config file &lt; options given.
/// </summary>
public static class SearchCommand
{
    public static Command Create()
    {
        var cmd = new Command("search-hard-prompt", "Search a readable hard prompt of k tokens (AutoPrompt / HotFlip: gradient-proposed token swaps, kept when they lower the target loss); writes RUN_DIR/hard_prompt.json for eval.");
        var options = new RecordOptions<HardPromptSearchOptions>(cmd);
        cmd.SetAction((pr, cancel) =>
        {
            var o = options.Bind(pr);
            using var interruption = new Interruption(cancel);
            var result = ConsoleProgress.Run(p => { var r = new SearchReporter(p); return HardPromptSearchJob.Run(o, r, r.Message, interruption.Token); });
            var reporter = ConsoleProgress.Results; // closing lines are results: stdout
            if (result.StopReason == "cancelled")
            {
                Console.Error.WriteLine($"interrupted at step {result.Steps}; the best prompt so far, \"{result.Text}\", is saved in {Path.GetFullPath(Path.Combine(o.Output!, HardPrompt.FileName))} (eval takes it as it is; a new search needs another --output)");
                return Task.FromResult(interruption.ExitCode);
            }
            reporter.Message(string.Format(CultureInfo.InvariantCulture, "done: {0} steps ({1}), {2} swaps accepted; target loss {3:F4} -> {4:F4}",
                result.Steps, result.StopReason, result.Accepted, result.InitialScore, result.Score));
            if (result.SelectMetric is not null) reporter.Message(string.Format(CultureInfo.InvariantCulture, "held-out {0}: {1:F4}", result.SelectMetric, result.SelectValue));
            reporter.Message($"hard prompt: \"{result.Text}\" [{string.Join(",", result.TokenIds)}]");
            reporter.Message($"written: {Path.GetFullPath(Path.Combine(o.Output!, HardPrompt.FileName))}");
            return Task.FromResult(0);
        });
        return cmd;
    }

    /// <summary>The search's progress on the shared <see cref="ConsoleProgress"/> (stderr): a bar on a terminal, a
    /// line per step otherwise. Closing lines are results (stdout).</summary>
    sealed class SearchReporter(ConsoleProgress progress) : IProgress<HardPromptSearchProgress>
    {
        bool _begun;

        public void Report(HardPromptSearchProgress p)
        {
            if (!_begun) { progress.Begin("hard-prompt search", p.TotalSteps); _begun = true; }
            progress.Update(p.Step, string.Format(CultureInfo.InvariantCulture, "step {0}/{1}  best score-set loss {2:F4}", p.Step, p.TotalSteps, p.BestScore),
                HardPromptSearchJob.Line(p), force: true);
        }

        public void Message(string text) => progress.Message(text);
    }
}
