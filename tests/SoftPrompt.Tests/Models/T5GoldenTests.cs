using SoftPrompt.Inference;
using SoftPrompt.Models;
using SoftPrompt.Tuning;
using TorchSharp;
using static TorchSharp.torch;

namespace SoftPrompt.Tests.Models;

/// <summary>
/// T5 (encoder-decoder) against Hugging Face transformers 4.44's T5ForConditionalGeneration
/// (fixtures/hf-reference-more/t5): encoder and decoder hidden states and logits within 1e-4, the relative-position
/// bucket tables exactly, losses within 1e-5, the soft prompt's gradient, and greedy generation with the decoder
/// cache; the soft prompt as PEFT's SEQ_2_SEQ_LM prompt tuning attaches it (before the encoder input).
/// </summary>
public class T5GoldenTests
{
    const double Tol = 1e-4;
    static string Dir => Path.Combine(Fixtures.Root, "hf-reference-more", "t5");
    static Dictionary<string, Tensor> Golden() => SoftPrompt.IO.SafeTensors.Load(Path.Combine(Dir, "golden.safetensors"));

    [Fact]
    public void ConfigBindsEveryT5Option()
    {
        var c = ModelConfig.Load(Dir);
        Assert.Equal(ArchFamily.T5, c.Family);
        Assert.True(c.IsEncoderDecoder);
        Assert.Equal((64, 16, 4, 128, 2), (c.HiddenSize, c.HeadDim, c.NumHeads, c.IntermediateSize, c.NumLayers));
        Assert.Equal((2, 32, 128, false, 0), (c.T5!.NumDecoderLayers, c.T5.NumBuckets, c.T5.MaxDistance, c.T5.GatedAct, c.T5.DecoderStartTokenId));
        Assert.Equal("relu", c.Activation);
        Assert.True(c.TieWordEmbeddings);
    }

    [Fact]
    public void BucketTablesMatchExactly()
    {
        var g = Golden();
        var pos = torch.arange(38, ScalarType.Int64);
        var rel = pos.unsqueeze(0) - pos.unsqueeze(1);
        Assert.True(T5Model.Buckets(rel, true, 32, 128).eq(g["buckets.encoder"]).all().item<bool>());
        Assert.True(T5Model.Buckets(rel, false, 32, 128).eq(g["buckets.decoder"]).all().item<bool>());
        // Far distances (past max_distance) all land in the last bucket of their direction.
        var far = torch.tensor(new long[] { -100000, -200, 200, 100000 });
        Assert.Equal(new long[] { 15, 15, 31, 31 }, T5Model.Buckets(far, true, 32, 128).data<long>().ToArray());
        Assert.Equal(new long[] { 31, 31, 0, 0 }, T5Model.Buckets(far, false, 32, 128).data<long>().ToArray());
    }

    [Fact]
    public void PlainForwardMatchesHiddenStatesLogitsAndLoss()
    {
        using var model = T5Model.Load(Dir);
        var g = Golden();
        using var _ = torch.no_grad();
        for (int i = 0; i < 3; i++)
        {
            var enc = model.Encode(g[$"seq{i}.input_ids"], torch.ones_like(g[$"seq{i}.input_ids"]), outputHiddenStates: true);
            Assert.InRange(Fixtures.MaxAbsDiff(torch.stack(enc.HiddenStates!.Select(h => h[0]).ToArray()), g[$"seq{i}.encoder.hidden_states"]), 0, Tol);
            var labels = g[$"seq{i}.labels"];
            var dec = model.ShiftRight(labels);
            Assert.True(dec.eq(g[$"seq{i}.decoder_input_ids"]).all().item<bool>());
            var r = model.Decode(dec, enc, outputHiddenStates: true);
            Assert.InRange(Fixtures.MaxAbsDiff(torch.stack(r.HiddenStates!.Select(h => h[0]).ToArray()), g[$"seq{i}.full.decoder_hidden_states"]), 0, Tol);
            var logits = model.Logits(r.Hidden);
            Assert.InRange(Fixtures.MaxAbsDiff(logits, g[$"seq{i}.full.logits"]), 0, Tol);
            var loss = nn.functional.cross_entropy(logits[0], labels[0]).item<float>();
            Assert.InRange(Math.Abs(loss - g[$"seq{i}.full.loss"].item<float>()), 0, 1e-5);
        }
    }

    [Fact]
    public void SoftPromptOnTheEncoderMatchesPeft()
    {
        using var model = T5Model.Load(Dir);
        var g = Golden();
        using var _ = torch.no_grad();
        var soft = g["soft_prompt"].unsqueeze(0);
        for (int i = 0; i < 3; i++)
        {
            var enc = model.Encode(g[$"seq{i}.input_ids"], torch.ones_like(g[$"seq{i}.input_ids"]), prefixEmbeds: soft, outputHiddenStates: true);
            Assert.InRange(Fixtures.MaxAbsDiff(torch.stack(enc.HiddenStates!.Select(h => h[0]).ToArray()), g[$"seq{i}.prompt.encoder.hidden_states"]), 0, Tol);
            var logits = model.Logits(model.Decode(g[$"seq{i}.decoder_input_ids"], enc).Hidden);
            Assert.InRange(Fixtures.MaxAbsDiff(logits, g[$"seq{i}.prompt.logits"]), 0, Tol);
            Assert.InRange(Math.Abs(nn.functional.cross_entropy(logits[0], g[$"seq{i}.labels"][0]).item<float>() - g[$"seq{i}.prompt.loss"].item<float>()), 0, 1e-5);
            // Without a mask (every position real) the same.
            var enc2 = model.Encode(g[$"seq{i}.input_ids"], prefixEmbeds: soft);
            Assert.InRange(Fixtures.MaxAbsDiff(model.Logits(model.Decode(g[$"seq{i}.decoder_input_ids"], enc2).Hidden), g[$"seq{i}.prompt.logits"]), 0, Tol);
        }
    }

