using System.CommandLine;
using System.Globalization;
using System.Reflection;
using SoftPrompt.Distributed;
using SoftPrompt.IO;
using SoftPrompt.Search;
using SoftPrompt.Tuning;

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
            // Under MPI the options are read and checked by every rank, agreed on: a bad one is said once, by rank 0.
            var comm = DistributedRun.Open(pr);
            var o = comm.Agree(() => options.Bind(pr, resumeDir is not null ? ResumeOptions(resumeDir) : null));
            if (resumeDir is not null) o = o with { Output = resumeDir };
            o = o with { CheckFinite = Cli.CheckFinite(pr) };
            if (o.DryRun)
            {
                // Nothing is called and no folder is written: the bounds for these settings, on stdout.
                var lines = comm.Agree(() => OproCost.Estimate(o).Lines().ToList());
                if (comm.IsWriter) foreach (var line in lines) Console.WriteLine(line);
                return Task.FromResult(0);
            }
            using var interruption = new Interruption(cancel, announce: comm.IsWriter);
            // Under MPI the searches look at the stop request between steps, every rank at once.
            var result = ConsoleProgress.Run(Cli.VerbosityOf(pr), p => { var r = new SearchReporter(p); return HardPromptSearchJob.Run(o, r, r.Message, interruption.Token, resume: resumeDir is not null, comm: comm); });
            if (!comm.IsWriter) return Task.FromResult(result.StopReason == "cancelled" ? interruption.ExitCode : 0); // rank 0 reports
            var reporter = ConsoleProgress.Results; // closing lines are results: stdout
            if (result.StopReason == "cancelled")
            {
                Console.Error.WriteLine(o.Strategy == SoftPrompt.Search.SearchStrategy.Opro
                    ? $"interrupted at step {result.Steps}; the best instruction so far, \"{result.Text.Replace("\n", "\\n")}\", is saved in {Path.GetFullPath(Path.Combine(o.Output!, HardPrompt.FileName))} and the trajectory too; continue with: softprompt search-hard-prompt --resume {Interruption.Quote(o.Output!)}"
                    : $"interrupted at step {result.Steps}; the best prompt so far, \"{result.Text}\", is saved in {Path.GetFullPath(Path.Combine(o.Output!, HardPrompt.FileName))} (eval takes it as it is; a new search needs another --output)");
                return Task.FromResult(interruption.ExitCode);
            }
            reporter.Message(result.Objective == "target_loss"
                ? string.Format(CultureInfo.InvariantCulture, "done: {0} steps ({1}), {2} swaps accepted; target loss {3:F4} -> {4:F4}",
                    result.Steps, result.StopReason, result.Accepted, result.InitialScore, result.Score)
                : string.Format(CultureInfo.InvariantCulture, "done: {0} steps ({1}), {2} instructions scored; {3} {4:F4} (zero-shot) -> {5:F4}; {6} calls, {7} tokens",
                    result.Steps, result.StopReason, result.Accepted, result.Objective, result.InitialScore, result.Score,
                    result.Details?["calls"], result.Details?["total_tokens"]));
            if (result.Objective == "judge" && result.Details?["judge_failures"]?.GetValue<int>() is int jf and > 0)
                reporter.Message($"judge: {jf} verdict(s) failed (no verdict after a reminder, or an HTTP error); left out of the means, see search_log.jsonl");
            if (result.SelectMetric is not null) reporter.Message(string.Format(CultureInfo.InvariantCulture, "held-out {0}: {1:F4}", result.SelectMetric, result.SelectValue));
            reporter.Message($"hard prompt: \"{result.Text.Replace("\n", "\\n")}\" [{string.Join(",", result.TokenIds)}]");
            reporter.Message($"written: {Path.GetFullPath(Path.Combine(o.Output!, HardPrompt.FileName))}");
            if (result.StopReason == "judge_failures")
            {
                // The best so far is written, but the judge failed too often to trust the run: a service failure's exit code.
                Console.Error.WriteLine($"error: more than --max-judge-failures {o.MaxJudgeFailures} judge verdicts failed ({result.Details?["judge_failures"]}); the run stopped at step {result.Steps} with the best instruction so far written; see search_log.jsonl for the failures.");
                return Task.FromResult(6);
            }
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

    /// <summary>The search's progress on the shared <see cref="ConsoleProgress"/> (stderr): a bar on a terminal, a
    /// line per step otherwise. Closing lines are results (stdout).</summary>
    sealed class SearchReporter(ConsoleProgress progress) : IProgress<HardPromptSearchProgress>
    {
        bool _begun;

        public void Report(HardPromptSearchProgress p)
        {
            if (!_begun) { progress.Begin("hard-prompt search", p.TotalSteps); _begun = true; }
            progress.Update(p.Step, string.Format(CultureInfo.InvariantCulture, "step {0}/{1}  best {2} {3:F4}", p.Step, p.TotalSteps, p.HigherIsBetter ? "score" : "score-set loss", p.BestScore),
                HardPromptSearchJob.Line(p), force: true);
        }

        public void Message(string text) => progress.Message(text);
    }
}
