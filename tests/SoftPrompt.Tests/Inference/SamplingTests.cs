using SoftPrompt.Inference;
using SoftPrompt.Models;
using SoftPrompt.Tests.Cli;
using SoftPrompt.Tests.Fuzz;

namespace SoftPrompt.Tests.Inference;

/// <summary>
/// Sampling at any positive finite temperature gives a valid distribution: a temperature tending to 0 tends to greedy
/// decoding instead of dividing the logits into infinities and NaNs (`generate --temperature 1e-300` used to end in
/// "internal error: probability tensor contains either inf, nan ...").
/// </summary>
[Collection("Console")]
public class SamplingTests
{
    [Theory]
    [InlineData("llama", 1e-300)]
    [InlineData("gpt2", 1e-300)]
    [InlineData("llama", double.Epsilon)]
    [InlineData("llama", 1e-40)]
    public void TinyTemperaturesSampleTheGreedyTokens(string arch, double temperature)
    {
        using var model = ModelLoader.Load(Fixtures.HfReference(arch));
        var ids = new[] { 5, 17, 230, 44, 9 };
        var greedy = Generator.Generate(model, ids, new GenerationOptions { MaxNewTokens = 8 }).NewIds;
        foreach (var seed in new long[] { 1, 2, 3 })
        {
            var sampled = Generator.Generate(model, ids, new GenerationOptions { MaxNewTokens = 8, Temperature = temperature, Seed = seed }).NewIds;
            Assert.Equal(greedy, sampled);
            var topP = Generator.Generate(model, ids, new GenerationOptions { MaxNewTokens = 8, Temperature = temperature, TopP = 0.5, TopK = 3, Seed = seed }).NewIds;
            Assert.Equal(greedy, topP);
        }
    }

    [Fact]
    public void OrdinaryTemperaturesStillSample()
    {
        // The shift by the maximum must not change sampling at ordinary temperatures: at a high one, different seeds differ.
        using var model = ModelLoader.Load(Fixtures.HfReference("llama"));
        var ids = new[] { 5, 17, 230, 44, 9 };
        var runs = new long[] { 1, 2, 3, 4 }.Select(s => string.Join(",", Generator.Generate(model, ids, new GenerationOptions { MaxNewTokens = 8, Temperature = 5, Seed = s }).NewIds)).ToHashSet();
        Assert.True(runs.Count > 1, "four seeds at temperature 5 gave the same tokens");
    }

    [Fact]
    public void TheCliGeneratesAtATinyTemperature()
    {
        var (rc, stdout, stderr) = CliRunner.Run("generate", "-m", FuzzWorld.Instance.Shipped, "--text", "hello", "--temperature", "1e-300", "--seed", "3",
            "--max-new-tokens", "4", "--threads", "1", "--format", "json");
        Assert.True(rc == 0, stderr);
        var (rc0, greedy, _) = CliRunner.Run("generate", "-m", FuzzWorld.Instance.Shipped, "--text", "hello", "--max-new-tokens", "4", "--threads", "1", "--format", "json");
        Assert.Equal(0, rc0);
        Assert.Equal(System.Text.Json.Nodes.JsonNode.Parse(greedy)!["generated_ids"]!.ToJsonString(), System.Text.Json.Nodes.JsonNode.Parse(stdout)!["generated_ids"]!.ToJsonString());
    }
}
