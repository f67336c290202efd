using System.Text.Json.Nodes;
using SoftPrompt.Llm;
using SoftPrompt.Search;
using SoftPrompt.Tests.Cli;
using SoftPrompt.Tests.Evaluation;
using SoftPrompt.Tuning;

namespace SoftPrompt.Tests.Opro;

/// <summary>The judge objective (scripted judge on the fake server) and the offline path (the tiny fixture model as its
/// own optimizer, no network), whose prompt <c>eval --searched</c> then takes as a condition.</summary>
[Collection("Console")]
public class OproJudgeAndOfflineTests
{
    static JsonObject Json(string path) => JsonNode.Parse(File.ReadAllText(path))!.AsObject();
    static bool IsJudge(RecordedRequest r) => r.Body["messages"]![0]!["content"]!.ToString() == Judge.System;

    [Fact]
    public async Task TheJudgeRanksScriptedOutputsAsScripted_AReplyWithoutAVerdictGetsOneReminder_StillNoneIsAFailureNotARating()
    {
        await using var server = FakeOpenAiServer.Start();
        server.Handler = r =>
        {
            if (r.UserText.Contains("Response:\nclear and short")) return FakeReply.Chat("Clear and short.\nScore: 9");
            if (r.UserText.Contains("Response:\nrambling")) return FakeReply.Chat(r.UserText.Contains(Judge.Reminder) ? "Score: 3" : "It rambles. 3/10");
            return FakeReply.Chat("I cannot rate this.");
        };
        var (client, info) = ChatErrors.OpenAiCompatible(server.Endpoint, "judge-model", null, 0, TimeSpan.FromSeconds(30), "judge");
        using var judge = new MeteredChatClient(client, new CallMeter(), judge: true, 2, info);
        var verdicts = await Judge.RateAll(judge, "Is the answer easy to follow?",
            new[] { new JudgeItem("q1", "rambling"), new JudgeItem("q2", "clear and short", "a clear answer"), new JudgeItem("q3", "???") }, 2);
        Assert.Equal(new int?[] { 3, 9, null }, verdicts.Select(v => v.Rating).ToArray());
        Assert.Equal(new[] { true, true, false }, verdicts.Select(v => v.Parsed).ToArray());
        Assert.Contains("I cannot rate this.", verdicts[2].Failure);
        Assert.Equal(new[] { 0, 0, 1, 0, 0, 0, 0, 0, 1, 0 }, Judge.Histogram(verdicts)); // a failure is no rating of 1
        Assert.Equal(6.0, Judge.Mean(verdicts), 9);
        Assert.Equal(1 + 2 + 2, server.Requests.Count); // the rambling and the unratable reply each got a reminder
        Assert.All(server.Requests, r => Assert.Contains("Rubric:\nIs the answer easy to follow?", r.UserText));
        Assert.All(server.Requests, r => Assert.Equal(0.0, r.Temperature));
        // The judge sees the reference answer when there is one, and is asked for reasoning first, then "Score: N".
        var q2 = server.Requests.Single(r => r.UserText.Contains("clear and short"));
        Assert.Contains("Reference answer", q2.UserText);
        Assert.Contains("a clear answer", q2.UserText);
        Assert.DoesNotContain("Reference answer", server.Requests.First(r => r.UserText.Contains("rambling")).UserText);
        Assert.Contains("\"Score: N\"", q2.UserText);
    }

