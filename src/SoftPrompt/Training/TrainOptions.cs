using System.ComponentModel;
using SoftPrompt.IO;

namespace SoftPrompt.Training;

/// <summary>
/// Everything a training run is configured by. Each property is a config-file key (snake_case, e.g.
/// <c>virtual_tokens</c>) and a CLI option (kebab-case, <c>--virtual-tokens</c>): the CLI generates its options from
/// this record (<see cref="OptionsRecord"/>), so the two cannot drift apart. The resolved values are written to the run folder.
/// </summary>
public sealed record TrainOptions : Data.DataFields
{
    [Description("Hugging Face model folder.")] public string? Model { get; init; }
    [Description("Training data (JSONL, TSV or CSV).")] public string? Train { get; init; }
    [Description("Validation data; without it, validation_split of the training data is held out.")] public string? Validation { get; init; }
    [Description("Fraction of the training data held out for validation when no validation file is given (0 = none).")] public double ValidationSplit { get; init; } = 0.1;
    [Description("Run folder (checkpoints, metrics, plots, adapter/).")] public string? Output { get; init; }

    [Description("prompt (prompt tuning) or prefix (prefix tuning).")] public Tuning.TuningMethod Method { get; init; } = Tuning.TuningMethod.Prompt;
    [Description("Number of virtual tokens.")] public int VirtualTokens { get; init; } = 20;
    [Description("Prompt-tuning init: random, sample_vocab, text or class_labels.")] public string Init { get; init; } = "sample_vocab";
    [Description("Text for init=text.")] public string? InitText { get; init; }
    [Description("Prefix tuning: reparameterise the prefix through an MLP (only its output is exported).")] public bool PrefixProjection { get; init; }
    [Description("Prompt tuning: train the virtual tokens through a residual MLP (Residual Prompt Tuning; only its output is exported).")] public bool PromptProjection { get; init; }
    [Description("Hidden size of the projection MLP (prefix_projection or prompt_projection).")] public int EncoderHiddenSize { get; init; } = 512;

    [Description("Append the end-of-sequence token to each target.")] public bool AddEos { get; init; }
    [Description("Also compute the loss on prompt tokens.")] public bool LossOnPrompt { get; init; }
    [Description("Maximum tokens per example (prompts are truncated from the left).")] public int MaxLength { get; init; } = 256;
    [Description("Label set for rank-classification metrics, comma-separated (default: distinct targets).")] public string? Labels { get; init; }

    [Description("adamw or adafactor.")] public string Optimizer { get; init; } = "adamw";
    [Description("Learning rate (prompt tuning wants large ones: ~0.3 with Adafactor, 1e-3..3e-2 with AdamW).")] public double Lr { get; init; } = 0.01;
    [Description("Weight decay (decoupled).")] public double WeightDecay { get; init; }
    [Description("Learning-rate schedule: constant, constant_with_warmup, linear or cosine.")] public string Schedule { get; init; } = "linear";
    [Description("Warm-up steps.")] public int WarmupSteps { get; init; }
    [Description("Optimizer steps (0 = use epochs).")] public int Steps { get; init; } = 200;
    [Description("Epochs, used when steps is 0.")] public int Epochs { get; init; } = 1;
    [Description("Examples per micro-batch.")] public int BatchSize { get; init; } = 8;
    [Description("Micro-batches per optimizer step.")] public int GradAccum { get; init; } = 1;
    [Description("Clip the gradient norm to this (0 = off).")] public double MaxGradNorm { get; init; } = 1.0;
    [Description("Batch examples of similar length together (less padding).")] public bool SortByLength { get; init; } = true;
    [Description("Random seed: same seed, same data, same result.")] public int Seed { get; init; } = 42;

    [Description("Evaluate on the validation set every N steps (0 = only at the end).")] public int EvalEvery { get; init; } = 50;
    [Description("Stop after N evaluations without improvement (0 = off).")] public int EarlyStoppingPatience { get; init; }
    [Description("Write a checkpoint every N steps (0 = at evaluations and at the end).")] public int CheckpointEvery { get; init; }
    [Description("Log a line every N steps when output is not a terminal.")] public int LogEvery { get; init; } = 10;

