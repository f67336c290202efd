using System.CommandLine.Parsing;
using System.CommandLine;
using SoftPrompt.Distributed;
using System.Text.Encodings.Web;
using System.Text.Json;
using System.Text.RegularExpressions;
using SoftPrompt.Inference;

namespace SoftPrompt.Cli;

/// <summary>Options and helpers shared by the commands; every command is a thin call into the library.</summary>
public static class Cli
{
    public static Option<string> ModelOption() => new("--model", "-m") { Description = "Hugging Face model folder (config.json, *.safetensors, tokenizer files).", Required = true };
    public static Option<string> DeviceOption() => new("--device") { Description = "auto, cpu, cuda or cuda:N.", DefaultValueFactory = _ => "auto" };
    public static Option<string> DTypeOption() => new Option<string>("--dtype") { Description = "Weights dtype: fp32, bf16, fp16 or auto (the checkpoint's).", DefaultValueFactory = _ => "fp32" }
        .AcceptOnlyFromAmong("fp32", "bf16", "fp16", "auto");
    public static Option<string> FormatOption() => new Option<string>("--format") { Description = "Output format: text or json.", DefaultValueFactory = _ => "text" }
        .AcceptOnlyFromAmong("text", "json");
    public static Option<string> PromptOption() => new("--prompt", "-p") { Description = "Prompt adapter folder (PEFT adapter_config.json + adapter_model.safetensors), or a training run folder for its adapter/, to attach." };
    public static Option<int> ThreadsOption() => new("--threads") { Description = "CPU threads for libtorch (0 = all cores).", DefaultValueFactory = _ => 0 };

    /// <summary>Options of every --format json output; a non-finite number (a NaN score) is written as null.</summary>
    public static readonly JsonSerializerOptions Json = SoftPrompt.IO.JsonFile.WithNonFiniteAsNull(new()
    {
        WriteIndented = false,
        Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping,
        DefaultIgnoreCondition = System.Text.Json.Serialization.JsonIgnoreCondition.Never,
    });

    /// <summary>The root command with every subcommand (Program.cs and the tests use the same tree).</summary>
    /// <param name="allocatorMode">What <see cref="SoftPrompt.Runtime.TorchRuntime.ConfigureAllocator"/> did at start-up (bench reports it).</param>
    public static RootCommand BuildRoot(string allocatorMode = "default (not configured)")
    {
        var root = BuildCommands(allocatorMode);
        // On every command: weights and adapters are checked for NaN/infinity at load (one reduction per tensor);
        // --no-check skips that on models too large to spend the time.
        root.Options.Add(new Option<bool>(NoCheck) { Description = "Skip the NaN/infinity check of weights and adapters at load.", Recursive = true });
        root.Options.Add(DistributedRun.Option);
        return root;
    }

    public const string NoCheck = "--no-check";

    /// <summary>The invocation's verbosity, from the global <c>--quiet</c> / <c>--verbose</c>.</summary>
    public static Verbosity VerbosityOf(ParseResult pr) =>
        pr.GetValue(QuietOption) ? Verbosity.Quiet : pr.GetValue(VerboseOption) ? Verbosity.Verbose : Verbosity.Normal;

    /// <summary>Whether this invocation checks weights and adapters for NaN/infinity at load (not with <c>--no-check</c>).</summary>
    public static bool CheckFinite(ParseResult pr) => !pr.GetValue<bool>(NoCheck);

    static RootCommand BuildCommands(string allocatorMode) => new("softprompt: tune soft prompts (prompt tuning, prefix tuning) for frozen Hugging Face causal LMs on TorchSharp.")
    {
        QuietOption, VerboseOption,
        Commands.InspectCommand.Create(),
        Commands.ScoreCommand.Create(),
        Commands.GenerateCommand.Create(),
        Commands.TrainCommand.Create(),
        Commands.BenchCommand.Create(allocatorMode),
        Commands.SearchCommand.Create(),
        Commands.InspectPromptCommand.Create(),
        Commands.EvalCommand.Create(),
        Commands.BenchRankCommand.Create(),
        Commands.PretrainCommand.Create(),
        Commands.ServeCommand.Create(),
        Commands.ServeBenchCommand.Create(),
        Commands.GoldenCommand.Create(), // hidden: fidelity check for the GPU kit (scripts/gpu/run.sh)
    };

    /// <summary>Global: no progress and no informational messages (results, warnings and errors only).</summary>
    public static readonly Option<bool> QuietOption = new("--quiet", "-q") { Description = "Print results, warnings and errors only (no progress, no messages).", Recursive = true };
    /// <summary>Global: plain progress lines instead of a bar, one per update.</summary>
    public static readonly Option<bool> VerboseOption = new("--verbose") { Description = "Plain progress lines on every update instead of a progress bar.", Recursive = true };

    /// <summary>Exit status of a usage error (bad option, unknown command, wrong value type), as for bad input.</summary>
    public const int UsageError = 2;

