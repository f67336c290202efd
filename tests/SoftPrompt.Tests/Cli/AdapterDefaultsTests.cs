using System.Text.Json.Nodes;

namespace SoftPrompt.Tests.Cli;

/// <summary>A saved prompt remembers how it was trained: eval, score and generate given <c>--prompt</c> (an adapter
/// or a whole run folder) read the data the way training did, and options given still win (with the warning).</summary>
[Collection("Console")]
public class AdapterDefaultsTests
{
    [Fact]
    public void EvalScoreAndGenerateUseTheSettingsTheAdapterRecordsAndARunFolderStandsForItsAdapter()
    {
        using var tmp = new Fixtures.TempDir();
        var model = Fixtures.TinyModelWithTokenizer();
        // A headerless TSV with its own column names: eval must read it with the recorded columns too.
        var lines = File.ReadAllLines(Fixtures.WriteSentimentTask(tmp["t.jsonl"], 30, 3))
            .Select(l => JsonNode.Parse(l)!).Select(n => $"{n["input"]}\t{n["output"]}");
        File.WriteAllLines(tmp["task.tsv"], lines);
        var (rc, so, se) = CliRunner.Run("train", "--model", model, "--train", tmp["task.tsv"], "--columns", "word,label", "--output", tmp["run"],
            "--prompt-template", "Word: {word}\nSentiment:", "--target-template", " {label}", "--label-words", "positive=good", "--label-words", "negative=bad",
            "--virtual-tokens", "2", "--steps", "2", "--batch-size", "4", "--validation-split", "0", "--threads", "1");
        Assert.True(rc == 0, se + so);

        // eval with the run folder and no data settings: the recorded ones are used, so nothing is "evaluated with" others.
        (rc, so, se) = CliRunner.Run("eval", "--model", model, "--data", tmp["task.tsv"], "--output", tmp["report"], "--prompt", tmp["run"], "--threads", "1");
        Assert.True(rc == 0, se + so);
        Assert.Contains("data settings recorded in", se);
        Assert.DoesNotContain("warning:", se + so);
        var pred = JsonNode.Parse(File.ReadLines(tmp["report/predictions.jsonl"]).First())!;
        Assert.StartsWith("Word: ", pred["input"]!.GetValue<string>());
        Assert.Contains(pred["gold"]!.GetValue<string>(), new[] { "positive", "negative" }); // reports keep the data's labels

        // An explicit template wins, with the existing warning.
        (rc, so, se) = CliRunner.Run("eval", "--model", model, "--data", tmp["task.tsv"], "--output", tmp["report2"], "--prompt", tmp["run/adapter"],
            "--prompt-template", "W {word} ->", "--threads", "1");
        Assert.True(rc == 0, se + so);
        Assert.Contains("warning:", se);
        Assert.StartsWith("W ", JsonNode.Parse(File.ReadLines(tmp["report2/predictions.jsonl"]).First())!["input"]!.GetValue<string>());

        // score: --text fills the recorded prompt template; --no-template sends it as it is.
        (rc, so, se) = CliRunner.Run("score", "--model", model, "--prompt", tmp["run"], "--text", "good", "--format", "json");
        Assert.True(rc == 0, se);
        var text = string.Concat(JsonNode.Parse(so)!["tokens"]!.AsArray().Select(t => t!["text"]!.GetValue<string>()));
        Assert.Contains("Word: good", text.Replace("Ġ", " ").Replace("Ċ", "\n"));
        (rc, so, se) = CliRunner.Run("score", "--model", model, "--prompt", tmp["run"], "--text", "good", "--format", "json", "--no-template");
        Assert.True(rc == 0, se);
        Assert.True(JsonNode.Parse(so)!["tokens"]!.AsArray().Count <= 2, so);

        (rc, so, se) = CliRunner.Run("generate", "--model", model, "--prompt", tmp["run"], "--text", "good", "-n", "2");
        Assert.True(rc == 0, se);
        Assert.StartsWith("Word: good\nSentiment:", so);
    }
}
