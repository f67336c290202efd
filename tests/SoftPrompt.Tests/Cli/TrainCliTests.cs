using System.Text.Json.Nodes;
using SoftPrompt.IO;

namespace SoftPrompt.Tests.Cli;

/// <summary><c>softprompt train</c> end to end on a tiny model with a real (tiny) tokenizer: config file + option
/// overrides, the run folder, the PEFT adapter, and loading it back with <c>score --prompt</c>.</summary>
[Collection("Console")]
public class TrainCliTests
{
    static (int Rc, string Out, string Err) Run(params string[] args) => CliRunner.Run(args);

    [Fact]
    public void TrainFromConfigWithOverridesWritesARunFolderAndAnAdapterThatScoreLoads()
    {
        using var tmp = new Fixtures.TempDir();
        var model = Fixtures.TinyModelWithTokenizer();
        var train = Fixtures.WriteSentimentTask(tmp["train.jsonl"], 40, 1);
        var cfg = tmp["cfg.json"];
        File.WriteAllText(cfg, new JsonObject
        {
            ["model"] = model, ["train"] = train, ["output"] = tmp["run"], ["method"] = "prompt", ["virtual_tokens"] = 3,
            ["prompt_template"] = "Word: {input}\nSentiment:", ["steps"] = 50, ["batch_size"] = 4, ["eval_every"] = 3, ["init"] = "class_labels",
        }.ToJsonString());
        var (rc, stdout, stderr) = Run("train", "--config", cfg, "--steps", "6", "--lr", "0.1");
        Assert.True(rc == 0, stderr + stdout);
        var resolved = JsonNode.Parse(File.ReadAllText(tmp["run/config.json"]))!.AsObject();
        Assert.Equal(6, resolved["steps"]!.GetValue<int>());            // option beats config
        Assert.Equal(3, resolved["virtual_tokens"]!.GetValue<int>());   // config beats default
        Assert.Equal(0.1, resolved["lr"]!.GetValue<double>());
        foreach (var f in new[] { "metrics.jsonl", "training.png", "summary.json", "checkpoint/state.safetensors", "checkpoint/trainer_state.json", "adapter/adapter_config.json", "adapter/adapter_model.safetensors" })
            Assert.True(File.Exists(Path.Combine(tmp["run"], f)), f);
        var rows = File.ReadAllLines(tmp["run/metrics.jsonl"]).Select(l => JsonNode.Parse(l)!.AsObject()).ToList();
        Assert.Contains(rows, r => r["kind"]!.GetValue<string>() == "eval" && r["eval_loss"] is not null);
        Assert.Contains("adapter:", stdout);

        var emb = SafeTensors.Load(tmp["run/adapter/adapter_model.safetensors"])["prompt_embeddings"];
        Assert.Equal(new long[] { 3, 64 }, emb.shape);

        var (rc2, out2, err2) = Run("score", "-m", model, "--text", "Word: good\nSentiment: positive", "--prompt", tmp["run/adapter"], "--format", "json");
        Assert.True(rc2 == 0, err2);
        var tokens = JsonNode.Parse(out2)!["tokens"]!.AsArray();
        Assert.NotNull(tokens[0]!["logprob"]); // with a soft prompt, the first token is scored too
    }

    [Fact]
    public void ABrokenDatasetStopsTheRunBeforeItStartsAndNamesTheLines()
    {
        using var tmp = new Fixtures.TempDir();
        var model = Fixtures.TinyModelWithTokenizer();
        File.WriteAllLines(tmp["bad.jsonl"], new[] { "{\"input\": \"good\", \"output\": \"positive\"}", "{not json", "{\"input\": \"bad\"}" });
        var (rc, _, stderr) = Run("train", "--model", model, "--train", tmp["bad.jsonl"], "--output", tmp["run"], "--steps", "2");
        Assert.Equal(2, rc);
        Assert.Contains("bad.jsonl:2", stderr);
        Assert.Contains("bad.jsonl:3", stderr);
        Assert.False(Directory.Exists(tmp["run/checkpoint"]));

        var (rc2, out2, err2) = Run("train", "--model", model, "--train", tmp["bad.jsonl"], "--output", tmp["run"], "--steps", "2", "--skip-bad-lines", "--validation-split", "0");
        Assert.True(rc2 == 0, err2);
        Assert.Contains("skipped 2 bad lines", err2); // a message: stderr (results go to stdout)
    }

    [Fact]
    public void ProgressGoesToStderrResultsToStdoutAndQuietAndVerboseChangeOnlyTheProgress()
    {
        using var tmp = new Fixtures.TempDir();
        var model = Fixtures.TinyModelWithTokenizer();
        var train = Fixtures.WriteSentimentTask(tmp["train.jsonl"], 24, 2);
        string[] Args(string run, params string[] extra) => new[] { "train", "--model", model, "--train", train, "--output", tmp[run], "--virtual-tokens", "2",
            "--steps", "6", "--log-every", "3", "--batch-size", "4", "--validation-split", "0", "--threads", "1" }.Concat(extra).ToArray();
        static int StepLines(string s) => s.Split('\n').Count(l => l.StartsWith("step "));

        var (rc, so, se) = Run(Args("normal"));
        Assert.True(rc == 0, se);
        Assert.Contains("step     3/6", se);                 // every --log-every steps (and at most every 10 s between)
        Assert.Contains("step     6/6", se);
        Assert.InRange(StepLines(se), 2, 5);
        Assert.Contains("step loss", se);
        Assert.Equal(0, StepLines(so));
        Assert.Contains("adapter:", so);
        Assert.Contains("training examples", se);

        (rc, so, se) = Run(Args("quiet", "--quiet"));
        Assert.True(rc == 0, se);
        Assert.Equal("", se.Trim());                        // no progress, no messages
        Assert.Contains("adapter:", so);

        (rc, so, se) = Run(Args("verbose", "--verbose"));
        Assert.True(rc == 0, se);
        Assert.Equal(6, StepLines(se));                     // every step
    }

    [Fact]
    public void UnknownConfigKeysAndBadValuesAreErrorsNamingThem()
    {
        using var tmp = new Fixtures.TempDir();
        File.WriteAllText(tmp["c.json"], "{\"virtual_tokenz\": 3}");
        var (rc, _, err) = Run("train", "--config", tmp["c.json"]);
        Assert.Equal(2, rc);
        Assert.Contains("virtual_tokenz", err);
        File.WriteAllText(tmp["d.json"], "{\"steps\": \"many\"}");
        (rc, _, err) = Run("train", "--config", tmp["d.json"]);
        Assert.Equal(2, rc);
        Assert.Contains("'steps'", err);
        (rc, _, err) = Run("train", "--model", "x", "--train", "y", "--output", tmp["o"], "--method", "lora");
        Assert.Equal(2, rc);
        Assert.Contains("--method 'lora'", err);
        (rc, _, err) = Run("train", "--resume", tmp["nothing-here"]);
        Assert.Equal(2, rc);
        Assert.Contains("config.json", err);
    }
}
