using System.Diagnostics;
using System.Runtime.InteropServices;
using System.Text.Json.Nodes;
using System.Text.Json;
using SoftPrompt.IO;
using SoftPrompt.Models;
using SoftPrompt.Optimization;
using TorchSharp;
using static TorchSharp.torch;

namespace SoftPrompt.Pretraining;

/// <summary>Everything that defines a pretraining run; stored in RUN/options.json on the first start and reused on resume.</summary>
public sealed record PretrainOptions
{
    public LlamaShape Shape { get; init; } = new();
    public int SeqLen { get; init; } = 256;
    /// <summary>Sequences per micro-batch; a step is <see cref="Accum"/> micro-batches.</summary>
    public int MicroBatch { get; init; } = 16;
    public int Accum { get; init; } = 2;
    /// <summary>Planned token budget: the cosine schedule reaches <see cref="LrMin"/> here.</summary>
    public long TotalTokens { get; init; } = 50_000_000;
    public long WarmupTokens { get; init; } = 1_000_000;
    public double LrMax { get; init; } = 2e-3;
    public double LrMin { get; init; } = 2e-4;
    public double WeightDecay { get; init; } = 0.1;
    public double Beta1 { get; init; } = 0.9;
    public double Beta2 { get; init; } = 0.95;
    public double GradClip { get; init; } = 1.0;
    /// <summary>bf16 (fp32 master weights and AdamW state; matmuls in bf16; residual stream fp32) or fp32.</summary>
    public string Compute { get; init; } = "bf16";
    public long Seed { get; init; } = 1234;
    public int LogEverySteps { get; init; } = 10;
    public int EvalEverySteps { get; init; } = 100;
    /// <summary>Validation windows used by the periodic evaluation (the export evaluates all of them).</summary>
    public int EvalWindows { get; init; } = 128;
    public double CheckpointMinutes { get; init; } = 5;

    public int TokensPerStep => SeqLen * MicroBatch * Accum;
    public long TotalSteps => (TotalTokens + TokensPerStep - 1) / TokensPerStep;
    public long WarmupSteps => Math.Max(1, WarmupTokens / TokensPerStep);

    /// <summary>Linear warm-up, then cosine decay from LrMax to LrMin at TotalSteps (LrMin afterwards): the project's
    /// one schedule (<see cref="LearningRateSchedule"/>, "cosine" with a floor). Before 2026-12-06 pretraining had its
    /// own copy whose warm-up started one step higher ((step + 1) / warm-up steps); the shipped model was trained with it.</summary>
    public double LearningRate(long step) => LearningRateSchedule.At("cosine", step, TotalSteps, WarmupSteps, LrMax, LrMax > 0 ? LrMin / LrMax : 0);

    public static readonly JsonSerializerOptions Json = new() { WriteIndented = true, IncludeFields = false };
}

/// <summary>Mutable progress, saved in the checkpoint's metadata.</summary>
public sealed record TrainerState
{
    public long Step { get; set; }
    public long TokensSeen { get; set; }
    public int Epoch { get; set; }
    /// <summary>Next window in this epoch's permutation.</summary>
    public long Cursor { get; set; }
    public double TrainSeconds { get; set; }
    public double? LastValLoss { get; set; }
}

/// <summary>Token windows of a uint16 stream: window i is ids[i*T .. i*T+T] (T inputs, T next-token targets).</summary>
public sealed class TokenWindows
{
    readonly ushort[] _ids;
    public int SeqLen { get; }
    public long Count { get; }
    public TokenWindows(ushort[] ids, int seqLen) { _ids = ids; SeqLen = seqLen; Count = (ids.Length - 1) / seqLen; }

    /// <summary>Writes windows into a [B, T+1] int64 buffer.</summary>
    public void Fill(long[] buffer, IReadOnlyList<long> windows)
    {
        int w = SeqLen + 1;
        for (int b = 0; b < windows.Count; b++)
        {
            long start = windows[b] * SeqLen;
            for (int j = 0; j < w; j++) buffer[b * w + j] = _ids[start + j];
        }
    }

