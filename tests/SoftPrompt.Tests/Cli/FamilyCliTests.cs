using System.Text.Json.Nodes;

namespace SoftPrompt.Tests.Cli;

/// <summary>The command line on each added family's tiny checkpoint with a (tiny, trained) tokenizer: <c>train</c>
/// (prompt or prefix tuning), then <c>eval</c> and <c>generate</c> with the adapter it wrote.</summary>
[Collection("Console")]
public class FamilyCliTests
{
    [Theory]
    [InlineData("gemma", "prompt")]
    [InlineData("gemma2", "prefix")]
    [InlineData("phi3", "prefix")]
    [InlineData("gpt_neox", "prompt")]
    public void TrainEvalAndGenerate(string family, string method)
    {
        using var tmp = new Fixtures.TempDir();
        var model = Fixtures.TinyModelWithTokenizer(family);
        var train = Fixtures.WriteSentimentTask(tmp["train.jsonl"], 24, 1);
        var (rc, so, se) = CliRunner.Run("train", "--model", model, "--train", train, "--output", tmp["run"], "--method", method,
            "--prompt-template", "Word: {input}\nSentiment:", "--virtual-tokens", "3", "--steps", "3", "--batch-size", "4",
            "--validation-split", "0", "--threads", "1");
        Assert.True(rc == 0, se + so);
        var cfg = JsonNode.Parse(File.ReadAllText(tmp["run/adapter/adapter_config.json"]))!;
        Assert.Equal(method == "prompt" ? "PROMPT_TUNING" : "PREFIX_TUNING", cfg["peft_type"]!.GetValue<string>());

        (rc, so, se) = CliRunner.Run("eval", "--model", model, "--data", train, "--output", tmp["report"], "--prompt", tmp["run"], "--threads", "1");
        Assert.True(rc == 0, se + so);
        Assert.True(File.Exists(tmp["report/predictions.jsonl"]));

        (rc, so, se) = CliRunner.Run("generate", "--model", model, "--prompt", tmp["run"], "--text", "good", "-n", "3");
        Assert.True(rc == 0, se);
        Assert.StartsWith("Word: good\nSentiment:", so);
    }
}
