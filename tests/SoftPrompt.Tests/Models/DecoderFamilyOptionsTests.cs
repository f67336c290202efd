using System.Text.Json.Nodes;
using SoftPrompt.Inference;
using SoftPrompt.IO;
using SoftPrompt.Models;
using SoftPrompt.Tests.ReferenceModels;
using TorchSharp;
using static TorchSharp.torch;

namespace SoftPrompt.Tests.Models;

/// <summary>
/// The options real Gemma / Gemma 2 / Phi-3 / GPT-NeoX checkpoints carry and the fixtures do not exercise, against
/// the float64 <see cref="DecoderFamiliesReference"/> (itself checked against transformers' goldens): GPT-NeoX's
/// sequential residual and its newer key names, Phi-3's LongRoPE (short and long factors, attention factor), partial
/// rotary and sliding window, Gemma's head_dim ≠ hidden/heads with attention biases, Gemma 2 without caps and with
/// explicit layer_types, and Gemma 2's prefix under the sliding window. Then the configuration errors, by name.
/// </summary>
public class DecoderFamilyOptionsTests
{
    const double Tol = 1e-4;
    static readonly long[] Long = ModelFolders.Seq2;          // 33 tokens
    static readonly long[] Short = ModelFolders.Seq2[..7];

    static Tensor Ours(CausalLM m, long[] ids, Tensor? soft = null, IReadOnlyList<(Tensor, Tensor)>? prefix = null)
    {
        using var _ = torch.no_grad();
        KvCache? cache = null;
        if (prefix is not null) { cache = KvCache.Growing(m.Config.NumLayers); cache.SetPrefix(prefix.Select(p => (p.Item1.unsqueeze(0), p.Item2.unsqueeze(0))).ToList()); }
        var r = m.Forward(new ForwardArgs { InputIds = torch.tensor(ids).unsqueeze(0), PrefixEmbeds = soft?.unsqueeze(0), Cache = cache });
        return m.Logits(r.Hidden)[0];
    }

    /// <summary>A random prefix: per layer key and value [kv_heads, P, head_dim].</summary>
    static List<(Tensor, Tensor)> Prefix(ModelConfig c, int p, long seed)
    {
        var g = new torch.Generator((ulong)seed);
        return Enumerable.Range(0, c.NumLayers).Select(_ => (torch.randn(new long[] { c.NumKvHeads, p, c.HeadDim }, generator: g), torch.randn(new long[] { c.NumKvHeads, p, c.HeadDim }, generator: g))).ToList();
    }

    static (CausalLM Model, Dictionary<string, Tensor> Weights) Edited(Fixtures.TempDir d, string fixture, Action<JsonObject> edit)
    {
        ModelFolders.CopyFixture(fixture, d.Path);
        ModelFolders.EditConfig(d.Path, edit);
        return (ModelLoader.Load(d.Path), SafeTensors.Load(Path.Combine(d.Path, "model.safetensors")));
    }

    static void Matches(CausalLM m, IReadOnlyDictionary<string, Tensor> w, DecoderFamiliesReference.Spec spec, long[] ids, bool prompt = true, bool prefix = true)
    {
        Assert.InRange(Fixtures.MaxAbsDiff(Ours(m, ids), DecoderFamiliesReference.Logits(w, spec, ids)), 0, Tol);
        var soft = torch.randn(new long[] { 3, m.Config.HiddenSize }, generator: new torch.Generator(3)) * 0.5;
        if (prompt) Assert.InRange(Fixtures.MaxAbsDiff(Ours(m, ids, soft), DecoderFamiliesReference.Logits(w, spec, ids, softPrompt: soft)), 0, Tol);
        var kv = Prefix(m.Config, 4, 9);
        if (prefix) Assert.InRange(Fixtures.MaxAbsDiff(Ours(m, ids, prefix: kv), DecoderFamiliesReference.Logits(w, spec, ids, prefix: kv)), 0, Tol);
    }

