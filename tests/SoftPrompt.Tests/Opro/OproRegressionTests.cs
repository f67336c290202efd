using System.Text.Json.Nodes;
using SoftPrompt.Llm;
using SoftPrompt.Search;
using SoftPrompt.Tests.Cli;
using SoftPrompt.Tests.Evaluation;
using SoftPrompt.Tuning;

namespace SoftPrompt.Tests.Opro;

/// <summary>Regression tests of issue #20's bugs: each run failed (exit 1 or 2, no result) or misread before the fix.</summary>
[Collection("Console")]
public class OproRegressionTests
{
    static JsonObject Json(string path) => JsonNode.Parse(File.ReadAllText(path))!.AsObject();
    static List<JsonObject> Log(string run) => File.ReadAllLines(Path.Combine(run, "search_log.jsonl")).Select(l => JsonNode.Parse(l)!.AsObject()).ToList();
    static bool IsJudge(RecordedRequest r) => r.Body["messages"]![0]!["content"]!.ToString() == Judge.System;

    static string[] JudgeArgs(string train, string run, string rubric, FakeOpenAiServer server, params string[] extra) =>
        new[] { "search-hard-prompt", "--strategy", "opro", "--model", SearchFixture.ModelDir, "--train", train, "--output", run,
                "--optimizer-endpoint", server.Endpoint, "--optimizer-model", "opt", "--judge-model", "judge", "--objective", "judge", "--rubric", rubric,
                "--candidates-per-step", "2", "--score-examples", "4", "--max-new-tokens", "3", "--parallel", "1", "--threads", "1", "--ape-proposals", "0" }
            .Concat(extra).ToArray();

    [Fact]
    public async Task Bug1_BudgetUsedUpWhileTheJudgeScoresEndsTheRunCleanly_AndResumeWithTheSameBudgetToo()
    {
        using var tmp = new Fixtures.TempDir();
        var train = SearchFixture.WriteTask(tmp["train.jsonl"], 12, 21);
        File.WriteAllText(tmp["rubric.txt"], "One word.");
        await using var server = FakeOpenAiServer.Start();
        server.Handler = r => IsJudge(r) ? FakeReply.Chat("Score: 6") : FakeReply.Chat($"<INS>Reply with one word, please {r.Index}.</INS>");
        var run = tmp["run"];
        // Step 0 costs at most 4 judge calls; step 1's two proposals, then the judge runs out mid-candidate.
        var (rc, stdout, stderr) = CliRunner.Run(JudgeArgs(train, run, tmp["rubric.txt"], server, "--steps", "3", "--max-calls", "7"));
        Assert.True(rc == 0, stderr + stdout);
        Assert.True(File.Exists(Path.Combine(run, HardPrompt.FileName)));
        var summary = Json(Path.Combine(run, "summary.json"));
        Assert.Equal("max_calls", summary["stop_reason"]!.GetValue<string>());
        Assert.Equal(7, server.Requests.Count);
        Assert.Contains(Log(run), r => r["status"]!.GetValue<string>() == "budget");
        Assert.Equal(1, summary["steps"]!.GetValue<int>());

        // --resume with the same budget: nothing left to spend, the run ends cleanly again with its result.
        File.Delete(Path.Combine(run, HardPrompt.FileName));
        var (rc2, out2, err2) = CliRunner.Run("search-hard-prompt", "--resume", run);
        Assert.True(rc2 == 0, err2 + out2);
        Assert.Equal(7, server.Requests.Count);
        Assert.Equal("max_calls", Json(Path.Combine(run, "summary.json"))["stop_reason"]!.GetValue<string>());
        Assert.True(File.Exists(Path.Combine(run, HardPrompt.FileName)));

        // A budget too small for the zero-shot instruction itself: a clear error (exit 2), not an internal error.
        var (rc3, _, err3) = CliRunner.Run(JudgeArgs(train, tmp["tiny"], tmp["rubric.txt"], server, "--steps", "1", "--max-calls", "2", "--quiet"));
        Assert.Equal(2, rc3);
        Assert.Contains("ran out before the zero-shot instruction was scored", err3);
    }

    [Theory]
    [InlineData("...the <INS> above: <INS>Reply in one word.</INS>")]
    [InlineData("<INS><INS>Reply in one word.</INS>")]
    [InlineData("<INS>Answer. <ins>again</INS>")]
    public void Bug3_AReplyThatLeavesAMarkerInsideTheInstructionIsNoInstruction(string reply) => Assert.Null(MetaPrompt.Parse(reply, plain: false));