    public static int Invoke(RootCommand root, string[] args)
    {
        if (args.Length == 0) { root.Parse("--help").Invoke(); return 0; } // bare `softprompt`: the help text
        var parse = root.Parse(args);
        try
        {
            if (parse.Errors.Count > 0)
            {
                // Under mpirun every rank parses the same command line: the ranks agree on the error, said once.
                if (DistributedRun.Launched(parse)) DistributedRun.Open(parse).Agree(() => throw new UsageException(UsageMessage(parse)));
                return UsageFail(parse);
            }
            if (DistributedRun.Refusal(parse) is string why)
            {
                // Every rank meets it alike, before MPI starts: rank 0 says it.
                if ((Launch.WorldRankFromEnvironment() ?? 0) == 0) Console.Error.WriteLine($"error: {why}");
                return UsageError;
            }
            return parse.Invoke(new InvocationConfiguration { EnableDefaultExceptionHandler = false });
        }
        catch (Exception e) { return DistributedRun.Fail(e, Fail) ?? Fail(e); }
        finally { DistributedRun.Close(); }
    }

    /// <summary>
    /// System.CommandLine would print its messages (some spanning lines) followed by the whole help text and exit 1;
    /// keep usage errors to one "error: ..." line on stderr like every other error, add its "did you mean"
    /// suggestions, and exit 2.
    /// </summary>
    static int UsageFail(ParseResult parse)
    {
        Console.Error.WriteLine($"error: {UsageMessage(parse)}");
        return UsageError;
    }

    static string UsageMessage(ParseResult parse)
    {
        var messages = parse.Errors.Select(e => Friendly(Regex.Replace(e.Message.Trim(), @"\s*\n\s*", " "))).Distinct().ToList();
        if (messages.Count > 1) messages.RemoveAll(m => m.StartsWith("Required command was not provided", StringComparison.Ordinal));
        return $"{string.Join(" ", messages)}{Suggestions(parse)} (see '{CommandPath(parse)} --help')";
    }

    /// <summary>A usage error (bad option, unknown command, wrong value type) met under MPI, where the ranks agree on it.</summary>
    sealed class UsageException(string message) : SoftPromptException(message);

    /// <summary>System.CommandLine's own typo corrections (edit distance over the command's options and subcommands),
    /// captured from its parse-error action and put on one line: " Did you mean --steps?".</summary>
    static string Suggestions(ParseResult parse)
    {
        if (parse.Action is not System.CommandLine.Invocation.ParseErrorAction pea) return "";
        pea.ShowHelp = false; pea.ShowTypoCorrections = true;
        var captured = new StringWriter();
        parse.Invoke(new InvocationConfiguration { Output = captured, Error = TextWriter.Null, EnableDefaultExceptionHandler = false });
        // A stray value (the '3' of a misspelled "--stpes 3") is no misspelled command: its suggestions are noise.
        bool hasSubcommands = parse.CommandResult.Command.Subcommands.Count > 0, show = false;
        var found = new List<string>();
        foreach (var line in captured.ToString().Split('\n', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries))
        {
            if (line.Contains(' ')) show = line.StartsWith("'-", StringComparison.Ordinal) || hasSubcommands;
            else if (show) found.Add(line);
        }
        return found.Count == 0 ? "" : $" Did you mean {string.Join(" or ", found.Distinct())}?";
    }

    /// <summary>"as expected type 'System.Int32'" reads "as an integer".</summary>
    static string Friendly(string message) => Regex.Replace(message, @"as expected type '([^']+)'", m => "as " + (m.Groups[1].Value switch
    {
        "System.Int32" or "System.Int64" => "an integer",
        "System.Double" or "System.Single" => "a number",
        "System.Boolean" => "true or false",
        var t => $"a {t}",
    }));

    static string CommandPath(ParseResult parse)
    {
        var names = new List<string>();
        for (SymbolResult? r = parse.CommandResult; r is CommandResult c; r = c.Parent)
            names.Insert(0, c.Command is RootCommand ? "softprompt" : c.Command.Name);
        return string.Join(" ", names);
    }

