using System.CommandLine;
using System.CommandLine.Parsing;
using System.Text.RegularExpressions;
using System.Text.Encodings.Web;
using System.Text.Json;
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
    public static Option<string> PromptOption() => new("--prompt", "-p") { Description = "Prompt adapter folder (PEFT adapter_config.json + adapter_model.safetensors) to attach." };
    public static Option<int> ThreadsOption() => new("--threads") { Description = "CPU threads for libtorch (0 = all cores).", DefaultValueFactory = _ => 0 };

    /// <summary>Options of every --format json output; a non-finite number (a NaN score) is written as null.</summary>
    public static readonly JsonSerializerOptions Json = SoftPrompt.IO.JsonFile.WithNonFiniteAsNull(new()
    {
        WriteIndented = false,
        Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping,
        DefaultIgnoreCondition = System.Text.Json.Serialization.JsonIgnoreCondition.Never,
    });

    /// <summary>The root command with every subcommand (Program.cs and the tests use the same tree).</summary>
    public static RootCommand BuildRoot()
    {
        var root = BuildCommands();
        // On every command: weights and adapters are checked for NaN/infinity at load (one reduction per tensor);
        // --no-check skips that on models too large to spend the time.
        root.Options.Add(new Option<bool>(NoCheck) { Description = "Skip the NaN/infinity check of weights and adapters at load.", Recursive = true });
        return root;
    }

    public const string NoCheck = "--no-check";

    static RootCommand BuildCommands() => new("softprompt: tune soft prompts (prompt tuning, prefix tuning) for frozen Hugging Face causal LMs on TorchSharp.")
    {
        Commands.InspectCommand.Create(),
        Commands.ScoreCommand.Create(),
        Commands.GenerateCommand.Create(),
        Commands.TrainCommand.Create(),
        Commands.BenchCommand.Create(),
        Commands.SearchCommand.Create(),
        Commands.InspectPromptCommand.Create(),
        Commands.EvalCommand.Create(),
        Commands.BenchRankCommand.Create(),
        Commands.PretrainCommand.Create(),
        Commands.GoldenCommand.Create(), // hidden: fidelity check for the GPU kit (scripts/gpu/run.sh)
    };

    public static int Invoke(RootCommand root, string[] args)
    {
        var parse = root.Parse(args);
        if (parse.Errors.Count > 0)
        {
            // System.CommandLine would print its messages (some spanning lines) followed by the whole help text;
            // keep usage errors to one "error: ..." line on stderr like every other error.
            var msg = string.Join(" ", parse.Errors.Select(e => Regex.Replace(e.Message.Trim(), @"\s*\n\s*", " ")));
            Console.Error.WriteLine($"error: {msg} (see '{CommandPath(parse)} --help')");
            return 1;
        }
        try
        {
            SoftPrompt.Models.ModelLoader.CheckFiniteByDefault = !parse.GetValue<bool>(NoCheck);
            return parse.Invoke(new InvocationConfiguration { EnableDefaultExceptionHandler = false });
        }
        catch (Exception e) { return Fail(e); }
    }

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
    public static int[] InputIds(LanguageModel lm, string? text, string? ids, bool addSpecialTokens = true)
    {
        if ((text is null) == (ids is null)) throw new SoftPromptException("give exactly one of --text or --ids.");
        var result = ids is not null ? ParseIds(ids) : lm.Encode(text!, addSpecialTokens);
        foreach (var id in result)
            if (id >= lm.Model.Config.VocabSize) throw new SoftPromptException($"token id {id} is outside the model's vocabulary (size {lm.Model.Config.VocabSize}).");
        return result;
    }

    public static void WriteJson(object value) => Console.WriteLine(JsonSerializer.Serialize(value, Json));
}
