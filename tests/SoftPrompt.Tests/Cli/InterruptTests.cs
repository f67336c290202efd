using System.Diagnostics;
using System.Runtime.InteropServices;
using System.Text.Json.Nodes;

namespace SoftPrompt.Tests.Cli;

/// <summary>Ctrl-C / SIGTERM sent to a real <c>softprompt train</c> process: it saves a checkpoint, says how to
/// continue, exits 130 / 143, and <c>--resume</c> continues from there.</summary>
[Collection("Console")]
public class InterruptTests
{
    [DllImport("libc", SetLastError = true)] static extern int kill(int pid, int sig);
    const int SIGINT = 2, SIGTERM = 15;

    /// <summary>Starts the built CLI (softprompt.dll beside the tests) with the given arguments.</summary>
    internal static Process Start(params string[] args)
    {
        var psi = new ProcessStartInfo(Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") ?? "dotnet")
        {
            RedirectStandardOutput = true, RedirectStandardError = true, RedirectStandardInput = true, UseShellExecute = false,
        };
        psi.ArgumentList.Add(Path.Combine(AppContext.BaseDirectory, "softprompt.dll"));
        foreach (var a in args) psi.ArgumentList.Add(a);
        return Process.Start(psi)!;
    }

    /// <summary>Runs a training child until it has logged a few steps, then sends <paramref name="signal"/>.</summary>
    static (int Rc, string Out, string Err) TrainAndSignal(string model, string train, string run, int signal)
    {
        using var p = Start("train", "--model", model, "--train", train, "--output", run, "--method", "prompt", "--virtual-tokens", "2",
            "--steps", "100000", "--batch-size", "4", "--log-every", "1", "--eval-every", "0", "--validation-split", "0", "--threads", "1");
        var err = new System.Text.StringBuilder();
        var stepSeen = new ManualResetEventSlim();
        p.ErrorDataReceived += (_, e) => { if (e.Data is null) return; lock (err) err.AppendLine(e.Data); if (e.Data.StartsWith("step ") && e.Data.Contains("    3/")) stepSeen.Set(); };
        p.BeginErrorReadLine();
        var stdoutTask = p.StandardOutput.ReadToEndAsync();
        if (!stepSeen.Wait(TimeSpan.FromMinutes(2)))
        {
            p.Kill(true);
            throw new Xunit.Sdk.XunitException("training never reached step 3: " + err);
        }
        Assert.Equal(0, kill(p.Id, signal));
        if (!p.WaitForExit(TimeSpan.FromMinutes(2))) { p.Kill(true); throw new Xunit.Sdk.XunitException("the process did not stop after the signal: " + err); }
        p.WaitForExit();
        lock (err) return (p.ExitCode, stdoutTask.Result, err.ToString());
    }

    /// <summary>Whether this process ignores <paramref name="signal"/> (Linux: the SigIgn mask of /proc/self/status).</summary>
    static bool InheritedIgnored(int signal)
    {
        if (!OperatingSystem.IsLinux()) return false;
        var line = File.ReadLines("/proc/self/status").FirstOrDefault(l => l.StartsWith("SigIgn:", StringComparison.Ordinal));
        return line is not null && (Convert.ToUInt64(line["SigIgn:".Length..].Trim(), 16) & (1UL << (signal - 1))) != 0;
    }

    [Theory]
    [InlineData(SIGINT, 130)]
    [InlineData(SIGTERM, 143)]
    public void ASignalDuringTrainingSavesACheckpointAndResumeContinuesFromIt(int signal, int expectedRc)
    {
        if (!OperatingSystem.IsLinux() && !OperatingSystem.IsMacOS()) return;
        // A test run started in the background by a non-interactive shell (`cmd &`) has SIGINT ignored, as POSIX says,
        // and its children inherit that (the .NET runtime leaves an ignored SIGINT ignored): nothing to test then.
        if (InheritedIgnored(signal)) return;
        using var tmp = new Fixtures.TempDir();
        var model = Fixtures.TinyModelWithTokenizer();
        var train = Fixtures.WriteSentimentTask(tmp["train.jsonl"], 40, 1);
        var (rc, stdout, stderr) = TrainAndSignal(model, train, tmp["run"], signal);
        Assert.True(rc == expectedRc, $"rc {rc}\n{stdout}\n{stderr}");
        var m = System.Text.RegularExpressions.Regex.Match(stderr, @"interrupted at step (\d+); continue with: softprompt train --resume (\S+)");
        Assert.True(m.Success, stderr);
        int step = int.Parse(m.Groups[1].Value);
        Assert.True(step >= 3, stderr);
        Assert.Equal(tmp["run"], m.Groups[2].Value);
        var state = JsonNode.Parse(File.ReadAllText(tmp["run/checkpoint/trainer_state.json"]))!;
        Assert.Equal(step, state["Step"]!.GetValue<int>());
        Assert.False(Directory.Exists(tmp["run/checkpoint.tmp"]));
        Assert.DoesNotContain("   at ", stderr); // no stack trace

        var (rc2, out2, err2) = CliRunner.Run("train", "--resume", tmp["run"], "--steps", (step + 2).ToString());
        Assert.True(rc2 == 0, err2 + out2);
        Assert.Contains($"resumed at step {step}", out2 + err2);
        Assert.Equal(step + 2, JsonNode.Parse(File.ReadAllText(tmp["run/summary.json"]))!["steps"]!.GetValue<int>());
    }
}