    /// <summary>The epoch's order of windows: a Fisher-Yates shuffle seeded by (seed, epoch).</summary>
    public long[] Permutation(long seed, int epoch)
    {
        var p = new long[Count];
        for (long i = 0; i < Count; i++) p[i] = i;
        // SplitMix64, not System.Random(HashCode.Combine(...)): HashCode is randomised per process, which made the
        // order (and so a resumed run) differ from process to process.
        var rng = Data.SplitMix64.For(seed, 0x5eed0000L + epoch);
        for (long i = Count - 1; i > 0; i--) { long j = (long)(rng.Next() % (ulong)(i + 1)); (p[i], p[j]) = (p[j], p[i]); }
        return p;
    }
}

/// <summary>
/// Full-parameter pretraining of a Llama-shaped <see cref="CausalLM"/> on a cached token stream, with fp32 master
/// weights and AdamW state, bf16 matmuls, a chunked loss (no [tokens x vocab] fp32 logits tensor at once), one dispose
/// scope per micro-batch, stable shapes, atomic checkpoints (weights + AdamW moments + step + data position) and a
/// JSONL log of loss, throughput and held-out perplexity.
/// </summary>
public sealed class Pretrainer : IDisposable
{
    public PretrainOptions Options { get; }
    public TrainerState State { get; private set; } = new();
    public Dictionary<string, Tensor> Weights { get; }
    readonly Optimization.AdamW _opt;
    readonly ModelConfig _cfg;
    readonly ScalarType _compute;
    readonly TokenWindows _train, _val;
    long[] _perm;
    readonly long[] _batchBuf;

    public const string CheckpointFile = "checkpoint.safetensors", OptionsFile = "options.json", LogFile = "log.jsonl";

    public Pretrainer(PretrainOptions o, ushort[] train, ushort[] val)
    {
        Options = o;
        _cfg = o.Shape.ToModelConfig();
        _compute = o.Compute switch { "bf16" => ScalarType.BFloat16, "fp32" => ScalarType.Float32, _ => throw new SoftPromptException($"compute '{o.Compute}': expected bf16 or fp32.") };
        if (o.SeqLen > o.Shape.MaxPositions) throw new SoftPromptException($"seq len {o.SeqLen} exceeds max positions {o.Shape.MaxPositions}.");
        Weights = o.Shape.InitWeights(o.Seed);
        _opt = new Optimization.AdamW(Weights.OrderBy(kv => kv.Key, StringComparer.Ordinal).Select(kv => (kv.Key, kv.Value)).ToList(),
            o.Beta1, o.Beta2, weightDecay: o.WeightDecay, decay: n => !LlamaShape.IsNormWeight(n));
        _train = new TokenWindows(train, o.SeqLen);
        _val = new TokenWindows(val, o.SeqLen);
        if (_train.Count < o.MicroBatch) throw new SoftPromptException("training data is smaller than one batch.");
        _perm = _train.Permutation(o.Seed, 0);
        _batchBuf = new long[o.MicroBatch * (o.SeqLen + 1)];
    }

    public long TrainTokens => _train.Count * _train.SeqLen;

    // ------------------------------------------------------------------ math

    /// <summary>Mean next-token loss of a [B, T+1] id batch (fp32 scalar, differentiable w.r.t. the fp32 weights).</summary>
    public Tensor Loss(Tensor ids)
    {
        long B = ids.shape[0], T = ids.shape[1] - 1;
        var x = ids.narrow(1, 0, T); var y = ids.narrow(1, 1, T).reshape(-1);
        var embed = Weights["model.embed_tokens.weight"];
        // Matmul weights in the compute dtype (differentiable casts of the fp32 masters); the input embedding lookup
        // reads the fp32 table so that its gradient is accumulated in fp32 (as autocast leaves embeddings in fp32).
        var w = _compute == ScalarType.Float32 ? Weights : Weights.ToDictionary(kv => kv.Key, kv => kv.Value.to(_compute));
        using var model = CausalLM.ForTraining(_cfg, w, ScalarType.Float32);
        var inputs = embed.index_select(0, x.reshape(-1)).view(B, T, -1);
        var h = model.Forward(new ForwardArgs { InputsEmbeds = inputs }).Hidden.reshape(B * T, -1);
        // Loss over row chunks: each chunk's fp32 logits are <= 16 MB, so no multi-hundred-MB tensor is allocated.
        long rows = Math.Max(64, (4L << 20) / _cfg.VocabSize);
        Tensor? total = null;
        for (long r = 0; r < B * T; r += rows)
        {
            long n = Math.Min(rows, B * T - r);
            var logits = model.Logits(h.narrow(0, r, n));
            var l = torch.nn.functional.cross_entropy(logits, y.narrow(0, r, n), reduction: nn.Reduction.Sum);
            total = total is null ? l : total + l;
        }
        return total! / (B * T);
    }