    [Fact]
    public void SoftPromptGradientMatchesAndWeightsStayFrozen()
    {
        using var model = T5Model.Load(Dir);
        var g = Golden();
        var soft = g["soft_prompt"].clone().requires_grad_(true);
        var enc = model.Encode(g["seq1.input_ids"], prefixEmbeds: soft.unsqueeze(0));
        var logits = model.Logits(model.Decode(g["seq1.decoder_input_ids"], enc).Hidden);
        var loss = nn.functional.cross_entropy(logits[0], g["seq1.labels"][0]);
        loss.backward();
        Assert.InRange(Math.Abs(loss.item<float>() - g["seq1.prompt.loss"].item<float>()), 0, 1e-5);
        var expected = g["seq1.prompt.grad_soft_prompt"];
        Assert.InRange(Fixtures.MaxAbsDiff(soft.grad!, expected), 0, 1e-6 + 1e-3 * expected.abs().max().item<float>());
        foreach (var w in model.Weights.Values) Assert.Null(w.grad);
    }

    [Fact]
    public void PaddedBatchWithSoftPromptMatches()
    {
        using var model = T5Model.Load(Dir);
        var g = Golden();
        var soft = g["soft_prompt"].clone().requires_grad_(true);
        var mask = g["batch.attention_mask"].narrow(1, 5, 7);          // the golden mask includes the 5 virtual positions
        var enc = model.Encode(g["batch.input_ids"], mask, prefixEmbeds: soft.unsqueeze(0));
        Assert.True(enc.Mask!.eq(g["batch.attention_mask"]).all().item<bool>());
        var labels = g["batch.labels"];
        var dec = model.ShiftRight(labels);
        Assert.True(dec.eq(g["batch.decoder_input_ids"]).all().item<bool>());
        var logits = model.Logits(model.Decode(dec, enc).Hidden);
        var valid = (labels != -100).unsqueeze(-1);
        Assert.InRange((logits - g["batch.prompt.logits"]).abs().masked_fill(~valid, 0).max().item<float>(), 0, Tol);
        var loss = nn.functional.cross_entropy(logits.reshape(-1, 1000), labels.reshape(-1), ignore_index: -100);
        loss.backward();
        Assert.InRange(Math.Abs(loss.item<float>() - g["batch.prompt.loss"].item<float>()), 0, 1e-5);
        var expected = g["batch.prompt.grad_soft_prompt"];
        Assert.InRange(Fixtures.MaxAbsDiff(soft.grad!, expected), 0, 1e-6 + 1e-3 * expected.abs().max().item<float>());
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void GreedyGenerationWithDecoderCacheMatches(bool withPrompt)
    {
        using var model = T5Model.Load(Dir);
        var g = Golden();
        string key = withPrompt ? "generate.prompt" : "generate";
        var input = g["generate.input_ids"][0].data<long>().Select(x => (int)x).ToArray();
        var seq = g[$"{key}.sequences"][0].data<long>().ToArray();
        Assert.Equal(model.T5.DecoderStartTokenId, seq[0]);
        var expected = seq.Skip(1).Select(x => (int)x).ToArray();
        var prompt = withPrompt ? new PromptInjection { VirtualTokens = 5, PrefixEmbeds = g["soft_prompt"].unsqueeze(0) } : null;
        var res = Seq2SeqGenerator.Generate(model, input, new GenerationOptions { MaxNewTokens = expected.Length }, prompt, keepScores: true);
        Assert.Equal(expected, res.NewIds);
        var scores = torch.tensor(res.Scores!.SelectMany(x => x).ToArray()).view(1, expected.Length, -1);
        Assert.InRange(Fixtures.MaxAbsDiff(scores, g[$"{key}.scores"]), 0, Tol);
    }

    [Fact]
    public void ScoreEqualsTheTeacherForcedLoss()
    {
        using var model = T5Model.Load(Dir);
        var g = Golden();
        int[] Ints(Tensor t) => t[0].data<long>().Select(x => (int)x).ToArray();
        var s = Seq2SeqGenerator.Score(model, Ints(g["seq2.input_ids"]), Ints(g["seq2.labels"]), new PromptInjection { VirtualTokens = 5, PrefixEmbeds = g["soft_prompt"].unsqueeze(0) });
        Assert.Equal(12, s.Scored);
        Assert.InRange(Math.Abs(-s.Total / 12 - g["seq2.prompt.loss"].item<float>()), 0, 1e-5);
    }
}
