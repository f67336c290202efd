using SoftPrompt.Inference;
using System.Diagnostics;
using SoftPrompt.Data;
using SoftPrompt.IO;
using SoftPrompt.Models;
using SoftPrompt.Optimization;
using SoftPrompt.Runtime;
using SoftPrompt.Scoring;
using SoftPrompt.Tuning;
using TorchSharp;
using static TorchSharp.torch;

namespace SoftPrompt.Diagnostics;

public sealed record BenchOptions
{
    public string? Model { get; init; }
    public string? Shape { get; init; }
    public TuningMethod Method { get; init; } = TuningMethod.Prompt;
    /// <summary>How the process's CPU allocator was set up (what <see cref="TorchRuntime.ConfigureAllocator"/> returned), for the report.</summary>
    public string Allocator { get; init; } = "default (not configured)";
    public int Batch { get; init; } = 8;
    public int Seq { get; init; } = 128;
    public int VirtualTokens { get; init; } = 20;
    public int Steps { get; init; } = 10;
    public int Warmup { get; init; } = 3;
    public string Dtype { get; init; } = "fp32";
    public string Device { get; init; } = "auto";
    /// <summary>Target tokens per row that carry a loss: 0 = every position (language modelling, as PEFT's Trainer with labels = input_ids).</summary>
    public int TargetTokens { get; init; }
    public int Threads { get; init; }
    public int Seed { get; init; } = 0;
    /// <summary>Also time the phases of a step (forward, head + loss, backward, optimizer) separately. On CUDA this
    /// synchronises after each phase, so only the phase split is meaningful there, not the total.</summary>
    public bool Profile { get; init; }
    /// <summary>Skip the training steps: time only the forward-only pass (what evaluation and serving run).</summary>
    public bool ForwardOnly { get; init; }
    /// <summary>Instead of training and forward-only passes: greedy generation of this many new tokens (batch 1, a
    /// prompt of <see cref="Seq"/> random ids, the prompt method attached, KV cache), as `generate` runs it; the eval
    /// fields then hold the milliseconds of one whole generation and new tokens per second. 0 = off.</summary>
    public int GenerateTokens { get; init; }
}

public sealed record BenchResult(
    string Model, string ModelType, int Layers, int Hidden, int Vocab, long Parameters, string Method, int Batch, int Seq, int VirtualTokens,
    int TargetTokens, string Dtype, string Device, int Threads, int Steps, int Warmup,
    double StepMsMedian, double StepMsMin, double TokensPerS, double EvalMsMedian, double EvalTokensPerS, long? PeakMemoryBytes, string PeakMemoryKind)
{
    /// <summary>With <see cref="BenchOptions.Profile"/>: median milliseconds of each phase of a training step.</summary>
    public IReadOnlyDictionary<string, double>? PhaseMsMedian { get; init; }
    /// <summary>Median process CPU milliseconds (all threads) of one forward-only pass: far less sensitive to other
    /// processes' load than <see cref="EvalMsMedian"/> on a shared machine (with --threads 1 it is the pass's own work).</summary>
    public double EvalCpuMsMedian { get; init; }
    /// <summary>How the process's CPU allocator was set up (<see cref="BenchOptions.Allocator"/>).</summary>
    public string Allocator { get; init; } = "";
}

