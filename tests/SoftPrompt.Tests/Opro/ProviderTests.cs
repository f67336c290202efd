using System.Text.Json.Nodes;
using SoftPrompt.Llm;
using SoftPrompt.Search;
using SoftPrompt.Tests.Cli;
using SoftPrompt.Tests.Evaluation;
using SoftPrompt.Tuning;

namespace SoftPrompt.Tests.Opro;

/// <summary>
/// --optimizer-provider / --judge-provider anthropic and bedrock through the official Anthropic SDKs, against loopback
/// fakes of each API (base URL override): the request shapes, the SigV4 signature of Bedrock requests, the error
/// mapping, and that no key or AWS secret reaches the output or the run folder.
/// </summary>
[Collection("Console")]
public class ProviderTests
{
    static JsonObject Json(string path) => JsonNode.Parse(File.ReadAllText(path))!.AsObject();
    static bool IsJudge(AnthropicRequest r) => r.SystemText.Contains(Judge.System);

    static string[] Args(string train, string run, string provider, string url, params string[] extra) =>
        new[] { "search-hard-prompt", "--strategy", "opro", "--model", SearchFixture.ModelDir, "--train", train, "--output", run,
                "--optimizer-provider", provider, "--optimizer-endpoint", url, "--optimizer-model", provider == "bedrock" ? "anthropic.claude-fake-v1:0" : "claude-fake",
                "--candidates-per-step", "2", "--steps", "1", "--score-examples", "4", "--parallel", "1", "--threads", "1", "--ape-proposals", "0" }
            .Concat(extra.Contains("--max-retries") ? extra : extra.Concat(new[] { "--max-retries", "0" })).ToArray();

    static void NoSecretAnywhere(string run, string output, params string[] secrets)
    {
        foreach (var s in secrets)
        {
            Assert.DoesNotContain(s, output);
            if (Directory.Exists(run))
                foreach (var f in Directory.GetFiles(run, "*", SearchOption.AllDirectories)) Assert.DoesNotContain(s, File.ReadAllText(f));
        }
    }

    [Fact]
    public async Task AnthropicProviderSendsMessagesApiRequestsWithTheKeyFromTheEnvironmentOnly()
    {
        using var tmp = new Fixtures.TempDir();
        var train = SearchFixture.WriteTask(tmp["train.jsonl"], 8, 41);
        const string key = "sk-ant-test-9c1d2e3f";
        const string env = "SOFTPROMPT_TEST_ANTHROPIC_KEY";
        Environment.SetEnvironmentVariable(env, key);
        await using var server = FakeAnthropicServer.Start();
        try
        {
            server.Handler = r => (200, $"<INS>Say yes or no, take {r.Index}.</INS>");
            var run = tmp["run"];
            var (rc, stdout, stderr) = CliRunner.Run(Args(train, run, "anthropic", server.BaseUrl, "--api-key-env", env));
            Assert.True(rc == 0, stderr + stdout);
            Assert.Equal(2, server.Requests.Count);
            Assert.All(server.Requests, r =>
            {
                Assert.Equal("/v1/messages", r.Path);
                Assert.Equal("claude-fake", r.Body["model"]!.GetValue<string>());
                Assert.True(r.Header("x-api-key") == key || r.Header("Authorization") == "Bearer " + key, "the key is sent as the API's header");
                Assert.Contains("Your task is to generate the instruction", r.UserText);
            });
            var summary = Json(Path.Combine(run, "summary.json"));
            Assert.Equal(2 * (120 + 12), summary["total_tokens"]!.GetValue<long>()); // usage as the API reported it
            Assert.Contains("(anthropic", HardPrompt.Load(run).Source);
            NoSecretAnywhere(run, stdout + stderr, key);

            // A refused key: exit 4, the variable named, the key (echoed by the server) masked.
            server.Handler = _ => (401, "invalid x-api-key " + key);
            var (rc401, out401, err401) = CliRunner.Run(Args(train, tmp["r401"], "anthropic", server.BaseUrl, "--api-key-env", env, "--quiet"));
            Assert.Equal(4, rc401);
            Assert.Contains("$" + env, err401);
            NoSecretAnywhere(tmp["r401"], out401 + err401, key);
            // A 429 and a 500 are retried by the SDK up to --max-retries, then the run goes on.
            int first = server.Requests.Count;
            server.Handler = r => r.Index == first + 1 ? (429, "slow down") : r.Index == first + 2 ? (500, "oops") : (200, $"<INS>Retried fine {r.Index}.</INS>");
            var (rcRetry, outRetry, errRetry) = CliRunner.Run(Args(train, tmp["retry"], "anthropic", server.BaseUrl, "--api-key-env", env, "--max-retries", "2"));
            Assert.True(rcRetry == 0, errRetry + outRetry);
            Assert.Equal(2 + 2, server.Requests.Count - first);
            // The key variable unset: exit 2 before any call.
            int before = server.Requests.Count;
            var (rcNo, _, errNo) = CliRunner.Run(Args(train, tmp["rno"], "anthropic", server.BaseUrl, "--api-key-env", "SOFTPROMPT_TEST_UNSET_ANTHROPIC"));
            Assert.Equal(2, rcNo);
            Assert.Contains("SOFTPROMPT_TEST_UNSET_ANTHROPIC", errNo);
            Assert.Equal(before, server.Requests.Count);
        }
        finally { Environment.SetEnvironmentVariable(env, null); }
    }