    /// <summary>Mean validation loss over the first <paramref name="windows"/> validation windows (all when null).</summary>
    public double Evaluate(int? windows = null)
    {
        long n = Math.Min(windows ?? long.MaxValue, _val.Count);
        if (n == 0) return double.NaN;
        double sum = 0; long count = 0;
        using var _ = torch.no_grad();
        var buf = new long[Options.MicroBatch * (Options.SeqLen + 1)];
        for (long i = 0; i < n; i += Options.MicroBatch)
        {
            using var scope = torch.NewDisposeScope();
            var idx = new List<long>();
            for (long j = i; j < Math.Min(n, i + Options.MicroBatch); j++) idx.Add(j);
            _val.Fill(buf, idx);
            var ids = torch.tensor(buf.AsSpan(0, idx.Count * (Options.SeqLen + 1)).ToArray(), new long[] { idx.Count, Options.SeqLen + 1 });
            sum += Loss(ids).item<float>() * idx.Count * Options.SeqLen;
            count += idx.Count * Options.SeqLen;
        }
        return sum / count;
    }

    /// <summary>One optimizer step over Accum micro-batches; returns (mean loss, grad norm, lr).</summary>
    public (double Loss, double GradNorm, double Lr) TrainStep()
    {
        var o = Options;
        double lossSum = 0;
        for (int a = 0; a < o.Accum; a++)
        {
            using var scope = torch.NewDisposeScope();
            var idx = NextWindows(o.MicroBatch);
            _train.Fill(_batchBuf, idx);
            var ids = torch.tensor(_batchBuf, new long[] { o.MicroBatch, o.SeqLen + 1 });
            var loss = Loss(ids);
            (loss / o.Accum).backward();
            lossSum += loss.item<float>();
        }
        double lr = CurrentLr();
        double norm = double.NaN; // logged; only known when clipping is on
        if (o.GradClip > 0)
            using (var clip = torch.NewDisposeScope())
                norm = Optimization.GradientClipping.ClipGradNorm(Weights.Values, o.GradClip).item<float>();
        _opt.Step(lr);
        _opt.ZeroGrad();
        State.Step++;
        State.TokensSeen += o.TokensPerStep;
        return (lossSum / o.Accum, norm, lr);
    }

    List<long> NextWindows(int n)
    {
        var list = new List<long>(n);
        while (list.Count < n)
        {
            if (State.Cursor >= _perm.Length) { State.Epoch++; State.Cursor = 0; _perm = _train.Permutation(Options.Seed, State.Epoch); }
            list.Add(_perm[State.Cursor++]);
        }
        return list;
    }

    // ------------------------------------------------------------------ checkpoints

    public void SaveCheckpoint(string runDir)
    {
        var t = new Dictionary<string, Tensor>();
        foreach (var (k, v) in Weights) t["param/" + k] = v;
        var optState = _opt.StateDict();
        foreach (var (k, v) in optState) t["optim/" + k] = v;
        var meta = new Dictionary<string, string>
        {
            ["format"] = "pt",
            ["trainer_state"] = JsonSerializer.Serialize(State),
            ["config"] = Options.Shape.ToHfConfig().ToJsonString(),
        };
        try { SafeTensors.Save(Path.Combine(runDir, CheckpointFile), t, meta); }
        finally { foreach (var v in optState.Values) v.Dispose(); }
    }