    [Fact]
    public void NeoXSequentialResidualMatchesTheReferenceAndDiffersFromParallel()
    {
        using var d = new Fixtures.TempDir();
        var (m, w) = Edited(d, "gpt_neox", o => o["use_parallel_residual"] = false);
        using var _m = m;
        Assert.False(m.Config.ParallelResidual);
        Matches(m, w, DecoderFamiliesReference.Fixture("gpt_neox") with { ParallelResidual = false }, Long);
        using var parallel = ModelLoader.Load(Fixtures.HfReference("gpt_neox"));
        Assert.True(Fixtures.MaxAbsDiff(Ours(m, Short), Ours(parallel, Short)) > 1e-3, "the residual layout must change the logits");
    }

    [Fact]
    public void NeoXNewerKeyNamesAndAnotherRotaryFraction()
    {
        using var d = new Fixtures.TempDir();
        var (m, w) = Edited(d, "gpt_neox", o =>
        {
            o.Remove("rotary_pct"); o.Remove("rotary_emb_base");
            o["partial_rotary_factor"] = 0.5; o["rope_theta"] = 500.0; o["attention_bias"] = true;
        });
        using var _m = m;
        Assert.Equal(8, m.Config.RotaryDim);
        Matches(m, w, DecoderFamiliesReference.Fixture("gpt_neox") with { Partial = 0.5, Theta = 500 }, Long);
    }

    [Fact]
    public void NeoXOldCheckpointBuffersAreIgnoredAndATiedHeadUsesTheInputEmbeddings()
    {
        using var d = new Fixtures.TempDir();
        ModelFolders.CopyFixture("gpt_neox", d.Path);
        // Checkpoints saved by older transformers carry the causal-mask and rotary buffers.
        ModelFolders.EditWeights(d.Path, w =>
        {
            for (int l = 0; l < 2; l++)
            {
                string p = $"gpt_neox.layers.{l}.attention.";
                w[p + "bias"] = torch.ones(1, 1, 128, 128).tril();
                w[p + "masked_bias"] = torch.tensor(-1e9f);
                w[p + "rotary_emb.inv_freq"] = torch.ones(2);
            }
        });
        using (var m = ModelLoader.Load(d.Path))
        using (var plain = ModelLoader.Load(Fixtures.HfReference("gpt_neox")))
            Assert.InRange(Fixtures.MaxAbsDiff(Ours(m, Short), Ours(plain, Short)), 0, 1e-6);

        ModelFolders.EditConfig(d.Path, o => o["tie_word_embeddings"] = true);
        using var tied = ModelLoader.Load(d.Path);
        var w = SafeTensors.Load(Path.Combine(d.Path, "model.safetensors"));
        w.Remove("embed_out.weight");
        Assert.InRange(Fixtures.MaxAbsDiff(Ours(tied, Long), DecoderFamiliesReference.Logits(w, DecoderFamiliesReference.Fixture("gpt_neox"), Long)), 0, Tol);
    }

    static JsonArray Factors(int n, double start, double step) => new(Enumerable.Range(0, n).Select(i => (JsonNode)JsonValue.Create(start + step * i)).ToArray());

    [Fact]
    public void Phi3LongRopeUsesShortFactorsInsideTheOriginalContextAndLongOnesPastIt()
    {
        using var d = new Fixtures.TempDir();
        var (m, w) = Edited(d, "phi3", o =>
        {
            o["original_max_position_embeddings"] = 16; o["max_position_embeddings"] = 128;
            o["rope_scaling"] = new JsonObject { ["type"] = "su", ["short_factor"] = Factors(8, 1.0, 0.1), ["long_factor"] = Factors(8, 1.5, 0.5) };
        });
        using var _m = m;
        var rs = m.Config.RopeScaling!;
        Assert.Equal("longrope", rs.Type);
        double attn = Math.Sqrt(1 + Math.Log(128.0 / 16) / Math.Log(16));
        Assert.Equal(attn, rs.AttentionFactor, 12);
        var spec = DecoderFamiliesReference.Fixture("phi3") with
        {
            ShortFactor = Enumerable.Range(0, 8).Select(i => 1.0 + 0.1 * i).ToArray(), LongFactor = Enumerable.Range(0, 8).Select(i => 1.5 + 0.5 * i).ToArray(),
            OriginalMax = 16, AttentionFactor = attn,
        };
        Matches(m, w, spec, Short);   // 7 positions: short factors (also 3 + 7 with the soft prompt, 4 + 7 with the prefix)
        Matches(m, w, spec, Long);    // 33 positions: long factors
        // The factors are in use: plain RoPE gives other logits on both sides of the threshold.
        using var plain = ModelLoader.Load(Fixtures.HfReference("phi3"));
        Assert.True(Fixtures.MaxAbsDiff(Ours(m, Short), Ours(plain, Short)) > 1e-3);
        Assert.True(Fixtures.MaxAbsDiff(Ours(m, Long), Ours(plain, Long)) > 1e-3);
    }

