using System.CommandLine;
using System.Reflection;
using SoftPrompt.IO;

namespace SoftPrompt.Cli;

/// <summary>
/// CLI options generated from an options record (see <see cref="OptionsRecord"/>): one option per property, so that
/// every config-file key is also an option. Precedence: the record's defaults &lt; <c>--config</c> file &lt; options given.
/// </summary>
public sealed class RecordOptions<T> where T : class, new()
{
    readonly List<(PropertyInfo Prop, Option Opt)> _options = new();
    public Option<string> Config { get; } = new("--config", "-c") { Description = "JSON config file (keys as the options below, in snake_case)." };

    public RecordOptions(Command cmd)
    {
        cmd.Add(Config);
        var defaults = new T();
        foreach (var p in OptionsRecord.Properties<T>())
        {
            var d = p.GetValue(defaults);
            bool showDefault = d is not null && !(d is bool b && !b) && !(d is string[] { Length: 0 });
            var desc = OptionsRecord.Description(p) + (showDefault ? $" [default: {OptionsRecord.FormatValue(d)}]" : "");
            var name = OptionsRecord.OptionName(p);
            Option opt = p.PropertyType == typeof(int) ? new Option<int>(name) { Description = desc }
                : p.PropertyType == typeof(double) ? new Option<double>(name) { Description = desc }
                : p.PropertyType == typeof(bool) ? new Option<bool>(name) { Description = desc }
                : p.PropertyType == typeof(string[]) ? new Option<string[]>(name) { Description = desc + " (repeatable)" }
                : new Option<string>(name) { Description = desc };
            // Enum settings are spelled as in config files (snake_case); the help lists them, a wrong one is an error naming the option.
            if (p.PropertyType.IsEnum) opt.CompletionSources.Add(OptionsRecord.EnumNames(p.PropertyType));
            if (name == "--model") opt.Aliases.Add("-m");
            if (name == "--output") opt.Aliases.Add("-o");
            _options.Add((p, opt));
            cmd.Add(opt);
        }
    }

    /// <summary>The options of this invocation over <paramref name="start"/> (defaults, or a resumed run's).</summary>
    public T Bind(ParseResult pr, T? start = null)
    {
        var o = start ?? new T();
        if (pr.GetValue(Config) is { } cfgPath) o = OptionsRecord.FromFile(cfgPath, o);
        var given = new Dictionary<string, object?>();
        foreach (var (p, opt) in _options)
            if (pr.GetResult(opt) is { Implicit: false } r)
            {
                given[p.Name] = r.GetValueOrDefault<object?>();
                if (p.PropertyType.IsEnum && given[p.Name] is string text) given[p.Name] = OptionsRecord.ParseEnum(p.PropertyType, text, opt.Name);
                if (given[p.Name] is double d && !double.IsFinite(d)) throw new SoftPromptException($"{opt.Name} {d}: expected a finite number.");
                WarnOnLiteralEscapes(opt.Name, given[p.Name]);
            }
        return OptionsRecord.With(o, given);
    }

    /// <summary>
    /// Like <see cref="Bind"/>, with the data settings recorded in the first of <paramref name="adapters"/> that records
    /// any (prompt and target templates, fields, columns, label words) in place of the defaults: a saved prompt is
    /// scored the way it was trained unless the config file or the command line says otherwise (Evaluator then warns).
    /// </summary>
    public T BindWithAdapterDefaults(ParseResult pr, Func<T, IEnumerable<string>> adapters, Action<string> say)
    {
        var o = Bind(pr);
        foreach (var dir in adapters(o))
        {
            var recorded = SoftPrompt.Tuning.AdapterMetadata.TryRead(dir)?.DataSettingsAsConfig() ?? new();
            if (recorded.Count == 0) continue;
            var byKey = OptionsRecord.Properties<T>().ToDictionary(OptionsRecord.Key);
            var start = OptionsRecord.With(new T(), recorded.Where(kv => byKey.ContainsKey(kv.Key)).ToDictionary(kv => byKey[kv.Key].Name, kv => (object?)kv.Value));
            var bound = Bind(pr, start);
            var used = recorded.Keys.Where(k => byKey.ContainsKey(k) && Equals(OptionsRecord.FormatValue(byKey[k].GetValue(bound)), OptionsRecord.FormatValue(byKey[k].GetValue(start))))
                .Select(k => "--" + k.Replace('_', '-')).ToList();
            if (used.Count > 0) say($"data settings recorded in {dir}: {string.Join(", ", used)} (options given win)");
            return bound;
        }
        return o;
    }

    /// <summary>A shell passes "\n" in double quotes as two characters, not a newline; templates and instructions given
    /// that way are almost always meant to hold a newline. The value is kept as given; the user is told how to get one.</summary>
    static void WarnOnLiteralEscapes(string option, object? value)
    {
        foreach (var v in value switch { string s => new[] { s }, string[] a => a, _ => Array.Empty<string>() })
            if (v.Contains("\\n", StringComparison.Ordinal) && !v.Contains('\n'))
            {
                Console.Error.WriteLine($"warning: {option} \"{v}\" holds a backslash followed by 'n' (two characters), not a newline; " +
                    "in bash write $'...\\n...', or put the value in a --config file, where \"\\n\" is a JSON newline.");
                return;
            }
    }
}
