using System.Diagnostics;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using SoftPrompt.Llm;
using SoftPrompt.Search;
using SoftPrompt.Tests.Cli;
using SoftPrompt.Tests.Evaluation;
using SoftPrompt.Tests.Opro;

namespace SoftPrompt.Tests.Distributed;

/// <summary>
/// OPRO under mpirun: rank 0 alone calls the optimizer and the judge (a scripted server on loopback gets the very
/// requests one process sends), the ranks share the frozen model's scoring, and the run folder is the one-process run's;
/// a service failure ends every rank with its exit code, said once; SIGTERM saves the trajectory for --resume.
/// </summary>
[Collection("Console")]
public class MpiOproTests
{
    static readonly TimeSpan Limit = TimeSpan.FromSeconds(150);
    static bool IsJudge(RecordedRequest r) => r.Body["messages"]![0]!["content"]!.ToString() == Judge.System;

    /// <summary>Scripted by content, never by arrival order: the optimizer's reply follows from its meta-prompt, the
    /// judge's rating from the output it is shown.</summary>
    static FakeReply Script(RecordedRequest r)
    {
        int h = Stable(r.UserText);
        if (IsJudge(r)) return FakeReply.Chat($"Fine.\nScore: {1 + h % 10}");
        return FakeReply.Chat($"<INS>Say yes or no about the review, variant {h % 1000} (seed {r.Body["seed"]}).</INS>");
    }

    static int Stable(string s)
    {
        unchecked
        {
            int h = 17;
            foreach (var ch in s) h = h * 31 + ch;
            return h & 0x7fffffff;
        }
    }

    static string[] Args(string train, string output, FakeOpenAiServer server, string objective, params string[] extra)
    {
        var args = new List<string>
        {
            "search-hard-prompt", "--strategy", "opro", "--model", SearchFixture.ModelDir, "--train", train, "--output", output,
            "--optimizer-endpoint", server.Endpoint, "--optimizer-model", "opt", "--objective", objective, "--validation-split", "0.25",
            "--steps", "2", "--candidates-per-step", "2", "--score-examples", "9", "--max-new-tokens", "3", "--parallel", "1",
            "--seed", "5", "--threads", "1", "--ape-proposals", "0",
        };
        if (objective == "judge") args.AddRange(new[] { "--judge-model", "judge", "--rubric", Path.Combine(Path.GetDirectoryName(train)!, "rubric.txt") });
        for (int i = 0; i < extra.Length; i += 2)
        {
            int at = args.IndexOf(extra[i]);
            if (at >= 0) args.RemoveRange(at, 2);
            args.AddRange(extra.Skip(i).Take(2));
        }
        return args.ToArray();
    }

    static IEnumerable<string> Rows(string run) => File.ReadAllLines(Path.Combine(run, HardPromptSearchJob.LogFile))
        .Select(l => { var o = JsonNode.Parse(l)!.AsObject(); o.Remove("elapsed_s"); return o.ToJsonString(); });

    static JsonObject Json(string path) => JsonNode.Parse(File.ReadAllText(path))!.AsObject();

    static string Without(JsonObject o, params string[] keys)
    {
        foreach (var k in keys) o.Remove(k);
        return o.ToJsonString();
    }

    [MpiTheory]
    [InlineData("accuracy")]
    [InlineData("judge")]
    public Task OproOnTwoRanksIsTheOneProcessRunWithTheSameCalls(string objective) => OproOnTwoRanks(objective, hydra: false);

    internal static async Task OproOnTwoRanks(string objective, bool hydra)
    {
        using var tmp = new Fixtures.TempDir();
        var train = SearchFixture.WriteTask(tmp["train.jsonl"], 24, 8);
        File.WriteAllText(tmp["rubric.txt"], "The answer is one word.\n");
        await using var one = FakeOpenAiServer.Start();
        await using var two = FakeOpenAiServer.Start();
        one.Handler = Script;
        two.Handler = Script;

        var (rc1, out1, err1) = CliRunner.Run(Args(train, tmp["one"], one, objective));
        Assert.True(rc1 == 0, err1 + out1);
        var (rc2, out2, err2) = Mpi.Run(hydra, 2, Limit, Args(train, tmp["two"], two, objective));
        Assert.True(rc2 == 0, err2 + out2);

        // The optimizer (and the judge) were called once per job: the same requests, in the same order.
        Assert.NotEmpty(one.Requests);
        Assert.Equal(one.Requests.Select(r => r.Body.ToJsonString()), two.Requests.Select(r => r.Body.ToJsonString()));
        if (objective == "judge") Assert.Contains(two.Requests, IsJudge);

        // The same run folder: log, trajectory, result and summary (timings aside), the judge's cache.
        Assert.Equal(Rows(tmp["one"]), Rows(tmp["two"]));
        Assert.Equal(File.ReadAllText(tmp["one/hard_prompt.json"]).Replace(one.Endpoint, "ENDPOINT"), File.ReadAllText(tmp["two/hard_prompt.json"]).Replace(two.Endpoint, "ENDPOINT"));
        Assert.Equal(Without(Json(tmp["one/" + OproTrajectory.FileName]), "wall_seconds"), Without(Json(tmp["two/" + OproTrajectory.FileName]), "wall_seconds"));
        Assert.Equal(Without(Json(tmp["one/summary.json"]), "wall_s"), Without(Json(tmp["two/summary.json"]), "wall_s"));
        if (objective == "judge") Assert.Equal(File.ReadAllText(tmp["one/" + VerdictCache.FileName]), File.ReadAllText(tmp["two/" + VerdictCache.FileName]));
        var traj = OproTrajectory.Load(tmp["two/" + OproTrajectory.FileName]);
        Assert.Equal(2, traj.Step);
        Assert.True(traj.Entries.Count >= 3, "the zero-shot instruction and candidates were scored");

        // Rank 0 alone reported.
        Assert.Single(Regex.Matches(out2, "^hard prompt: ", RegexOptions.Multiline));
        Assert.Contains("2 ranks", err2 + out2);
    }

