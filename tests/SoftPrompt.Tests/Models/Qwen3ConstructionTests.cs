using System.Text.Json.Nodes;
using SoftPrompt.Inference;
using SoftPrompt.IO;
using SoftPrompt.Models;
using SoftPrompt.Tests.ReferenceModels;
using TorchSharp;
using static TorchSharp.torch;

namespace SoftPrompt.Tests.Models;

/// <summary>
/// Qwen3 has no Hugging Face golden fixture, so a tiny Qwen3 checkpoint is built here (config.json in the layout
/// transformers writes for <c>Qwen3ForCausalLM</c>, random weights written with <see cref="SafeTensors.Save"/>), and
/// our logits are checked against <see cref="LlamaReference"/>: an independent float64 implementation of
/// transformers' modeling_qwen3.py formulas written in this test project (q/k per-head RMSNorm before RoPE,
/// fp32-style RMSNorm, rotate_half RoPE with θ = 1e6, GQA by repeat_interleave, explicit softmax with a causal
/// mask, SwiGLU MLP, head tied to the embeddings). That reference reproduces HF's own golden logits for the llama,
/// qwen2 and mistral fixtures to 1e-5 (<see cref="ReferenceImplementationTests"/>). It is NOT checked against
/// transformers' Qwen3 itself. The config has head_dim (16) ≠ hidden / heads (48 / 4 = 12), as real Qwen3 models do.
/// </summary>
public class Qwen3ConstructionTests
{
    const int Vocab = 97, Hidden = 48, Heads = 4, KvHeads = 2, HeadDim = 16, Inter = 80, Layers = 2;
    static readonly LlamaReference.Spec Spec = new(Heads, KvHeads, HeadDim, Layers, Eps: 1e-6, Theta: 1_000_000, QkNorm: true);
    static readonly long[] Ids = { 5, 17, 96, 0, 42, 42, 7, 63, 88, 1, 30, 54 };

    static JsonObject Config() => new()
    {
        ["architectures"] = new JsonArray("Qwen3ForCausalLM"),
        ["attention_bias"] = false, ["attention_dropout"] = 0.0, ["bos_token_id"] = 1, ["eos_token_id"] = 2,
        ["head_dim"] = HeadDim, ["hidden_act"] = "silu", ["hidden_size"] = Hidden, ["initializer_range"] = 0.02,
        ["intermediate_size"] = Inter, ["max_position_embeddings"] = 128, ["max_window_layers"] = Layers,
        ["model_type"] = "qwen3", ["num_attention_heads"] = Heads, ["num_hidden_layers"] = Layers,
        ["num_key_value_heads"] = KvHeads, ["rms_norm_eps"] = 1e-6, ["rope_scaling"] = null, ["rope_theta"] = 1000000.0,
        ["sliding_window"] = null, ["tie_word_embeddings"] = true, ["torch_dtype"] = "float32", ["use_cache"] = true,
        ["use_sliding_window"] = false, ["vocab_size"] = Vocab,
    };

    static Dictionary<string, Tensor> RandomWeights(ulong seed)
    {
        var g = new torch.Generator(seed);
        Tensor M(params long[] shape) => torch.randn(shape, generator: g) * 0.15;
        Tensor N(long n, double spread) => 1 + torch.randn(new long[] { n }, generator: g) * spread;
        var w = new Dictionary<string, Tensor> { ["model.embed_tokens.weight"] = torch.randn(new long[] { Vocab, Hidden }, generator: g) * 0.5 };
        for (int l = 0; l < Layers; l++)
        {
            string p = $"model.layers.{l}.";
            w[p + "input_layernorm.weight"] = N(Hidden, 0.2);
            w[p + "post_attention_layernorm.weight"] = N(Hidden, 0.2);
            w[p + "self_attn.q_proj.weight"] = M(Heads * HeadDim, Hidden);
            w[p + "self_attn.k_proj.weight"] = M(KvHeads * HeadDim, Hidden);
            w[p + "self_attn.v_proj.weight"] = M(KvHeads * HeadDim, Hidden);
            w[p + "self_attn.o_proj.weight"] = M(Hidden, Heads * HeadDim);
            w[p + "self_attn.q_norm.weight"] = N(HeadDim, 0.5);
            w[p + "self_attn.k_norm.weight"] = N(HeadDim, 0.5);
            w[p + "mlp.gate_proj.weight"] = M(Inter, Hidden);
            w[p + "mlp.up_proj.weight"] = M(Inter, Hidden);
            w[p + "mlp.down_proj.weight"] = M(Hidden, Inter);
        }
        w["model.norm.weight"] = N(Hidden, 0.2);
        return w;
    }

    static void WriteFolder(string dir, Dictionary<string, Tensor> w)
    {
        File.WriteAllText(Path.Combine(dir, "config.json"), Config().ToJsonString());
        SafeTensors.Save(Path.Combine(dir, "model.safetensors"), w, new Dictionary<string, string> { ["format"] = "pt" });
    }

