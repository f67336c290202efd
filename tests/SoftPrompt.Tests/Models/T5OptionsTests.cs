using System.Text.Json.Nodes;
using SoftPrompt.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace SoftPrompt.Tests.Models;

/// <summary>T5 config options the golden checkpoint does not exercise (T5 v1.1 / Flan-T5: gated-GELU, untied head,
/// d_kv independent of d_model / heads, more decoder than encoder layers), and the refusals by name.</summary>
public class T5OptionsTests
{
    static JsonObject Base() => new()
    {
        ["model_type"] = "t5", ["d_model"] = 32, ["d_kv"] = 8, ["num_heads"] = 3, ["d_ff"] = 48, ["num_layers"] = 1, ["num_decoder_layers"] = 2,
        ["vocab_size"] = 50, ["decoder_start_token_id"] = 0, ["relative_attention_num_buckets"] = 8, ["relative_attention_max_distance"] = 20,
    };

    [Fact]
    public void FlanT5StyleConfigBindsGatedGeluUntiedHeadAndItsOwnHeadSize()
    {
        var o = Base(); o["feed_forward_proj"] = "gated-gelu"; o["tie_word_embeddings"] = false;
        var c = ModelConfig.Parse(o);
        Assert.True(c.T5!.GatedAct);
        Assert.Equal("gelu_new", c.Activation);                     // "gated-gelu" means the tanh GELU in transformers
        Assert.False(c.TieWordEmbeddings);
        var shapes = T5Model.ExpectedShapes(c);
        Assert.Equal(new long[] { 24, 32 }, shapes["encoder.block.0.layer.0.SelfAttention.q.weight"]);   // heads * d_kv = 24 != d_model
        Assert.Equal(new long[] { 32, 24 }, shapes["decoder.block.1.layer.1.EncDecAttention.o.weight"]);
        Assert.Equal(new long[] { 48, 32 }, shapes["encoder.block.0.layer.1.DenseReluDense.wi_0.weight"]);
        Assert.Equal(new long[] { 48, 32 }, shapes["decoder.block.1.layer.2.DenseReluDense.wi_1.weight"]);
        Assert.False(shapes.ContainsKey("encoder.block.0.layer.1.DenseReluDense.wi.weight"));
        Assert.Equal(new long[] { 50, 32 }, shapes["lm_head.weight"]);
        Assert.False(shapes.ContainsKey("decoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight")); // block 0 only
        using var m = T5Model.Random(c, seed: 1);
        using var _ = torch.no_grad();
        var enc = m.Encode(torch.tensor(new long[] { 3, 4, 5 }).unsqueeze(0));
        var h = m.Decode(torch.tensor(new long[] { 0, 7 }).unsqueeze(0), enc).Hidden;
        Assert.Equal(new long[] { 1, 2, 50 }, m.Logits(h).shape);
        // An explicit dense_act_fn / is_gated_act wins over feed_forward_proj, as in transformers.
        var o2 = Base(); o2["feed_forward_proj"] = "relu"; o2["dense_act_fn"] = "gelu_new"; o2["is_gated_act"] = true;
        var c2 = ModelConfig.Parse(o2);
        Assert.True(c2.T5!.GatedAct);
        Assert.Equal("gelu_new", c2.Activation);
    }

    [Fact]
    public void UntiedHeadIsNotRescaledAndTiedHeadIs()
    {
        var tied = ModelConfig.Parse(Base());
        using var a = T5Model.Random(tied, seed: 2);
        var o = Base(); o["tie_word_embeddings"] = false;
        var untiedCfg = ModelConfig.Parse(o);
        // The same weights, with lm_head = shared * d_model^-1/2: an untied head that is not rescaled gives the tied logits.
        var w = a.Weights.ToDictionary(kv => kv.Key, kv => kv.Value.clone());
        w["lm_head.weight"] = w["shared.weight"] * Math.Pow(32, -0.5);
        using var b = T5Model.FromWeights(untiedCfg, w);
        using var _ = torch.no_grad();
        var ids = torch.tensor(new long[] { 5, 6, 7, 8 }).unsqueeze(0);
        var dec = torch.tensor(new long[] { 0, 9, 10 }).unsqueeze(0);
        var la = a.Logits(a.Decode(dec, a.Encode(ids)).Hidden);
        var lb = b.Logits(b.Decode(dec, b.Encode(ids)).Hidden);
        Assert.InRange(Fixtures.MaxAbsDiff(la, lb), 0, 1e-5);
        Assert.True(Fixtures.MaxAbsDiff(la, la * Math.Sqrt(32)) > 1e-3); // the scale matters on these logits
    }

