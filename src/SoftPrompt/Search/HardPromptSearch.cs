using System.ComponentModel;
using SoftPrompt.Tuning;

namespace SoftPrompt.Search;

/// <summary>
/// What a hard-prompt search optimises: candidate prompts (token ids placed where <see cref="HardPrompt.BuildPromptIds"/>
/// puts them) scored on the search data. Lower loss is better. Strategies see the task only through this interface, so
/// a gradient-free strategy (OPRO) and the gradient-guided one are scored by the very same code.
/// </summary>
public interface IPromptObjective
{
    /// <summary>Number of search examples; minibatches are indices into 0..ExampleCount-1.</summary>
    int ExampleCount { get; }
    /// <summary>Exact mean target-token loss (the trainer's loss on the target side) of each candidate on the given
    /// examples, no gradients. Candidates are evaluated together (batched), so they are compared on equal terms.</summary>
    double[] Loss(IReadOnlyList<int[]> candidates, IReadOnlyList<int> examples);
    /// <summary>The loss on the objective's fixed score set: what a result reports as its score.</summary>
    double Score(int[] ids);
    /// <summary>A held-out selection metric (higher is better: accuracy, or minus the held-out loss), or null when
    /// there is no held-out data. Used to pick the final prompt among the ones visited.</summary>
    double? Select(int[] ids);
    /// <summary>The name of <see cref="Select"/>'s metric ("accuracy", "neg_val_loss"), null without held-out data.</summary>
    string? SelectMetric { get; }
    /// <summary>Text → ids (without special tokens), for strategies that propose text.</summary>
    int[] Encode(string text);
    string Decode(IReadOnlyList<int> ids);
    /// <summary>Which token ids a prompt may use (special tokens and, with the readable filter, non-readable ones are false).</summary>
    IReadOnlyList<bool> Allowed { get; }
}

/// <summary>An objective that can also give the gradient of the minibatch loss with respect to the prompt tokens'
/// input embeddings (what HotFlip / AutoPrompt need to rank token swaps).</summary>
public interface IGradientPromptObjective : IPromptObjective
{
    /// <summary>Mean target loss on <paramref name="examples"/> and its gradient w.r.t. the k prompt embeddings, [k, hidden] fp32 (caller disposes).</summary>
    (double Loss, TorchSharp.torch.Tensor Grad) Gradient(int[] ids, IReadOnlyList<int> examples);
    /// <summary>The input embedding matrix [vocab, hidden] (frozen).</summary>
    TorchSharp.torch.Tensor EmbeddingMatrix { get; }
}

/// <summary>
/// An objective that scores whole instructions (text), higher is better, as OPRO needs: the instruction is turned into
/// hard-prompt ids at the configured position and scored on the fixed score set by the task's metric (rank-classification
/// accuracy, exact match, minus the target loss) or by an LLM judge. <see cref="TargetLossObjective"/> implements it,
/// so both strategies share the data, the score set, the prompt layout and the held-out selection.
/// </summary>
public interface IInstructionObjective : IPromptObjective
{
    /// <summary>What <see cref="ScoreInstructions"/> measures: accuracy, exact_match, neg_loss or judge.</summary>
    string Metric { get; }
    /// <summary>Examples in the fixed score set.</summary>
    int ScoreSetCount { get; }
    /// <summary>The score set's search-example indices.</summary>
    IReadOnlyList<int> ScoreSetIndices { get; }
    /// <summary>The hard-prompt ids of an instruction (empty for the empty, zero-shot instruction).</summary>
    int[] InstructionIds(string instruction);
    /// <summary>Each instruction's metric on the score set (higher is better), with a note (e.g. failed judge replies);
    /// an instruction that cannot be scored (too long for --max-length, every verdict failed, the budget used up) comes
    /// back with <see cref="InstructionScore.Failed"/> set instead of throwing, so one bad candidate never ends a run.</summary>
    InstructionScore[] ScoreInstructions(IReadOnlyList<string> instructions, CancellationToken cancel = default);
    /// <summary>The held-out selection metric of an instruction (higher is better), null without held-out data.</summary>
    double? SelectInstruction(string instruction, CancellationToken cancel = default) => Select(InstructionIds(instruction));
    /// <summary>The prompt text and target text of search example <paramref name="index"/> (for exemplars).</summary>
    (string Prompt, string Target) ExampleText(int index);
}

