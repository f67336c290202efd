using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using SoftPrompt.Search;
using SoftPrompt.Tests.Cli;
using SoftPrompt.Tests.Evaluation;
using SoftPrompt.Tuning;

namespace SoftPrompt.Tests.Opro;

/// <summary>
/// <c>search-hard-prompt --strategy opro</c> end to end against an in-process OpenAI-compatible server on 127.0.0.1
/// (scripted replies, recorded requests) and against the tiny fixture model as its own local optimizer. The target
/// model is the tiny gpt2 fixture with a trained tokenizer (<see cref="SearchFixture"/>), so each run takes a second.
/// </summary>
[Collection("Console")]
public class OproSearchTests
{
    static string[] Args(string train, string output, FakeOpenAiServer server, params string[] extra) =>
        new[] { "search-hard-prompt", "--strategy", "opro", "--model", SearchFixture.ModelDir, "--train", train, "--output", output,
                "--optimizer-endpoint", server.Endpoint, "--optimizer-model", "fake-model", "--candidates-per-step", "3",
                "--score-examples", "8", "--parallel", "1", "--seed", "3", "--threads", "1", "--ape-proposals", "0" }.Concat(extra.Contains("--steps") ? extra : extra.Concat(new[] { "--steps", "2" })).ToArray();

    static List<JsonObject> Log(string run) => File.ReadAllLines(Path.Combine(run, "search_log.jsonl")).Select(l => JsonNode.Parse(l)!.AsObject()).ToList();
    static JsonObject Json(string path) => JsonNode.Parse(File.ReadAllText(path))!.AsObject();

    static FakeReply Script(RecordedRequest r, params string[] replies) => FakeReply.Chat(replies[(r.Index - 1) % replies.Length]);