/// <summary>
/// Times the training step of a prompt method on a frozen model (random weights for named shapes are fine):
/// median step time, real (non-virtual) tokens per second, forward-only tokens per second, and peak memory.
/// Warm-up steps are excluded. The step is exactly the trainer's: <see cref="PromptLoss"/>, backward, AdamW.
/// </summary>
public static class Benchmark
{
    public static BenchResult Run(BenchOptions o, Action<string>? log = null)
    {
        if (o.Batch < 1 || o.Seq < 2 || o.Steps < 1 || o.Warmup < 0 || o.VirtualTokens < 1 || o.TargetTokens < 0 || o.TargetTokens >= o.Seq)
            throw new SoftPromptException("bench: need --batch-size >= 1, --seq-len >= 2, --steps >= 1, --warmup >= 0, --virtual-tokens >= 1, 0 <= --target-tokens < --seq-len.");
        if ((o.Model is null) == (o.Shape is null)) throw new SoftPromptException("give exactly one of --model DIR or --shape NAME.");
        TorchRuntime.SetThreads(o.Threads);
        var device = TorchRuntime.ResolveDevice(o.Device);
        var cfg = o.Model is not null ? ModelConfig.Load(o.Model) : ModelFactory.ShapeConfig(o.Shape!);
        var dtype = TorchRuntime.ResolveDType(o.Dtype, cfg.TorchDtype);
        if (cfg.Family == ArchFamily.Gpt2 && o.Seq + o.VirtualTokens > cfg.MaxPositions)
            throw new SoftPromptException($"--seq-len {o.Seq} + --virtual-tokens {o.VirtualTokens} exceed the model's {cfg.MaxPositions} positions.");
        using var model = o.Model is not null ? ModelLoader.Load(o.Model, device, dtype) : ModelFactory.Random(cfg, o.Seed, dtype, device);
        log?.Invoke($"{cfg.ModelType}: {cfg.NumLayers} layers x {cfg.HiddenSize}, vocab {cfg.VocabSize}, {model.ParameterCount / 1e6:F1} M parameters, {TorchRuntime.DTypeName(dtype)} on {device}");

        using IPromptMethod method = o.Method == TuningMethod.Prompt
            ? PromptTuning.Create(model, o.VirtualTokens, PromptInit.SampleVocab, o.Seed)
            : PrefixTuning.Create(cfg, o.VirtualTokens, false, 0, o.Seed, device);
        using var optimizer = new AdamW(method.Parameters);

        // Stable shapes: one batch of random ids, reused every step.
        var rng = new Random(o.Seed);
        int targets = o.TargetTokens == 0 ? o.Seq - 1 : o.TargetTokens;
        var examples = Enumerable.Range(0, o.Batch).Select(_ =>
        {
            var ids = Enumerable.Range(0, o.Seq).Select(_ => rng.Next(cfg.VocabSize)).ToArray();
            return new TokenizedExample(ids[..(o.Seq - targets)], ids[(o.Seq - targets)..]);
        }).ToList();
        using var batch = Collator.Collate(examples, 0, device);
        int realTokens = o.Batch * o.Seq;

        if (o.GenerateTokens > 0)
        {
            var genMs = new List<double>(); var genCpu = new List<double>();
            var proc = Process.GetCurrentProcess();
            var promptIds = examples[0].PromptIds.Concat(examples[0].TargetIds).ToArray();
            var gopt = new GenerationOptions { MaxNewTokens = o.GenerateTokens };
            for (int i = 0; i < o.Warmup + o.Steps; i++)
            {
                proc.Refresh(); var c0 = proc.TotalProcessorTime;
                var sw = Stopwatch.StartNew();
                using (var scope = torch.NewDisposeScope())
                using (torch.no_grad())
                    SoftPrompt.Inference.Generator.Generate(model, promptIds, gopt, method.Inject(1));
                double ms = sw.Elapsed.TotalMilliseconds;
                proc.Refresh();
                if (i >= o.Warmup) { genMs.Add(ms); genCpu.Add((proc.TotalProcessorTime - c0).TotalMilliseconds); }
            }
            var (gpeak, gkind) = PeakMemory(device);
            double gmed = Median(genMs);
            return new BenchResult(o.Model ?? "shape:" + o.Shape, cfg.ModelType, cfg.NumLayers, cfg.HiddenSize, cfg.VocabSize, model.ParameterCount,
                OptionsRecord.EnumName(o.Method), 1, o.Seq, o.VirtualTokens, o.GenerateTokens, TorchRuntime.DTypeName(dtype), device.ToString(), torch.get_num_threads(), o.Steps, o.Warmup,
                0, 0, 0, Math.Round(gmed, 2), Math.Round(o.GenerateTokens / (gmed / 1000), 1), gpeak, gkind) { EvalCpuMsMedian = Math.Round(Median(genCpu), 2), Allocator = o.Allocator };
        }

        var stepMs = new List<double>();
        for (int i = 0; i < (o.ForwardOnly ? 0 : o.Warmup + o.Steps); i++)
        {
            var sw = Stopwatch.StartNew();
            using (var scope = torch.NewDisposeScope())
            {
                optimizer.ZeroGrad();
                var (nll, count) = PromptLoss.Compute(model, method, batch);
                (nll / count).backward();
                optimizer.Step(1e-3);
                nll.item<float>(); // the trainer's one host sync per step
            }
            if (i >= o.Warmup) stepMs.Add(sw.Elapsed.TotalMilliseconds);
        }
        var evalMs = new List<double>();
        var evalCpuMs = new List<double>();
        var evalBodyCpuMs = new List<double>(); // --profile: CPU ms of the transformer part of each forward-only pass
        var self = Process.GetCurrentProcess();
        using (torch.no_grad())
            for (int i = 0; i < o.Warmup + o.Steps; i++)
            {
                self.Refresh();
                var cpu0 = self.TotalProcessorTime;
                var sw = Stopwatch.StartNew();
                using (var scope = torch.NewDisposeScope())
                {
                    var hidden = PromptLoss.Hidden(model, method, batch);
                    if (o.Profile) { self.Refresh(); evalBodyCpuMs.Add((self.TotalProcessorTime - cpu0).TotalMilliseconds); }
                    var (nll, _) = PromptLoss.Loss(model, batch, hidden);
                    nll.item<float>();
                }
                double ms = sw.Elapsed.TotalMilliseconds;
                self.Refresh();
                if (i >= o.Warmup) { evalMs.Add(ms); evalCpuMs.Add((self.TotalProcessorTime - cpu0).TotalMilliseconds); }
            }
        Dictionary<string, double>? phases = null;
        if (o.Profile)
        {
            // The head's backward and the transformer's backward are timed apart by cutting the graph at the
            // hidden states: the loss's backward stops at a detached copy, whose gradient is then pushed through
            // the transformer. Same arithmetic as one backward call.
            var names = new[] { "forward", "head_loss", "head_backward", "body_backward", "optimizer" };
            var samples = names.ToDictionary(n => n, _ => new List<double>());
            var cpuSamples = names.ToDictionary(n => n, _ => new List<double>());
            var proc = Process.GetCurrentProcess();
            void Sync() { if (device.type == DeviceType.CUDA) torch.cuda.synchronize(device); }
            for (int i = 0; i < (o.ForwardOnly ? 0 : o.Warmup + o.Steps); i++)
            {
                using var scope = torch.NewDisposeScope();
                var t = new double[names.Length + 1];
                var c = new double[names.Length + 1];
                var sw = Stopwatch.StartNew();
                int k = 0;
                void Mark() { Sync(); proc.Refresh(); k++; t[k] = sw.Elapsed.TotalMilliseconds; c[k] = proc.TotalProcessorTime.TotalMilliseconds; }
                proc.Refresh(); c[0] = proc.TotalProcessorTime.TotalMilliseconds;
                optimizer.ZeroGrad();
                var hidden = PromptLoss.Hidden(model, method, batch);
                Mark();
                var cut = hidden.detach().requires_grad_(true);
                var (nll, count) = PromptLoss.Loss(model, batch, cut);
                var loss = nll / count;
                Mark();
                loss.backward();
                Mark();
                hidden.backward(new[] { cut.grad! });
                Mark();
                optimizer.Step(1e-3);
                nll.item<float>();
                Mark();
                if (i < o.Warmup) continue;
                for (int j = 0; j < names.Length; j++) { samples[names[j]].Add(t[j + 1] - t[j]); cpuSamples[names[j]].Add(c[j + 1] - c[j]); }
            }
            phases = o.ForwardOnly ? new() : names.ToDictionary(n => n, n => Math.Round(Median(samples[n]), 2));
            if (!o.ForwardOnly) foreach (var n in names) phases[n + "_cpu"] = Math.Round(Median(cpuSamples[n]), 2);
            var body = evalBodyCpuMs.Skip(o.Warmup).ToList();
            phases["eval_forward_cpu"] = Math.Round(Median(body), 2);
            phases["eval_head_loss_cpu"] = Math.Round(Median(evalCpuMs.Zip(body, (a, b) => a - b).ToList()), 2);
        }
        // --forward-only: the training fields are 0 (not run).
        double med = o.ForwardOnly ? 0 : Median(stepMs), evalMed = Median(evalMs);
        var (peak, kind) = PeakMemory(device);
        return new BenchResult(o.Model ?? "shape:" + o.Shape, cfg.ModelType, cfg.NumLayers, cfg.HiddenSize, cfg.VocabSize, model.ParameterCount,
            OptionsRecord.EnumName(o.Method), o.Batch, o.Seq, o.VirtualTokens, targets, TorchRuntime.DTypeName(dtype), device.ToString(), torch.get_num_threads(), o.Steps, o.Warmup,
            Math.Round(med, 2), o.ForwardOnly ? 0 : Math.Round(stepMs.Min(), 2), o.ForwardOnly ? 0 : Math.Round(realTokens / (med / 1000), 1), Math.Round(evalMed, 2), Math.Round(realTokens / (evalMed / 1000), 1), peak, kind)
            { PhaseMsMedian = phases, EvalCpuMsMedian = Math.Round(Median(evalCpuMs), 2), Allocator = o.Allocator };
    }