/// <summary>One instruction's score; <paramref name="Failures"/> counts sub-results that failed (judge verdicts that
/// could not be had). <see cref="Failed"/> (a status word: too_long_tokens, judge_failed, budget) marks an instruction
/// that was not scored, with the reason in <see cref="Note"/>. <see cref="MeanOutputTokens"/>: mean length of the
/// generated outputs (generation objectives), so a judge's length bias can be seen; <see cref="ParsedRate"/>: the share
/// of outputs the --output-parser matched; <see cref="Wrong"/>: the search examples this instruction got wrong (for
/// --exemplar-selection hardest).</summary>
public sealed record InstructionScore(double Score, int Failures = 0, string? Note = null)
{
    public string? Failed { get; init; }
    public double? MeanOutputTokens { get; init; }
    public double? ParsedRate { get; init; }
    public IReadOnlyList<int>? Wrong { get; init; }
    public static InstructionScore Fail(string status, string note) => new(double.NaN, 0, note) { Failed = status };
}

/// <summary>
/// A hard-prompt search strategy. <see cref="GradientGuidedSearch"/> (HotFlip / AutoPrompt) and
/// <see cref="OproSearch"/> (Yang et al. 2023, "Large Language Models as Optimizers") implement it; scoring,
/// logging, selection and the run folder are shared by <see cref="HardPromptSearchJob"/>.
/// </summary>
public interface IHardPromptOptimizer
{
    HardPromptSearchResult Optimize(IPromptObjective objective, HardPromptSearchOptions options, int[] initialIds,
        IProgress<HardPromptSearchProgress>? progress = null, CancellationToken cancel = default);
}

/// <summary>One step of a search, as reported to progress listeners (and written to search_log.jsonl).</summary>
public sealed record HardPromptSearchProgress
{
    public required int Step { get; init; }
    public required int TotalSteps { get; init; }
    /// <summary>Minibatch loss of the current prompt before this step's swap and after it.</summary>
    public required double LossBefore { get; init; }
    public required double Loss { get; init; }
    public required bool Accepted { get; init; }
    /// <summary>Which position changed (−1 when no swap was accepted).</summary>
    public int Position { get; init; } = -1;
    public required int[] Ids { get; init; }
    public required string Text { get; init; }
    /// <summary>Score-set loss of the current prompt, at evaluation steps only.</summary>
    public double? Score { get; init; }
    public double? SelectValue { get; init; }
    public required double BestScore { get; init; }
    public required int[] BestIds { get; init; }
    public required string BestText { get; init; }
    public required TimeSpan Elapsed { get; init; }
    public required TimeSpan Eta { get; init; }
    /// <summary>Strategies that propose many candidates per step (OPRO) list them here: one log row each.</summary>
    public IReadOnlyList<SearchCandidate>? Candidates { get; init; }
    /// <summary>Extra text for the progress line (calls, tokens used).</summary>
    public string? Status { get; init; }
    /// <summary>Whether <see cref="BestScore"/> is higher-is-better (OPRO's metrics) rather than a loss.</summary>
    public bool HigherIsBetter { get; init; }
}

/// <summary>One proposed candidate of a step: its text, its score (null when it was not scored) and what happened to it
/// (scored, initial, duplicate, parse_failed, empty, too_long, error).</summary>
public sealed record SearchCandidate(int Step, string Text, double? Score, string Status, string? Detail = null)
{
    /// <summary>Mean generated-output length in tokens (generation objectives): shown next to a judge score for length bias.</summary>
    public double? MeanOutputTokens { get; init; }
    /// <summary>Share of outputs the --output-parser matched.</summary>
    public double? ParsedRate { get; init; }
    /// <summary>The demonstrations (search-example indices) of a joint instruction + demos candidate.</summary>
    public int[]? Demos { get; init; }
}

