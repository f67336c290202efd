using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using SoftPrompt.Llm;
using SoftPrompt.Search;
using SoftPrompt.Tests.Cli;
using SoftPrompt.Tests.Demo;
using SoftPrompt.Tests.Evaluation;
using SoftPrompt.Tuning;

namespace SoftPrompt.Tests.Opro;

/// <summary>The judge as the seed's qualitative goals need it (issue #20): held-out pick by the judge, the rubric in
/// the meta-prompt, whole outputs, the verdict cache, and the two shipped qualitative configs against the scripted server.</summary>
[Collection("Console")]
public class OproJudgeFeatureTests
{
    static JsonObject Json(string path) => JsonNode.Parse(File.ReadAllText(path))!.AsObject();
    static List<JsonObject> Log(string run) => File.ReadAllLines(Path.Combine(run, "search_log.jsonl")).Select(l => JsonNode.Parse(l)!.AsObject()).ToList();
    static bool IsJudge(RecordedRequest r) => r.Body["messages"]![0]!["content"]!.ToString() == Judge.System;

    [Fact]
    public async Task AJudgeRunPicksByTheJudgesHeldOutRating_TheRubricReachesTheOptimizer_OutputsAreNotCutToALine()
    {
        using var tmp = new Fixtures.TempDir();
        var train = SearchFixture.WriteTask(tmp["train.jsonl"], 12, 31);
        var heldOut = tmp["held.jsonl"];
        File.WriteAllLines(heldOut, new[] { "{\"input\": \"zzheld one answer:\", \"output\": \"yes\"}", "{\"input\": \"zzheld two answer:\", \"output\": \"no\"}" });
        File.WriteAllText(tmp["rubric.txt"], "How well does the output adhere to the provided style guidelines?");
        await using var server = FakeOpenAiServer.Start();
        // Held-out outputs get 3, score-set outputs 7: the held-out value can only come from the judge on held-out data.
        server.Handler = r => !IsJudge(r) ? FakeReply.Chat($"<INS>Write it well {r.Index}.</INS>") : FakeReply.Chat(r.UserText.Contains("zzheld") ? "Fine.\nScore: 3" : "Good.\nScore: 7");
        var run = tmp["run"];
        // The shipped model (trained on books) writes line breaks within 40 tokens, the random fixture model does not.
        var shipped = Path.Combine(DemoPipelineTests.RepoRoot, "models", "sp-llama-6m");
        var (rc, stdout, stderr) = CliRunner.Run("search-hard-prompt", "--strategy", "opro", "--model", shipped, "--train", train, "--validation", heldOut,
            "--output", run, "--optimizer-endpoint", server.Endpoint, "--optimizer-model", "opt", "--judge-model", "judge", "--objective", "judge",
            "--rubric", tmp["rubric.txt"], "--steps", "1", "--candidates-per-step", "2", "--score-examples", "3", "--max-new-tokens", "40",
            "--validate-top", "2", "--parallel", "1", "--threads", "1", "--ape-proposals", "0");
        Assert.True(rc == 0, stderr + stdout);
        var summary = Json(Path.Combine(run, "summary.json"));
        Assert.Equal("judge", summary["select_metric"]!.GetValue<string>());
        Assert.Equal(3.0, summary["select_value"]!.GetValue<double>(), 9);
        Assert.Equal(2, summary["validated"]!.AsArray().Count);
        // Two validated candidates on two held-out examples (an output already judged comes from the cache).
        Assert.InRange(server.Requests.Count(r => IsJudge(r) && r.UserText.Contains("zzheld")), 2, 2 * 2);
        // The rubric is in the optimizer's meta-prompt.
        var meta = server.Requests.First(r => !IsJudge(r)).UserText;
        Assert.Contains("How well does the output adhere to the provided style guidelines?", meta);
        // Judged outputs are whole (up to --max-new-tokens), not cut at the first line; their mean length is logged per candidate.
        var responses = server.Requests.Where(IsJudge).Select(r => Regex.Match(r.UserText, @"Response:\n(.*)\n\nRate the response", RegexOptions.Singleline).Groups[1].Value).ToList();
        Assert.Contains(responses, x => x.Contains('\n'));
        Assert.All(Log(run).Where(r => r["score"] is not null), r => Assert.InRange(r["mean_output_tokens"]!.GetValue<double>(), 1, 40));
    }

