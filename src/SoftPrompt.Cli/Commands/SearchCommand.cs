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
        var resume = new Option<string>("--resume") { Description = "Continue the OPRO run in this folder from its trajectory (its config.json, then any options given, e.g. more --steps)." };
        var cmd = new Command("search-hard-prompt", "Search a hard prompt: --strategy gradient (default; AutoPrompt / HotFlip: gradient-proposed token swaps of k tokens, kept when they lower the target loss) or --strategy opro (an LLM proposes instructions, the frozen model scores them); writes RUN_DIR/hard_prompt.json for eval.") { resume };
        var options = new RecordOptions<HardPromptSearchOptions>(cmd);
        cmd.SetAction((pr, cancel) =>
        {
            var resumeDir = pr.GetValue(resume);
            var o = options.Bind(pr, resumeDir is not null ? ResumeOptions(resumeDir) : null);
            if (resumeDir is not null) o = o with { Output = resumeDir };
            var reporter = new SearchReporter();
            var result = HardPromptSearchJob.Run(o, reporter, reporter.Message, cancel, resume: resumeDir is not null);
            reporter.Message(result.Objective == "target_loss"
                ? string.Format(CultureInfo.InvariantCulture, "done: {0} steps ({1}), {2} swaps accepted; target loss {3:F4} -> {4:F4}",
                    result.Steps, result.StopReason, result.Accepted, result.InitialScore, result.Score)
                : string.Format(CultureInfo.InvariantCulture, "done: {0} steps ({1}), {2} instructions scored; {3} {4:F4} (zero-shot) -> {5:F4}; {6} calls, {7} tokens",
                    result.Steps, result.StopReason, result.Accepted, result.Objective, result.InitialScore, result.Score,
                    result.Details?["calls"], result.Details?["total_tokens"]));
            if (result.SelectMetric is not null) reporter.Message(string.Format(CultureInfo.InvariantCulture, "held-out {0}: {1:F4}", result.SelectMetric, result.SelectValue));
            reporter.Message($"hard prompt: \"{result.Text}\" [{string.Join(",", result.TokenIds)}]");
            reporter.Message($"written: {Path.GetFullPath(Path.Combine(o.Output!, HardPrompt.FileName))}");
            return Task.FromResult(0);
        });
        return cmd;
    }

    static HardPromptSearchOptions ResumeOptions(string runDir)
    {
        var path = Path.Combine(runDir, HardPromptSearchJob.ConfigFile);
        if (!File.Exists(path)) throw new SoftPromptException($"--resume {runDir}: no {HardPromptSearchJob.ConfigFile} there; is it a search run folder?");
        return OptionsRecord.FromFile(path, new HardPromptSearchOptions());
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