    static Tensor OurLogits(string dir, long[] ids)
    {
        using var m = ModelLoader.Load(dir);
        using var _ = torch.no_grad();
        return m.Logits(m.Forward(new ForwardArgs { InputIds = torch.tensor(ids).unsqueeze(0) }).Hidden)[0];
    }

    [Fact]
    public void ConfigParsesHeadDimQkNormAndTiedHead()
    {
        var c = ModelConfig.Parse(Config());
        Assert.Equal(ArchFamily.Llama, c.Family);
        Assert.Equal(HeadDim, c.HeadDim);
        Assert.True(c.QkNorm);
        Assert.False(c.QkvBias);
        Assert.True(c.TieWordEmbeddings);
        Assert.Equal(1e6, c.RopeTheta);
        Assert.Null(c.SlidingWindow);
        var shapes = ModelLoader.ExpectedShapes(c);
        Assert.Equal(new long[] { 64, 48 }, shapes["model.layers.0.self_attn.q_proj.weight"]);
        Assert.Equal(new long[] { 48, 64 }, shapes["model.layers.0.self_attn.o_proj.weight"]);
        Assert.Equal(new long[] { HeadDim }, shapes["model.layers.1.self_attn.k_norm.weight"]);
        Assert.DoesNotContain("lm_head.weight", shapes.Keys);
        Assert.DoesNotContain("model.layers.0.self_attn.q_proj.bias", shapes.Keys);
    }

    [Fact]
    public void LogitsMatchTheIndependentReference()
    {
        using var d = new Fixtures.TempDir();
        var w = RandomWeights(7);
        WriteFolder(d.Path, w);
        var ours = OurLogits(d.Path, Ids);
        var expected = LlamaReference.Logits(w, Spec, Ids);
        Assert.Equal(new long[] { Ids.Length, Vocab }, ours.shape);
        Assert.InRange(Fixtures.MaxAbsDiff(ours, expected), 0, 1e-4);
        Assert.True(expected.abs().max().item<double>() > 0.5, "logits are not trivially small");
    }

    [Fact]
    public void QkNormWeightsReallyChangeTheLogits()
    {
        using var d1 = new Fixtures.TempDir();
        using var d2 = new Fixtures.TempDir();
        using var d3 = new Fixtures.TempDir();
        var w = RandomWeights(11);
        WriteFolder(d1.Path, w);
        var baseLogits = OurLogits(d1.Path, Ids);

        var wq = new Dictionary<string, Tensor>(w) { ["model.layers.0.self_attn.q_norm.weight"] = w["model.layers.0.self_attn.q_norm.weight"].flip(0) * 1.7 };
        WriteFolder(d2.Path, wq);
        var qLogits = OurLogits(d2.Path, Ids);
        Assert.True(Fixtures.MaxAbsDiff(baseLogits, qLogits) > 1e-3, "q_norm weights do not affect the logits");
        Assert.InRange(Fixtures.MaxAbsDiff(qLogits, LlamaReference.Logits(wq, Spec, Ids)), 0, 1e-4);

        var wk = new Dictionary<string, Tensor>(w) { ["model.layers.1.self_attn.k_norm.weight"] = w["model.layers.1.self_attn.k_norm.weight"].flip(0) * 0.5 };
        WriteFolder(d3.Path, wk);
        var kLogits = OurLogits(d3.Path, Ids);
        Assert.True(Fixtures.MaxAbsDiff(baseLogits, kLogits) > 1e-3, "k_norm weights do not affect the logits");
        Assert.InRange(Fixtures.MaxAbsDiff(kLogits, LlamaReference.Logits(wk, Spec, Ids)), 0, 1e-4);
    }

    [Fact]
    public void MissingQNormIsAnError()
    {
        using var d = new Fixtures.TempDir();
        var w = RandomWeights(3);
        w.Remove("model.layers.1.self_attn.q_norm.weight");
        WriteFolder(d.Path, w);
        var e = Assert.Throws<SoftPromptException>(() => ModelLoader.Load(d.Path));
        Assert.Contains("model.layers.1.self_attn.q_norm.weight", e.Message);
    }

    [Fact]
    public void CachedGenerationMatchesTheReferenceArgmaxLoop()
    {
        using var d = new Fixtures.TempDir();
        var w = RandomWeights(7);
        WriteFolder(d.Path, w);
        using var m = ModelLoader.Load(d.Path);
        var prompt = Ids[..5];
        var res = SoftPrompt.Inference.Generator.Generate(m, prompt.Select(x => (int)x).ToArray(), new GenerationOptions { MaxNewTokens = 6 });
        var seq = prompt.ToList();
        for (int i = 0; i < 6; i++)
        {
            var l = LlamaReference.Logits(w, Spec, seq.ToArray());
            seq.Add(l[-1].argmax().item<long>());
        }
        Assert.Equal(seq.Skip(5).Select(x => (int)x).ToArray(), res.NewIds);
    }
}