    /// <summary>The tiny model as its own optimizer (no network): rank 0 alone generates the proposals; exact match is
    /// scored by generation shared over the ranks.</summary>
    [MpiFact]
    public void OfflineOproOnTwoRanksIsTheOneProcessRun()
    {
        using var tmp = new Fixtures.TempDir();
        var train = SearchFixture.WriteTask(tmp["train.jsonl"], 20, 5);
        string[] Args(string output) => new[]
        {
            "search-hard-prompt", "--strategy", "opro", "--model", SearchFixture.ModelDir, "--train", train, "--output", output,
            "--optimizer-model-dir", SearchFixture.ModelDir, "--objective", "exact_match", "--steps", "2", "--candidates-per-step", "2",
            "--score-examples", "7", "--max-new-tokens", "2", "--optimizer-max-tokens", "12", "--seed", "2", "--threads", "1",
        };
        var (rc1, out1, err1) = CliRunner.Run(Args(tmp["one"]));
        Assert.True(rc1 == 0, err1 + out1);
        var (rc2, out2, err2) = Mpi.Run(2, Limit, Args(tmp["two"]));
        Assert.True(rc2 == 0, err2 + out2);
        Assert.Equal(Rows(tmp["one"]), Rows(tmp["two"]));
        Assert.Equal(File.ReadAllText(tmp["one/hard_prompt.json"]), File.ReadAllText(tmp["two/hard_prompt.json"]));
        Assert.Equal(Without(Json(tmp["one/" + OproTrajectory.FileName]), "wall_seconds"), Without(Json(tmp["two/" + OproTrajectory.FileName]), "wall_seconds"));
        Assert.True(OproTrajectory.Load(tmp["two/" + OproTrajectory.FileName]).OptimizerCalls >= 2);
    }

    /// <summary>--resume under MPI: rank 0 reads the trajectory and every rank continues from it, to the straight run.</summary>
    [MpiFact]
    public void AnOproRunResumedOnTwoRanksEndsWhereAStraightRunEnds()
    {
        using var tmp = new Fixtures.TempDir();
        var train = SearchFixture.WriteTask(tmp["train.jsonl"], 20, 5);
        string[] Args(string output, int steps) => new[]
        {
            "search-hard-prompt", "--strategy", "opro", "--model", SearchFixture.ModelDir, "--train", train, "--output", output,
            "--optimizer-model-dir", SearchFixture.ModelDir, "--objective", "accuracy", "--steps", steps.ToString(), "--candidates-per-step", "2",
            "--score-examples", "7", "--optimizer-max-tokens", "12", "--seed", "2", "--threads", "1",
        };
        var (rc1, o1, e1) = CliRunner.Run(Args(tmp["straight"], 3));
        Assert.True(rc1 == 0, e1 + o1);
        var (rc2, o2, e2) = CliRunner.Run(Args(tmp["resumed"], 1));
        Assert.True(rc2 == 0, e2 + o2);
        // A finished run is resumed for more steps: its result file is rewritten at the end.
        var (rc3, o3, e3) = Mpi.Run(2, Limit, new[] { "search-hard-prompt", "--resume", tmp["resumed"], "--steps", "3" });
        Assert.True(rc3 == 0, e3 + o3);
        Assert.Equal(Rows(tmp["straight"]), Rows(tmp["resumed"]));
        Assert.Equal(Without(Json(tmp["straight/" + OproTrajectory.FileName]), "wall_seconds"), Without(Json(tmp["resumed/" + OproTrajectory.FileName]), "wall_seconds"));
        Assert.Equal(File.ReadAllText(tmp["straight/hard_prompt.json"]), File.ReadAllText(tmp["resumed/hard_prompt.json"]));
    }