public sealed record HardPromptSearchResult
{
    public required int[] TokenIds { get; init; }
    public required string Text { get; init; }
    /// <summary>Score-set target loss of the chosen prompt.</summary>
    public required double Score { get; init; }
    public required int[] InitialIds { get; init; }
    public required double InitialScore { get; init; }
    public double? SelectValue { get; init; }
    public string? SelectMetric { get; init; }
    public required int Steps { get; init; }
    public required int Accepted { get; init; }
    public required string StopReason { get; init; }
    /// <summary>What <see cref="Score"/> measures ("target_loss" for the gradient search; OPRO's metric otherwise).</summary>
    public string Objective { get; init; } = "target_loss";
    /// <summary>Strategy-specific facts for the run summary (calls, tokens, wall time).</summary>
    public System.Text.Json.Nodes.JsonObject? Details { get; init; }
}

/// <summary>
/// Options of <c>softprompt search-hard-prompt</c>. Each property is a config-file key (snake_case) and a CLI option
/// (kebab-case), see <see cref="IO.OptionsRecord"/>. The resolved values are written to the run folder.
/// </summary>
public sealed record HardPromptSearchOptions : Data.DataFields
{
    [Description("Hugging Face model folder (with tokenizer files).")] public string? Model { get; init; }
    [Description("Search data (JSONL, TSV or CSV).")] public string? Train { get; init; }
    [Description("Held-out data for picking the final prompt (optional).")] public string? Validation { get; init; }
    [Description("Fraction of the search data held out for picking the final prompt when no validation file is given (0 = none).")] public double ValidationSplit { get; init; }
    [Description("Run folder (hard_prompt.json, search_log.jsonl, config.json).")] public string? Output { get; init; }

    [Description("Number of hard-prompt tokens k.")] public int PromptLength { get; init; } = 8;
    [Description("Search steps (one gradient and one batch of exact candidate evaluations each).")] public int Steps { get; init; } = 50;
    [Description("Top-C gradient candidates kept per position.")] public int Candidates { get; init; } = 64;
    [Description("Candidate single-token swaps evaluated exactly per step (B).")] public int EvalCandidates { get; init; } = 32;
    [Description("Examples per minibatch.")] public int BatchSize { get; init; } = 8;
    [Description("Initial prompt text (repeated / truncated to k tokens); default: k copies of \" the\".")] public string? Init { get; init; }
    [Description("Allow every non-special token (default: only tokens that decode to letters, spaces and punctuation).")] public bool AllTokens { get; init; }
    [Description("Evaluate the current prompt on the score set (and held-out data) every N steps, and at the end.")] public int EvalEvery { get; init; } = 10;
    [Description("Examples of the score set (a seeded sample of the search data; 0 = all; -1 = 256 for gradient, 100 for opro).")] public int ScoreExamples { get; init; } = -1;

    /// <summary>The score-set size after the strategy default (-1) is resolved.</summary>
    public int ResolvedScoreExamples => ScoreExamples >= 0 ? ScoreExamples : Strategy == SearchStrategy.Opro ? 100 : 256;
    [Description("Held-out metric that picks the final prompt: loss, or accuracy (rank classification over the labels).")] public string SelectBy { get; init; } = "loss";
    [Description("Label set for select_by=accuracy, comma-separated (default: the distinct targets).")] public string? Labels { get; init; }
    [Description("Rows (candidates x examples) per forward pass when evaluating candidates.")] public int ForwardBatch { get; init; } = 64;
    [Description("Random seed: same seed, same data, same result.")] public int Seed { get; init; } = 42;