    [Fact]
    public void MetaPromptHoldsAscendingPairsAndExemplars_RepliesAreParsedAndDeduplicated_TheBestWins_TheKeyIsOnlyABearerHeader()
    {
        using var tmp = new Fixtures.TempDir();
        var train = SearchFixture.WriteTask(tmp["train.jsonl"], 16, 1);
        const string key = "sk-test-4f1c9e0b7d";
        const string env = "SOFTPROMPT_TEST_OPRO_KEY_1";
        Environment.SetEnvironmentVariable(env, key);
        var server = FakeOpenAiServer.Start();
        try
        {
            server.Handler = r => Script(r,
                "<INS>Say yes or no.</INS>", "Here: <INS>say  YES or no.</INS>", "no markers in this reply",
                "<INS>Is the review good? Answer yes or no.</INS>", "<INS>Say yes or no.</INS>", "[Decide: yes or no.]");
            var run = tmp["run"];
            var (rc, stdout, stderr) = CliRunner.Run(Args(train, run, server, "--api-key-env", env, "--init-instruction", "Answer the question."));
            Assert.True(rc == 0, stderr + stdout);

            var reqs = server.Requests;
            Assert.Equal(6, reqs.Count);
            Assert.All(reqs, r =>
            {
                Assert.Equal("/v1/chat/completions", r.Path);
                Assert.Equal("Bearer " + key, r.Authorization);
                Assert.Equal("fake-model", r.Body["model"]!.GetValue<string>());
                Assert.Equal(1.0, r.Temperature);
            });
            // Step 2's meta-prompt: the scored pairs so far in ascending order (best last), then 3 exemplars with the slot.
            var meta = reqs[3].UserText;
            var pairs = Regex.Matches(meta, @"text:\n(.*)\nscore:\n(\d+)").Select(m => (Text: m.Groups[1].Value, Score: int.Parse(m.Groups[2].Value))).ToList();
            Assert.Equal(pairs.Select(p => p.Score).Order().ToArray(), pairs.Select(p => p.Score).ToArray());
            Assert.Equal(new[] { "(empty instruction)", "Answer the question.", "Say yes or no." }.Order(), pairs.Select(p => p.Text).Order());
            Assert.Equal(3, Regex.Matches(meta, "input:\n<INS>\nthe [a-z]+ was [a-z]+\\. answer:\noutput:\n(yes|no)").Count);
            Assert.DoesNotContain("input:", reqs[0].UserText[..reqs[0].UserText.IndexOf("Below are some problems", StringComparison.Ordinal)]);

            // Log: every proposal is a row; the duplicates (normalised and exact) and the unparsable reply are failed rows.
            var log = Log(run);
            string Status(string text) => log.Single(r => r["text"]!.GetValue<string>() == text && r["status"]!.GetValue<string>() is not ("duplicate" or "parse_failed"))["status"]!.GetValue<string>();
            Assert.Equal("initial", Status(""));
            Assert.Equal("initial", Status("Answer the question."));
            Assert.Equal("scored", Status("Say yes or no."));
            Assert.Equal("scored", Status("Decide: yes or no."));
            Assert.Equal(2, log.Count(r => r["status"]!.GetValue<string>() == "duplicate"));
            Assert.Single(log, r => r["status"]!.GetValue<string>() == "parse_failed" && r["detail"]!.GetValue<string>().Contains("no markers"));
            Assert.All(log.Where(r => r["status"]!.GetValue<string>() is "scored" or "initial"), r => Assert.InRange(r["score"]!.GetValue<double>(), 0, 1));

            // The best-scoring instruction wins (no held-out data): hard_prompt.json holds it and eval can read it.
            var traj = Json(Path.Combine(run, OproTrajectory.FileName));
            var entries = traj["entries"]!.AsArray().Select(e => (Text: e!["text"]!.GetValue<string>(), Score: e["score"]!.GetValue<double>(), Step: e["step"]!.GetValue<int>())).ToList();
            Assert.Equal(5, entries.Count);
            var best = entries.OrderByDescending(e => e.Score).ThenBy(e => e.Step).First();
            var hp = HardPrompt.Load(run);
            Assert.Equal(best.Score, hp.Score!.Value, 9);
            Assert.Equal("accuracy", hp.Objective);
            Assert.Equal(best.Text.Length == 0 ? "" : best.Text + "\n", hp.Text);

            var summary = Json(Path.Combine(run, "summary.json"));
            Assert.Equal(6, summary["calls"]!.GetValue<int>());
            Assert.Equal(6 * 110, summary["total_tokens"]!.GetValue<long>());
            Assert.Equal(1, summary["parse_failures"]!.GetValue<int>());
            Assert.Equal(2, summary["duplicates"]!.GetValue<int>());
            Assert.True(File.Exists(Path.Combine(run, "opro.png")));
            Assert.Equal(env, Json(Path.Combine(run, "config.json"))["api_key_env"]!.GetValue<string>());

            // The key is nowhere on disk or in the output.
            foreach (var f in Directory.GetFiles(run, "*", SearchOption.AllDirectories))
                Assert.DoesNotContain(key, File.ReadAllText(f));
            Assert.DoesNotContain(key, stdout + stderr);
        }
        finally { server.DisposeAsync().AsTask().GetAwaiter().GetResult(); Environment.SetEnvironmentVariable(env, null); }
    }

