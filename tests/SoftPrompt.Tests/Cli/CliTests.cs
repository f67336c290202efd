using System.Diagnostics;
using System.Text.Json.Nodes;
using System.Text.Json;

namespace SoftPrompt.Tests.Cli;

/// <summary>Tests that redirect the process-wide Console run alone, never beside other tests.</summary>
[CollectionDefinition("Console", DisableParallelization = true)]
public class ConsoleCollection { }

/// <summary>
/// The softprompt command line: the documented JSON shapes of score / generate / inspect on the reference fixtures
/// (no tokenizer files: token ids in, ids out), and errors as one "error: ..." line on stderr with a non-zero exit
/// code and no stack trace. Most cases run in-process through <see cref="SoftPrompt.Cli.Cli.Invoke"/> with the same
/// commands Program.cs registers; one runs the built executable to cover Program.cs itself.
/// </summary>
[Collection("Console")]
public class CliTests
{
    static string Fx(string m) => Fixtures.HfReference(m);

    static (int Rc, string Out, string Err) Run(params string[] args) => CliRunner.Run(args);

    static JsonObject Json(string stdout) => JsonNode.Parse(stdout.Trim())!.AsObject();

    static long[] GoldenGenerated(string model, out long[] prompt)
    {
        var g = Fixtures.Golden(model);
        prompt = g["generate.prompt_ids"][0].data<long>().ToArray();
        return g["generate.sequences"][0].data<long>().Skip(prompt.Length).ToArray();
    }

    [Theory]
    [InlineData("gpt2")]
    [InlineData("llama")]
    public void ScoreJsonHasTheDocumentedShape(string model)
    {
        var ids = ModelFolders.Seq2[..9];
        var (rc, stdout, stderr) = Run("score", "-m", Fx(model), "--ids", string.Join(",", ids), "--format", "json");
        Assert.True(rc == 0, stderr);
        var o = Json(stdout);
        Assert.Equal(new[] { "tokens", "total_logprob", "perplexity" }, o.Select(kv => kv.Key).ToArray());
        var tokens = o["tokens"]!.AsArray();
        Assert.Equal(ids.Length, tokens.Count);
        double sum = 0;
        for (int i = 0; i < tokens.Count; i++)
        {
            var t = tokens[i]!.AsObject();
            Assert.Equal(new[] { "id", "text", "logprob" }, t.Select(kv => kv.Key).ToArray());
            Assert.Equal(ids[i], t["id"]!.GetValue<long>());
            Assert.Equal(JsonValueKind.String, t["text"]!.GetValueKind());
            if (i == 0) { Assert.Null(t["logprob"]); continue; }
            double lp = t["logprob"]!.GetValue<double>();
            Assert.InRange(lp, -50, 0);
            sum += lp;
        }
        double total = o["total_logprob"]!.GetValue<double>();
        Assert.Equal(sum, total, 9);
        Assert.Equal(Math.Exp(-total / (ids.Length - 1)), o["perplexity"]!.GetValue<double>(), 6);
        // Near-random weights over a 1000-token vocabulary: perplexity close to 1000.
        Assert.InRange(o["perplexity"]!.GetValue<double>(), 300, 3000);
    }

    [Fact]
    public void ScoreMatchesTheGoldenLogits()
    {
        var g = Fixtures.Golden("qwen2");
        var ids = g["seq1.input_ids"][0].data<long>().ToArray();
        var (rc, stdout, stderr) = Run("score", "-m", Fx("qwen2"), "--ids", string.Join(",", ids), "--format", "json");
        Assert.True(rc == 0, stderr);
        var logp = TorchSharp.torch.nn.functional.log_softmax(g["seq1.full.logits"][0].to(TorchSharp.torch.ScalarType.Float64), -1);
        var tokens = Json(stdout)["tokens"]!.AsArray();
        for (int i = 1; i < ids.Length; i++)
            Assert.Equal(logp[i - 1, ids[i]].item<double>(), tokens[i]!["logprob"]!.GetValue<double>(), 4);
    }

    [Fact]
    public void SingleTokenScoreHasNullPerplexity()
    {
        var (rc, stdout, stderr) = Run("score", "-m", Fx("gpt2"), "--ids", "799", "--format", "json");
        Assert.True(rc == 0, stderr);
        var o = Json(stdout);
        Assert.Null(o["tokens"]![0]!["logprob"]);
        Assert.Equal(0.0, o["total_logprob"]!.GetValue<double>());
        Assert.Null(o["perplexity"]);
    }

