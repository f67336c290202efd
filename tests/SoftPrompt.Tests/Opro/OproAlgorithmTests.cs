using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using SoftPrompt.Llm;
using SoftPrompt.Search;
using SoftPrompt.Tests.Cli;
using SoftPrompt.Tests.Evaluation;
using SoftPrompt.Tuning;

namespace SoftPrompt.Tests.Opro;

/// <summary>What the reference OPRO and its successors do (issue #20): score threshold, exemplar selection, temperature
/// schedule, patience, APE initial proposals, joint instruction + demonstrations, --dry-run, output parsing.</summary>
[Collection("Console")]
public class OproAlgorithmTests
{
    static JsonObject Json(string path) => JsonNode.Parse(File.ReadAllText(path))!.AsObject();
    static List<JsonObject> Log(string run) => File.ReadAllLines(Path.Combine(run, "search_log.jsonl")).Select(l => JsonNode.Parse(l)!.AsObject()).ToList();
    static bool IsJudge(RecordedRequest r) => r.Body["messages"]![0]!["content"]!.ToString() == Judge.System;

    static string[] Args(string train, string run, FakeOpenAiServer server, params string[] extra) =>
        new[] { "search-hard-prompt", "--strategy", "opro", "--model", SearchFixture.ModelDir, "--train", train, "--output", run,
                "--optimizer-endpoint", server.Endpoint, "--optimizer-model", "m", "--candidates-per-step", "2", "--score-examples", "4",
                "--parallel", "1", "--threads", "1", "--seed", "5" }.Concat(extra).ToArray();

    static string ExemplarBlock(string meta) => meta[meta.IndexOf("Below are some problems", StringComparison.Ordinal)..];

    [Fact]
    public void ScoreThresholdKeepsOnlyInstructionsAtOrAboveItInTheMetaPrompt()
    {
        var t = new List<ScoredInstruction> { new("a", 0.2, 0), new("b", 0.5, 1), new("c", 0.8, 1) };
        Assert.Equal(new[] { "b", "c" }, MetaPrompt.Kept(t, 20, threshold: 0.5).Select(k => k.Text));
        Assert.Equal(3, MetaPrompt.Kept(t, 20).Count);
    }

    [Fact]
    public void HardestExemplarsAreTheOnesMostOftenWrong_FixedAreTheSameEveryStep_RandomChange()
    {
        var o = new HardPromptSearchOptions { Strategy = SearchStrategy.Opro, Exemplars = 2, ExemplarSelection = "hardest", Seed = 1 };
        Assert.Equal(new[] { 7, 3 }, OproSearch.Exemplars(10, o, 1, new Dictionary<int, int> { [3] = 2, [7] = 5, [1] = 1 }));
        var fixedO = o with { ExemplarSelection = "fixed" };
        Assert.Equal(OproSearch.Exemplars(10, fixedO, 1, new Dictionary<int, int>()), OproSearch.Exemplars(10, fixedO, 5, new Dictionary<int, int>()));
        var random = o with { ExemplarSelection = "random" };
        Assert.Contains(Enumerable.Range(2, 6), s => !OproSearch.Exemplars(10, random, 1, new Dictionary<int, int>()).SequenceEqual(OproSearch.Exemplars(10, random, s, new Dictionary<int, int>())));
    }