    [Fact]
    public async Task RateLimitsAndServerErrorsAreRetriedUpToTheCapThenFailWithOneLine()
    {
        using var tmp = new Fixtures.TempDir();
        var train = SearchFixture.WriteTask(tmp["train.jsonl"], 12, 2);
        await using var server = FakeOpenAiServer.Start();
        // Two 429s, then service: the run succeeds and the two failed requests were repeated.
        server.Handler = r => r.Index == 1 ? FakeReply.Error(429) : r.Index == 2 ? FakeReply.Error(503) : FakeReply.Chat($"<INS>Instruction {r.Index}.</INS>");
        var (rc, _, err) = CliRunner.Run(Args(train, tmp["ok"], server, "--steps", "1", "--max-retries", "2"));
        Assert.True(rc == 0, err);
        Assert.Equal(3 + 2, server.Requests.Count);
        Assert.Equal(3, Log(tmp["ok"]).Count(r => r["status"]!.GetValue<string>() == "scored"));

        // Always 500: 1 + 2 retries, then exit 6 with one line; the trajectory on disk is still valid (step 0).
        int before = server.Requests.Count;
        server.Handler = _ => FakeReply.Error(500, "boom");
        var (rc2, _, err2) = CliRunner.Run(Args(train, tmp["fail"], server, "--max-retries", "2", "--quiet")); // --quiet: errors only on stderr
        Assert.Equal(6, rc2);
        Assert.Equal(3, server.Requests.Count - before);
        var line = Assert.Single(err2.Trim().Split('\n'));
        Assert.Contains("server error 500 after 2 retries", line);
        Assert.Contains("(server: boom)", line);
        Assert.Equal(0, OproTrajectory.Load(Path.Combine(tmp["fail"], OproTrajectory.FileName)).Step);
        Assert.False(File.Exists(Path.Combine(tmp["fail"], HardPrompt.FileName)));
    }

    [Fact]
    public void EndpointFailuresAreOneLineErrorsWithExitCodesThatNeverShowTheKey()
    {
        using var tmp = new Fixtures.TempDir();
        var train = SearchFixture.WriteTask(tmp["train.jsonl"], 8, 3);
        const string key = "sk-secret-a81b2c";
        const string env = "SOFTPROMPT_TEST_OPRO_KEY_2";
        Environment.SetEnvironmentVariable(env, key);
        var server = FakeOpenAiServer.Start();
        try
        {
            (int Rc, string Err) Go(Func<RecordedRequest, FakeReply> handler, params string[] extra)
            {
                server.Handler = handler;
                var (rc, _, err) = CliRunner.Run(Args(train, tmp["run-" + Guid.NewGuid().ToString("N")[..6]], server, extra.Concat(new[] { "--max-retries", "0", "--quiet" }).ToArray())); // --quiet: errors only on stderr
                Assert.Single(err.Trim().Split('\n'));
                Assert.DoesNotContain(key, err);
                return (rc, err);
            }
            var (rc401, err401) = Go(_ => FakeReply.Error(401, "Incorrect API key provided: " + key), "--api-key-env", env);
            Assert.Equal(4, rc401);
            Assert.Contains("$" + env, err401);
            Assert.Contains("***", err401); // the server's echo of the key is masked
            Assert.Equal(4, Go(_ => FakeReply.Error(403)).Rc);
            var (rc404, err404) = Go(_ => FakeReply.Error(404, "model 'fake-model' not found"));
            Assert.Equal(5, rc404);
            Assert.Contains("404", err404);
            var (rcHtml, errHtml) = Go(_ => new FakeReply(200, "<html>proxy login</html>"));
            Assert.Equal(6, rcHtml);
            Assert.Contains("not the JSON of a chat completion", errHtml);
            var (rcSlow, errSlow) = Go(_ => { Thread.Sleep(2500); return FakeReply.Chat("<INS>late</INS>"); }, "--request-timeout", "1");
            Assert.Equal(3, rcSlow);
            Assert.Contains("no reply within the timeout", errSlow);
            var (rcEnv, errEnv) = Go(_ => FakeReply.Chat("x"), "--api-key-env", "SOFTPROMPT_TEST_UNSET_VARIABLE");
            Assert.Equal(2, rcEnv);
            Assert.Contains("SOFTPROMPT_TEST_UNSET_VARIABLE", errEnv);
        }
        finally { server.DisposeAsync().AsTask().GetAwaiter().GetResult(); Environment.SetEnvironmentVariable(env, null); }

        // Nothing listens on the port any more: connection refused, exit 3.
        var closed = new FakeOpenAiServerEndpoint(server.Endpoint);
        var (rcDown, _, errDown) = CliRunner.Run(new[] { "search-hard-prompt", "--strategy", "opro", "--model", SearchFixture.ModelDir, "--train", train,
            "--output", tmp["down"], "--optimizer-endpoint", closed.Endpoint, "--optimizer-model", "m", "--steps", "1", "--max-retries", "0", "--threads", "1", "--score-examples", "4" });
        Assert.Equal(3, rcDown);
        Assert.Contains("connection refused", errDown);
    }