    [Fact]
    public async Task TheVerdictCacheIsKeyedByJudgeRubricInputReferenceAndOutput_AndPersists()
    {
        using var tmp = new Fixtures.TempDir();
        await using var server = FakeOpenAiServer.Start();
        server.Handler = _ => FakeReply.Chat("Score: 5");
        var (client, info) = ChatErrors.OpenAiCompatible(server.Endpoint, "j", null, 0, TimeSpan.FromSeconds(30), "judge");
        using var judge = new MeteredChatClient(client, new CallMeter(), judge: true, 1, info);
        var path = tmp["cache.json"];
        var items = new[] { new JudgeItem("in", "out", "ref"), new JudgeItem("in", "out", "ref") };
        var cache = new VerdictCache("openai:j", path);
        var v = await Judge.RateAll(judge, "rubric", items, 1, cache);
        cache.Save();
        Assert.Equal(1, server.Requests.Count); // the same item twice: judged once (parallel 1)
        Assert.True(v[1].Cached);
        // A new process (a resumed run, an eval) reads the file: no call.
        var again = new VerdictCache("openai:j", path);
        Assert.Equal(5, (await Judge.RateAll(judge, "rubric", items[..1], 1, again))[0].Rating);
        Assert.Equal(1, server.Requests.Count);
        // Another judge model, rubric, reference or output is another key.
        await Judge.RateAll(judge, "rubric", items[..1], 1, new VerdictCache("openai:other", path));
        await Judge.RateAll(judge, "rubric 2", items[..1], 1, again);
        await Judge.RateAll(judge, "rubric", new[] { new JudgeItem("in", "out", "other ref") }, 1, again);
        await Judge.RateAll(judge, "rubric", new[] { new JudgeItem("in", "out 2", "ref") }, 1, again);
        Assert.Equal(5, server.Requests.Count);
        File.WriteAllText(path, "{\"version\": 1, \"ratings\": {\"k\": 12}}");
        Assert.Contains("not in 1..10", Assert.Throws<SoftPromptException>(() => new VerdictCache("x", path)).Message);
    }

    [Theory]
    [InlineData("configs/opro-marketing-email.json", "adheres to the style guide", "Subject:")]
    [InlineData("configs/opro-easy-instructions.json", "easy the instructions are to follow", "1. ")]
    public async Task TheShippedQualitativeConfigsRunAgainstTheScriptedServer(string config, string rubricText, string referenceText)
    {
        using var tmp = new Fixtures.TempDir();
        await using var server = FakeOpenAiServer.Start();
        server.Handler = r => !IsJudge(r) ? FakeReply.Chat($"<INS>Follow the guide closely, version {r.Index}.</INS>")
            : FakeReply.Chat(r.UserText.Contains("version 1") ? "Better.\nScore: 8" : "Reasoning.\nScore: 5");
        var run = tmp["run"];
        var (rc, stdout, stderr) = CliRunner.RunIn(DemoPipelineTests.RepoRoot, "search-hard-prompt", "--config", config, "--optimizer-endpoint", server.Endpoint,
            "--output", run, "--steps", "1", "--candidates-per-step", "2", "--max-new-tokens", "8", "--validate-top", "1", "--threads", "1", "--ape-proposals", "0");
        Assert.True(rc == 0, stderr + stdout);
        var judged = server.Requests.Where(IsJudge).ToList();
        Assert.NotEmpty(judged);
        Assert.All(judged, r => Assert.Contains(rubricText, r.UserText));
        Assert.All(judged.Where(r => !r.UserText.Contains(Judge.Reminder)), r => Assert.Contains(referenceText, r.UserText)); // the reference answer
        Assert.Contains(rubricText, server.Requests.First(r => !IsJudge(r)).UserText);
        var summary = Json(Path.Combine(run, "summary.json"));
        Assert.Equal("judge", summary["objective"]!.GetValue<string>());
        Assert.Equal("judge", summary["select_metric"]!.GetValue<string>());
        Assert.True(File.Exists(Path.Combine(run, VerdictCache.FileName)));
        Assert.True(File.Exists(Path.Combine(run, HardPrompt.FileName)));
    }
}

