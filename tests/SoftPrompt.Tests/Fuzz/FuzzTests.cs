using SoftPrompt.Tests.Cli;

namespace SoftPrompt.Tests.Fuzz;

/// <summary>
/// Every malformed input of <see cref="FuzzCases"/> (several hundred, generated at test time) run through the real
/// command line in process: exit code 2, exactly one "error: ..." line on stderr naming the file / key / option, no
/// stack trace or exception type, and no output folder left behind. The hang and memory cases, which cannot be run
/// in process safely, are in <see cref="FuzzChildProcessTests"/>.
/// </summary>
[Collection("Console")]
public class FuzzTests
{
    public static IEnumerable<object[]> Ids => FuzzCases.Ids;

    [Theory]
    [MemberData(nameof(Ids))]
    public void MalformedInputIsRefusedWithOneLineNamingItAndExitCode2(string id)
    {
        var c = FuzzCases.ById[id];
        var w = FuzzWorld.Instance;
        var dir = w.Dir(id);
        try
        {
            var (rc, _, err) = CliRunner.Run(c.Build(w, dir));
            AssertClean(rc, err, c.Expect);
            if (c.NoOutput) Assert.False(Directory.Exists(Path.Combine(dir, "out")), $"{id}: the output folder was left behind");
            Assert.Empty(Directory.GetFileSystemEntries(dir, "out.tmp*"));
            c.After?.Invoke(dir);
            if (Directory.Exists(Path.Combine(dir, "out")) && c.Class != 4)
                Assert.False(File.Exists(Path.Combine(dir, "out", SoftPrompt.IO.RunLock.FileName + ".info")), "the lock's holder file was left behind");
        }
        finally { FuzzLocks.ReleaseAll(); FuzzWorld.Remove(dir); }
    }

    /// <summary>The contract of an error: exit 2, one error line that names <paramref name="expect"/>, no stack trace.</summary>
    public static void AssertClean(int rc, string stderr, string expect)
    {
        var lines = stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        var errors = lines.Where(l => l.StartsWith("error:")).ToList();
        Assert.True(errors.Count == 1, $"expected one error line, got:\n{stderr}");
        Assert.True(rc == 2, $"exit code {rc}, expected 2:\n{stderr}");
        Assert.True(errors[0].Contains(expect, StringComparison.Ordinal), $"the error does not name '{expect}':\n{stderr}");
        Assert.DoesNotContain("   at ", stderr);
        Assert.DoesNotContain("internal error", stderr);
        Assert.DoesNotMatch(@"\b\w+Exception\b", errors[0]);
    }

    [Fact]
    public void EveryClassHasItsShareAndThereAreAtLeast300Inputs()
    {
        var byClass = FuzzCases.ById.Values.GroupBy(c => c.Class).ToDictionary(g => g.Key, g => g.Count());
        foreach (var k in new[] { 1, 2, 3, 4, 5, 6 }) Assert.True(byClass.GetValueOrDefault(k) >= 3, $"class {k}: {byClass.GetValueOrDefault(k)} inputs");
        Assert.True(FuzzCases.ById.Count + FuzzChildProcessTests.Cases.Count() >= 300, $"{FuzzCases.ById.Count} in-process inputs");
    }
}