    [Fact]
    public async Task JudgeObjectiveScoresInstructionsByTheMeanRatingAndCountsRepliesWithoutANumber()
    {
        using var tmp = new Fixtures.TempDir();
        var train = SearchFixture.WriteTask(tmp["train.jsonl"], 12, 6);
        File.WriteAllText(tmp["rubric.txt"], "The answer is one word.\n");
        await using var server = FakeOpenAiServer.Start();
        // The judge likes outputs for reviews of good things (8) and cannot rate the others (no number: rated 1).
        server.Handler = r => IsJudge(r)
            ? FakeReply.Chat(System.Text.RegularExpressions.Regex.IsMatch(r.UserText, @"Input:\n.* was (good|great|lovely|fun)\.") ? "Score: 8" : "I cannot rate this.")
            : FakeReply.Chat($"<INS>Reply in one word, number {r.Index}.</INS>");
        var run = tmp["run"];
        var (rc, stdout, stderr) = CliRunner.Run("search-hard-prompt", "--strategy", "opro", "--model", SearchFixture.ModelDir, "--train", train, "--output", run,
            "--optimizer-endpoint", server.Endpoint, "--optimizer-model", "opt", "--judge-model", "judge", "--objective", "judge", "--rubric", tmp["rubric.txt"],
            "--steps", "1", "--candidates-per-step", "2", "--score-examples", "6", "--max-new-tokens", "4", "--parallel", "2", "--threads", "1", "--ape-proposals", "0");
        Assert.True(rc == 0, stderr + stdout);
        var judged = server.Requests.Where(IsJudge).ToList();
        var first = judged.Where(r => !r.UserText.Contains(Judge.Reminder)).ToList();
        // Zero-shot + 2 candidates, 6 outputs each; an (input, output) pair already judged is taken from the cache.
        Assert.InRange(first.Count, 6, 3 * 6);
        static bool Liked(RecordedRequest r) => System.Text.RegularExpressions.Regex.IsMatch(r.UserText, @"Input:\n.* was (good|great|lovely|fun)\.");
        Assert.Equal(first.Count(Liked), first.Where(Liked).Select(r => r.UserText).Distinct().Count()); // rated pairs: once each
        Assert.All(judged, r => Assert.Equal("judge", r.Body["model"]!.GetValue<string>()));
        Assert.All(judged, r => Assert.Contains("Rubric:\nThe answer is one word.", r.UserText));
        Assert.All(first, r => Assert.Matches(@"Reference answer[^\n]*:\n(yes|no)\n", r.UserText));
        int liked = first.Count(r => System.Text.RegularExpressions.Regex.IsMatch(r.UserText, @"Input:\n.* was (good|great|lovely|fun)\."));
        int unratable = first.Count - liked; // never cached (failures are tried again), so each candidate asked for its own
        Assert.True(liked > 0);
        Assert.Equal(0, unratable % 3);
        // Unratable outputs are failures left out of the mean (one reminder each), not ratings of 1: every mean is 8.
        var traj = OproTrajectory.Load(Path.Combine(run, OproTrajectory.FileName));
        Assert.Equal("judge", traj.Metric);
        Assert.Equal(3, traj.Entries.Count);
        Assert.All(traj.Entries, e => Assert.Equal(8.0, e.Score, 9));
        Assert.All(traj.Entries, e => Assert.InRange(e.MeanOutputTokens!.Value, 0, 4));
        var summary = Json(Path.Combine(run, "summary.json"));
        Assert.Equal(unratable, summary["judge_failures"]!.GetValue<int>());
        Assert.Equal(judged.Count, summary["judge_calls"]!.GetValue<int>());
        Assert.Equal(first.Count + unratable, judged.Count); // one reminder per unratable reply
        Assert.Equal(2, summary["optimizer_calls"]!.GetValue<int>());
        // The verdicts are kept in the run folder (hashes, no data text).
        var cache = Json(Path.Combine(run, VerdictCache.FileName));
        Assert.Equal(liked, cache["ratings"]!.AsObject().Count);
        Assert.Equal(18 - first.Count, summary["judge_cache_hits"]!.GetValue<int>());
        Assert.DoesNotContain("was good", File.ReadAllText(Path.Combine(run, VerdictCache.FileName)));
        Assert.Equal("judge", HardPrompt.Load(run).Objective);
    }

    [Fact]
    public void OfflineOproWithTheTinyModelAsItsOwnOptimizerFeedsEval()
    {
        using var tmp = new Fixtures.TempDir();
        var train = SearchFixture.WriteTask(tmp["train.jsonl"], 16, 7);
        var run = tmp["run"];
        var (rc, stdout, stderr) = CliRunner.Run("search-hard-prompt", "--strategy", "opro", "--model", SearchFixture.ModelDir, "--train", train, "--output", run,
            "--optimizer-model-dir", SearchFixture.ModelDir, "--steps", "2", "--candidates-per-step", "3", "--score-examples", "8", "--validation-split", "0.25",
            "--select-by", "accuracy", "--optimizer-max-tokens", "12", "--init-instruction", "the movie answer", "--threads", "1");
        Assert.True(rc == 0, stderr + stdout);
        Assert.Contains("chat format none", stderr); // an informational message: stderr
        var summary = Json(Path.Combine(run, "summary.json"));
        Assert.Equal(6, summary["optimizer_calls"]!.GetValue<int>());
        Assert.True(summary["total_tokens"]!.GetValue<long>() > 0);
        Assert.Equal("accuracy", summary["select_metric"]!.GetValue<string>());
        var traj = OproTrajectory.Load(Path.Combine(run, OproTrajectory.FileName));
        Assert.Equal(2, traj.Step);
        Assert.Contains(traj.Entries, e => e.Text == "the movie answer" && e.Step == 0);
        // Every proposal is logged, whatever became of it.
        var log = File.ReadAllLines(Path.Combine(run, "search_log.jsonl")).Select(l => JsonNode.Parse(l)!.AsObject()).ToList();
        Assert.Equal(2 + 6, log.Count);
        var hp = HardPrompt.Load(run);
        Assert.Contains(traj.Entries, e => (e.Text.Length == 0 ? "" : e.Text + "\n") == hp.Text && Math.Abs(e.Score - hp.Score!.Value) < 1e-9);

        var report = tmp["report"];
        var (rcEval, outEval, errEval) = CliRunner.Run("eval", "--model", SearchFixture.ModelDir, "--data", train, "--searched", run, "--output", report, "--max-examples", "8", "--threads", "1");
        Assert.True(rcEval == 0, errEval + outEval);
        var metrics = Json(Path.Combine(report, "metrics.json"));
        var searched = Assert.Single(metrics["conditions"]!.AsArray(), c => c!["kind"]!.GetValue<string>() == "searched")!;
        // Named by how it was found (the file's source), its length and its folder.
        Assert.Equal($"searched (OPRO, {hp.TokenIds.Length} tokens) {Path.GetFileName(run)}", searched["name"]!.GetValue<string>());
    }

