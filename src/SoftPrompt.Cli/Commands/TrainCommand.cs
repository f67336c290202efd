using System.CommandLine;
using System.Reflection;
using SoftPrompt.Training;

namespace SoftPrompt.Cli.Commands;

/// <summary>
/// <c>softprompt train</c>. Its options are generated from <see cref="TrainOptions"/>, so every config-file key is
/// also an option (<c>virtual_tokens</c> ⇔ <c>--virtual-tokens</c>). Precedence: defaults &lt; --config file &lt; options given.
/// </summary>
public static class TrainCommand
{
    public static Command Create()
    {
        var config = new Option<string>("--config", "-c") { Description = "JSON config file (keys as the options below, in snake_case)." };
        var resume = new Option<string>("--resume") { Description = "Continue the run in this folder from its last checkpoint." };
        var cmd = new Command("train", "Train a soft prompt (prompt tuning) or prefix (prefix tuning) for a frozen model; writes RUN_DIR/adapter/ in PEFT's format.") { config, resume };
        var defaults = new TrainOptions();
        var options = new List<(PropertyInfo Prop, Option Opt)>();
        foreach (var p in TrainOptions.Properties)
        {
            var desc = (p.GetCustomAttribute<System.ComponentModel.DescriptionAttribute>()?.Description ?? "") +
                       (p.GetValue(defaults) is { } d && !(d is bool b && !b) ? $" [default: {TrainOptions.FormatValue(d)}]" : "");
            Option opt = p.PropertyType == typeof(int) ? new Option<int>(TrainOptions.OptionName(p)) { Description = desc }
                : p.PropertyType == typeof(double) ? new Option<double>(TrainOptions.OptionName(p)) { Description = desc }
                : p.PropertyType == typeof(bool) ? new Option<bool>(TrainOptions.OptionName(p)) { Description = desc }
                : new Option<string>(TrainOptions.OptionName(p)) { Description = desc };
            options.Add((p, opt));
            cmd.Add(opt);
        }
        cmd.SetAction((pr, cancel) =>
        {
            var resumeDir = pr.GetValue(resume);
            var o = resumeDir is not null ? TrainingJob.ResumeOptions(resumeDir) : new TrainOptions();
            if (pr.GetValue(config) is { } cfgPath) o = TrainOptions.FromFile(cfgPath, o);
            var given = new Dictionary<string, object?>();
            foreach (var (p, opt) in options)
                if (pr.GetResult(opt) is { Implicit: false }) given[p.Name] = pr.GetResult(opt)!.GetValueOrDefault<object?>();
            o = o.With(given);
            if (resumeDir is not null) o = o with { Output = resumeDir };
            var reporter = new ConsoleReporter(o.LogEvery);
            var result = TrainingJob.Run(o, reporter, resume: resumeDir is not null, cancel);
            reporter.Message($"done: {result.Steps} steps ({result.StopReason}){(result.BestValidationLoss is double v ? $", best validation loss {v:F4}" : "")}");
            reporter.Message($"adapter: {Path.GetFullPath(result.AdapterDir)}");
            return Task.FromResult(0);
        });
        return cmd;
    }
}