    [Fact]
    public async Task TemperatureScheduleFixedExemplarsApeAtStepZeroAndPatience()
    {
        using var tmp = new Fixtures.TempDir();
        var train = SearchFixture.WriteTask(tmp["train.jsonl"], 12, 51);
        await using var server = FakeOpenAiServer.Start();
        server.Handler = r => FakeReply.Chat($"<INS>Reply yes or no, try {r.Index}.</INS>");
        var run = tmp["run"];
        var (rc, stdout, stderr) = CliRunner.Run(Args(train, run, server, "--steps", "3", "--temperature", "1.0", "--temperature-schedule", "linear",
            "--temperature-end", "0.2", "--exemplar-selection", "fixed", "--ape-proposals", "2"));
        Assert.True(rc == 0, stderr + stdout);
        var reqs = server.Requests;
        Assert.Equal(2 + 3 * 2, reqs.Count);
        // APE: step 0 asks for the instruction behind input-output pairs; its proposals are scored at step 0.
        Assert.All(reqs.Take(2), r => Assert.Contains("I gave a friend an instruction", r.UserText));
        Assert.Equal(2, Log(run).Count(r => r["status"]!.GetValue<string>() == "ape" && r["step"]!.GetValue<int>() == 0));
        // Linear from 1.0 at step 1 to 0.2 at step 3.
        Assert.Equal(new[] { 1.0, 1.0, 0.6, 0.6, 0.2, 0.2 }, reqs.Skip(2).Select(r => Math.Round(r.Temperature!.Value, 4)).ToArray());
        // Fixed exemplars: the same problems every step.
        Assert.Equal(ExemplarBlock(reqs[2].UserText), ExemplarBlock(reqs[6].UserText));

        // Patience: the judge rates everything 5, so nothing beats step 0; with --patience 1 the run stops after step 1.
        File.WriteAllText(tmp["rubric.txt"], "x");
        server.Handler = r => IsJudge(r) ? FakeReply.Chat("Score: 5") : FakeReply.Chat($"<INS>Reply yes or no, try {r.Index}.</INS>");
        var (rcP, outP, errP) = CliRunner.Run(Args(train, tmp["patience"], server, "--steps", "5", "--patience", "1", "--objective", "judge", "--rubric", tmp["rubric.txt"],
            "--judge-model", "j", "--max-new-tokens", "2", "--ape-proposals", "0"));
        Assert.True(rcP == 0, errP + outP);
        var summary = Json(Path.Combine(tmp["patience"], "summary.json"));
        Assert.Equal("patience", summary["stop_reason"]!.GetValue<string>());
        Assert.Equal(1, summary["steps"]!.GetValue<int>());
    }

    [Fact]
    public async Task JointInstructionAndDemosSearchExportsOneHardPromptThatEvalTakesAsOneCondition()
    {
        using var tmp = new Fixtures.TempDir();
        var train = SearchFixture.WriteTask(tmp["train.jsonl"], 16, 52);
        await using var server = FakeOpenAiServer.Start();
        server.Handler = r => FakeReply.Chat($"<INS>Answer yes or no, try {r.Index}.</INS>");
        var run = tmp["run"];
        // The shipped model reads in-context demonstrations (they lower its loss on the answers); the random fixture does not.
        var shipped = Path.Combine(SoftPrompt.Tests.Demo.DemoPipelineTests.RepoRoot, "models", "sp-llama-6m");
        var (rc, stdout, stderr) = CliRunner.Run(Args(train, run, server, "--steps", "2", "--demos", "2", "--demo-candidates", "2", "--ape-proposals", "0", "--objective", "loss",
            "--init-instruction", "Is the review good?").Select(a => a == SearchFixture.ModelDir ? shipped : a).ToArray());
        Assert.True(rc == 0, stderr + stdout);
        var log = Log(run);
        Assert.Equal(4, log.Count(r => r["status"]!.GetValue<string>() == "demos"));
        Assert.All(log.Where(r => r["status"]!.GetValue<string>() == "demos"), r => Assert.Equal(2, r["demos"]!.AsArray().Count));
        var traj = OproTrajectory.Load(Path.Combine(run, OproTrajectory.FileName));
        var best = traj.Entries.OrderByDescending(e => e.Score).ThenBy(e => e.Step).First();
        var hp = HardPrompt.Load(run);
        // Demonstrations lower the shipped model's loss: the best candidate has two, and it is what is exported.
        Assert.True(best.Demos is { Length: 2 }, string.Join(" | ", traj.Entries.Select(e => $"{e.Text}[{(e.Demos is null ? "-" : string.Join(",", e.Demos))}]={e.Score}")));
        Assert.Matches(@"the [a-z]+ was [a-z]+\. answer: (yes|no)\n\nthe [a-z]+ was [a-z]+\. answer: (yes|no)\n\n$", hp.Text);
        Assert.StartsWith(best.Text, hp.Text);
        Assert.Equal(best.Demos, Json(Path.Combine(run, "summary.json"))["demos"]!.AsArray().Select(d => d!.GetValue<int>()).ToArray());
        Assert.Contains("2 demonstrations", hp.Source);
        Assert.Contains(traj.Entries, e => e.Demos is { Length: 2 });
        var (rcEval, outEval, errEval) = CliRunner.Run("eval", "--model", shipped, "--data", train, "--searched", run, "--output", tmp["report"], "--threads", "1");
        Assert.True(rcEval == 0, errEval + outEval);
        Assert.Single(Json(Path.Combine(tmp["report"], "metrics.json"))["conditions"]!.AsArray(), c => c!["kind"]!.GetValue<string>() == "searched");
    }