    [Description("auto, cpu, cuda or cuda:N.")] public string Device { get; init; } = "auto";
    [Description("Frozen weights dtype: fp32, bf16, fp16 or auto (trainable prompts stay fp32).")] public string Dtype { get; init; } = "fp32";
    [Description("CPU threads for libtorch (0 = all cores).")] public int Threads { get; init; }
    /// <summary>NaN/infinity check of the weights and adapters at load; the CLI's global --no-check turns it off.</summary>
    [IO.NotAnOption] public bool CheckFinite { get; init; } = true;

    /// <summary>Reads a JSON config file over <paramref name="baseOptions"/> (see <see cref="OptionsRecord"/>).</summary>
    public static TrainOptions FromFile(string path, TrainOptions? baseOptions = null) => OptionsRecord.FromFile(path, baseOptions ?? new TrainOptions());

    public string ToJson() => OptionsRecord.ToJson(this);

    // Ceilings on sizes, far above useful values (papers use <= 100 virtual tokens, MLPs of <= 1k-4k units): past them
    // a value is a typo, refused before a model is loaded. What fits in memory is checked against the model later
    // (TrainingJob.CheckMethodSize).
    public const int MaxVirtualTokens = 1 << 16, MaxEncoderHidden = 1 << 16, MaxBatch = 1 << 16, MaxSequence = 1 << 20;

    /// <summary>Checks values and combinations; errors name the option.</summary>
    public void Validate()
    {
        void Req(bool ok, string msg) { if (!ok) throw new SoftPromptException(msg); }
        Req(!string.IsNullOrEmpty(Model), "--model (config key 'model') is required.");
        Req(!string.IsNullOrEmpty(Train), "--train (config key 'train') is required.");
        Req(!string.IsNullOrEmpty(Output), "--output (config key 'output') is required.");
        Req(Init is "random" or "sample_vocab" or "text" or "class_labels", $"--init '{Init}': expected random, sample_vocab, text or class_labels.");
        Req(Init != "text" || !string.IsNullOrEmpty(InitText), "--init text needs --init-text.");
        Req(Optimizer is "adamw" or "adafactor", $"--optimizer '{Optimizer}': expected adamw or adafactor.");
        Req(Schedule is "constant" or "constant_with_warmup" or "linear" or "cosine", $"--schedule '{Schedule}': expected constant, constant_with_warmup, linear or cosine.");
        Req(VirtualTokens is >= 1 and <= MaxVirtualTokens, $"--virtual-tokens {VirtualTokens}: expected 1..{MaxVirtualTokens}.");
        Req(Lr > 0 && double.IsFinite(Lr), "--lr must be a positive number.");
        Req(Steps >= 0 && Epochs >= 1, "--steps must be >= 0 and --epochs >= 1.");
        Req(BatchSize is >= 1 and <= MaxBatch, $"--batch-size {BatchSize}: expected 1..{MaxBatch}.");
        Req(GradAccum is >= 1 and <= MaxBatch, $"--grad-accum {GradAccum}: expected 1..{MaxBatch}.");
        Req(double.IsFinite(WeightDecay) && WeightDecay >= 0, "--weight-decay must be a finite number >= 0.");
        Req(double.IsFinite(MaxGradNorm) && MaxGradNorm >= 0, "--max-grad-norm must be a finite number >= 0 (0 = off).");
        Req(Threads >= 0, $"--threads {Threads}: expected 0 (automatic) or a positive number.");
        Req(ValidationSplit >= 0 && ValidationSplit < 1, "--validation-split must be in [0, 1).");
        Req(MaxLength is >= 2 and <= MaxSequence, $"--max-length {MaxLength}: expected 2..{MaxSequence}.");
        foreach (var (name, v, min) in new[] { ("--warmup-steps", WarmupSteps, 0), ("--eval-every", EvalEvery, 0), ("--early-stopping-patience", EarlyStoppingPatience, 0),
                     ("--checkpoint-every", CheckpointEvery, 0), ("--log-every", LogEvery, 1) })
            Req(v >= min, $"{name} {v}: expected at least {min}.");
        Req(EncoderHiddenSize is >= 1 and <= MaxEncoderHidden, $"--encoder-hidden-size {EncoderHiddenSize}: expected 1..{MaxEncoderHidden}.");
        Req(!PrefixProjection || Method == Tuning.TuningMethod.Prefix, "--prefix-projection applies to --method prefix (use --prompt-projection for prompt tuning).");
        Req(!PromptProjection || Method == Tuning.TuningMethod.Prompt, "--prompt-projection applies to --method prompt (use --prefix-projection for prefix tuning).");
    }
}