    [Fact]
    public async Task EvalAddsTheJudgeMetricForGenerationTasks()
    {
        using var tmp = new Fixtures.TempDir();
        var data = SearchFixture.WriteTask(tmp["data.jsonl"], 6, 8);
        File.WriteAllText(tmp["rubric.txt"], "Short answers are best.");
        await using var server = FakeOpenAiServer.Start();
        // Rated 6, except reviews of the film: no verdict even after the reminder (a failure, left out of the mean).
        server.Handler = r => FakeReply.Chat(r.UserText.Contains("Input:\nthe film") ? "hmm" : "Score: 6");
        var report = tmp["report"];
        var (rc, stdout, stderr) = CliRunner.Run("eval", "--model", SearchFixture.ModelDir, "--data", data, "--task", "generation", "--max-new-tokens", "3",
            "--rubric", tmp["rubric.txt"], "--judge-endpoint", server.Endpoint, "--judge-model", "judge", "--output", report, "--threads", "1");
        Assert.True(rc == 0, stderr + stdout);
        var m = Json(Path.Combine(report, "metrics.json"));
        var zero = m["conditions"]!.AsArray().Single(c => c!["kind"]!.GetValue<string>() == "zero-shot")!["metrics"]!;
        var films = File.ReadAllLines(data).Count(l => l.Contains("the film"));
        Assert.True(films < 6);
        Assert.Equal(6.0, zero["judge_score"]!.GetValue<double>(), 9);
        Assert.Equal(films, zero["judge_failures"]!.GetValue<double>());
        // Identical lines give identical outputs: judged once (the cache); each failure costs a reminder.
        int distinctRated = File.ReadAllLines(data).Where(l => !l.Contains("the film")).Distinct().Count();
        Assert.Equal(distinctRated + 2 * films, server.Requests.Count);
        Assert.True(zero["judge_answer_chars"]!.GetValue<double>() >= 0);
        var zeroCond = m["conditions"]!.AsArray().Single(c => c!["kind"]!.GetValue<string>() == "zero-shot")!;
        Assert.Equal(new[] { 0, 0, 0, 0, 0, 6 - films, 0, 0, 0, 0 }, zeroCond["judge_histogram"]!.AsArray().Select(x => x!.GetValue<int>()).ToArray());
        var md = File.ReadAllText(Path.Combine(report, "report.md"));
        Assert.Contains("judge_score", md);
        Assert.Contains($"zero-shot: judge ratings 1..10: [0, 0, 0, 0, 0, {6 - films}, 0, 0, 0, 0]", md);

        // Again with the first report's verdict cache: the rated outputs cost nothing; only the failures are tried again.
        int before = server.Requests.Count;
        var (rcCached, _, errCached) = CliRunner.Run("eval", "--model", SearchFixture.ModelDir, "--data", data, "--task", "generation", "--max-new-tokens", "3",
            "--rubric", tmp["rubric.txt"], "--judge-endpoint", server.Endpoint, "--judge-model", "judge", "--output", tmp["report-cached"], "--threads", "1",
            "--judge-cache", Path.Combine(report, VerdictCache.FileName));
        Assert.True(rcCached == 0, errCached);
        Assert.Equal(2 * films, server.Requests.Count - before);
        // --max-calls bounds the judge in eval: one call, the rest counted as not judged.
        before = server.Requests.Count;
        var (rcMax, _, errMax) = CliRunner.Run("eval", "--model", SearchFixture.ModelDir, "--data", data, "--task", "generation", "--max-new-tokens", "3",
            "--rubric", tmp["rubric.txt"], "--judge-endpoint", server.Endpoint, "--judge-model", "judge", "--output", tmp["report-max"], "--threads", "1", "--max-calls", "1");
        Assert.True(rcMax == 0, errMax);
        Assert.Equal(1, server.Requests.Count - before);
        var zeroMax = Json(Path.Combine(tmp["report-max"], "metrics.json"))["conditions"]!.AsArray().Single(c => c!["kind"]!.GetValue<string>() == "zero-shot")!["metrics"]!;
        Assert.True(zeroMax["judge_not_called"]!.GetValue<double>() >= 5 - 1);
        Assert.DoesNotContain("judge_rating_", md);

        var (rcClass, _, errClass) = CliRunner.Run("eval", "--model", SearchFixture.ModelDir, "--data", data, "--rubric", tmp["rubric.txt"],
            "--judge-endpoint", server.Endpoint, "--judge-model", "judge", "--output", tmp["report2"], "--threads", "1");
        Assert.Equal(2, rcClass);
        Assert.Contains("applies to generation tasks", errClass);
    }
}
