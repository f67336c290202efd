using System.Text.Json.Nodes;
using SoftPrompt.Inference;
using SoftPrompt.Models;
using SoftPrompt.Tests.Cli;
using SoftPrompt.Tuning;

namespace SoftPrompt.Tests.Evaluation;

/// <summary>The inspect-prompt and search-hard-prompt command lines: output shapes, exit codes, one-line errors.</summary>
[Collection("Console")]
public class InspectPromptTests
{
    static (int Rc, string Out, string Err) Run(params string[] args) => CliRunner.Run(args);

    [Fact]
    public void PromptTuningAdapterListsNearestTokensAndTheProjectedPrompt()
    {
        using var tmp = new Fixtures.TempDir();
        int[] ids;
        using (var lm = LanguageModel.Load(SearchFixture.ModelDir))
        {
            ids = lm.Encode(" the movie was", false);
            using var pt = PromptTuning.Create(lm.Model, ids.Length, PromptInit.Text, 1, new[] { ids }, " the movie was");
            Adapter.Save(tmp["adapter"], pt, lm.Model);
        }
        var (rc, stdout, stderr) = Run("inspect-prompt", tmp["adapter"], "--model", SearchFixture.ModelDir, "--top-k", "3", "--format", "json");
        Assert.True(rc == 0, stderr);
        var o = JsonNode.Parse(stdout)!.AsObject();
        Assert.Equal("PROMPT_TUNING", o["peft_type"]!.GetValue<string>());
        Assert.Equal(ids.Length, o["num_virtual_tokens"]!.GetValue<int>());
        var tokens = o["tokens"]!.AsArray();
        Assert.Equal(ids.Length, tokens.Count);
        for (int i = 0; i < ids.Length; i++)
        {
            var t = tokens[i]!.AsObject();
            Assert.Equal(i, t["index"]!.GetValue<int>());
            var nearest = t["nearest"]!.AsArray();
            Assert.Equal(3, nearest.Count);
            Assert.Equal(new[] { "id", "text", "cosine" }, nearest[0]!.AsObject().Select(kv => kv.Key).ToArray());
            Assert.Equal(ids[i], nearest[0]!["id"]!.GetValue<int>());
            Assert.Equal(1.0, nearest[0]!["cosine"]!.GetValue<double>(), 5);
            Assert.True(nearest[1]!["cosine"]!.GetValue<double>() <= nearest[0]!["cosine"]!.GetValue<double>());
        }
        Assert.Equal(ids, o["projected_ids"]!.AsArray().Select(x => x!.GetValue<int>()).ToArray());
        Assert.Equal(" the movie was", o["projected_text"]!.GetValue<string>());

        (rc, stdout, stderr) = Run("inspect-prompt", tmp["adapter"], "-m", SearchFixture.ModelDir);
        Assert.True(rc == 0, stderr);
        Assert.Contains("projected \" the movie was\"", stdout);
        Assert.Contains("PROMPT_TUNING", stdout);
    }

    [Fact]
    public void PrefixAdapterSaysItHasNoTokenProjection()
    {
        using var tmp = new Fixtures.TempDir();
        using (var model = ModelLoader.Load(Fixtures.HfReference("llama")))
        using (var pf = PrefixTuning.Create(model.Config, 3, false, 0, 1, model.Device))
            Adapter.Save(tmp["prefix"], pf, model);
        var (rc, stdout, stderr) = Run("inspect-prompt", tmp["prefix"], "-m", Fixtures.HfReference("llama"), "--format", "json");
        Assert.True(rc == 0, stderr);
        var o = JsonNode.Parse(stdout)!.AsObject();
        Assert.Equal("PREFIX_TUNING", o["peft_type"]!.GetValue<string>());
        Assert.Contains("key/value", o["note"]!.GetValue<string>());
        Assert.Null(o["tokens"]);
        Assert.Equal(ModelConfig.Load(Fixtures.HfReference("llama")).NumLayers, o["layer_norms"]!.AsArray().Count);
        (rc, stdout, _) = Run("inspect-prompt", tmp["prefix"], "-m", Fixtures.HfReference("llama"));
        Assert.Equal(0, rc);
        Assert.Contains("no nearest-token projection", stdout);
    }

    [Fact]
    public void BadInputIsOneErrorLine()
    {
        using var tmp = new Fixtures.TempDir();
        using (var model = ModelLoader.Load(Fixtures.HfReference("llama")))
        using (var pt = PromptTuning.Create(model, 2, PromptInit.SampleVocab, 1))
            Adapter.Save(tmp["llama-adapter"], pt, model);
        // An adapter made for another model (same hidden size, other architecture).
        var (rc, _, err) = Run("inspect-prompt", tmp["llama-adapter"], "-m", SearchFixture.ModelDir);
        Assert.Equal(2, rc);
        Assert.StartsWith("error: ", err);
        Assert.Contains("another model", err);
        Assert.Single(err.Trim().Split('\n'));

        (rc, _, err) = Run("inspect-prompt", tmp["missing"], "-m", SearchFixture.ModelDir);
        Assert.Equal(2, rc);
        Assert.Contains("does not exist", err);

        var train = SearchFixture.WriteTask(tmp["train.jsonl"], 4, 1);
        (rc, _, err) = Run("search-hard-prompt", "-m", SearchFixture.ModelDir, "--train", tmp["nope.jsonl"], "-o", tmp["run"]);
        Assert.Equal(2, rc);
        Assert.Contains("nope.jsonl: dataset file not found", err);
        (rc, _, err) = Run("search-hard-prompt", "-m", SearchFixture.ModelDir, "--train", train, "-o", tmp["run"], "--prompt-length", "0");
        Assert.Equal(2, rc);
        Assert.Contains("--prompt-length must be at least 1", err);
        File.WriteAllText(tmp["bad.json"], "{\"prompt_lenght\": 3}");
        (rc, _, err) = Run("search-hard-prompt", "--config", tmp["bad.json"]);
        Assert.Equal(2, rc);
        Assert.Contains("unknown key 'prompt_lenght'", err);
    }

    [Fact]
    public void SearchCommandRunsFromAConfigFileWithOptionsOverridingIt()
    {
        using var tmp = new Fixtures.TempDir();
        var train = SearchFixture.WriteTask(tmp["train.jsonl"], 6, 4);
        File.WriteAllText(tmp["search.json"], new JsonObject
        {
            ["model"] = SearchFixture.ModelDir, ["train"] = train, ["prompt_length"] = 3, ["steps"] = 5, ["candidates"] = 8,
            ["eval_candidates"] = 8, ["batch_size"] = 6, ["init"] = " review", ["seed"] = 1,
        }.ToJsonString());
        var (rc, stdout, stderr) = Run("search-hard-prompt", "--config", tmp["search.json"], "--steps", "2", "-o", tmp["run"]);
        Assert.True(rc == 0, stderr);
        Assert.Contains("hard prompt: \"", stdout);
        Assert.Equal(2, File.ReadAllLines(tmp["run/search_log.jsonl"]).Length); // --steps overrides the file
        var cfg = JsonNode.Parse(File.ReadAllText(tmp["run/config.json"]))!.AsObject();
        Assert.Equal(3, cfg["prompt_length"]!.GetValue<int>());
        Assert.Equal(2, cfg["steps"]!.GetValue<int>());
        var hp = SoftPrompt.Tuning.HardPrompt.Load(tmp["run"]);
        Assert.Equal(3, hp.TokenIds.Length);
        var first = JsonNode.Parse(File.ReadAllLines(tmp["run/search_log.jsonl"])[0])!;
        Assert.NotNull(first["loss"]);
    }
}