    [Description("Search strategy: gradient (token swaps proposed by the gradient) or opro (an LLM proposes whole instructions; Yang et al. 2023).")] public SearchStrategy Strategy { get; init; } = SearchStrategy.Gradient;
    [Description("OPRO: OpenAI-compatible endpoint of the optimizer LLM, e.g. http://127.0.0.1:11434/v1 (POST {endpoint}/chat/completions).")] public string? OptimizerEndpoint { get; init; }
    [Description("OPRO: model name at --optimizer-endpoint.")] public string? OptimizerModel { get; init; }
    [Description("OPRO: run the optimizer in-process on this local Hugging Face model folder instead of an endpoint.")] public string? OptimizerModelDir { get; init; }
    [Description("OPRO: name of the environment variable holding the endpoint's API key (sent as a bearer token; never logged or written).")] public string? ApiKeyEnv { get; init; }
    [Description("OPRO: instructions sampled from the optimizer per step.")] public int CandidatesPerStep { get; init; } = 8;
    [Description("OPRO: best previous instructions (with scores, ascending) shown in the meta-prompt.")] public int Keep { get; init; } = 20;
    [Description("OPRO: sampling temperature of the optimizer.")] public double Temperature { get; init; } = 1.0;
    [Description("OPRO: training exemplars shown in the meta-prompt each step.")] public int Exemplars { get; init; } = 3;
    [Description("OPRO: where the instruction goes: before_q (a line before the example's prompt text), q_begin (at its start), q_end (a line after it) or a_begin (after it, same line: after the answer cue of a template).")] public string InstructionPosition { get; init; } = "before_q";
    [Description("OPRO: a task description put at the top of the meta-prompt.")] public string? TaskDescription { get; init; }
    [Description("OPRO: an initial instruction scored at step 0 besides the zero-shot (empty) one.")] public string[] InitInstruction { get; init; } = Array.Empty<string>();
    [Description("OPRO: longest accepted instruction, in characters (longer ones are failed candidates).")] public int MaxInstructionChars { get; init; } = 300;
    [Description("OPRO: the score maximised: auto (accuracy for classification data, else loss), accuracy, exact_match, loss or judge.")] public string Objective { get; init; } = "auto";
    [Description("OPRO: rubric file for --objective judge (what the judge scores each output 1-10 against).")] public string? Rubric { get; init; }
    [Description("OPRO: endpoint of the judge LLM (default: the optimizer's).")] public string? JudgeEndpoint { get; init; }
    [Description("OPRO: judge model name (default: the optimizer's).")] public string? JudgeModel { get; init; }
    [Description("OPRO: environment variable with the judge endpoint's key (default: --api-key-env).")] public string? JudgeApiKeyEnv { get; init; }
    [Description("OPRO: concurrent optimizer / judge calls.")] public int Parallel { get; init; } = 4;
    [Description("OPRO: stop after this many optimizer + judge calls (0 = no limit).")] public int MaxCalls { get; init; }
    [Description("OPRO: stop after this many tokens (prompt + completion, as reported by the server; 0 = no limit).")] public int MaxTokensBudget { get; init; }
    [Description("OPRO: retries of a call on 408/429/5xx and transport errors (exponential backoff, honouring Retry-After).")] public int MaxRetries { get; init; } = 3;
    [Description("OPRO: seconds before one call times out.")] public int RequestTimeout { get; init; } = 120;
    [Description("OPRO: maximum tokens of one optimizer reply.")] public int OptimizerMaxTokens { get; init; } = 256;
    [Description("OPRO: best instructions (by score) also scored on the held-out data to pick the final one.")] public int ValidateTop { get; init; } = 3;
    [Description("OPRO: tokens generated per example for --objective exact_match and judge.")] public int MaxNewTokens { get; init; } = 32;
    [Description("OPRO: provider of the optimizer LLM: openai (any OpenAI-compatible --optimizer-endpoint), anthropic (the Anthropic API, key in $ANTHROPIC_API_KEY or --api-key-env) or bedrock (Claude on Amazon Bedrock, the standard AWS credential chain); --optimizer-endpoint overrides their base URL.")] public string OptimizerProvider { get; init; } = "openai";
    [Description("OPRO: provider of the judge: openai, anthropic or bedrock (default: the optimizer's when it is remote, else openai).")] public string? JudgeProvider { get; init; }
    [Description("OPRO: the run stops (best so far written, exit 6) once more judge verdicts than this have failed (no verdict after a reminder, or a per-call HTTP error).")] public int MaxJudgeFailures { get; init; } = 20;
    [Description("OPRO: how generated outputs are cut before they are compared or judged: auto (the first line for exact_match without a parser, else the whole output up to --max-new-tokens), line or none.")] public string OutputCut { get; init; } = "auto";
    [Description("OPRO: output parser for exact_match on generated text: regex:PATTERN (the first group, or the whole match) or labels (the first of --labels, or of the distinct targets, that occurs as a word); the share parsed is reported per candidate.")] public string? OutputParser { get; init; }
    [Description("OPRO: only instructions scoring at least this (in the metric's own units: accuracy 0-1, judge 1-10, minus the loss) are shown in the meta-prompt.")] public double? ScoreThreshold { get; init; }
    [Description("OPRO: which training exemplars the meta-prompt shows: random (redrawn each step), hardest (those most often wrong so far), fixed (the same seeded draw every step).")] public string ExemplarSelection { get; init; } = "random";
    [Description("OPRO: optimizer temperature over the steps: constant, linear or cosine (from --temperature at step 1 to --temperature-end at the last step).")] public string TemperatureSchedule { get; init; } = "constant";
    [Description("OPRO: the temperature at the last step for a linear or cosine --temperature-schedule.")] public double TemperatureEnd { get; init; } = 0.5;
    [Description("OPRO: stop after this many steps without a better instruction (0 = never).")] public int Patience { get; init; }
    [Description("OPRO: instructions induced from training examples at step 0 (APE-style) when no --init-instruction is given (-1 = --candidates-per-step for a chat optimizer, 0 for a base model; 0 = none).")] public int ApeProposals { get; init; } = -1;
    [Description("OPRO: few-shot demonstrations searched jointly with the instruction (0 = instruction only): the result is the instruction followed by k training examples.")] public int Demos { get; init; }
    [Description("OPRO: new demonstration sets tried per step for the best instruction when --demos > 0.")] public int DemoCandidates { get; init; } = 2;
    [Description("OPRO: print the number of optimizer and judge calls and an upper bound of their tokens for these settings, and exit without calling anything.")] public bool DryRun { get; init; }

