using System.ComponentModel;
using SoftPrompt.Scoring;
using SoftPrompt.Tuning;

namespace SoftPrompt.Evaluation;

/// <summary>
/// Everything an evaluation is configured by. Each property is a config-file key (snake_case, <c>few_shot</c>) and a
/// CLI option (kebab-case, <c>--few-shot</c>): <c>softprompt eval</c> generates its options from this record
/// (see <see cref="IO.OptionsRecord"/>), so the two cannot drift apart. Array properties are repeatable options.
/// </summary>
public sealed record EvalOptions : Data.DataFields
{
    [Description("Hugging Face model folder (with tokenizer files).")] public string? Model { get; init; }
    [Description("Test data (JSONL, TSV or CSV).")] public string? Data { get; init; }
    [Description("Report folder (replaced only when the evaluation succeeds).")] public string? Output { get; init; }

    [Description("Prompt adapter folder (PEFT prompt or prefix tuning), or a training run folder for its adapter/; repeatable. Its recorded data settings are the defaults. Prompt-tuning adapters also give a 'projected' hard prompt.")] public string[] Prompt { get; init; } = Array.Empty<string>();
    [Description("Hand-written instruction placed before each example; repeatable.")] public string[] Instruction { get; init; } = Array.Empty<string>();
    [Description("File of instructions, one per line (blank lines and lines starting with # are skipped).")] public string? InstructionsFile { get; init; }
    [Description("Few-shot condition with K demonstrations drawn (seeded) from --shots-from (0 = none).")] public int FewShot { get; init; }
    [Description("Data file the few-shot demonstrations are drawn from.")] public string? ShotsFrom { get; init; }
    [Description("Hard prompt JSON (hard_prompt.json) or a search run folder; repeatable.")] public string[] Searched { get; init; } = Array.Empty<string>();
    [Description("Training run folder: its curve (metrics.jsonl) becomes training.png; repeatable.")] public string[] Run { get; init; } = Array.Empty<string>();

    [Description("Label set for classification, comma-separated (default: the distinct outputs of the data, exactly as written).")] public string? Labels { get; init; }
    [Description("classification, generation or auto (classification when there are <= 20 distinct short outputs, one of them repeated).")] public TaskKind Task { get; init; } = TaskKind.Auto;
    [Description("Rank classification: divide each label's log-probability by its token count.")] public bool LengthNormalize { get; init; }

    [Description("Maximum tokens per example (prompts, hard prompt included, are truncated from the left).")] public int MaxLength { get; init; } = 256;
    [Description("Evaluate a seeded sample of N examples (0 = all).")] public int MaxExamples { get; init; }

    [Description("Generation: tokens to generate at most.")] public int MaxNewTokens { get; init; } = 16;
    [Description("Generation: 0 = greedy; > 0 samples (seeded with --seed).")] public double Temperature { get; init; }
    [Description("Generation: stop at the first newline as well as at EOS.")] public bool StopAtNewline { get; init; } = true;
    [Description("Generation: answer normalisation before comparing, comma-separated steps of lowercase, punctuation, articles, whitespace (or none).")] public string Normalize { get; init; } = "lowercase,punctuation,articles,whitespace";
    [Description("Generation: separator of several gold answers in one output field, e.g. \"|\" (default: none).")] public string? AnswerSeparator { get; init; }

    [Description("Generation: rubric file for an LLM judge metric (judge_score: mean 1-10 rating of each answer against the rubric).")] public string? Rubric { get; init; }
    [Description("Generation: OpenAI-compatible endpoint of the judge for --rubric, e.g. http://127.0.0.1:11434/v1.")] public string? JudgeEndpoint { get; init; }
    [Description("Generation: judge model name at --judge-endpoint.")] public string? JudgeModel { get; init; }
    [Description("Generation: environment variable holding the judge endpoint's API key (never logged or written).")] public string? JudgeApiKeyEnv { get; init; }
    [Description("Generation: provider of the judge: openai (an OpenAI-compatible --judge-endpoint), anthropic (the Anthropic API) or bedrock (Claude on Amazon Bedrock, the standard AWS credential chain).")] public string JudgeProvider { get; init; } = "openai";
    [Description("Generation: stop calling the judge after this many calls (0 = no limit); outputs left unjudged are counted (judge_not_called).")] public int MaxCalls { get; init; }
    [Description("Generation: the judge's verdict cache (default: OUTPUT/judge_cache.json); give an OPRO run's RUN_DIR/judge_cache.json to reuse its verdicts.")] public string? JudgeCache { get; init; }

