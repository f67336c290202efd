using System.Diagnostics;
using System.Text.Json.Nodes;

namespace SoftPrompt.Tests.Fuzz;

/// <summary>
/// The hang and memory classes, each run as a child process of the built CLI under a memory ceiling (bash
/// <c>ulimit -v</c> 4 GiB of address space, and a 1 GiB .NET heap limit that the CLI's memory checks read), with a
/// wall-clock guard of <see cref="GuardSeconds"/> that only a hang reaches: a FIFO where a file is expected, sizes
/// that would allocate gigabytes (a config field, --virtual-tokens, --encoder-hidden-size, -n), head counts that
/// overflow 32-bit shape arithmetic, and --threads far above the core count (clamped, with a warning).
/// </summary>
public class FuzzChildProcessTests
{
    const int GuardSeconds = 90;

    /// <param name="AddressSpaceGiB">The ulimit -v ceiling; a case that succeeds (loads libtorch fully and runs) needs more room.</param>
    public sealed record ChildCase(string Id, Func<FuzzWorld, string, string[]> Build, int ExpectCode, string Expect, int AddressSpaceGiB = 4);

    public static IEnumerable<ChildCase> Cases
    {
        get
        {
            static string Fifo(string path) { Mkfifo(path); return path; }
            yield return new("config-layers-1e9", (w, d) => FuzzCases.Score(w.Model(d, c => c["num_hidden_layers"] = 1000000000)), 2, "num_hidden_layers");
            yield return new("config-heads-2^26", (w, d) => FuzzCases.Score(w.Model(d, c => { c["num_attention_heads"] = 1 << 26; c["num_key_value_heads"] = 1; c["head_dim"] = 64; })), 2, "num_attention_heads");
            yield return new("config-vocab-2^24", (w, d) => FuzzCases.Score(w.Model(d, c => c["vocab_size"] = 1 << 24)), 2, "config.json");
            yield return new("train-virtual-tokens-1e7", (w, d) => FuzzCases.Train(w, d, new() { ["--virtual-tokens"] = "10000000" }), 2, "--virtual-tokens");
            yield return new("train-virtual-tokens-60000-prefix", (w, d) => FuzzCases.Train(w, d, new() { ["--virtual-tokens"] = "60000", ["--method"] = "prefix" }), 2, "--virtual-tokens");
            yield return new("train-encoder-hidden-1e9", (w, d) => FuzzCases.Train(w, d, new() { ["--method"] = "prefix", ["--prefix-projection"] = "true", ["--encoder-hidden-size"] = "1000000000" }), 2, "--encoder-hidden-size");
            yield return new("train-encoder-hidden-60000", (w, d) => FuzzCases.Train(w, d, new() { ["--method"] = "prefix", ["--prefix-projection"] = "true", ["--encoder-hidden-size"] = "60000", ["--virtual-tokens"] = "1000" }), 2, "--encoder-hidden-size");
            yield return new("generate-n-2e9", (w, d) => new[] { "generate", "-m", w.Shipped, "--text", "hi", "-n", "2000000000" }, 2, "--max-new-tokens");
            yield return new("fifo-weights", (w, d) => { var m = w.Model(d, replace: "model.safetensors"); Fifo(Path.Combine(m, "model.safetensors")); return FuzzCases.Score(m); }, 2, "FIFO");
            yield return new("fifo-config", (w, d) => { var m = w.Model(d); File.Delete(Path.Combine(m, "config.json")); Fifo(Path.Combine(m, "config.json")); return FuzzCases.Score(m); }, 2, "FIFO");
            yield return new("fifo-tokenizer", (w, d) => { var m = w.Model(d, replace: "tokenizer.json"); Fifo(Path.Combine(m, "tokenizer.json")); return FuzzCases.Score(m); }, 2, "FIFO");
            yield return new("fifo-train-data", (w, d) => FuzzCases.Train(w, d, new() { ["--train"] = Fifo(Path.Combine(d, "t.jsonl")) }), 2, "FIFO");
            yield return new("fifo-adapter", (w, d) => { var a = w.WriteAdapter(Path.Combine(d, "a"), _ => { }); File.Delete(Path.Combine(a, "adapter_model.safetensors")); Fifo(Path.Combine(a, "adapter_model.safetensors")); return FuzzCases.Score(w.Shipped, new() { ["--prompt"] = a }); }, 2, "FIFO");
            yield return new("fifo-config-file", (w, d) => new[] { "train", "--config", Fifo(Path.Combine(d, "c.json")) }, 2, "FIFO");
            yield return new("threads-100000", (w, d) => FuzzCases.Score(w.Shipped, new() { ["--threads"] = "100000" }), 0, "more than the", AddressSpaceGiB: 16);
        }
    }

    public static IEnumerable<object[]> Ids => Cases.Select(c => new object[] { c.Id });

    static void Mkfifo(string path)
    {
        using var p = Process.Start(new ProcessStartInfo("mkfifo", path) { UseShellExecute = false })!;
        p.WaitForExit();
        if (p.ExitCode != 0) throw new InvalidOperationException("mkfifo failed");
    }

    [Theory]
    [MemberData(nameof(Ids))]
    public void HangAndMemoryCasesReturnPromptlyUnderAMemoryCeiling(string id)
    {
        if (!OperatingSystem.IsLinux()) return; // FIFOs, ulimit and bash: Linux only
        var c = Cases.Single(x => x.Id == id);
        var w = FuzzWorld.Instance;
        var dir = w.Dir("child-" + id);
        try { Run(c, dir, c.Build(w, dir)); }
        finally { FuzzWorld.Remove(dir); }
    }

    static void Run(ChildCase c, string dir, string[] args)
    {
        var id = c.Id;
        var exe = Path.Combine(AppContext.BaseDirectory, "softprompt");
        var psi = new ProcessStartInfo("bash") { RedirectStandardError = true, RedirectStandardOutput = true, UseShellExecute = false };
        psi.ArgumentList.Add("-c");
        psi.ArgumentList.Add($"ulimit -v {c.AddressSpaceGiB << 20}; exec \"$0\" \"$@\"");
        psi.ArgumentList.Add(exe);
        foreach (var a in args) psi.ArgumentList.Add(a);
        psi.Environment["DOTNET_GCHeapHardLimit"] = "0x40000000";
        psi.Environment.Remove("SOFTPROMPT_DEBUG");
        using var p = Process.Start(psi)!;
        var err = p.StandardError.ReadToEndAsync();
        var outp = p.StandardOutput.ReadToEndAsync();
        if (!p.WaitForExit(GuardSeconds * 1000))
        {
            p.Kill(entireProcessTree: true);
            Assert.Fail($"{id}: still running after {GuardSeconds} s (a hang)");
        }
        p.WaitForExit();
        var stderr = err.Result;
        if (c.ExpectCode == 0)
        {
            Assert.True(p.ExitCode == 0, $"{id}: exit {p.ExitCode}\n{stderr}");
            Assert.Contains(c.Expect, stderr);
            return;
        }
        FuzzTests.AssertClean(p.ExitCode, stderr, c.Expect);
        Assert.False(Directory.Exists(Path.Combine(dir, "out")), $"{id}: the output folder was left behind");
    }
}
