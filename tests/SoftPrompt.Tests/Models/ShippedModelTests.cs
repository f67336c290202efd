using System.Text.Json.Nodes;
using SoftPrompt.Models;
using SoftPrompt.Pretraining;
using SoftPrompt.Tokenization;
using TorchSharp;

namespace SoftPrompt.Tests.Models;

/// <summary>
/// The model the project ships (models/sp-llama-6m, pretrained by scripts/pretrain.sh) loads, and its perplexity on a
/// committed held-out slice matches what its card and eval_results.json say.
/// </summary>
public class ShippedModelTests
{
    public const string Name = "sp-llama-6m";

    public static string ModelDir
    {
        get
        {
            for (var d = new DirectoryInfo(AppContext.BaseDirectory); d is not null; d = d.Parent)
                if (File.Exists(Path.Combine(d.FullName, "SoftPrompt.sln"))) return Path.Combine(d.FullName, "models", Name);
            throw new DirectoryNotFoundException("repository root (SoftPrompt.sln) not found above " + AppContext.BaseDirectory);
        }
    }

    [Fact]
    public void LoadsAndMatchesItsCardOnTheHeldOutSlice()
    {
        torch.set_num_threads(2);
        var dir = ModelDir;
        var eval = JsonNode.Parse(File.ReadAllText(Path.Combine(dir, "eval_results.json")))!.AsObject();
        double expected = (double)eval["heldout_slice_perplexity"]!;
        int window = (int)eval["seq_len"]!;
        Assert.Contains(expected.ToString("F3", System.Globalization.CultureInfo.InvariantCulture), File.ReadAllText(Path.Combine(dir, "README.md")));
        Assert.InRange(new FileInfo(Path.Combine(dir, "model.safetensors")).Length, 1, 60_000_000);

        using var model = ModelLoader.Load(dir);
        Assert.Equal("llama", model.Config.ModelType);
        Assert.True(model.Config.TieWordEmbeddings);
        var tok = HfTokenizer.Load(dir);
        Assert.Equal(model.Config.VocabSize, tok.VocabSize);
        Assert.Equal(0, tok.EosId);

        var slice = File.ReadAllText(Path.Combine(Fixtures.Root, "shipped-model", "heldout_slice.txt"));
        var (ppl, tokens) = Perplexity.OfText(model, tok, slice, window);
        Assert.Equal((long)eval["heldout_slice_tokens"]!, tokens);
        Assert.InRange(ppl, expected * 0.995, expected * 1.005);
        // and it is a trained model: far better than the uniform distribution over its vocabulary
        Assert.True(ppl < model.Config.VocabSize / 10.0, $"perplexity {ppl} is not much better than chance ({model.Config.VocabSize})");
    }
}