    [Fact]
    public async Task Bug4_ACandidateTooLongForMaxLengthIsAFailedCandidateAndTheRunGoesOn()
    {
        using var tmp = new Fixtures.TempDir();
        var train = SearchFixture.WriteTask(tmp["train.jsonl"], 8, 22);
        await using var server = FakeOpenAiServer.Start();
        var longOne = string.Join(" ", Enumerable.Repeat("the movie was good", 14)) + ".";
        server.Handler = r => FakeReply.Chat(r.Index == 1 ? $"<INS>{longOne}</INS>" : $"<INS>Say yes or no {r.Index}.</INS>");
        var run = tmp["run"];
        var (rc, stdout, stderr) = CliRunner.Run("search-hard-prompt", "--strategy", "opro", "--model", SearchFixture.ModelDir, "--train", train, "--output", run,
            "--optimizer-endpoint", server.Endpoint, "--optimizer-model", "m", "--candidates-per-step", "2", "--steps", "1", "--score-examples", "4",
            "--max-length", "40", "--parallel", "1", "--threads", "1", "--ape-proposals", "0");
        Assert.True(rc == 0, stderr + stdout);
        var row = Assert.Single(Log(run), r => r["status"]!.GetValue<string>() == "too_long_tokens");
        Assert.Contains("--max-length 40", row["detail"]!.GetValue<string>());
        Assert.Contains(Log(run), r => r["status"]!.GetValue<string>() == "scored");
    }

    static bool Filtered(RecordedRequest r) => System.Text.RegularExpressions.Regex.IsMatch(r.UserText, "Input:\nthe [a-z]+ was (bad|awful|boring|dull)");

    [Fact]
    public async Task Bug5_AJudgeHttpErrorIsAFailedVerdict_TheRunStopsOnlyPastTheFailureThreshold()
    {
        using var tmp = new Fixtures.TempDir();
        var train = SearchFixture.WriteTask(tmp["train.jsonl"], 12, 23);
        File.WriteAllText(tmp["rubric.txt"], "One word.");
        await using var server = FakeOpenAiServer.Start();
        // The content filter refuses to judge bad reviews (400); the others get 7.
        server.Handler = r => !IsJudge(r) ? FakeReply.Chat($"<INS>Answer in a word {r.Index}.</INS>")
            : Filtered(r) ? FakeReply.Error(400, "content filter") : FakeReply.Chat("Score: 7");
        var run = tmp["run"];
        var (rc, stdout, stderr) = CliRunner.Run(JudgeArgs(train, run, tmp["rubric.txt"], server, "--steps", "2", "--max-retries", "0"));
        var plots = server.Requests.Count(r => IsJudge(r) && Filtered(r));
        Assert.True(plots > 0, "the data has reviews of the plot in the score set");
        Assert.True(rc == 0, stderr + stdout);
        var summary = Json(Path.Combine(run, "summary.json"));
        Assert.Equal(plots, summary["judge_failures"]!.GetValue<int>());
        Assert.Contains($"judge: {plots} verdict(s) failed", stdout);
        Assert.Equal("max_steps", summary["stop_reason"]!.GetValue<string>());
        Assert.All(OproTrajectory.Load(Path.Combine(run, OproTrajectory.FileName)).Entries, e => Assert.Equal(7.0, e.Score, 9));

        // Past --max-judge-failures the run stops: the best so far is written, exit 6, the reason in the summary.
        var (rc2, _, err2) = CliRunner.Run(JudgeArgs(train, tmp["strict"], tmp["rubric.txt"], server, "--steps", "3", "--max-retries", "0", "--max-judge-failures", "0"));
        Assert.Equal(6, rc2);
        Assert.Contains("--max-judge-failures 0", err2);
        Assert.Equal("judge_failures", Json(Path.Combine(tmp["strict"], "summary.json"))["stop_reason"]!.GetValue<string>());
        Assert.True(File.Exists(Path.Combine(tmp["strict"], HardPrompt.FileName)));
    }

    [Fact]
    public async Task Bug6_AnOptimizerFailureAmongParallelCallsReachesTheCliAsItselfWithItsExitCode()
    {
        // The removed catch (AggregateException) never ran: the awaited Parallel.ForEachAsync rethrows the first failure
        // itself. This pins that behaviour with several calls in flight (it passed before the removal too).
        using var tmp = new Fixtures.TempDir();
        var train = SearchFixture.WriteTask(tmp["train.jsonl"], 8, 24);
        await using var server = FakeOpenAiServer.Start();
        server.Handler = r => r.Index == 2 ? FakeReply.Error(404, "no such model") : FakeReply.Chat($"<INS>Instruction {r.Index}.</INS>");
        var (rc, _, err) = CliRunner.Run("search-hard-prompt", "--strategy", "opro", "--model", SearchFixture.ModelDir, "--train", train, "--output", tmp["run"],
            "--optimizer-endpoint", server.Endpoint, "--optimizer-model", "m", "--candidates-per-step", "4", "--parallel", "3", "--steps", "1",
            "--score-examples", "4", "--max-retries", "0", "--threads", "1", "--quiet", "--ape-proposals", "0");
        Assert.Equal(5, rc);
        Assert.Contains("404 Not Found", Assert.Single(err.Trim().Split('\n')));
    }
}