    [Fact]
    public async Task DryRunPrintsUpperBoundsAndCallsNothing_TheRunStaysWithinThem()
    {
        using var tmp = new Fixtures.TempDir();
        var train = SearchFixture.WriteTask(tmp["train.jsonl"], 12, 53);
        File.WriteAllText(tmp["rubric.txt"], "One word.");
        await using var server = FakeOpenAiServer.Start();
        server.Handler = r => IsJudge(r) ? FakeReply.Chat("Score: 4") : FakeReply.Chat($"<INS>Answer, try {r.Index}.</INS>");
        string[] settings = { "--steps", "2", "--objective", "judge", "--rubric", tmp["rubric.txt"], "--judge-model", "j", "--max-new-tokens", "3", "--ape-proposals", "1" };
        var (rc, stdout, stderr) = CliRunner.Run(Args(train, tmp["dry"], server, settings.Append("--dry-run").ToArray()));
        Assert.True(rc == 0, stderr + stdout);
        Assert.Empty(server.Requests);
        Assert.False(Directory.Exists(tmp["dry"]));
        // optimizer: 1 APE + 2 steps x 2; candidates: zero-shot + 1 + 4 = 6, each judged on 4 examples, a reminder each at most.
        Assert.Contains("optimizer: at most 5 calls", stdout);
        Assert.Contains("judge:     at most 48 calls", stdout);
        long optIn = long.Parse(Regex.Match(stdout, @"optimizer: at most 5 calls, at most ([\d,]+) input").Groups[1].Value.Replace(",", ""));

        var (rcRun, outRun, errRun) = CliRunner.Run(Args(train, tmp["run"], server, settings));
        Assert.True(rcRun == 0, errRun + outRun);
        var summary = Json(Path.Combine(tmp["run"], "summary.json"));
        Assert.InRange(summary["optimizer_calls"]!.GetValue<int>(), 1, 5);
        Assert.InRange(summary["judge_calls"]!.GetValue<int>(), 1, 48);
        // The bound holds the real meta-prompts (UTF-8 bytes bound tokens): the longest one sent is well inside it.
        Assert.True(server.Requests.Where(r => !IsJudge(r)).Max(r => System.Text.Encoding.UTF8.GetByteCount(r.UserText)) * 5 <= optIn);
    }

    [Fact]
    public async Task GenerateThenParseScoresTheParsedAnswerAndReportsTheParsedSharePerCandidate()
    {
        using var tmp = new Fixtures.TempDir();
        var train = SearchFixture.WriteTask(tmp["train.jsonl"], 10, 54);
        await using var server = FakeOpenAiServer.Start();
        server.Handler = r => FakeReply.Chat($"<INS>Say yes or no, try {r.Index}.</INS>");
        foreach (var parser in new[] { "labels", "regex:\\b(yes|no)\\b" })
        {
            var run = tmp["run-" + parser.Length];
            var (rc, stdout, stderr) = CliRunner.Run(Args(train, run, server, "--steps", "1", "--objective", "exact_match", "--output-parser", parser,
                "--max-new-tokens", "6", "--ape-proposals", "0"));
            Assert.True(rc == 0, stderr + stdout);
            var scored = Log(run).Where(r => r["score"] is not null).ToList();
            Assert.NotEmpty(scored);
            Assert.All(scored, r => Assert.InRange(r["parsed"]!.GetValue<double>(), 0, 1));
            Assert.All(scored, r => Assert.True(r["score"]!.GetValue<double>() <= r["parsed"]!.GetValue<double>() + 1e-9, "a match needs a parsed answer"));
        }
        var (rcBad, _, errBad) = CliRunner.Run(Args(train, tmp["bad"], server, "--objective", "exact_match", "--output-parser", "regex:(unclosed"));
        Assert.Equal(2, rcBad);
        Assert.Contains("--output-parser", errBad);
    }
}