/// <summary>The scripted run whose trajectory docs/opro.md shows: the marketing-e-mail config against the fake server,
/// a scripted optimizer and a judge whose rating grows with the output's word count (a stand-in for a style judge,
/// and a length-biased one on purpose: the log shows mean_output_tokens beside each score). Set
/// SOFTPROMPT_OPRO_DOC_DIR to keep the run folder.</summary>
[Collection("Console")]
public class OproScriptedRunTests
{
    static bool IsJudge(RecordedRequest r) => r.Body["messages"]![0]!["content"]!.ToString() == Judge.System;

    [Fact]
    public async Task TheScriptedMarketingRunImprovesAndStaysWithinItsDryRunBounds()
    {
        using var tmp = new Fixtures.TempDir();
        await using var server = FakeOpenAiServer.Start();
        string[] proposals = { "Write a short, friendly e-mail with a clear subject line.", "Write the e-mail: subject line, two short paragraphs, the offer, one link.",
            "Name the benefit in the subject; state the offer once; end with one call to action.", "Write plainly; use numbers, not superlatives; no exclamation marks." };
        server.Handler = r =>
        {
            if (!IsJudge(r)) return FakeReply.Chat($"Here is a new one: <INS>{proposals[(r.Index - 1) % proposals.Length]}</INS>");
            var response = Regex.Match(r.UserText, @"Response:\n(.*)\n\nRate the response", RegexOptions.Singleline).Groups[1].Value;
            int words = response.Split((char[]?)null, StringSplitOptions.RemoveEmptyEntries).Length;
            return FakeReply.Chat($"The e-mail has {words} words.\nScore: {Math.Clamp(2 + words / 3, 1, 10)}");
        };
        string[] settings = { "--config", "configs/opro-marketing-email.json", "--optimizer-endpoint", server.Endpoint, "--steps", "3", "--candidates-per-step", "2",
            "--max-new-tokens", "24", "--ape-proposals", "0", "--threads", "1" };
        var (rcDry, dry, errDry) = CliRunner.RunIn(DemoPipelineTests.RepoRoot, new[] { "search-hard-prompt", "--dry-run" }.Concat(settings).ToArray());
        Assert.True(rcDry == 0, errDry + dry);
        int maxCalls = int.Parse(Regex.Match(dry, @"total:\s+at most ([\d,]+) calls").Groups[1].Value.Replace(",", ""));
        var run = Environment.GetEnvironmentVariable("SOFTPROMPT_OPRO_DOC_DIR") ?? tmp["run"];
        var (rc, stdout, stderr) = CliRunner.RunIn(DemoPipelineTests.RepoRoot, new[] { "search-hard-prompt" }.Concat(settings).Concat(new[] { "--output", run }).ToArray());
        Assert.True(rc == 0, stderr + stdout);
        Assert.InRange(server.Requests.Count, 1, maxCalls);
        var traj = OproTrajectory.Load(Path.Combine(run, OproTrajectory.FileName));
        Assert.Equal(3, traj.Step);
        // The best so far never falls; later steps were scored (here the zero-shot prompt stays best: docs/opro.md shows this run).
        var bestByStep = Enumerable.Range(0, 4).Select(s => traj.Entries.Where(e => e.Step <= s).Max(e => e.Score)).ToList();
        Assert.Equal(bestByStep.Order(), bestByStep);
        Assert.All(traj.Entries, e => Assert.NotNull(e.MeanOutputTokens));
        Assert.Contains(traj.Entries, e => e.Step > 0);
    }
}
