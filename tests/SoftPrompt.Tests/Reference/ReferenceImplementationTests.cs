using SoftPrompt.IO;
using static TorchSharp.torch;

namespace SoftPrompt.Tests.ReferenceModels;

/// <summary>
/// Checks the test-side <see cref="LlamaReference"/> itself against Hugging Face transformers 4.44's golden logits
/// (fixtures/hf-reference), so that the tests that use it for configurations without a golden file (Qwen3, small
/// sliding windows) compare against something known to be right.
/// </summary>
public class ReferenceImplementationTests
{
    [Theory]
    [InlineData("llama")]
    [InlineData("qwen2")]
    [InlineData("mistral")]
    public void ReferenceReproducesHfGoldenLogits(string model)
    {
        var w = SafeTensors.Load(Path.Combine(Fixtures.HfReference(model), "model.safetensors"));
        var g = Fixtures.Golden(model);
        var ids = g["seq2.input_ids"][0].data<long>().ToArray();
        var spec = new LlamaReference.Spec(Heads: 4, KvHeads: 2, HeadDim: 16, Layers: 2, Eps: 1e-6, Theta: 10000);
        var logits = LlamaReference.Logits(w, spec, ids);
        Assert.InRange(Fixtures.MaxAbsDiff(logits, g["seq2.full.logits"][0]), 0, 1e-5);
    }
}
