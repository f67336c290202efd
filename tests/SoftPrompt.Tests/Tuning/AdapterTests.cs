using System.Text.Json.Nodes;
using SoftPrompt.IO;
using SoftPrompt.Models;
using SoftPrompt.Tuning;
using TorchSharp;
using static TorchSharp.torch;

namespace SoftPrompt.Tests.Tuning;

/// <summary>PEFT's on-disk format both ways, checked against the Hugging Face golden logits.</summary>
public class AdapterTests
{
    static void WritePeftAdapter(string dir, string peftType, Tensor embeddings, JsonObject extra)
    {
        Directory.CreateDirectory(dir);
        var cfg = new JsonObject { ["peft_type"] = peftType, ["task_type"] = "CAUSAL_LM", ["num_virtual_tokens"] = embeddings.shape[0], ["inference_mode"] = true, ["num_transformer_submodules"] = 1 };
        foreach (var (k, v) in extra) cfg[k] = v?.DeepClone();
        File.WriteAllText(Path.Combine(dir, "adapter_config.json"), cfg.ToJsonString());
        SafeTensors.Save(Path.Combine(dir, "adapter_model.safetensors"), new Dictionary<string, Tensor> { ["prompt_embeddings"] = embeddings }, new Dictionary<string, string> { ["format"] = "pt" });
    }

    [Theory]
    [InlineData("gpt2")]
    [InlineData("llama")]
    [InlineData("qwen2")]
    public void HandWrittenPeftPromptTuningAdapterReproducesGoldenLogits(string name)
    {
        using var tmp = new Fixtures.TempDir();
        using var model = ModelLoader.Load(Fixtures.HfReference(name));
        var g = Fixtures.Golden(name);
        WritePeftAdapter(tmp.Path, "PROMPT_TUNING", g["soft_prompt"], new JsonObject { ["token_dim"] = 64, ["num_layers"] = 2, ["prompt_tuning_init"] = "RANDOM" });
        using var method = Adapter.Load(tmp.Path, model);
        using var _ = torch.no_grad();
        var inj = method.Inject(1);
        var r = model.Forward(new ForwardArgs { InputIds = g["seq1.input_ids"], PrefixEmbeds = inj.PrefixEmbeds });
        Assert.InRange(Fixtures.MaxAbsDiff(model.Logits(r.Hidden), g["seq1.prompt.logits"]), 0, 1e-4);
    }

    /// <summary>PEFT's prefix layout: per virtual token, layer0.K, layer0.V, layer1.K, ... each [kv_heads, head_dim].
    /// Building that tensor from the golden per-layer caches and loading it must give the golden prefix logits.</summary>
    [Theory]
    [InlineData("gpt2")]
    [InlineData("llama")]
    [InlineData("mistral")]
    public void HandWrittenPeftPrefixAdapterReproducesGoldenLogits(string name)
    {
        using var tmp = new Fixtures.TempDir();
        using var model = ModelLoader.Load(Fixtures.HfReference(name));
        var g = Fixtures.Golden(name);
        int L = model.Config.NumLayers;
        var blocks = new List<Tensor>();
        for (int l = 0; l < L; l++) { blocks.Add(g[$"prefix.layer{l}.key"][0]); blocks.Add(g[$"prefix.layer{l}.value"][0]); } // each [kvh, P, hd]
        var stacked = torch.stack(blocks.ToArray());                     // [2L, kvh, P, hd]
        long P = stacked.shape[2];
        var emb = stacked.permute(2, 0, 1, 3).reshape(P, -1).contiguous(); // [P, 2L*kvh*hd]
        WritePeftAdapter(tmp.Path, "PREFIX_TUNING", emb, new JsonObject { ["token_dim"] = model.Config.KvDim, ["num_layers"] = L, ["num_attention_heads"] = model.Config.NumKvHeads });
        using var method = Adapter.Load(tmp.Path, model);
        Assert.Equal("PREFIX_TUNING", method.PeftType);
        using var _ = torch.no_grad();
        var inj = method.Inject(1);
        var cache = KvCache.Growing(L);
        cache.SetPrefix(inj.PastKeyValues!);
        var r = model.Forward(new ForwardArgs { InputIds = g["seq2.input_ids"], Cache = cache });
        Assert.InRange(Fixtures.MaxAbsDiff(model.Logits(r.Hidden), g["seq2.prefix.logits"]), 0, 1e-4);
    }

