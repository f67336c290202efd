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
        var config = new Option<string>("--config", "-c") { Description = "JSON config file (keys as the options below, in snake_case)." };
        var cmd = new Command("search-hard-prompt", "Search a readable hard prompt of k tokens (AutoPrompt / HotFlip: gradient-proposed token swaps, kept when they lower the target loss); writes RUN_DIR/hard_prompt.json for eval.") { config };
        var defaults = new HardPromptSearchOptions();
        var options = new List<(PropertyInfo Prop, Option Opt)>();
        foreach (var p in OptionsRecord.Properties<HardPromptSearchOptions>())
        {
            var desc = OptionsRecord.Description(p) + (p.GetValue(defaults) is { } d && !(d is bool b && !b) ? $" [default: {OptionsRecord.FormatValue(d)}]" : "");
            var name = OptionsRecord.OptionName(p);
            Option opt = p.PropertyType == typeof(int) ? new Option<int>(name) { Description = desc }
                : p.PropertyType == typeof(double) ? new Option<double>(name) { Description = desc }
                : p.PropertyType == typeof(bool) ? new Option<bool>(name) { Description = desc }
                : new Option<string>(name) { Description = desc };
            if (name == "--model") opt.Aliases.Add("-m");
            if (name == "--output") opt.Aliases.Add("-o");
            options.Add((p, opt));
            cmd.Add(opt);
        }
        cmd.SetAction((pr, cancel) =>
        {
            var o = new HardPromptSearchOptions();
            if (pr.GetValue(config) is { } cfgPath) o = OptionsRecord.FromFile(cfgPath, o);
            var given = new Dictionary<string, object?>();
            foreach (var (p, opt) in options)
                if (pr.GetResult(opt) is { Implicit: false } r) given[p.Name] = r.GetValueOrDefault<object?>();
            o = OptionsRecord.With(o, given);
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
