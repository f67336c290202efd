using System.CommandLine;
using System.Reflection;
using SoftPrompt.Distributed;
using SoftPrompt.Evaluation;
using SoftPrompt.IO;

namespace SoftPrompt.Cli.Commands;

/// <summary>
/// <c>softprompt eval</c>: every condition (zero-shot, instructions, few-shot, soft prompts / prefixes, projected and
/// searched hard prompts) on the same test examples, and a report folder. Options are generated from
/// <see cref="EvalOptions"/>, so every config-file key is also an option. Precedence: defaults &lt; --config &lt; options given.
/// </summary>
public static class EvalCommand
{
    public static Command Create()
    {
        var cmd = new Command("eval", "Evaluate soft prompts against hard-prompt baselines on a test set; writes a report folder (metrics.json, report.md, predictions.jsonl, charts).");
        var options = new RecordOptions<EvalOptions>(cmd);
        cmd.SetAction(pr =>
        {
            // Under MPI the options are read and checked by every rank, agreed on: a bad one is said once, by rank 0.
            var comm = DistributedRun.Open(pr);
            var o = comm.Agree(() =>
            {
                var o = options.BindWithAdapterDefaults(pr, x => x.Prompt, text => { if (comm.IsWriter) ConsoleProgress.Info(Cli.VerbosityOf(pr), text); });
                o = o with { Prompt = o.Prompt.Select(SoftPrompt.Tuning.Adapter.ResolveDir).ToArray(), CheckFinite = Cli.CheckFinite(pr) }; // a run folder stands for its adapter/
                o.Validate();
                return o;
            });
            // One writer per report folder for the whole evaluation; the lock also proves the place writable before
            // the model is loaded. Under MPI rank 0 alone takes the lock and writes the report; every rank evaluates its
            // share of the examples.
            using var reportLock = comm.Agree(() => comm.IsWriter ? RunLock.AcquireSibling(o.Output!) : null);
            var result = ConsoleProgress.Run(Cli.VerbosityOf(pr), p => Evaluator.Run(o, msg => (msg.StartsWith("warning") ? (Action<string>)p.Important : p.Message)(msg), new EvalProgressLines(p), comm));
            if (!comm.IsWriter) return 0;
            var path = EvalReport.Write(result, o.Output!, o.Run);
            if (o.Format == "json") Console.WriteLine(JsonFile.Write(EvalReport.MetricsJson(result), Cli.Json));
            else
            {
                Console.WriteLine($"task: {SoftPrompt.IO.OptionsRecord.EnumName(result.Task)} ({result.TaskReason})");
                Console.Write(EvalReport.Table(result, markdown: false));
                if (result.ClassPrior is double prior) Console.WriteLine($"class prior (majority-class accuracy): {prior:F4}");
                if (EvalReport.Verdict(result) is { } v) Console.WriteLine(v);
            }
            Console.WriteLine(path);
            return 0;
        });
        return cmd;
    }

    /// <summary>Per condition: examples done (a loss pass, then scoring or generating each example), rate and ETA.</summary>
    sealed class EvalProgressLines(ConsoleProgress progress) : IProgress<EvalProgress>
    {
        readonly System.Diagnostics.Stopwatch _clock = new();

        public void Report(EvalProgress p)
        {
            string name = $"[{p.Index + 1}/{p.Count}] {p.Condition}";
            if (p.Done == 0) { progress.Begin(name, p.Total); _clock.Restart(); }
            double rate = p.Done / 2.0 / Math.Max(1e-9, _clock.Elapsed.TotalSeconds);
            string eta = p.Done > 0 ? ConsoleProgress.Duration(TimeSpan.FromSeconds((p.Total - p.Done) * _clock.Elapsed.TotalSeconds / p.Done)) : "?";
            string phase = p.Done <= p.Examples ? "loss pass" : "scoring";
            var status = System.FormattableString.Invariant($"{name}: {phase} {(p.Done <= p.Examples ? p.Done : p.Done - p.Examples)}/{p.Examples} examples, {rate:F1} ex/s");
            progress.Update(p.Done, status, status + $", ETA {eta}", force: p.Done == p.Total);
        }
    }
}
