using System.CommandLine;
using System.Text.Json;
using SoftPrompt.Diagnostics;
using SoftPrompt.Models;

namespace SoftPrompt.Cli.Commands;

public static class BenchCommand
{
    public static Command Create(string allocatorMode)
    {
        var model = new Option<string>("--model", "-m") { Description = "Hugging Face model folder (or use --shape)." };
        var shape = new Option<string>("--shape") { Description = $"Random weights of a known shape: {string.Join(", ", ModelFactory.Shapes.Keys)}." };
        var method = new Option<string>("--method") { Description = "prompt or prefix.", DefaultValueFactory = _ => "prompt" };
        var batch = new Option<int>("--batch-size", "--batch") { Description = "Rows per step (--batch is the older spelling).", DefaultValueFactory = _ => 8 };
        var seq = new Option<int>("--seq-len", "--seq") { Description = "Real tokens per row (--seq is the older spelling).", DefaultValueFactory = _ => 128 };
        var vt = new Option<int>("--virtual-tokens") { Description = "Virtual tokens.", DefaultValueFactory = _ => 20 };
        var steps = new Option<int>("--steps") { Description = "Timed steps.", DefaultValueFactory = _ => 10 };
        var warmup = new Option<int>("--warmup") { Description = "Untimed warm-up steps.", DefaultValueFactory = _ => 3 };
        var targets = new Option<int>("--target-tokens") { Description = "Loss positions per row (0 = all, as language modelling).", DefaultValueFactory = _ => 0 };
        var profile = new Option<bool>("--profile") { Description = "Also time forward, head + loss, backward and optimizer separately (median ms each)." };
        var generate = new Option<int>("--generate-tokens") { Description = "Time greedy generation of N new tokens instead (batch 1, a prompt of --seq-len random ids, the prompt attached, KV cache); the forward fields then hold one whole generation." };
        var forwardOnly = new Option<bool>("--forward-only") { Description = "Time only the forward-only pass (no autograd, as evaluation and serving run it); the training fields are 0." };
        var dtype = Cli.DTypeOption(); var device = Cli.DeviceOption(); var format = Cli.FormatOption(); var threads = Cli.ThreadsOption();
        var cmd = new Command("bench", "Time a prompt-tuning / prefix-tuning training step: median step ms, tokens/s, forward-only tokens/s, peak memory.")
            { model, shape, method, batch, seq, vt, steps, warmup, targets, profile, forwardOnly, generate, dtype, device, threads, format };
        cmd.SetAction(pr =>
        {
            bool json = pr.GetValue(format) == "json";
            var r = Benchmark.Run(new BenchOptions
            {
                Model = pr.GetValue(model), Shape = pr.GetValue(shape), Method = SoftPrompt.IO.OptionsRecord.ParseEnum<SoftPrompt.Tuning.TuningMethod>(pr.GetValue(method)!, "--method"), Batch = pr.GetValue(batch), Seq = pr.GetValue(seq),
                VirtualTokens = pr.GetValue(vt), Steps = pr.GetValue(steps), Warmup = pr.GetValue(warmup), TargetTokens = pr.GetValue(targets),
                Dtype = pr.GetValue(dtype)!, Device = pr.GetValue(device)!, Threads = pr.GetValue(threads), Profile = pr.GetValue(profile), ForwardOnly = pr.GetValue(forwardOnly), Allocator = allocatorMode,
                GenerateTokens = pr.GetValue(generate),
            }, json ? null : Console.WriteLine);
            if (json)
            {
                Console.WriteLine(JsonSerializer.Serialize(r, new JsonSerializerOptions { PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower }));
                return 0;
            }
            Console.WriteLine($"{r.Method} tuning, batch {r.Batch} x {r.Seq} tokens (+{r.VirtualTokens} virtual), loss on {r.TargetTokens} positions/row, {r.Threads} threads");
            if (!pr.GetValue(forwardOnly)) Console.WriteLine($"train step  median {r.StepMsMedian:F1} ms (min {r.StepMsMin:F1})  {r.TokensPerS:F0} tokens/s");
            Console.WriteLine($"forward     median {r.EvalMsMedian:F1} ms ({r.EvalCpuMsMedian:F1} CPU ms)  {r.EvalTokensPerS:F0} tokens/s");
            if (r.PhaseMsMedian is { } ph) Console.WriteLine("phases      " + string.Join("  ", ph.Select(kv => $"{kv.Key} {kv.Value:F1} ms")));
            Console.WriteLine($"peak memory {(r.PeakMemoryBytes is long b ? $"{b / 1048576.0:F0} MiB" : "n/a")} ({r.PeakMemoryKind}); allocator {r.Allocator}");
            return 0;
        });
        return cmd;
    }
}
