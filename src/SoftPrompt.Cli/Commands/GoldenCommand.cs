using System.CommandLine;
using SoftPrompt.Diagnostics;
using SoftPrompt.Runtime;

namespace SoftPrompt.Cli.Commands;

/// <summary>Hidden: the golden-fidelity check against Hugging Face's outputs on any device (the GPU kit runs it from the
/// published app, which has no test runner). Exit 0 when every fixture is within tolerance, 1 when one is not.</summary>
public static class GoldenCommand
{
    public static Command Create()
    {
        var fixtures = new Option<string>("--fixtures") { Description = "Folder of reference fixtures (tests/SoftPrompt.Tests/fixtures/hf-reference).", Required = true };
        var device = Cli.DeviceOption();
        var dtype = new Option<string>("--dtype") { Description = "Weights dtype: fp32 or bf16.", DefaultValueFactory = _ => "fp32" }.AcceptOnlyFromAmong("fp32", "bf16");
        var tolerance = new Option<double?>("--tolerance") { Description = "Max absolute logit difference (default: 1e-4 for fp32, 5e-2 for bf16)." };
        var format = Cli.FormatOption();
        var threads = Cli.ThreadsOption();
        var cmd = new Command("golden", "Check logits, prompt/prefix forwards, the prompt gradient and greedy generation against Hugging Face's golden outputs.")
            { fixtures, device, dtype, tolerance, format, threads };
        cmd.Hidden = true;
        cmd.SetAction(pr =>
        {
            TorchRuntime.SetThreads(pr.GetValue(threads));
            var report = GoldenCheck.Run(pr.GetValue(fixtures)!, TorchRuntime.ResolveDevice(pr.GetValue(device)), TorchRuntime.ResolveDType(pr.GetValue(dtype)), pr.GetValue(tolerance));
            if (pr.GetValue(format) == "json") Cli.WriteJson(report);
            else
            {
                Console.WriteLine($"golden fidelity on {report.Device}, {report.DType} weights (logit tolerance {report.Tolerance:G3}):");
                foreach (var m in report.Models)
                    Console.WriteLine($"  {m.Name,-11} plain {m.PlainLogits:E2}  prompt {m.PromptLogits:E2}  prefix {(m.PrefixLogits is double px ? px.ToString("E2") : "n/a     ")}  loss {m.PromptLoss:E2}  grad(rel) {m.PromptGradRel:E2}  greedy {(m.GreedyMatches ? "same" : "differs")}  {(m.Pass ? "ok" : "FAIL")}");
                Console.WriteLine(report.Pass ? "all within tolerance" : "FAILED");
            }
            return report.Pass ? 0 : 1;
        });
        return cmd;
    }
}
