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
        var config = new Option<string>("--config", "-c") { Description = "JSON config file (keys as the options below, in snake_case)." };
        var cmd = new Command("eval", "Evaluate soft prompts against hard-prompt baselines on a test set; writes a report folder (metrics.json, report.md, predictions.jsonl, charts).") { config };
        var defaults = new EvalOptions();
        var options = new List<(PropertyInfo Prop, Option Opt)>();
        foreach (var p in ConfigRecord.Properties<EvalOptions>())
        {
            var d = p.GetValue(defaults);
            bool showDefault = d is not null && !(d is bool b && !b) && !(d is string[] { Length: 0 });
            var desc = ConfigRecord.Description(p) + (showDefault ? $" [default: {ConfigRecord.FormatValue(d)}]" : "");
            var name = ConfigRecord.OptionName(p);
            Option opt = p.PropertyType == typeof(int) ? new Option<int>(name) { Description = desc }
                : p.PropertyType == typeof(double) ? new Option<double>(name) { Description = desc }
                : p.PropertyType == typeof(bool) ? new Option<bool>(name) { Description = desc }
                : p.PropertyType == typeof(string[]) ? new Option<string[]>(name) { Description = desc + " (repeatable)" }
                : new Option<string>(name) { Description = desc };
            options.Add((p, opt));
            cmd.Add(opt);
        }
        cmd.SetAction(pr =>
        {
            var o = new EvalOptions();
            if (pr.GetValue(config) is { } cfgPath) o = ConfigRecord.FromFile(cfgPath, o);
            var given = new Dictionary<string, object?>();
            foreach (var (p, opt) in options)
                if (pr.GetResult(opt) is { Implicit: false } r) given[p.Name] = r.GetValueOrDefault<object?>();
            o = ConfigRecord.With(o, given);
            var result = Evaluator.Run(o, msg => Console.Error.WriteLine(msg));
            var path = EvalReport.Write(result, o.Output!, o.Run);
            if (o.Format == "json") Console.WriteLine(EvalReport.MetricsJson(result).ToJsonString(Cli.Json));
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
