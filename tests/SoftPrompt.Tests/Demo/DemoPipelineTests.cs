using SoftPrompt.Tests.Cli;
using System.Text.Json.Nodes;

namespace SoftPrompt.Tests.Demo;

/// <summary>
/// The README's main job (scripts/demo.sh) in miniature: the same configs/demo-*.json on the shipped model, with a few
/// steps and a small test sample, through the same commands in-process. Checks that the pipeline runs and writes a
/// well-formed report (the demo's numbers themselves are recorded in the README, not asserted).
/// </summary>
[Collection("Console")]
public class DemoPipelineTests
{
    public static string RepoRoot
    {
        get
        {
            var d = new DirectoryInfo(AppContext.BaseDirectory);
            while (d is not null && !File.Exists(Path.Combine(d.FullName, "SoftPrompt.sln"))) d = d.Parent;
            return d?.FullName ?? throw new InvalidOperationException("repository root (SoftPrompt.sln) not found above " + AppContext.BaseDirectory);
        }
    }

    static (int Rc, string Out, string Err) Run(params string[] args) => CliRunner.RunIn(RepoRoot, args); // configs name repository-relative paths

    [Fact]
    public void QuickDemoRunWritesAWellFormedReport()
    {
        using var tmp = new Fixtures.TempDir();
        var r1 = Run("train", "--config", "configs/demo-prompt.json", "--output", tmp["prompt"], "--steps", "3", "--eval-every", "3", "--threads", "1");
        Assert.True(r1.Rc == 0, r1.Err + r1.Out);
        var r2 = Run("train", "--config", "configs/demo-prefix.json", "--output", tmp["prefix"], "--steps", "3", "--eval-every", "3", "--threads", "1");
        Assert.True(r2.Rc == 0, r2.Err + r2.Out);
        var r3 = Run("search-hard-prompt", "--config", "configs/demo-search.json", "--output", tmp["search"], "--steps", "2", "--eval-every", "1", "--score-examples", "16", "--threads", "1");
        Assert.True(r3.Rc == 0, r3.Err + r3.Out);
        var r3b = Run("search-hard-prompt", "--config", "configs/demo-opro.json", "--output", tmp["opro"], "--steps", "1", "--candidates-per-step", "2", "--score-examples", "16", "--threads", "1");
        Assert.True(r3b.Rc == 0, r3b.Err + r3b.Out);
        var r4 = Run("eval", "--config", "configs/demo-eval.json", "--output", tmp["report"], "--prompt", tmp["prompt/adapter"], "--prompt", tmp["prefix/adapter"],
            "--searched", tmp["search"], "--searched", tmp["opro"], "--run", tmp["prompt"], "--max-examples", "24", "--threads", "1");
        Assert.True(r4.Rc == 0, r4.Err + r4.Out);
        Assert.Equal(tmp["report"], r4.Out.TrimEnd().Split('\n')[^1].Trim());

        foreach (var f in new[] { "metrics.json", "report.md", "predictions.jsonl", "metrics.png", "training.png" })
            Assert.True(File.Exists(Path.Combine(tmp["report"], f)), f);
        var m = JsonNode.Parse(File.ReadAllText(tmp["report/metrics.json"]))!.AsObject();
        var kinds = m["conditions"]!.AsArray().Select(c => c!["kind"]!.GetValue<string>()).ToHashSet();
        foreach (var k in new[] { "zero-shot", "instruction", "few-shot", "soft-prompt", "prefix", "projected", "searched" }) Assert.Contains(k, kinds);
        Assert.Equal(2, m["conditions"]!.AsArray().Count(c => c!["kind"]!.GetValue<string>() == "searched")); // gradient and OPRO
        foreach (var c in m["conditions"]!.AsArray())
        {
            Assert.Equal(24, c!["n"]!.GetValue<int>());
            var acc = c["metrics"]!["accuracy"]!.GetValue<double>();
            Assert.InRange(acc, 0, 1);
        }
        Assert.Equal(new[] { "negative", "positive" }, m["labels"]!.AsArray().Select(x => x!.GetValue<string>()).ToArray());
    }
}