    [Description("Examples per batch for the loss.")] public int BatchSize { get; init; } = 8;
    [Description("Random seed (few-shot draws, sampling).")] public int Seed { get; init; } = 42;
    [Description("auto, cpu, cuda or cuda:N.")] public string Device { get; init; } = "auto";
    [Description("Weights dtype: fp32, bf16, fp16 or auto.")] public string Dtype { get; init; } = "fp32";
    [Description("CPU threads for libtorch (0 = all cores).")] public int Threads { get; init; }
    /// <summary>NaN/infinity check of the weights and adapters at load; the CLI's global --no-check turns it off.</summary>
    [IO.NotAnOption] public bool CheckFinite { get; init; } = true;
    [Description("Terminal output: text (a table) or json (metrics.json on one line).")] public string Format { get; init; } = "text";

    /// <summary>Checks values, combinations and that every named file exists; errors name the option and the file.</summary>
    public void Validate()
    {
        void Req(bool ok, string msg) { if (!ok) throw new SoftPromptException(msg); }
        Req(!string.IsNullOrEmpty(Model), "--model (config key 'model') is required.");
        Req(!string.IsNullOrEmpty(Data), "--data (config key 'data') is required.");
        Req(!string.IsNullOrEmpty(Output), "--output (config key 'output') is required.");
        Req(Format is "text" or "json", $"--format '{Format}': expected text or json.");
        Req(FewShot >= 0, "--few-shot must be >= 0.");
        Req(FewShot == 0 || !string.IsNullOrEmpty(ShotsFrom), $"--few-shot {FewShot} needs --shots-from (the file the demonstrations are drawn from).");
        Req(MaxLength >= 2 && MaxExamples >= 0 && MaxNewTokens >= 1 && BatchSize >= 1, "--max-length must be >= 2, --max-examples >= 0, --max-new-tokens and --batch-size >= 1.");
        Req(double.IsFinite(Temperature) && Temperature >= 0, "--temperature must be a finite number >= 0.");
        Req(MaxNewTokens <= Inference.GenerationOptions.MaxNewTokensCeiling && BatchSize <= 1 << 16 && MaxLength <= 1 << 20,
            $"--max-new-tokens (at most {Inference.GenerationOptions.MaxNewTokensCeiling}), --batch-size (at most {1 << 16}) or --max-length (at most {1 << 20}) is too large.");
        Req(Threads >= 0, $"--threads {Threads}: expected 0 (automatic) or a positive number.");
        foreach (var step in NormalizeSteps)
            Req(step is "lowercase" or "punctuation" or "articles" or "whitespace", $"--normalize: unknown step '{step}' (expected lowercase, punctuation, articles, whitespace or none).");
        Req(!File.Exists(Output!), $"--output {Output}: is a file, expected a folder.");
        Req(File.Exists(Data!), $"--data {Data}: file not found.");
        if (ShotsFrom is not null) Req(File.Exists(ShotsFrom), $"--shots-from {ShotsFrom}: file not found.");
        if (InstructionsFile is not null) Req(File.Exists(InstructionsFile), $"--instructions-file {InstructionsFile}: file not found.");
        foreach (var s in Searched)
            Req(File.Exists(s) || File.Exists(Path.Combine(s, HardPrompt.FileName)), $"--searched {s}: no such hard prompt file{(Directory.Exists(s) ? $" ({HardPrompt.FileName} is not in that folder)" : "")}.");
        Req(JudgeProvider is "openai" or "anthropic" or "bedrock", $"--judge-provider '{JudgeProvider}': expected openai, anthropic or bedrock.");
        Req(Rubric is null || ((JudgeEndpoint is not null || JudgeProvider != "openai") && JudgeModel is not null), "--rubric needs --judge-model and --judge-endpoint (or --judge-provider anthropic|bedrock): the LLM judge.");
        Req(MaxCalls >= 0, $"--max-calls must be >= 0 (got {MaxCalls}).");
        if (Rubric is not null) Req(File.Exists(Rubric), $"--rubric {Rubric}: file not found.");
        foreach (var p in Prompt) Req(Directory.Exists(p), $"--prompt {p}: adapter folder not found.");
        foreach (var r in Run)
        {
            Req(File.Exists(Path.Combine(r, "metrics.jsonl")), $"--run {r}: no metrics.jsonl there; is it a training run folder?");
            IO.InputFile.RequireRegular(Path.Combine(r, "metrics.jsonl"), "--run");
        }
    }

    public IReadOnlyList<string> NormalizeSteps => Normalize.Trim() is "" or "none" ? Array.Empty<string>()
        : Normalize.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries);
}