    sealed record FakeOpenAiServerEndpoint(string Endpoint);

    [Fact]
    public async Task ResumeContinuesTheSameTrajectoryAfterAFailure()
    {
        using var tmp = new Fixtures.TempDir();
        var train = SearchFixture.WriteTask(tmp["train.jsonl"], 12, 4);
        await using var server = FakeOpenAiServer.Start();
        // Step 1 is served, step 2 fails: exit 6, the trajectory holds steps 0 and 1.
        server.Handler = r => r.Index <= 3 ? FakeReply.Chat($"<INS>First run instruction {r.Index}.</INS>") : FakeReply.Error(500);
        var run = tmp["run"];
        var (rc, _, err) = CliRunner.Run(Args(train, run, server, "--max-retries", "0"));
        Assert.True(rc == 6, err);
        var first = OproTrajectory.Load(Path.Combine(run, OproTrajectory.FileName));
        Assert.Equal(1, first.Step);
        Assert.Equal(4, first.Entries.Count);

        // A fresh run into the same folder is refused; --resume continues (with more steps).
        var (rcAgain, _, errAgain) = CliRunner.Run(Args(train, run, server));
        Assert.Equal(2, rcAgain);
        Assert.Contains("--resume", errAgain);
        server.Handler = r => FakeReply.Chat($"<INS>Second run instruction {r.Index}.</INS>");
        int before = server.Requests.Count;
        var (rc2, _, err2) = CliRunner.Run("search-hard-prompt", "--resume", run, "--steps", "3");
        Assert.True(rc2 == 0, err2);
        Assert.Equal(2 * 3, server.Requests.Count - before); // steps 2 and 3 only
        var second = OproTrajectory.Load(Path.Combine(run, OproTrajectory.FileName));
        Assert.Equal(3, second.Step);
        Assert.Equal(first.Entries, second.Entries.Take(first.Entries.Count));
        Assert.Equal(4 + 6, second.Entries.Count);
        Assert.Equal(first.OptimizerCalls + 6, second.OptimizerCalls);
        var steps = Log(run).Select(r => r["step"]!.GetValue<int>()).ToList();
        Assert.Equal(steps.Order(), steps);
        Assert.Equal(new[] { 0, 1, 2, 3 }, steps.Distinct());
        // Step 2's meta-prompt already held step 1's instructions: the trajectory was continued, not restarted.
        Assert.Contains("First run instruction", server.Requests[before].UserText);
        Assert.True(File.Exists(Path.Combine(run, HardPrompt.FileName)));
    }

    [Fact]
    public async Task BudgetStopsTheRunCleanly()
    {
        using var tmp = new Fixtures.TempDir();
        var train = SearchFixture.WriteTask(tmp["train.jsonl"], 8, 5);
        await using var server = FakeOpenAiServer.Start();
        // An over-long and an empty instruction are failed candidates; the run goes on.
        server.Handler = r => FakeReply.Chat(r.Index == 1 ? "<INS>" + new string('x', 81) + "</INS>" : r.Index == 2 ? "<INS> </INS>" : $"<INS>Instruction number {r.Index}.</INS>");
        var (rc, _, err) = CliRunner.Run(Args(train, tmp["run"], server, "--steps", "5", "--max-calls", "4", "--max-instruction-chars", "80"));
        Assert.True(rc == 0, err);
        Assert.Equal(4, server.Requests.Count);
        var log = Log(tmp["run"]);
        Assert.Equal(new[] { "initial", "too_long", "empty", "scored", "scored" }, log.Select(r => r["status"]!.GetValue<string>()).Where(st => st != "skipped").ToArray());
        Assert.Contains("81 characters", log[1]["detail"]!.GetValue<string>());
        var summary = Json(Path.Combine(tmp["run"], "summary.json"));
        Assert.Equal("max_calls", summary["stop_reason"]!.GetValue<string>());
        Assert.Equal(4, summary["calls"]!.GetValue<int>());
        Assert.Equal(2, summary["rejected_empty_or_too_long"]!.GetValue<int>());
    }

