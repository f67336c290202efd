using System.CommandLine;
using SoftPrompt.Diagnostics;
using SoftPrompt.Models;
using SoftPrompt.Runtime;

namespace SoftPrompt.Cli.Commands;

/// <summary>Hidden command: <c>softprompt bench-rank</c> measures shared-prefix rank classification against one
/// forward per label on a random GPT-2-small-shaped model (see docs/evaluation.md).</summary>
public static class BenchRankCommand
{
    public static Command Create()
    {
        var labels = new Option<string>("--labels") { Description = "Label counts to measure, comma-separated.", DefaultValueFactory = _ => "2,5" };
        var input = new Option<int>("--input-tokens") { Description = "Input length in tokens.", DefaultValueFactory = _ => 100 };
        var examples = new Option<int>("--examples") { Description = "Examples per label count.", DefaultValueFactory = _ => 10 };
        var layers = new Option<int>("--layers") { Description = "Transformer layers (12 = GPT-2 small).", DefaultValueFactory = _ => 12 };
        var device = Cli.DeviceOption(); var dtype = Cli.DTypeOption(); var threads = Cli.ThreadsOption();
        var cmd = new Command("bench-rank", "Benchmark shared-prefix rank classification vs one forward per label.") { labels, input, examples, layers, device, dtype, threads };
        cmd.Hidden = true;
        cmd.SetAction(pr =>
        {
            TorchRuntime.SetThreads(pr.GetValue(threads));
            var cfg = RankBenchmark.Gpt2Small(pr.GetValue(layers));
            var dev = TorchRuntime.ResolveDevice(pr.GetValue(device)!);
            using var model = ModelFactory.Random(cfg, 0, TorchRuntime.ResolveDType(pr.GetValue(dtype)!, null), dev);
            Console.Error.WriteLine($"model: gpt2 {cfg.NumLayers} layers x {cfg.HiddenSize}, vocab {cfg.VocabSize}, random weights, {TorchRuntime.DTypeName(model.DType)} on {model.Device}; threads {TorchSharp.torch.get_num_threads()}");
            var counts = pr.GetValue(labels)!.Split(',').Select(int.Parse).ToArray();
            var rows = RankBenchmark.Run(model, counts, pr.GetValue(input), pr.GetValue(examples), log: Console.Error.WriteLine);
            Console.WriteLine($"{"labels",6}  {"input",5}  {"n",3}  {"shared ms",10}  {"naive ms",10}  {"speed-up",8}  {"max |diff|",10}");
            foreach (var r in rows)
                Console.WriteLine($"{r.Labels,6}  {r.InputTokens,5}  {r.Examples,3}  {r.SharedMsPerExample,10:F1}  {r.NaiveMsPerExample,10:F1}  {r.SpeedUp,7:F2}x  {r.MaxAbsDiff,10:E1}");
            return 0;
        });
        return cmd;
    }
}