    static double Median(List<double> xs)
    {
        var s = xs.OrderBy(x => x).ToArray();
        return s.Length % 2 == 1 ? s[s.Length / 2] : (s[s.Length / 2 - 1] + s[s.Length / 2]) / 2;
    }

    /// <summary>CPU: the process's peak resident set (VmHWM, Linux); CUDA: not exposed by TorchSharp 0.107 (null).</summary>
    static (long?, string) PeakMemory(Device device)
    {
        if (device.type == DeviceType.CUDA) return (null, "cuda allocator peak not exposed by TorchSharp 0.107");
        try
        {
            foreach (var line in File.ReadLines("/proc/self/status"))
                if (line.StartsWith("VmHWM:") && StatusBytes(line) is long bytes)
                    return (bytes, "process peak RSS (VmHWM)");
        }
        catch (IOException) { }
        return (Environment.WorkingSet, "process working set (no /proc)");
    }

    /// <summary>The byte count of a /proc/self/status size line ("VmHWM:\t  123456 kB"; from 8 digits on the tab is the
    /// only separator: "VmHWM:\t16750436 kB"); null when the line is not of that form.</summary>
    public static long? StatusBytes(string line)
    {
        var parts = line.Split((char[]?)null, StringSplitOptions.RemoveEmptyEntries); // any whitespace, tabs included
        return parts.Length == 3 && parts[2] == "kB" && long.TryParse(parts[1], System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out var kib)
            ? kib * 1024 : null;
    }
}