    [Fact]
    public void DecoderCacheGivesTheSameLogitsAsAFullPass()
    {
        using var m = T5Model.Random(ModelConfig.Parse(Base()), seed: 3);
        using var _ = torch.no_grad();
        var enc = m.Encode(torch.tensor(new long[] { 3, 4, 5, 6 }).unsqueeze(0));
        var dec = new long[] { 0, 11, 12, 13, 14, 15 };
        var full = m.Logits(m.Decode(torch.tensor(dec).unsqueeze(0), enc).Hidden)[0];
        using var cache = new T5Cache(2);
        for (int t = 0; t < dec.Length; t++)
        {
            var step = m.Logits(m.Decode(torch.tensor(new[] { dec[t] }).unsqueeze(0), enc, cache).Hidden)[0, 0];
            Assert.InRange(Fixtures.MaxAbsDiff(step, full[t]), 0, 1e-5);
        }
        Assert.Equal(dec.Length, cache.Length);
    }

    [Theory]
    [InlineData("feed_forward_proj", "\"gated-gelu-fast\"", "feed_forward_proj")]
    [InlineData("feed_forward_proj", "\"swiglu\"", "feed_forward_proj 'swiglu'")]
    [InlineData("dense_act_fn", "\"mish\"", "dense_act_fn 'mish'")]
    [InlineData("is_encoder_decoder", "false", "is_encoder_decoder")]
    [InlineData("relative_attention_num_buckets", "2", "relative_attention_num_buckets")]
    [InlineData("relative_attention_max_distance", "3", "relative_attention_max_distance")]
    [InlineData("d_kv", "0", "d_kv")]
    [InlineData("decoder_start_token_id", "77", "decoder_start_token_id")]
    [InlineData("num_decoder_layers", "100000", "num_decoder_layers")]
    public void UnsupportedOrBadOptionsAreRefusedByName(string key, string value, string expected)
    {
        var o = Base(); o[key] = JsonNode.Parse(value);
        var e = Assert.Throws<SoftPromptException>(() => ModelConfig.Parse(o, "t5/config.json"));
        Assert.Contains(expected, e.Message);
        Assert.Contains("t5/config.json", e.Message);
    }

    [Fact]
    public void Fp16IsRefusedAndBf16Runs()
    {
        var dir = Path.Combine(Fixtures.Root, "hf-reference-more", "t5");
        Assert.Contains("fp16", Assert.Throws<SoftPromptException>(() => T5Model.Load(dir, dtype: ScalarType.Float16)).Message);
        using var bf = T5Model.Load(dir, dtype: ScalarType.BFloat16);
        using var fp = T5Model.Load(dir);
        using var _ = torch.no_grad();
        var ids = torch.tensor(new long[] { 5, 6, 7, 8 }).unsqueeze(0);
        var dec = torch.tensor(new long[] { 0, 9, 10 }).unsqueeze(0);
        var a = fp.Logits(fp.Decode(dec, fp.Encode(ids)).Hidden);
        var b = bf.Logits(bf.Decode(dec, bf.Encode(ids)).Hidden);
        Assert.Equal(ScalarType.Float32, b.dtype);
        Assert.InRange(Fixtures.MaxAbsDiff(a, b), 0, 0.1); // bf16 rounding of logits within about +-5
    }

    [Fact]
    public void SampledGenerationIsSeededAndStopsAtEos()
    {
        using var m = T5Model.Random(ModelConfig.Parse(Base()), seed: 4, std: 0.5);
        var input = new[] { 3, 4, 5 };
        var opt = new SoftPrompt.Inference.GenerationOptions { MaxNewTokens = 12, Temperature = 1.0, Seed = 7 };
        var a = SoftPrompt.Inference.Seq2SeqGenerator.Generate(m, input, opt);
        var b = SoftPrompt.Inference.Seq2SeqGenerator.Generate(m, input, opt);
        Assert.Equal(a.NewIds, b.NewIds);
        Assert.Equal(12, a.NewIds.Length);
        Assert.True(a.NewIds.Distinct().Count() > 1, "sampling from a random model picks varied tokens");
        // The first sampled token as EOS stops right after it.
        var stop = SoftPrompt.Inference.Seq2SeqGenerator.Generate(m, input, opt with { EosIds = new[] { a.NewIds[0] } });
        Assert.Equal(new[] { a.NewIds[0] }, stop.NewIds);
        Assert.Equal("eos", stop.StopReason);
        Assert.Throws<SoftPromptException>(() => SoftPrompt.Inference.Seq2SeqGenerator.Generate(m, new[] { 3, 999 }, opt));
    }
}