    [Fact]
    public async Task AnInstructionAfterTheAnswerCueIsShownSoScoredSoAndPlacedSoByEval()
    {
        using var tmp = new Fixtures.TempDir();
        var train = SearchFixture.WriteTask(tmp["train.jsonl"], 8, 9);
        await using var server = FakeOpenAiServer.Start();
        server.Handler = r => FakeReply.Chat($"<INS>Answer number {r.Index}:</INS>");
        var run = tmp["run"];
        var (rc, _, err) = CliRunner.Run(Args(train, run, server, "--steps", "1", "--instruction-position", "a_begin", "--init-instruction", "Answer:"));
        Assert.True(rc == 0, err);
        Assert.Matches("input:\nthe [a-z]+ was [a-z]+\\. answer: <INS>\noutput:\n(yes|no)", server.Requests[0].UserText);
        var hp = HardPrompt.Load(run);
        Assert.Equal("after", hp.Position);
        using var lm = SoftPrompt.Inference.LanguageModel.Load(SearchFixture.ModelDir);
        var tok = lm.RequireTokenizer();
        // "after": prefix, the example's prompt text, then the instruction (with its leading space).
        var after = new HardPrompt { Text = " Answer:", TokenIds = tok.Encode(" Answer:", false), Position = "after" };
        Assert.Equal(tok.PrefixIds.Concat(tok.Encode("the film was good. answer:", false)).Concat(after.TokenIds).ToArray(), after.PromptIds(tok, "the film was good. answer:"));
        Assert.Equal(tok.PrefixIds.Concat(after.TokenIds).Concat(tok.Encode("x", false)).ToArray(), (after with { Position = null }).PromptIds(tok, "x"));
        var entries = OproTrajectory.Load(Path.Combine(run, OproTrajectory.FileName)).Entries;
        Assert.Contains(entries, e => e.Text == "Answer:");
        Assert.True(hp.Text.Length == 0 || hp.Text.StartsWith(' '), hp.Text);
        var (rcEval, outEval, errEval) = CliRunner.Run("eval", "--model", SearchFixture.ModelDir, "--data", train, "--searched", run, "--output", tmp["report"], "--threads", "1");
        Assert.True(rcEval == 0, errEval + outEval);
    }

    [Fact]
    public async Task CancellingEndsTheStepInFlightAndStillWritesTheBestSoFar()
    {
        using var tmp = new Fixtures.TempDir();
        var train = SearchFixture.WriteTask(tmp["train.jsonl"], 8, 10);
        await using var server = FakeOpenAiServer.Start();
        using var cts = new CancellationTokenSource();
        server.Handler = r => { if (r.Index == 4) cts.Cancel(); return FakeReply.Chat($"<INS>Instruction {r.Index}.</INS>"); };
        var o = new HardPromptSearchOptions
        {
            Strategy = SoftPrompt.Search.SearchStrategy.Opro, Model = SearchFixture.ModelDir, Train = train, Output = tmp["run"], OptimizerEndpoint = server.Endpoint,
            OptimizerModel = "m", Steps = 5, CandidatesPerStep = 3, Parallel = 1, ScoreExamples = 4, Threads = 1, ApeProposals = 0,
        };
        var result = HardPromptSearchJob.Run(o, cancel: cts.Token);
        Assert.Equal("cancelled", result.StopReason);
        Assert.Equal(1, result.Steps);
        Assert.Equal(1, OproTrajectory.Load(Path.Combine(tmp["run"], OproTrajectory.FileName)).Step);
        Assert.True(File.Exists(Path.Combine(tmp["run"], HardPrompt.FileName)));
        Assert.DoesNotContain(Log(tmp["run"]), r => r["step"]!.GetValue<int>() == 2);
    }
}