    [MpiFact]
    public async Task AnOptimizerFailureEndsEveryRankWithItsExitCodeSaidOnce()
    {
        using var tmp = new Fixtures.TempDir();
        var train = SearchFixture.WriteTask(tmp["train.jsonl"], 16, 3);
        await using var server = FakeOpenAiServer.Start();
        server.Handler = _ => FakeReply.Error(401, "invalid api key");
        var sw = Stopwatch.StartNew();
        var (rc, so, se) = Mpi.Run(2, Limit, Args(train, tmp["run"], server, "accuracy", "--max-retries", "0", "--ape-proposals", "2"));
        Assert.True(rc == 4, $"exit {rc}: {se}{so}"); // the key refused: the exit code one process gives (docs/opro.md)
        Assert.Single(Regex.Matches(se, "^error: ", RegexOptions.Multiline));
        Assert.Contains("401", se);
        Assert.DoesNotContain("MPI_Abort", se + so);
        Assert.DoesNotContain("   at ", se);
        Assert.Single(server.Requests); // rank 0 alone called
    }

    [MpiFact]
    public async Task EvalWithAJudgeOnTwoRanksJudgesOnceAndAJudgeFailureEndsEveryRankWithItsCode()
    {
        using var tmp = new Fixtures.TempDir();
        var data = SearchFixture.WriteTask(tmp["data.jsonl"], 9, 8);
        File.WriteAllText(tmp["rubric.txt"], "Short answers are best.");
        await using var one = FakeOpenAiServer.Start();
        await using var two = FakeOpenAiServer.Start();
        one.Handler = Script;
        two.Handler = Script;
        string[] EvalArgs(string report, FakeOpenAiServer server) => new[] { "eval", "--model", SearchFixture.ModelDir, "--data", data, "--task", "generation",
            "--max-new-tokens", "3", "--instruction", "Answer yes or no.", "--rubric", tmp["rubric.txt"], "--judge-endpoint", server.Endpoint, "--judge-model", "judge",
            "--output", report, "--threads", "1" };
        var (rc1, out1, err1) = CliRunner.Run(EvalArgs(tmp["one"], one));
        Assert.True(rc1 == 0, err1 + out1);
        var (rc2, out2, err2) = Mpi.Run(2, Limit, EvalArgs(tmp["two"], two));
        Assert.True(rc2 == 0, err2 + out2);
        Assert.NotEmpty(one.Requests);
        Assert.Equal(one.Requests.Select(r => r.Body.ToJsonString()).Order(), two.Requests.Select(r => r.Body.ToJsonString()).Order()); // judged once per job
        string Metrics(string dir, FakeOpenAiServer server)
        {
            var o = Json(Path.Combine(dir, "metrics.json"));
            o.Remove("created");
            return o.ToJsonString().Replace(JsonValue.Create(dir).ToJsonString().Trim('"'), "REPORT").Replace(server.Endpoint, "ENDPOINT");
        }
        Assert.Equal(Metrics(tmp["one"], one), Metrics(tmp["two"], two));
        Assert.Contains("judge_score", Metrics(tmp["two"], two));

        // The judge's endpoint fails: every rank ends with the code one process gives, said once, no MPI_Abort.
        two.Handler = _ => FakeReply.Error(403, "forbidden");
        var (rc, so, se) = Mpi.Run(2, Limit, EvalArgs(tmp["three"], two));
        var (rcOne, _, seOne) = CliRunner.Run(EvalArgs(tmp["four"], two));
        Assert.True(rcOne != 0, seOne);
        Assert.True(rc == rcOne, $"exit {rc} under MPI, {rcOne} in one process: {se}{so}");
        Assert.Single(Regex.Matches(se, "^error: ", RegexOptions.Multiline));
        Assert.DoesNotContain("MPI_Abort", se + so);
    }

    [MpiFact]
    public async Task SigtermToMpirunSavesTheTrajectoryAndTheRunResumesWithoutMpi()
    {
        using var tmp = new Fixtures.TempDir();
        var train = SearchFixture.WriteTask(tmp["train.jsonl"], 16, 4);
        await using var server = FakeOpenAiServer.Start();
        server.Handler = r => { Thread.Sleep(150); return Script(r); };
        var run = tmp["run"];
        var trajectory = Path.Combine(run, OproTrajectory.FileName);
        var (rc, so, se) = Mpi.TerminateWhen(false, 2, Args(train, run, server, "accuracy", "--steps", "1000"),
            () => File.Exists(trajectory) && OproTrajectory.Load(trajectory).Step >= 2);
        Assert.NotEqual(0, rc);
        var m = Regex.Match(se, @"interrupted at step (\d+);.*continue with: softprompt search-hard-prompt --resume (\S+)");
        Assert.True(m.Success, se + so);
        Assert.Single(Regex.Matches(se, "interrupted at step")); // rank 0 alone
        Assert.Equal(run, m.Groups[2].Value);
        int saved = OproTrajectory.Load(trajectory).Step;
        Assert.Equal(int.Parse(m.Groups[1].Value), saved);

        // Without MPI, one step more: the run goes on from the saved step.
        int before = server.Requests.Count;
        var (rcResume, o1, e1) = CliRunner.Run("search-hard-prompt", "--resume", run, "--steps", (saved + 1).ToString());
        Assert.True(rcResume == 0, e1 + o1);
        Assert.Equal(saved + 1, OproTrajectory.Load(trajectory).Step);
        Assert.Equal(before + 2, server.Requests.Count); // one step's two proposals, nothing redone
    }
}