    [Fact]
    public async Task BedrockProviderSignsRequestsWithSigV4FromTheAwsEnvironmentAndNeverShowsTheSecret()
    {
        using var tmp = new Fixtures.TempDir();
        var train = SearchFixture.WriteTask(tmp["train.jsonl"], 8, 42);
        File.WriteAllText(tmp["rubric.txt"], "One word.");
        const string accessKey = "AKIAFAKETEST1234", secret = "fakeSecretKey/4c7e9a1b2d3f5a6b7c8d9e0f";
        var saved = new[] { "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION", "AWS_SESSION_TOKEN", "AWS_BEARER_TOKEN_BEDROCK", "AWS_PROFILE" }
            .ToDictionary(k => k, Environment.GetEnvironmentVariable);
        Environment.SetEnvironmentVariable("AWS_ACCESS_KEY_ID", accessKey);
        Environment.SetEnvironmentVariable("AWS_SECRET_ACCESS_KEY", secret);
        Environment.SetEnvironmentVariable("AWS_REGION", "eu-west-3");
        Environment.SetEnvironmentVariable("AWS_SESSION_TOKEN", null);
        Environment.SetEnvironmentVariable("AWS_BEARER_TOKEN_BEDROCK", null);
        await using var server = FakeAnthropicServer.Start();
        try
        {
            // The optimizer and the judge both on Bedrock (the judge's provider defaults to the optimizer's).
            server.Handler = r => (200, IsJudge(r) ? "Fine.\nScore: 6" : $"<INS>Answer yes or no, take {r.Index}.</INS>");
            var run = tmp["run"];
            var (rc, stdout, stderr) = CliRunner.Run(Args(train, run, "bedrock", server.BaseUrl, "--objective", "judge", "--rubric", tmp["rubric.txt"], "--max-new-tokens", "3"));
            Assert.True(rc == 0, stderr + stdout);
            Assert.Contains(server.Requests, IsJudge);
            Assert.All(server.Requests, r =>
            {
                Assert.Equal("/model/anthropic.claude-fake-v1:0/invoke", Uri.UnescapeDataString(r.Path));
                var auth = r.Header("Authorization")!;
                Assert.StartsWith($"AWS4-HMAC-SHA256 Credential={accessKey}/", auth);
                Assert.Contains("/eu-west-3/bedrock/aws4_request", auth);
                Assert.Matches("SignedHeaders=[a-z0-9;-]*host[a-z0-9;-]*x-amz-date", auth);
                Assert.Matches("Signature=[0-9a-f]{64}$", auth);
                Assert.Matches(@"^\d{8}T\d{6}Z$", r.Header("X-Amz-Date")!);
                Assert.DoesNotContain(secret, string.Join("\n", r.Headers.Values) + r.Body.ToJsonString());
                Assert.NotNull(r.Body["anthropic_version"]);
            });
            NoSecretAnywhere(run, stdout + stderr, secret);

            // 403 from Bedrock: exit 4, a hint about AWS credentials, no secret even if the server echoes it.
            server.Handler = _ => (403, "The security token included in the request is invalid: " + secret);
            var (rc403, out403, err403) = CliRunner.Run(Args(train, tmp["r403"], "bedrock", server.BaseUrl, "--quiet"));
            Assert.Equal(4, rc403);
            Assert.Contains("AWS credentials were refused", err403);
            NoSecretAnywhere(tmp["r403"], out403 + err403, secret);

            // The judge of eval on Bedrock too.
            var data = SearchFixture.WriteTask(tmp["data.jsonl"], 3, 43);
            server.Handler = _ => (200, "Score: 9");
            var (rcEval, outEval, errEval) = CliRunner.Run("eval", "--model", SearchFixture.ModelDir, "--data", data, "--task", "generation", "--max-new-tokens", "2",
                "--rubric", tmp["rubric.txt"], "--judge-provider", "bedrock", "--judge-endpoint", server.BaseUrl, "--judge-model", "anthropic.claude-fake-v1:0",
                "--output", tmp["report"], "--threads", "1");
            Assert.True(rcEval == 0, errEval + outEval);
            var zero = Json(Path.Combine(tmp["report"], "metrics.json"))["conditions"]!.AsArray().Single(c => c!["kind"]!.GetValue<string>() == "zero-shot")!["metrics"]!;
            Assert.Equal(9.0, zero["judge_score"]!.GetValue<double>(), 9);
            NoSecretAnywhere(tmp["report"], outEval + errEval, secret);
        }
        finally { foreach (var (k, v) in saved) Environment.SetEnvironmentVariable(k, v); }
    }
}