    /// <summary>Restores weights, AdamW moments, step and data position; false when the run has no checkpoint yet.</summary>
    public bool TryLoadCheckpoint(string runDir)
    {
        var path = Path.Combine(runDir, CheckpointFile);
        if (!File.Exists(path)) return false;
        var header = SafeTensors.ReadHeader(path);
        var loaded = SafeTensors.Load(path);
        try
        {
            using var _ = torch.no_grad();
            foreach (var (k, v) in Weights) v.copy_(loaded["param/" + k]);
            _opt.LoadStateDict(loaded.Where(kv => kv.Key.StartsWith("optim/", StringComparison.Ordinal)).ToDictionary(kv => kv.Key["optim/".Length..], kv => kv.Value));
        }
        finally { foreach (var v in loaded.Values) v.Dispose(); }
        State = JsonSerializer.Deserialize<TrainerState>(header.Metadata["trainer_state"])!;
        _perm = _train.Permutation(Options.Seed, State.Epoch);
        return true;
    }

    /// <summary>
    /// Starts from an exported model folder instead of a checkpoint (a later session continuing a run whose checkpoint
    /// is gone): its fp32 weights, the step and token count of its eval_results.json (so the LR schedule and the data
    /// position continue), and fresh AdamW moments, with the learning rate re-warmed over <paramref name="rewarmSteps"/>.
    /// </summary>
    public void InitFrom(string modelDir, long rewarmSteps)
    {
        var file = Path.Combine(modelDir, "model.safetensors");
        var results = Path.Combine(modelDir, "eval_results.json");
        if (!File.Exists(file) || !File.Exists(results)) throw new SoftPromptException($"--init-from {modelDir}: needs model.safetensors and eval_results.json (an export of this program).");
        var loaded = SafeTensors.Load(file);
        try
        {
            using var _ = torch.no_grad();
            foreach (var (k, v) in Weights)
            {
                if (!loaded.TryGetValue(k, out var t) || !t.shape.SequenceEqual(v.shape))
                    throw new SoftPromptException($"--init-from {file}: no tensor '{k}' of shape [{string.Join(", ", v.shape)}]; was it exported with other shape options?");
                v.copy_(t);
            }
        }
        finally { foreach (var v in loaded.Values) v.Dispose(); }
        var r = JsonNode.Parse(File.ReadAllText(results))!;
        State.Step = r["steps"]!.GetValue<long>();
        State.TokensSeen = r["tokens_seen"]!.GetValue<long>();
        State.TrainSeconds = r["train_seconds"]?.GetValue<double>() ?? 0;
        long windows = State.TokensSeen / Options.SeqLen;
        State.Epoch = (int)(windows / _train.Count);
        State.Cursor = windows % _train.Count;
        _perm = _train.Permutation(Options.Seed, State.Epoch);
        _rewarmFrom = State.Step;
        _rewarmSteps = Math.Max(0, rewarmSteps);
    }

    long _rewarmFrom, _rewarmSteps;

    /// <summary>The schedule's learning rate, scaled down linearly for the first steps after <see cref="InitFrom"/>.</summary>
    double CurrentLr()
    {
        double lr = Options.LearningRate(State.Step);
        long since = State.Step - _rewarmFrom;
        return _rewarmSteps > 0 && since < _rewarmSteps ? lr * (since + 1) / _rewarmSteps : lr;
    }

    /// <summary>Reads the fp32 model weights (HF names) of a checkpoint, and its config.json object.</summary>
    public static (Dictionary<string, Tensor> Weights, JsonObject Config, TrainerState State) ReadCheckpointWeights(string runDir)
    {
        var path = Path.Combine(runDir, CheckpointFile);
        var header = SafeTensors.ReadHeader(path);
        var w = SafeTensors.Load(path, n => n.StartsWith("param/", StringComparison.Ordinal))
            .ToDictionary(kv => kv.Key["param/".Length..], kv => kv.Value);
        return (w, (JsonObject)JsonNode.Parse(header.Metadata["config"])!, JsonSerializer.Deserialize<TrainerState>(header.Metadata["trainer_state"])!);
    }

    // ------------------------------------------------------------------ the loop

