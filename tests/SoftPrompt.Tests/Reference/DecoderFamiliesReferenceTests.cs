using SoftPrompt.IO;
using static TorchSharp.torch;

namespace SoftPrompt.Tests.ReferenceModels;

/// <summary>
/// Checks the test-side <see cref="DecoderFamiliesReference"/> itself against Hugging Face transformers 4.44's golden
/// logits (fixtures/hf-reference-more): plain, soft-prompt and prefix forwards, so that the tests that use it for
/// options without a golden file compare against something known to be right.
/// </summary>
public class DecoderFamiliesReferenceTests
{
    [Theory]
    [InlineData("gemma")]
    [InlineData("gemma2")]
    [InlineData("phi3")]
    [InlineData("gpt_neox")]
    public void ReferenceReproducesHfGoldenLogits(string model)
    {
        var w = SafeTensors.Load(Path.Combine(Fixtures.HfReference(model), "model.safetensors"));
        var g = Fixtures.Golden(model);
        var spec = DecoderFamiliesReference.Fixture(model);
        var ids = g["seq2.input_ids"][0].data<long>().ToArray();
        Assert.InRange(Fixtures.MaxAbsDiff(DecoderFamiliesReference.Logits(w, spec, ids), g["seq2.full.logits"][0]), 0, 1e-5);
        Assert.InRange(Fixtures.MaxAbsDiff(DecoderFamiliesReference.Logits(w, spec, ids, softPrompt: g["soft_prompt"]), g["seq2.prompt.logits"][0]), 0, 1e-5);
        if (model == "gemma2") return; // no prefix golden (see fixtures/hf-reference-more/README.md)
        var prefix = Enumerable.Range(0, 2).Select(l => (g[$"prefix.layer{l}.key"], g[$"prefix.layer{l}.value"])).ToList();
        Assert.InRange(Fixtures.MaxAbsDiff(DecoderFamiliesReference.Logits(w, spec, ids, prefix: prefix), g["seq2.prefix.logits"][0]), 0, 1e-5);
    }
}