    [Fact]
    public void Phi3PartialRotaryAndSlidingWindow()
    {
        using var d = new Fixtures.TempDir();
        var (m, w) = Edited(d, "phi3", o => { o["partial_rotary_factor"] = 0.5; o["sliding_window"] = 5; });
        using var _m = m;
        Matches(m, w, DecoderFamiliesReference.Fixture("phi3") with { Partial = 0.5, Window = 5 }, Long);
    }

    [Fact]
    public void GemmaHeadDimOtherThanHiddenOverHeadsWithAttentionBiases()
    {
        var cfg = ModelConfig.Parse(new JsonObject
        {
            ["model_type"] = "gemma", ["hidden_size"] = 48, ["num_attention_heads"] = 4, ["num_key_value_heads"] = 2, ["head_dim"] = 24,
            ["intermediate_size"] = 96, ["num_hidden_layers"] = 2, ["vocab_size"] = 300, ["attention_bias"] = true, ["rope_theta"] = 1000.0,
        });
        Assert.Equal(24, cfg.HeadDim);
        using var m = ModelFactory.Random(cfg, seed: 4);
        var g = new torch.Generator(5);
        using (torch.no_grad())
            foreach (var t in m.Weights.Values) t.add_(torch.randn(t.shape, generator: g) * (t.dim() == 1 ? 0.1 : 0.05));
        Assert.Contains("model.layers.0.self_attn.q_proj.bias", m.Weights.Keys);
        Assert.Equal(new long[] { 96, 48 }, m.Weights["model.layers.0.self_attn.q_proj.weight"].shape);
        Assert.Equal(new long[] { 48, 96 }, m.Weights["model.layers.0.self_attn.o_proj.weight"].shape);
        var spec = new DecoderFamiliesReference.Spec("gemma", 4, 2, 24, 2, 1e-6, 1000) { Act = "gelu_tanh" };
        Matches(m, m.Weights, spec, Long.Select(i => i % 300).ToArray());
    }

    [Fact]
    public void Gemma2WithoutCapsAndWithExplicitLayerTypes()
    {
        using var d = new Fixtures.TempDir();
        var (m, w) = Edited(d, "gemma2", o =>
        {
            o["attn_logit_softcapping"] = null; o["final_logit_softcapping"] = null;
            o["layer_types"] = new JsonArray("full_attention", "sliding_attention");
        });
        using var _m = m;
        Assert.Null(m.Config.AttnLogitSoftcap);
        Assert.False(m.Config.IsSlidingLayer(0));
        Assert.True(m.Config.IsSlidingLayer(1));
        var spec = DecoderFamiliesReference.Fixture("gemma2") with { AttnCap = null, FinalCap = null, Slides = l => l == 1 };
        Matches(m, w, spec, Long);
    }