    [Theory]
    [InlineData("gpt2")]
    [InlineData("llama")]
    [InlineData("qwen2")]
    [InlineData("llama3rope")]
    [InlineData("mistral")]
    public void GenerateJsonReproducesTheGoldenGreedyTokens(string model)
    {
        var expected = GoldenGenerated(model, out var prompt);
        var (rc, stdout, stderr) = Run("generate", "-m", Fx(model), "--ids", string.Join(",", prompt), "--max-new-tokens", "10", "--format", "json");
        Assert.True(rc == 0, stderr);
        var o = Json(stdout);
        Assert.Equal(prompt, o["prompt_ids"]!.AsArray().Select(x => x!.GetValue<long>()).ToArray());
        var gen = o["generated_ids"]!.AsArray().Select(x => x!.GetValue<long>()).ToArray();
        // EOS is not disabled here: the golden run never produced one, so all 10 tokens come out.
        Assert.Equal(expected, gen);
        Assert.Equal(prompt.Concat(expected).ToArray(), o["ids"]!.AsArray().Select(x => x!.GetValue<long>()).ToArray());
        Assert.Equal("max_new_tokens", o["stop_reason"]!.GetValue<string>());
    }

    [Theory]
    [InlineData("gpt2", 172288)]
    [InlineData("llama", 202048)]
    [InlineData("qwen2", 202304)]
    public void InspectJsonReportsTheConfigAndParameterCount(string model, long parameters)
    {
        var (rc, stdout, stderr) = Run("inspect", "-m", Fx(model), "--format", "json");
        Assert.True(rc == 0, stderr);
        var o = Json(stdout);
        var cfg = JsonNode.Parse(File.ReadAllText(Path.Combine(Fx(model), "config.json")))!;
        var cases = JsonNode.Parse(File.ReadAllText(Path.Combine(Fixtures.Root, "hf-reference", "cases.json")))!;
        Assert.Equal(cases["models"]![model]!["n_parameters"]!.GetValue<long>(), parameters);
        Assert.Equal(parameters, o["parameters"]!.GetValue<long>());
        Assert.Equal(model, o["model_type"]!.GetValue<string>());
        Assert.Equal((cfg["n_layer"] ?? cfg["num_hidden_layers"])!.GetValue<int>(), o["layers"]!.GetValue<int>());
        Assert.Equal((cfg["n_head"] ?? cfg["num_attention_heads"])!.GetValue<int>(), o["attention_heads"]!.GetValue<int>());
        Assert.Equal((cfg["num_key_value_heads"] ?? cfg["n_head"])!.GetValue<int>(), o["kv_heads"]!.GetValue<int>());
        Assert.Equal(cfg["vocab_size"]!.GetValue<int>(), o["vocab_size"]!.GetValue<int>());
        Assert.Equal((cfg["n_embd"] ?? cfg["hidden_size"])!.GetValue<int>(), o["hidden_size"]!.GetValue<int>());
        Assert.Equal(16, o["head_dim"]!.GetValue<int>());
        Assert.Equal(model == "gpt2", o["tied_embeddings"]!.GetValue<bool>());
        Assert.Equal(new[] { "model.safetensors" }, o["weight_files"]!.AsArray().Select(x => x!.GetValue<string>()).ToArray());
        Assert.Null(o["tokenizer"]);
    }

