using System.Diagnostics;
using System.Text.Json.Nodes;
using SoftPrompt.IO;
using SoftPrompt.Runtime;
using SoftPrompt.Tests.Cli;

namespace SoftPrompt.Tests.Fuzz;

/// <summary>The pieces behind the fuzz suite's guarantees, tested directly.</summary>
[Collection("Console")]
public class ReliabilityTests
{
    [Fact]
    public void NonFiniteNumbersAreWrittenAsNullByEveryJsonWriter()
    {
        var node = new JsonObject { ["a"] = double.NaN, ["b"] = new JsonArray(1.5, double.PositiveInfinity), ["c"] = new JsonObject { ["d"] = float.NegativeInfinity } };
        var text = JsonFile.Write(node);
        Assert.Equal("{\"a\":null,\"b\":[1.5,null],\"c\":{\"d\":null}}", text);
        Assert.Equal("{\"x\":null,\"y\":2}", System.Text.Json.JsonSerializer.Serialize(new { x = double.NaN, y = 2.0 }, SoftPrompt.Cli.Cli.Json));
    }

    [Fact]
    public void ANaNAdapterIsRefusedAndWithNoCheckScoresToValidJsonWithNulls()
    {
        var w = FuzzWorld.Instance;
        var a = w.WriteAdapter(w.Dir("nan-adapter-json") + "/a", e => e.fill_(double.NaN));
        var (rc, _, err) = CliRunner.Run("score", "-m", w.Shipped, "--text", "hello world", "--prompt", a, "--format", "json", "--threads", "1");
        FuzzTests.AssertClean(rc, err, "NaN");
        var (rc2, out2, err2) = CliRunner.Run("score", "-m", w.Shipped, "--text", "hello world", "--prompt", a, "--format", "json", "--threads", "1", "--no-check");
        Assert.True(rc2 == 0, err2);
        var o = JsonNode.Parse(out2)!;                                          // valid JSON
        Assert.Null(o["total_logprob"]);                                        // NaN written as null
    }

    [Fact]
    public void EnvironmentErrorsAreOneLineWithExitCode2AndBugsOneLineWithExitCode1()
    {
        var (e, o) = (Console.Error, new StringWriter());
        Console.SetError(o);
        try
        {
            Assert.Equal(2, SoftPrompt.Cli.Cli.Fail(new UnauthorizedAccessException("Access to the path '/x/y' is denied.")));
            Assert.Equal(2, SoftPrompt.Cli.Cli.Fail(new IOException("No space left on device : '/x/y'", 28)));
            Assert.Equal(2, SoftPrompt.Cli.Cli.Fail(new SoftPromptException("a\nb")));
            Assert.Equal(1, SoftPrompt.Cli.Cli.Fail(new InvalidOperationException("boom")));
        }
        finally { Console.SetError(e); }
        var lines = o.ToString().Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Equal(4, lines.Length);
        Assert.All(lines, l => Assert.StartsWith("error: ", l));
        Assert.Contains("permission denied", lines[0]);
        Assert.Contains("no space left", lines[1]);
        Assert.Equal("error: a b", lines[2]);
        Assert.Contains("internal error", lines[3]);
    }

    [Fact]
    public void ALockHeldByAnotherProcessIsRefusedAtOnceAndFreedWhenThatProcessIsKilled()
    {
        if (!OperatingSystem.IsLinux() || !File.Exists("/usr/bin/flock")) return;
        using var tmp = new Fixtures.TempDir();
        var run = tmp["run"];
        Directory.CreateDirectory(run);
        // flock(1) takes the same kind of lock (flock(2), exclusive) that RunLock takes through .NET.
        using var holder = Process.Start(new ProcessStartInfo("/usr/bin/flock", new[] { Path.Combine(run, RunLock.FileName), "sleep", "60" }) { UseShellExecute = false })!;
        try
        {
            var sw = Stopwatch.StartNew();
            while (true)
            {
                try { using var probe = RunLock.Acquire(run); } catch (SoftPromptException) { break; }
                if (sw.Elapsed > TimeSpan.FromSeconds(30)) throw new Xunit.Sdk.XunitException("flock never took the lock");
                Thread.Sleep(50);
            }
            var e = Assert.Throws<SoftPromptException>(() => RunLock.Acquire(run));
            Assert.Contains("is in use by another run", e.Message);
        }
        finally { holder.Kill(entireProcessTree: true); holder.WaitForExit(); }   // SIGKILL (flock and its sleep): the kernel drops the lock with them
        RunLock? mine = null;
        for (var sw = Stopwatch.StartNew(); mine is null; Thread.Sleep(50))
        {
            try { mine = RunLock.Acquire(run); }
            catch (SoftPromptException) when (sw.Elapsed < TimeSpan.FromSeconds(30)) { } // the kernel tears the killed processes down
        }
        using var _ = mine;
        Assert.Contains($"pid {Environment.ProcessId}", File.ReadAllText(mine.Path + ".info"));
    }

    [Fact]
    public void InputFilesMustBeRegularFiles()
    {
        using var tmp = new Fixtures.TempDir();
        var e = Assert.Throws<SoftPromptException>(() => InputFile.RequireRegular(tmp.Path));
        Assert.Contains("is a folder", e.Message);
        File.CreateSymbolicLink(tmp["link"], tmp["gone"]);
        e = Assert.Throws<SoftPromptException>(() => InputFile.RequireRegular(tmp["link"]));
        Assert.Contains("dangling symbolic link", e.Message);
        if (OperatingSystem.IsLinux())
        {
            e = Assert.Throws<SoftPromptException>(() => InputFile.RequireRegular("/dev/null"));
            Assert.Contains("character device", e.Message);
        }
        File.WriteAllText(tmp["ok"], "x");
        InputFile.RequireRegular(tmp["ok"]);
    }
}