    /// <summary>
    /// Gemma 2 prefix tuning, as PEFT builds it with transformers ≥ 4.56 (a cache whose P prefix entries sit at cache
    /// positions 0..P-1, then the tokens at P..P+T-1): a sliding layer's query at position t sees cache positions
    /// (t - w, t], so the prefix drops out of the sliding layers' view once t ≥ w, and stays visible to the global
    /// ones. The growing cache, the preallocated generation cache and the ragged (serving) cache must all agree with it.
    /// </summary>
    [Fact]
    public void Gemma2PrefixWindowCountsCachePositionsInEveryCacheMode()
    {
        using var m = ModelLoader.Load(Fixtures.HfReference("gemma2"));
        var w = SafeTensors.Load(Path.Combine(Fixtures.HfReference("gemma2"), "model.safetensors"));
        var spec = DecoderFamiliesReference.Fixture("gemma2");
        var kv = Prefix(m.Config, 4, 21);
        var expected = DecoderFamiliesReference.Logits(w, spec, Long, prefix: kv);
        Assert.InRange(Fixtures.MaxAbsDiff(Ours(m, Long, prefix: kv), expected), 0, Tol);
        // The window matters: counting it over token positions only (prefix always visible) would give other logits.
        var unwindowed = DecoderFamiliesReference.Logits(w, spec with { Slides = _ => false }, Long, prefix: kv);
        Assert.True(Fixtures.MaxAbsDiff(expected, unwindowed) > 1e-3);

        using var _ = torch.no_grad();
        // Preallocated cache: the prefix, then the tokens one at a time.
        using (var cache = KvCache.Preallocated(m.Config, 1, 4 + Long.Length, m.DType, m.Device))
        {
            cache.SetPrefix(kv.Select(p => (p.Item1.unsqueeze(0), p.Item2.unsqueeze(0))).ToList());
            var rows = Long.Select(t => m.Logits(m.Forward(new ForwardArgs { InputIds = torch.tensor(new[] { t }).unsqueeze(0), Cache = cache }).Hidden)[0]).ToArray();
            Assert.InRange(Fixtures.MaxAbsDiff(torch.cat(rows, 0), expected), 0, Tol);
        }
        // Ragged cache (MixedBatch / the server): a prefix row beside a plain row and a soft-prompt row, in one forward.
        // PEFT's prefix layout: per virtual token, layer0.K, layer0.V, layer1.K, ... each [kv_heads, head_dim].
        var table = torch.stack(kv.SelectMany(p => new[] { p.Item1.transpose(0, 1), p.Item2.transpose(0, 1) }).ToArray(), 1).reshape(4, -1);
        using var prefixMethod = SoftPrompt.Tuning.PrefixTuning.FromEmbeddings(m.Config, table);
        using var promptMethod = new SoftPrompt.Tuning.PromptTuning(torch.randn(new long[] { 3, 64 }, generator: new torch.Generator(2)) * 0.5);
        using var prefixPrompt = AttachedPrompt.From(prefixMethod, m);
        using var softPrompt = AttachedPrompt.From(promptMethod, m);
        var rowsIn = new[]
        {
            new PromptedIds(Long.Select(i => (int)i).ToArray(), prefixPrompt),
            new PromptedIds(Short.Select(i => (int)i).ToArray()),
            new PromptedIds(Long[..20].Select(i => (int)i).ToArray(), softPrompt),
        };
        var methods = new SoftPrompt.Tuning.IPromptMethod?[] { prefixMethod, null, promptMethod };
        var mixed = MixedBatch.Score(m, rowsIn);
        for (int b = 0; b < rowsIn.Length; b++)
        {
            var alone = Scorer.Score(m, rowsIn[b].Ids, methods[b]?.Inject(1));
            for (int t = 0; t < alone.LogProbs.Length; t++)
                Assert.Equal(alone.LogProbs[t] ?? double.NaN, mixed[b].LogProbs[t] ?? double.NaN, 4);
        }
        // The first row under the prefix is the reference's too (log-softmax of its logits).
        var refLp = expected.log_softmax(-1);
        for (int t = 1; t < Long.Length; t++)
            Assert.Equal(refLp[t - 1, Long[t]].item<double>(), mixed[0].LogProbs[t]!.Value, 4);
    }

    [Fact]
    public void Gemma2MissingKeysTakeTransformersDefaults()
    {
        var c = ModelConfig.Parse(new JsonObject
        {
            ["model_type"] = "gemma2", ["hidden_size"] = 64, ["num_attention_heads"] = 4, ["intermediate_size"] = 128,
            ["num_hidden_layers"] = 4, ["vocab_size"] = 1000,
        });
        Assert.Equal(50.0, c.AttnLogitSoftcap);
        Assert.Equal(30.0, c.FinalLogitSoftcap);
        Assert.Equal(4096, c.SlidingWindow);
        Assert.Equal(1 / Math.Sqrt(224), c.AttnScale!.Value, 12);
        Assert.Equal(256, c.HeadDim);
        Assert.True(c.TieWordEmbeddings);
        Assert.Equal(new[] { true, false, true, false }, Enumerable.Range(0, 4).Select(c.IsSlidingLayer));
        Assert.Equal(new[] { 1 }, c.EosTokenIds);
        Assert.Equal(2, c.BosTokenId);
    }