/// <summary>The verdict cache across a resumed run: an (input, output) pair judged before the interruption is not paid for again.</summary>
[Collection("Console")]
public class OproJudgeCacheResumeTests
{
    static bool IsJudge(RecordedRequest r) => r.Body["messages"]![0]!["content"]!.ToString() == Judge.System;

    [Fact]
    public async Task AResumedJudgeRunReusesTheVerdictsOfTheFirstRun()
    {
        using var tmp = new Fixtures.TempDir();
        var train = SearchFixture.WriteTask(tmp["train.jsonl"], 10, 61);
        File.WriteAllText(tmp["rubric.txt"], "One word.");
        await using var server = FakeOpenAiServer.Start();
        server.Handler = r => IsJudge(r) ? FakeReply.Chat("Score: 6") : FakeReply.Chat($"<INS>Reply in one word, variant {r.Index}.</INS>");
        var run = tmp["run"];
        string[] common = { "search-hard-prompt", "--strategy", "opro", "--model", SearchFixture.ModelDir, "--train", train, "--output", run,
            "--optimizer-endpoint", server.Endpoint, "--optimizer-model", "opt", "--judge-model", "judge", "--objective", "judge", "--rubric", tmp["rubric.txt"],
            "--candidates-per-step", "2", "--score-examples", "4", "--max-new-tokens", "2", "--parallel", "1", "--threads", "1", "--ape-proposals", "0" };
        var (rc, _, err) = CliRunner.Run(common.Concat(new[] { "--steps", "1" }).ToArray());
        Assert.True(rc == 0, err);
        var firstRun = server.Requests.Where(IsJudge).Select(r => r.UserText).ToHashSet();
        File.Delete(Path.Combine(run, HardPrompt.FileName)); // as if it had stopped after step 1
        int before = server.Requests.Count;
        var (rc2, _, err2) = CliRunner.Run("search-hard-prompt", "--resume", run, "--steps", "3");
        Assert.True(rc2 == 0, err2);
        var secondRun = server.Requests.Skip(before).Where(IsJudge).Select(r => r.UserText).ToList();
        Assert.Empty(secondRun.Where(firstRun.Contains)); // nothing judged twice
        var summary = JsonNode.Parse(File.ReadAllText(Path.Combine(run, "summary.json")))!;
        Assert.True(summary["judge_cache_hits"]!.GetValue<int>() > 0, "later candidates' outputs repeat earlier ones with this model");
    }
}

/// <summary>The budget running out during the judge's held-out pick: the candidates validated so far compete, the
/// summary says so, the run ends cleanly.</summary>
[Collection("Console")]
public class OproBudgetDuringSelectionTests
{
    static bool IsJudge(RecordedRequest r) => r.Body["messages"]![0]!["content"]!.ToString() == Judge.System;

    [Fact]
    public async Task TheBudgetRunningOutDuringTheHeldOutPickEndsTheRunWithWhatWasValidated()
    {
        using var tmp = new Fixtures.TempDir();
        var train = SearchFixture.WriteTask(tmp["train.jsonl"], 8, 71);
        File.WriteAllLines(tmp["held.jsonl"], new[] { "{\"input\": \"zzheld one answer:\", \"output\": \"yes\"}", "{\"input\": \"zzheld two answer:\", \"output\": \"no\"}" });
        File.WriteAllText(tmp["rubric.txt"], "One word.");
        await using var server = FakeOpenAiServer.Start();
        server.Handler = _ => FakeReply.Chat("Score: 6");
        string[] Args(string run, params string[] extra) => new[] { "search-hard-prompt", "--strategy", "opro", "--model", SearchFixture.ModelDir, "--train", train,
            "--validation", tmp["held.jsonl"], "--output", run, "--optimizer-endpoint", server.Endpoint, "--optimizer-model", "opt", "--judge-model", "judge",
            "--objective", "judge", "--rubric", tmp["rubric.txt"], "--steps", "0", "--init-instruction", "Answer in one word.", "--score-examples", "2",
            "--max-new-tokens", "2", "--validate-top", "2", "--parallel", "1", "--threads", "1" }.Concat(extra).ToArray();
        var (rc, _, err) = CliRunner.Run(Args(tmp["full"]));
        Assert.True(rc == 0, err);
        int scoring = server.Requests.TakeWhile(r => !r.UserText.Contains("zzheld")).Count();
        Assert.True(server.Requests.Count > scoring + 1, "the held-out pick judges more than one output");
        int before = server.Requests.Count;
        var (rc2, out2, err2) = CliRunner.Run(Args(tmp["run"], "--max-calls", (scoring + 1).ToString()));
        Assert.True(rc2 == 0, err2 + out2);
        Assert.Equal(scoring + 1, server.Requests.Count - before);
        var summary = JsonNode.Parse(File.ReadAllText(Path.Combine(tmp["run"], "summary.json")))!;
        Assert.Contains("budget ran out during the held-out pick", summary["selection_note"]!.GetValue<string>());
        Assert.True(File.Exists(Path.Combine(tmp["run"], HardPrompt.FileName)));
    }
}