    [Description("Append the end-of-sequence token to each target.")] public bool AddEos { get; init; }
    [Description("Maximum tokens per example, hard prompt included (example text is truncated from the left).")] public int MaxLength { get; init; } = 256;

    [Description("auto, cpu, cuda or cuda:N.")] public string Device { get; init; } = "auto";
    [Description("Frozen weights dtype: fp32, bf16, fp16 or auto.")] public string Dtype { get; init; } = "fp32";
    [Description("CPU threads for libtorch (0 = all cores).")] public int Threads { get; init; }
    /// <summary>NaN/infinity check of the weights and adapters at load; the CLI's global --no-check turns it off.</summary>
    [IO.NotAnOption] public bool CheckFinite { get; init; } = true;

    /// <summary>Checks values and combinations; errors name the option.</summary>
    public void Validate(bool needPaths = true)
    {
        void Req(bool ok, string msg) { if (!ok) throw new SoftPromptException(msg); }
        if (needPaths)
        {
            Req(!string.IsNullOrEmpty(Model), "--model (config key 'model') is required.");
            Req(!string.IsNullOrEmpty(Train), "--train (config key 'train') is required.");
            Req(!string.IsNullOrEmpty(Output), "--output (config key 'output') is required.");
        }
        Req(PromptLength >= 1, $"--prompt-length must be at least 1 (got {PromptLength}).");
        Req(Steps >= 0, $"--steps must be >= 0 (got {Steps}).");
        Req(Candidates >= 1, $"--candidates must be at least 1 (got {Candidates}).");
        Req(EvalCandidates >= 1, $"--eval-candidates must be at least 1 (got {EvalCandidates}).");
        Req(BatchSize >= 1, $"--batch-size must be at least 1 (got {BatchSize}).");
        Req(EvalEvery >= 1, $"--eval-every must be at least 1 (got {EvalEvery}).");
        Req(ScoreExamples >= -1, $"--score-examples must be >= 0 (got {ScoreExamples}).");
        Req(ForwardBatch >= 1, $"--forward-batch must be at least 1 (got {ForwardBatch}).");
        Req(SelectBy is "loss" or "accuracy", $"--select-by '{SelectBy}': expected loss or accuracy.");
        Req(ValidationSplit >= 0 && ValidationSplit < 1, "--validation-split must be in [0, 1).");
        Req(MaxLength >= 2, "--max-length must be at least 2.");
        Req(Init is null || Init.Length > 0, "--init must not be empty.");
        // Ceilings (sizes past them are typos; refused before the model is loaded).
        const int Big = 1 << 16;
        foreach (var (name, v) in new[] { ("--prompt-length", PromptLength), ("--candidates", Candidates), ("--eval-candidates", EvalCandidates), ("--batch-size", BatchSize), ("--forward-batch", ForwardBatch) })
            Req(v <= Big, $"{name} {v}: expected at most {Big}.");
        Req(MaxLength <= 1 << 20, $"--max-length {MaxLength}: expected at most {1 << 20}.");
        Req(Threads >= 0, $"--threads {Threads}: expected 0 (automatic) or a positive number.");
        if (Strategy != SearchStrategy.Opro) return;
        Req(OptimizerProvider is "openai" or "anthropic" or "bedrock", $"--optimizer-provider '{OptimizerProvider}': expected openai, anthropic or bedrock.");
        Req(JudgeProvider is null or "openai" or "anthropic" or "bedrock", $"--judge-provider '{JudgeProvider}': expected openai, anthropic or bedrock.");
        if (OptimizerProvider == "openai")
        {
            Req(OptimizerEndpoint is null != (OptimizerModelDir is null), "--strategy opro needs exactly one of --optimizer-endpoint (an OpenAI-compatible server) or --optimizer-model-dir (a local model).");
            Req(OptimizerEndpoint is null || !string.IsNullOrWhiteSpace(OptimizerModel), "--optimizer-model is required with --optimizer-endpoint.");
        }
        else
        {
            Req(OptimizerModelDir is null, $"--optimizer-model-dir is a local model; --optimizer-provider {OptimizerProvider} is remote: give one or the other.");
            Req(!string.IsNullOrWhiteSpace(OptimizerModel), $"--optimizer-provider {OptimizerProvider} needs --optimizer-model (e.g. {(OptimizerProvider == "anthropic" ? "claude-sonnet-4-5" : "anthropic.claude-3-5-haiku-20241022-v1:0")}).");
        }
        Req(MaxJudgeFailures >= 0, $"--max-judge-failures must be >= 0 (got {MaxJudgeFailures}).");
        Req(OutputCut is "auto" or "line" or "none", $"--output-cut '{OutputCut}': expected auto, line or none.");
        Req(OutputParser is null || OutputParser == "labels" || (OutputParser.StartsWith("regex:", StringComparison.Ordinal) && OutputParser.Length > 6),
            $"--output-parser '{OutputParser}': expected regex:PATTERN or labels.");
        if (OutputParser is not null && OutputParser.StartsWith("regex:", StringComparison.Ordinal))
            try { _ = new System.Text.RegularExpressions.Regex(OutputParser[6..]); }
            catch (ArgumentException e) { throw new SoftPromptException($"--output-parser: invalid regular expression ({e.Message})."); }
        Req(OutputParser is null || Objective == "exact_match", "--output-parser applies to --objective exact_match (generate, parse, compare).");
        Req(ScoreThreshold is null || double.IsFinite(ScoreThreshold.Value), "--score-threshold must be a finite number.");
        Req(ExemplarSelection is "random" or "hardest" or "fixed", $"--exemplar-selection '{ExemplarSelection}': expected random, hardest or fixed.");
        Req(TemperatureSchedule is "constant" or "linear" or "cosine", $"--temperature-schedule '{TemperatureSchedule}': expected constant, linear or cosine.");
        Req(TemperatureEnd >= 0 && TemperatureEnd <= 2, $"--temperature-end must be in [0, 2] (got {TemperatureEnd}).");
        Req(Patience >= 0, $"--patience must be >= 0 (got {Patience}).");
        Req(ApeProposals >= -1 && ApeProposals <= 64, $"--ape-proposals must be -1 (auto) or in [0, 64] (got {ApeProposals}).");
        Req(Demos >= 0 && Demos <= 32, $"--demos must be in [0, 32] (got {Demos}).");
        Req(DemoCandidates >= 0 && DemoCandidates <= 64, $"--demo-candidates must be in [0, 64] (got {DemoCandidates}).");
        Req(Demos == 0 || InstructionPosition is "before_q" or "q_begin", "--demos needs the instruction before the example (--instruction-position before_q or q_begin): the demonstrations go before it.");
        static bool HttpUrl(string? u) => u is null || (Uri.TryCreate(u, UriKind.Absolute, out var uri) && uri.Scheme is "http" or "https");
        Req(HttpUrl(OptimizerEndpoint), $"--optimizer-endpoint '{OptimizerEndpoint}': expected an http:// or https:// URL such as http://127.0.0.1:11434/v1.");
        Req(HttpUrl(JudgeEndpoint), $"--judge-endpoint '{JudgeEndpoint}': expected an http:// or https:// URL such as http://127.0.0.1:11434/v1.");
        foreach (var (opt, env) in new[] { ("--api-key-env", ApiKeyEnv), ("--judge-api-key-env", JudgeApiKeyEnv) })
            Req(env is null || !string.IsNullOrEmpty(Environment.GetEnvironmentVariable(env)), $"{opt} {env}: that environment variable is not set or empty.");
        Req(CandidatesPerStep >= 1, $"--candidates-per-step must be at least 1 (got {CandidatesPerStep}).");
        Req(Keep >= 1, $"--keep must be at least 1 (got {Keep}).");
        Req(Temperature >= 0 && Temperature <= 2, $"--temperature must be in [0, 2] (got {Temperature}).");
        Req(Exemplars >= 0, $"--exemplars must be >= 0 (got {Exemplars}).");
        Req(InstructionPosition is "before_q" or "q_begin" or "q_end" or "a_begin", $"--instruction-position '{InstructionPosition}': expected before_q, q_begin, q_end or a_begin.");
        Req(MaxInstructionChars >= 1, $"--max-instruction-chars must be at least 1 (got {MaxInstructionChars}).");
        Req(Objective is "auto" or "accuracy" or "exact_match" or "loss" or "judge", $"--objective '{Objective}': expected auto, accuracy, exact_match, loss or judge.");
        Req(Objective != "judge" || Rubric is not null, "--objective judge needs --rubric FILE.");
        Req(Rubric is null || File.Exists(Rubric), $"--rubric {Rubric}: file not found.");
        Req(JudgeEndpoint is null || JudgeModel is not null || OptimizerModel is not null, "--judge-endpoint needs --judge-model.");
        Req(Objective != "judge" || JudgeEndpoint is not null || OptimizerEndpoint is not null || OptimizerModelDir is not null || (JudgeProvider ?? OptimizerProvider) != "openai",
            "--objective judge needs a judge: --judge-endpoint, or --judge-provider anthropic|bedrock, or the optimizer's.");
        Req(Parallel >= 1, $"--parallel must be at least 1 (got {Parallel}).");
        Req(MaxCalls >= 0, $"--max-calls must be >= 0 (got {MaxCalls}).");
        Req(MaxTokensBudget >= 0, $"--max-tokens-budget must be >= 0 (got {MaxTokensBudget}).");
        Req(MaxRetries >= 0 && MaxRetries <= 10, $"--max-retries must be in [0, 10] (got {MaxRetries}).");
        Req(RequestTimeout >= 1, $"--request-timeout must be at least 1 second (got {RequestTimeout}).");
        Req(OptimizerMaxTokens >= 1, $"--optimizer-max-tokens must be at least 1 (got {OptimizerMaxTokens}).");
        Req(ValidateTop >= 1, $"--validate-top must be at least 1 (got {ValidateTop}).");
        Req(MaxNewTokens >= 1, $"--max-new-tokens must be at least 1 (got {MaxNewTokens}).");
        foreach (var i in InitInstruction) Req(i.Trim().Length > 0 && i.Length <= MaxInstructionChars, $"--init-instruction \"{i}\": empty or longer than --max-instruction-chars {MaxInstructionChars}.");
    }
}