    /// <summary>
    /// Trains until the planned budget, <paramref name="maxMinutes"/> of wall time, <paramref name="cancel"/>, or a file
    /// named STOP in the run folder; checkpoints every CheckpointMinutes and on the way out.
    /// </summary>
    public void Run(string runDir, double maxMinutes, CancellationToken cancel, Action<string>? print = null)
    {
        print ??= Console.WriteLine;
        var o = Options;
        Directory.CreateDirectory(runDir);
        var logPath = Path.Combine(runDir, LogFile);
        var wall = Stopwatch.StartNew();
        var sinceCkpt = Stopwatch.StartNew();
        var window = Stopwatch.StartNew();
        long windowTokens = 0; double windowLoss = 0; int windowSteps = 0;
        double flops = o.Shape.TrainFlopsPerToken(o.SeqLen);
        print($"model {o.Shape.Parameters / 1e6:F2} M parameters, {flops / 1e6:F1} MFLOP/token; {o.TokensPerStep} tokens/step, " +
              $"{o.TotalSteps} steps planned ({o.TotalTokens / 1e6:F1} M tokens), warm-up {o.WarmupSteps} steps; train data {TrainTokens / 1e6:F2} M tokens");
        if (State.Step == 0 && State.LastValLoss is null)
        {
            var v0 = Evaluate(o.EvalWindows);
            State.LastValLoss = v0;
            Log(logPath, new { step = 0L, tokens = 0L, val_loss = v0, val_ppl = Math.Exp(v0), elapsed_s = 0.0 });
        }
        while (State.TokensSeen < o.TotalTokens)
        {
            if (cancel.IsCancellationRequested || File.Exists(Path.Combine(runDir, "STOP")) || (maxMinutes > 0 && wall.Elapsed.TotalMinutes >= maxMinutes))
                break;
            var stepWatch = Stopwatch.StartNew();
            var (loss, norm, lr) = TrainStep();
            State.TrainSeconds += stepWatch.Elapsed.TotalSeconds;
            if (!double.IsFinite(loss)) throw new SoftPromptException($"loss became {loss} at step {State.Step}; the last checkpoint is intact.");
            windowTokens += o.TokensPerStep; windowLoss += loss; windowSteps++;
            if (State.Step % o.LogEverySteps == 0)
            {
                double tps = windowTokens / window.Elapsed.TotalSeconds;
                Log(logPath, new { step = State.Step, tokens = State.TokensSeen, loss = windowLoss / windowSteps, lr, grad_norm = norm, tokens_per_s = tps, gflops = tps * flops / 1e9, elapsed_s = State.TrainSeconds });
                print($"step {State.Step} tokens {State.TokensSeen / 1e6:F2}M loss {windowLoss / windowSteps:F4} lr {lr:E2} |g| {norm:F2} {tps:F0} tok/s ({tps * flops / 1e9:F0} GFLOP/s)");
                window.Restart(); windowTokens = 0; windowLoss = 0; windowSteps = 0;
            }
            if (State.Step % o.EvalEverySteps == 0)
            {
                var ev = Stopwatch.StartNew();
                var v = Evaluate(o.EvalWindows);
                State.LastValLoss = v;
                Log(logPath, new { step = State.Step, tokens = State.TokensSeen, val_loss = v, val_ppl = Math.Exp(v), elapsed_s = State.TrainSeconds });
                print($"  val loss {v:F4} ppl {Math.Exp(v):F2} ({ev.Elapsed.TotalSeconds:F0} s)");
                window.Restart(); windowTokens = 0; windowLoss = 0; windowSteps = 0;
            }
            if (sinceCkpt.Elapsed.TotalMinutes >= o.CheckpointMinutes)
            {
                SaveCheckpoint(runDir);
                print($"  checkpoint at step {State.Step}");
                sinceCkpt.Restart(); window.Restart(); windowTokens = 0; windowLoss = 0; windowSteps = 0;
            }
        }
        SaveCheckpoint(runDir);
        print($"stopped at step {State.Step}, {State.TokensSeen / 1e6:F2} M tokens; checkpoint {Path.Combine(runDir, CheckpointFile)}");
    }

    static void Log(string path, object entry)
    {
        File.AppendAllText(path, JsonSerializer.Serialize(entry) + "\n");
    }

    public void Dispose()
    {
        foreach (var t in Weights.Values) t.Dispose();
        _opt.Dispose();
    }
}
