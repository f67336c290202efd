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
            var reporter = new SearchReporter();
            var result = HardPromptSearchJob.Run(o, reporter, reporter.Message, cancel);
            reporter.Message(string.Format(CultureInfo.InvariantCulture, "done: {0} steps ({1}), {2} swaps accepted; target loss {3:F4} -> {4:F4}",
                result.Steps, result.StopReason, result.Accepted, result.InitialScore, result.Score));
            if (result.SelectMetric is not null) reporter.Message(string.Format(CultureInfo.InvariantCulture, "held-out {0}: {1:F4}", result.SelectMetric, result.SelectValue));
            reporter.Message($"hard prompt: \"{result.Text}\" [{string.Join(",", result.TokenIds)}]");
            reporter.Message($"written: {Path.GetFullPath(Path.Combine(o.Output!, HardPrompt.FileName))}");
            return Task.FromResult(0);
        });
        return cmd;
    }

    /// <summary>A live progress line on a terminal; one plain line per step when output is redirected.</summary>
    sealed class SearchReporter : IProgress<HardPromptSearchProgress>
    {
        readonly bool _live = !Console.IsOutputRedirected;
        bool _open;

        public void Report(HardPromptSearchProgress p)
        {
            var line = HardPromptSearchJob.Line(p);
            if (_live)
            {
                int width = Math.Max(40, SafeWidth() - 1);
                if (line.Length > width) line = line[..(width - 1)] + "…";
                Console.Write("\r" + line.PadRight(width));
                _open = true;
            }
            else Console.WriteLine(line);
        }

        public void Message(string text)
        {
            if (_open) { Console.WriteLine(); _open = false; }
            Console.WriteLine(text);
        }

        static int SafeWidth() { try { return Console.WindowWidth > 0 ? Console.WindowWidth : 120; } catch { return 120; } }
    }
}
