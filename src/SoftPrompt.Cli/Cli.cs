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

    public static readonly JsonSerializerOptions Json = new()
    {
        WriteIndented = false,
        Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping,
        DefaultIgnoreCondition = System.Text.Json.Serialization.JsonIgnoreCondition.Never,
    };

    /// <summary>The root command with every subcommand (Program.cs and the tests use the same tree).</summary>
    public static RootCommand BuildRoot() => new("softprompt: tune soft prompts (prompt tuning, prefix tuning) for frozen Hugging Face causal LMs on TorchSharp.")
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
        Commands.ServeCommand.Create(),
        Commands.ServeBenchCommand.Create(),
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

    public static int Fail(Exception e)
    {
        var inner = e is AggregateException { InnerExceptions.Count: 1 } ae ? ae.InnerException! : e;
        while (inner is System.Reflection.TargetInvocationException { InnerException: not null } tie) inner = tie.InnerException;
        if (inner is SoftPromptException)
        {
            Console.Error.WriteLine($"error: {inner.Message}");
            if (Environment.GetEnvironmentVariable("SOFTPROMPT_DEBUG") == "1") Console.Error.WriteLine(inner);
            return 2;
        }
        if (inner is OperationCanceledException) { Console.Error.WriteLine("cancelled."); return 130; }
        Console.Error.WriteLine($"error: {inner.GetType().Name}: {inner.Message}");
        Console.Error.WriteLine(Environment.GetEnvironmentVariable("SOFTPROMPT_DEBUG") == "1" ? inner.ToString() : "(set SOFTPROMPT_DEBUG=1 for the stack trace)");
        return 1;
    }

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
