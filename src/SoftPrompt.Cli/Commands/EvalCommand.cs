using System.CommandLine;
using System.Reflection;
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
            var o = options.Bind(pr);
            o.Validate();
            // One writer per report folder for the whole evaluation; the lock also proves the place writable before
            // the model is loaded.
            using var reportLock = RunLock.AcquireSibling(o.Output!);
            var result = Evaluator.Run(o, msg => Console.Error.WriteLine(msg));
            var path = EvalReport.Write(result, o.Output!, o.Run);
            if (o.Format == "json") Console.WriteLine(JsonFile.Write(EvalReport.MetricsJson(result), Cli.Json));
            else
            {
                Console.WriteLine($"task: {result.Task} ({result.TaskReason})");
                Console.Write(EvalReport.Table(result, markdown: false));
                if (result.ClassPrior is double prior) Console.WriteLine($"class prior (majority-class accuracy): {prior:F4}");
                if (EvalReport.Verdict(result) is { } v) Console.WriteLine(v);
            }
            Console.WriteLine(path);
            return 0;
        });
        return cmd;
    }
}