    /// <summary>
    /// Every error as one line on stderr, with the exit code: 2 for bad input (a <see cref="SoftPromptException"/>,
    /// which names the file / key / option, and the environment's refusals that name a path: permission denied, a
    /// missing or unreadable file, a full disk), 130 when cancelled, 1 for anything else (a bug or a native failure).
    /// Never a stack trace unless SOFTPROMPT_DEBUG=1.
    /// </summary>
    public static int Fail(Exception e)
    {
        var inner = e is AggregateException { InnerExceptions.Count: 1 } ae ? ae.InnerException! : e;
        while (inner is System.Reflection.TargetInvocationException or TypeInitializationException && inner.InnerException is not null) inner = inner.InnerException!;
        bool debug = Environment.GetEnvironmentVariable("SOFTPROMPT_DEBUG") == "1";
        if (inner is OperationCanceledException) { Console.Error.WriteLine("cancelled."); return 130; }
        var (code, message) = inner switch
        {
            Llm.RemoteServiceException remote => (remote.ExitCode, inner.Message), // endpoint failures: 3-6 (docs/opro.md)
            SoftPromptException => (2, inner.Message),
            UnauthorizedAccessException => (2, $"permission denied: {inner.Message}"),
            FileNotFoundException or DirectoryNotFoundException => (2, inner.Message),
            PathTooLongException => (2, inner.Message),
            IOException io when IsDiskFull(io) => (2, $"no space left on the device: {inner.Message}"),
            IOException => (2, $"I/O error: {inner.Message}"),
            System.Text.Json.JsonException => (2, $"invalid JSON: {inner.Message}"),
            OutOfMemoryException => (1, "out of memory; use a smaller model, --batch-size or --max-length"),
            _ => (1, $"internal error ({inner.GetType().Name}: {inner.Message}); please report it, with SOFTPROMPT_DEBUG=1 for the stack trace"),
        };
        Console.Error.WriteLine($"error: {OneLine(message)}");
        if (debug) Console.Error.WriteLine(inner);
        return code;
    }

    static bool IsDiskFull(IOException e) => (e.HResult & 0xFFFF) is 28 /* ENOSPC */ or 0x70 /* ERROR_DISK_FULL */ or 0x27 /* ERROR_HANDLE_DISK_FULL */;

    /// <summary>Messages are printed on one line: line breaks inside them (a nested message, a JSON excerpt) become spaces.</summary>
    public static string OneLine(string s) => Regex.Replace(s.Trim(), @"\s*[\r\n]+\s*", " ");

    /// <summary>Parses "1,2,3" (spaces allowed) into token ids.</summary>
    public static int[] ParseIds(string s, string option = "--ids")
    {
        var parts = s.Split(new[] { ',', ' ' }, StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        if (parts.Length == 0) throw new SoftPromptException($"{option}: no token ids given (expected e.g. 15496,995).");
        return parts.Select(p => int.TryParse(p, out var v) && v >= 0 ? v : throw new SoftPromptException($"{option}: '{p}' is not a token id (a non-negative integer).")).ToArray();
    }

    /// <summary>Token ids from exactly one of --text / --ids, checked against the vocabulary.</summary>
    public static int[] InputIds(LanguageModel lm, string? text, string? ids, bool addSpecialTokens = true, string option = "--text")
    {
        var idsOption = option == "--text" ? "--ids" : option + "-ids";
        if ((text is null) == (ids is null)) throw new SoftPromptException($"give exactly one of {option} or {idsOption}.");
        var result = ids is not null ? ParseIds(ids, idsOption) : lm.Encode(text!, addSpecialTokens);
        foreach (var id in result)
            if (id >= lm.Base.Config.VocabSize) throw new SoftPromptException($"token id {id} is outside the model's vocabulary (size {lm.Base.Config.VocabSize}).");
        return result;
    }

    public static Option<string> PromptTemplateOption() => new("--prompt-template") { Description = "Template the --text fills, e.g. \"Review: {review}\\nSentiment:\" (default with --prompt: the one the adapter was trained with)." };
    public static Option<bool> NoTemplateOption() => new("--no-template") { Description = "Use --text as it is, even when the --prompt adapter records a prompt template." };

    /// <summary>
    /// The text a command sends to the model: <paramref name="text"/> filled into the prompt template given, or else
    /// the one the adapter was trained with (so `--prompt RUN --text good` reads as in training); unchanged without a
    /// template, with <paramref name="raw"/>, or for --ids. A template with several fields cannot take one text.
    /// </summary>
    public static string? TemplatedText(string? text, string? adapterDir, string? template, bool raw, Verbosity verbosity = Verbosity.Normal)
    {
        if (text is null || raw) return text;
        string? source = template is not null ? "--prompt-template" : null;
        if (template is null && adapterDir is not null
            && SoftPrompt.Tuning.AdapterMetadata.TryRead(adapterDir) is { IsTrained: true, PromptTemplate: { } recorded })
        {
            template = recorded;
            source = $"the prompt template recorded in {adapterDir}";
        }
        if (template is null) return text;
        var tpl = new SoftPrompt.Data.Template(template);
        if (tpl.Fields.Count != 1)
            throw new SoftPromptException($"{source} \"{template.Replace("\n", "\\n")}\" has {tpl.Fields.Count} fields ({string.Join(", ", tpl.Fields)}); --text fills exactly one. Give the whole text with --no-template.");
        var rendered = tpl.Render(new Dictionary<string, string> { [tpl.Fields[0]] = text }, out _)!;
        ConsoleProgress.Info(verbosity, $"text through {source}: {System.Text.Json.JsonSerializer.Serialize(rendered, Json)} (--no-template to send --text as it is)");
        return rendered;
    }

    public static void WriteJson(object value) => Console.WriteLine(JsonSerializer.Serialize(value, Json));
}