    [Theory]
    [InlineData("prompt", false)]
    [InlineData("prefix", false)]
    [InlineData("prefix", true)]
    public void ExportThenLoadGivesTheSameLogits(string kind, bool projection)
    {
        using var tmp = new Fixtures.TempDir();
        using var model = ModelLoader.Load(Fixtures.HfReference("llama"));
        using IPromptMethod method = kind == "prompt"
            ? PromptTuning.Create(model, 6, PromptInit.SampleVocab, 7)
            : PrefixTuning.Create(model.Config, 6, projection, 32, 7, model.Device);
        Adapter.Save(tmp.Path, method, model);
        using var loaded = Adapter.Load(tmp.Path, model);
        var ids = torch.tensor(new long[] { 5, 17, 300, 42, 9 }).unsqueeze(0);
        using var _ = torch.no_grad();
        Tensor Run(IPromptMethod m)
        {
            var inj = m.Inject(1);
            KvCache? c = null;
            if (inj.PastKeyValues is not null) { c = KvCache.Growing(model.Config.NumLayers); c.SetPrefix(inj.PastKeyValues); }
            return model.Logits(model.Forward(new ForwardArgs { InputIds = ids, PrefixEmbeds = inj.PrefixEmbeds, Cache = c }).Hidden);
        }
        Assert.InRange(Fixtures.MaxAbsDiff(Run(method), Run(loaded)), 0, 1e-6);

        var cfg = JsonNode.Parse(File.ReadAllText(Path.Combine(tmp.Path, "adapter_config.json")))!.AsObject();
        Assert.Equal(kind == "prompt" ? "PROMPT_TUNING" : "PREFIX_TUNING", cfg["peft_type"]!.GetValue<string>());
        Assert.Equal("CAUSAL_LM", cfg["task_type"]!.GetValue<string>());
        Assert.True(cfg["inference_mode"]!.GetValue<bool>());
        Assert.Equal(cfg.Select(kv => kv.Key).OrderBy(k => k, StringComparer.Ordinal), cfg.Select(kv => kv.Key)); // sorted keys, as PEFT writes
        var h = SafeTensors.ReadHeader(Path.Combine(tmp.Path, "adapter_model.safetensors"));
        Assert.Equal("pt", h.Metadata["format"]);
        var t = Assert.Single(h.Tensors.Values);
        Assert.Equal("prompt_embeddings", t.Name);
        Assert.Equal("F32", t.DType);
        long width = kind == "prompt" ? model.Config.HiddenSize : 2 * model.Config.NumLayers * model.Config.KvDim;
        Assert.Equal(new long[] { 6, width }, t.Shape);
    }

    [Fact]
    public void PromptProjectionStartsAtTheInitialPromptAndExportsItsOutput()
    {
        using var tmp = new Fixtures.TempDir();
        using var model = ModelLoader.Load(Fixtures.HfReference("llama"));
        using var plain = PromptTuning.Create(model, 5, PromptInit.SampleVocab, 7);
        using var projected = PromptTuning.Create(model, 5, PromptInit.SampleVocab, 7, projectionHidden: 12);
        Assert.True(projected.Projection);
        Assert.Equal(new[] { "prompt_embeddings", "reparam.0.weight", "reparam.0.bias", "reparam.2.weight", "reparam.2.bias" }, projected.Parameters.Select(p => p.Name));
        // The residual branch starts at zero: the same prompt as without the projection.
        Assert.InRange(Fixtures.MaxAbsDiff(plain.ExportEmbeddings(), projected.ExportEmbeddings()), 0, 0);

        // Move the MLP's output layer: the exported prompt is P + MLP(P), and a loaded adapter (no MLP) gives the same logits.
        using (torch.no_grad())
        {
            var w2 = projected.Parameters.Single(p => p.Name == "reparam.2.weight").Param;
            w2.copy_(torch.randn(w2.shape, generator: new torch.Generator(3)) * 0.5);
        }
        var exported = projected.ExportEmbeddings();
        Assert.True(Fixtures.MaxAbsDiff(plain.ExportEmbeddings(), exported) > 1e-3);
        Adapter.Save(tmp.Path, projected, model);
        using var loaded = Adapter.Load(tmp.Path, model);
        Assert.False(((PromptTuning)loaded).Projection);
        var ids = torch.tensor(new long[] { 5, 17, 300, 42, 9 }).unsqueeze(0);
        using var _ = torch.no_grad();
        Tensor Run(IPromptMethod m) => model.Logits(model.Forward(new ForwardArgs { InputIds = ids, PrefixEmbeds = m.Inject(1).PrefixEmbeds }).Hidden);
        Assert.InRange(Fixtures.MaxAbsDiff(Run(projected), Run(loaded)), 0, 1e-5);
    }

    [Fact]
    public void LoadingOntoAnotherModelIsAClearError()
    {
        using var tmp = new Fixtures.TempDir();
        using var llama = ModelLoader.Load(Fixtures.HfReference("llama"));
        using var qwen = ModelLoader.Load(Fixtures.HfReference("qwen2"));
        using var gpt2 = ModelLoader.Load(Fixtures.HfReference("gpt2"));
        using (var m = PromptTuning.Create(llama, 4, PromptInit.SampleVocab, 1)) Adapter.Save(tmp["p"], m, llama);
        using (var m = PrefixTuning.Create(llama.Config, 4, false, 0, 1, llama.Device)) Adapter.Save(tmp["x"], m, llama);
        // Same shapes, other weights: the fingerprint catches it.
        var e1 = Assert.Throws<SoftPromptException>(() => Adapter.Load(tmp["p"], qwen));
        Assert.Contains("another model", e1.Message);
        // Other KV layout (gpt2 has 4 KV heads): a shape error naming the widths.
        var e2 = Assert.ThrowsAny<SoftPromptException>(() => Adapter.Load(tmp["x"], gpt2));
        Assert.Contains("adapter_model.safetensors", e2.Message);
        Assert.Throws<SoftPromptException>(() => Adapter.Load(tmp["missing"], llama));
    }
}