    /// <summary>The tensors a real checkpoint of each family holds, from its config: the parameter counts the publishers
    /// state (Gemma 2B, Gemma 2 2B, Phi-3-mini, Pythia-160M; untied heads counted once more).</summary>
    [Theory]
    [InlineData("gemma-2b", 2_506_172_416L)]
    [InlineData("gemma2-2b", 2_614_341_888L)]
    [InlineData("phi3-mini", 3_821_079_552L)]
    [InlineData("pythia-160m", 162_322_944L)]
    public void RealShapesHaveThePublishedParameterCounts(string shape, long parameters)
    {
        var shapes = ModelLoader.ExpectedShapes(ModelFactory.ShapeConfig(shape));
        Assert.Equal(parameters, shapes.Values.Sum(s => s.Aggregate(1L, (a, d) => a * d)));
    }

    [Theory]
    [InlineData("phi3", """{"rope_scaling": {"type": "longrope", "short_factor": [1,1,1,1,1,1,1,1], "long_factor": [1,1,1,1,1,1,1,1], "short_mscale": 1.1}}""", "rope_scaling.short_mscale")]
    [InlineData("phi3", """{"rope_scaling": {"type": "longrope", "short_factor": [1,1,1], "long_factor": [1,1,1,1,1,1,1,1]}}""", "rope_scaling.short_factor has 3")]
    [InlineData("phi3", """{"rope_scaling": {"type": "dynamic", "factor": 2.0}}""", "rope_scaling type 'dynamic'")]
    [InlineData("gpt_neox", """{"rope_scaling": {"type": "dynamic", "factor": 2.0}}""", "rope_scaling type 'dynamic'")]
    [InlineData("gpt_neox", """{"num_key_value_heads": 2}""", "num_key_value_heads 2")]
    [InlineData("gpt_neox", """{"partial_rotary_factor": 0.5}""", "rotary_pct 0.25 and partial_rotary_factor 0.5 disagree")]
    [InlineData("gpt_neox", """{"rotary_pct": 0.1}""", "rotary_pct 0.1")]
    [InlineData("gpt_neox", """{"hidden_act": "mish"}""", "hidden_act 'mish'")]
    [InlineData("gemma", """{"sliding_window": 8}""", "sliding_window")]
    [InlineData("gemma", """{"rope_scaling": {"type": "linear", "factor": 2.0}}""", "rope_scaling")]
    [InlineData("gemma", """{"hidden_activation": "gelu_pytorch_tanhh"}""", "hidden_activation 'gelu_pytorch_tanhh'")]
    [InlineData("gemma2", """{"layer_types": ["sliding_attention", "chunked_attention"]}""", "layer_types[1]")]
    [InlineData("gemma2", """{"layer_types": ["sliding_attention"]}""", "layer_types lists 1 layers")]
    [InlineData("gemma2", """{"attn_logit_softcapping": -1.0}""", "attn_logit_softcapping")]
    [InlineData("gemma2", """{"use_bidirectional_attention": true}""", "use_bidirectional_attention")]
    [InlineData("gemma2", """{"rope_parameters": {"rope_type": "yarn", "factor": 2.0}}""", "rope_parameters.rope_type 'yarn'")]
    public void UnsupportedOptionsAreRefusedByName(string fixture, string patch, string expected)
    {
        using var d = new Fixtures.TempDir();
        ModelFolders.CopyFixture(fixture, d.Path);
        ModelFolders.EditConfig(d.Path, o => { foreach (var (k, v) in JsonNode.Parse(patch)!.AsObject()) o[k] = v?.DeepClone(); });
        var e = Assert.Throws<SoftPromptException>(() => ModelLoader.Load(d.Path));
        Assert.Contains(expected, e.Message);
        Assert.Contains("config.json", e.Message);
    }
}
