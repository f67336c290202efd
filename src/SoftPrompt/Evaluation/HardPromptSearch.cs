using System.ComponentModel;

namespace SoftPrompt.Evaluation;

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
/// A hard-prompt search strategy. <see cref="GradientGuidedSearch"/> (HotFlip / AutoPrompt) implements it.
/// </summary>
/// <remarks>
/// How OPRO (Yang et al. 2023, "Large Language Models as Optimizers") would implement it, not done here:
/// keep a list of (instruction text, score) pairs, seeded with the initial prompt scored by
/// <see cref="IPromptObjective.Score"/>. Each step builds a meta-prompt holding the best pairs so far in ascending
/// order of quality (score shown as e.g. 100·exp(−loss) or accuracy), a few training examples, and the request
/// "write a new instruction that is different from the old ones and has a higher score"; POSTs it N times (or with
/// <c>n</c>) to <c>{endpoint}/v1/chat/completions</c> (<c>{"model": ..., "messages": [{"role": "user", "content":
/// meta}], "temperature": 1.0}</c>, bearer key from an environment variable) of any OpenAI-compatible server; parses
/// each reply's instruction text; turns it into ids with <see cref="IPromptObjective.Encode"/> (length free, not k);
/// scores all of them on a minibatch with <see cref="IPromptObjective.Loss"/>, and the best few on the score set;
/// keeps the top pairs, reports progress through the same <see cref="HardPromptSearchProgress"/>, and returns the
/// best by <see cref="IPromptObjective.Select"/> (else by score) as a <see cref="HardPromptSearchResult"/>. Its
/// options (endpoint, model, temperature, candidates per step, pairs kept) would extend
/// <see cref="HardPromptSearchOptions"/> with a <c>strategy</c> key. Only the candidate generation differs; scoring,
/// logging and the output files are shared.
/// </remarks>
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
    [Description("Examples of the score set (a seeded sample of the search data; 0 = all).")] public int ScoreExamples { get; init; } = 256;
    [Description("Held-out metric that picks the final prompt: loss, or accuracy (rank classification over the labels).")] public string SelectBy { get; init; } = "loss";
    [Description("Label set for select_by=accuracy, comma-separated (default: the distinct targets).")] public string? Labels { get; init; }
    [Description("Rows (candidates x examples) per forward pass when evaluating candidates.")] public int ForwardBatch { get; init; } = 64;
    [Description("Random seed: same seed, same data, same result.")] public int Seed { get; init; } = 42;

    [Description("Append the end-of-sequence token to each target.")] public bool AddEos { get; init; }
    [Description("Maximum tokens per example, hard prompt included (example text is truncated from the left).")] public int MaxLength { get; init; } = 256;

    [Description("auto, cpu, cuda or cuda:N.")] public string Device { get; init; } = "auto";
    [Description("Frozen weights dtype: fp32, bf16, fp16 or auto.")] public string Dtype { get; init; } = "fp32";
    [Description("CPU threads for libtorch (0 = all cores).")] public int Threads { get; init; }

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
        Req(ScoreExamples >= 0, $"--score-examples must be >= 0 (got {ScoreExamples}).");
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
    }
}