    public static IEnumerable<object[]> ErrorCases()
    {
        string gpt2 = Fx("gpt2");
        yield return new object[] { new[] { "score", "-m", Path.Combine(Path.GetTempPath(), "no-such-model-folder-xyz"), "--ids", "1,2" }, "no-such-model-folder-xyz" };
        yield return new object[] { new[] { "score", "-m", gpt2, "--ids", "1,x,3" }, "'x' is not a token id" };
        yield return new object[] { new[] { "score", "-m", gpt2, "--ids", "1,-5" }, "'-5'" };
        yield return new object[] { new[] { "score", "-m", gpt2, "--ids", "1,1000" }, "outside the model's vocabulary" };
        yield return new object[] { new[] { "generate", "-m", gpt2, "--ids", ",," }, "no token ids" };
        yield return new object[] { new[] { "score", "-m", gpt2, "--ids", "1,2", "--device", "cuda" }, "CUDA is not available" };
        yield return new object[] { new[] { "generate", "-m", gpt2, "--text", "hello" }, "no tokenizer files" };
        yield return new object[] { new[] { "score", "-m", gpt2, "--ids", "1,2", "--text", "hi" }, "exactly one of --text or --ids" };
        yield return new object[] { new[] { "score", "-m", gpt2, "--ids", "1", "--bogus" }, "--bogus" };
        yield return new object[] { new[] { "score", "-m", gpt2, "--ids", "1", "--dtype", "fp8" }, "fp8" };
        yield return new object[] { new[] { "generate", "-m", gpt2, "--ids", "1", "--max-new-tokens", "0" }, "--max-new-tokens" };
        yield return new object[] { new[] { "generate", "-m", gpt2, "--ids", "1", "--max-new-tokens", "200" }, "positions" };
        yield return new object[] { new[] { "score", "--ids", "1" }, "--model" };
        yield return new object[] { new[] { "frobnicate" }, "frobnicate" };
    }

    [Theory, MemberData(nameof(ErrorCases))]
    public void ErrorsAreOneLineOnStderrWithoutStackTrace(string[] args, string expect)
    {
        var (rc, stdout, stderr) = Run(args);
        Assert.NotEqual(0, rc);
        var lines = stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        Assert.True(lines.Length == 1, $"expected one line on stderr, got:\n{stderr}");
        Assert.StartsWith("error: ", lines[0]);
        Assert.Contains(expect, lines[0]);
        Assert.DoesNotContain("   at ", stderr);
        Assert.DoesNotContain("Exception", stderr);
        Assert.Equal("", stdout.Trim());
    }

    [Theory]
    [InlineData(new[] { "trian" }, "Did you mean train?")]                                           // unknown command
    [InlineData(new[] { "train", "--stpes", "3" }, "Did you mean --steps?")]                          // misspelled option
    [InlineData(new[] { "generate", "-m", "x", "--text", "a", "--max-new-tokens", "abc" }, "as an integer")] // type error
    [InlineData(new[] { "score", "-m", "x", "--dtype", "fp8" }, "fp8")]                               // value not allowed
    public void UsageErrorsExit2WithOneLineAndSuggestions(string[] args, string expect)
    {
        var (rc, stdout, stderr) = Run(args);
        Assert.Equal(2, rc);
        var lines = stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        Assert.True(lines.Length == 1, stderr);
        Assert.StartsWith("error: ", lines[0]);
        Assert.Contains(expect, lines[0]);
        Assert.DoesNotContain("System.Int32", stderr);
        Assert.Equal("", stdout.Trim());
    }

    [Fact]
    public void BareSoftpromptPrintsHelp()
    {
        var (rc, stdout, _) = Run();
        Assert.Equal(0, rc);
        Assert.Contains("Usage:", stdout);
        Assert.Contains("train", stdout);
    }

    /// <summary>The real executable (Program.cs): success and a usage error, with exit codes and streams.</summary>
    [Fact]
    public void BuiltExecutableRunsAndFailsCleanly()
    {
        var dll = Path.Combine(AppContext.BaseDirectory, "softprompt.dll");
        Assert.True(File.Exists(dll), "the CLI is copied into the test output");
        (int, string, string) Exec(params string[] args)
        {
            var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
            psi.ArgumentList.Add(dll);
            foreach (var a in args) psi.ArgumentList.Add(a);
            psi.Environment.Remove("SOFTPROMPT_DEBUG");
            using var p = Process.Start(psi)!;
            var so = p.StandardOutput.ReadToEndAsync();
            var se = p.StandardError.ReadToEndAsync();
            Assert.True(p.WaitForExit(60_000), "softprompt did not exit");
            return (p.ExitCode, so.Result, se.Result);
        }
        var (rc, stdout, stderr) = Exec("inspect", "-m", Fx("llama"), "--format", "json");
        Assert.True(rc == 0, stderr);
        Assert.Equal(202048, Json(stdout)["parameters"]!.GetValue<long>());

        (rc, stdout, stderr) = Exec("score", "-m", Fx("llama"), "--ids", "1,2", "--nope");
        Assert.Equal(2, rc); // a usage error, as bad input
        Assert.Equal("", stdout.Trim());
        Assert.Matches(@"^error: [^\n]*--nope[^\n]*$", stderr.Trim());
    }
}
