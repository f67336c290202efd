using System.Text.Json.Nodes;
using SoftPrompt.IO;

namespace SoftPrompt.Tests.Cli;

/// <summary>The CLI on an encoder-decoder model: the tiny T5 checkpoint with the hand-made Unigram tokenizer in T5's
/// layout. train (prompt tuning on the encoder, PEFT SEQ_2_SEQ_LM adapter), generate, score --target, eval
/// (classification by rank over label words as decoder continuations), inspect, and the refusals by name.</summary>
[Collection("Console")]
public class T5CliTests
{
    static (int Rc, string Out, string Err) Run(params string[] args) => CliRunner.Run(args);

    static string Model(Fixtures.TempDir tmp)
    {
        var dir = tmp["t5"];
        Directory.CreateDirectory(dir);
        foreach (var f in new[] { "config.json", "model.safetensors" })
            File.Copy(Path.Combine(Fixtures.Root, "hf-reference-more", "t5", f), Path.Combine(dir, f));
        foreach (var f in new[] { "tokenizer.json", "tokenizer_config.json" })
            File.Copy(Path.Combine(Fixtures.Root, "tokenizers", "t5-unigram", f), Path.Combine(dir, f));
        return dir;
    }

    [Fact]
    public void TrainGenerateScoreAndEvalOnAnEncoderDecoderModel()
    {
        using var tmp = new Fixtures.TempDir();
        var model = Model(tmp);
        var train = Fixtures.WriteSentimentTask(tmp["train.jsonl"], 24, 1);
        var (rc, stdout, stderr) = Run("train", "--model", model, "--train", train, "--output", tmp["run"], "--virtual-tokens", "3",
            "--steps", "4", "--batch-size", "4", "--lr", "0.1", "--validation-split", "0.25", "--threads", "1");
        Assert.True(rc == 0, stderr + stdout);
        var cfg = JsonNode.Parse(File.ReadAllText(tmp["run/adapter/adapter_config.json"]))!;
        Assert.Equal("SEQ_2_SEQ_LM", cfg["task_type"]!.GetValue<string>());
        Assert.Equal(new long[] { 6, 64 }, SafeTensors.Load(tmp["run/adapter/adapter_model.safetensors"])["prompt_embeddings"].shape);
        Assert.Contains("classification task", stderr); // positive/negative targets: rank classification picks the best checkpoint

        var (rc2, out2, err2) = Run("generate", "-m", model, "--text", "good", "--prompt", tmp["run"], "-n", "3", "--format", "json", "--ignore-eos");
        Assert.True(rc2 == 0, err2);
        var g = JsonNode.Parse(out2)!;
        Assert.Equal(3, g["generated_ids"]!.AsArray().Count);
        Assert.Equal(g["generated_ids"]!.ToJsonString(), g["ids"]!.ToJsonString()); // the decoder's output alone

        var (rc3, out3, err3) = Run("score", "-m", model, "--text", "good", "--target", "positive", "--prompt", tmp["run"], "--format", "json");
        Assert.True(rc3 == 0, err3);
        var tokens = JsonNode.Parse(out3)!["tokens"]!.AsArray();
        Assert.Equal(2, tokens.Count); // ▁positive </s>, each scored
        Assert.All(tokens, t => Assert.NotNull(t!["logprob"]));
        var (rc4, _, err4) = Run("score", "-m", model, "--text", "good");
        Assert.Equal(2, rc4);
        Assert.Contains("--target", err4);

        var (rc5, out5, err5) = Run("eval", "-m", model, "--data", train, "--prompt", tmp["run"], "--output", tmp["eval"], "--threads", "1");
        Assert.True(rc5 == 0, err5 + out5);
        Assert.Contains("accuracy", out5);

        var (rc9, out9, err9) = Run("eval", "-m", model, "--data", train, "--task", "generation", "--max-new-tokens", "3", "--output", tmp["evalgen"], "--threads", "1");
        Assert.True(rc9 == 0, err9 + out9);
        Assert.Contains("exact_match", out9 + File.ReadAllText(Directory.EnumerateFiles(tmp["evalgen"], "*.json").First()));

        // Prefix tuning and decoder-only-only commands are refused by name.
        var (rc6, _, err6) = Run("train", "--model", model, "--train", train, "--output", tmp["run2"], "--method", "prefix", "--steps", "1");
        Assert.Equal(2, rc6);
        Assert.Contains("prefix tuning is not supported for encoder-decoder", err6);

        var (rc8, out8, _) = Run("inspect", "--model", model);
        Assert.Equal(0, rc8);
        Assert.Contains("2 encoder / 2 decoder", out8);
        Assert.Contains("relative buckets 32", out8);
        Assert.Contains("SentencePiece Unigram", out8);
    }
}
