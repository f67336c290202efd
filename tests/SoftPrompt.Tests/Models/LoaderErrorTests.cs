using System.Text.Json.Nodes;
using SoftPrompt.IO;
using SoftPrompt.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace SoftPrompt.Tests.Models;

/// <summary>
/// config.json parsing and checkpoint loading: every user mistake gives a <see cref="SoftPromptException"/> that
/// names the file / key, and the checkpoint variants found on the Hub (sharded, original GPT-2 key layout, bf16
/// loading) give the same model as the fixture.
/// </summary>
public class LoaderErrorTests
{
    static SoftPromptException LoadFails(string dir) => Assert.Throws<SoftPromptException>(() => { using var m = ModelLoader.Load(dir); });

    static Tensor Logits(CausalLM m, long[] ids)
    {
        using var _ = torch.no_grad();
        var r = m.Forward(new ForwardArgs { InputIds = torch.tensor(ids).unsqueeze(0) });
        return m.Logits(r.Hidden);
    }

    // ---------- config errors ----------

    [Fact]
    public void UnsupportedModelTypeNamesTheTypeAndTheSupportedList()
    {
        using var d = new Fixtures.TempDir();
        ModelFolders.CopyFixture("llama", d.Path);
        ModelFolders.EditConfig(d.Path, o => o["model_type"] = "bert");
        var e = LoadFails(d.Path);
        Assert.Contains("'bert'", e.Message);
        Assert.Contains("config.json", e.Message);
        foreach (var t in new[] { "gpt2", "llama", "mistral", "qwen2", "qwen3" }) Assert.Contains(t, e.Message);
    }

    [Theory]
    [InlineData("llama", "hidden_size")]
    [InlineData("llama", "num_hidden_layers")]
    [InlineData("qwen2", "vocab_size")]
    [InlineData("mistral", "intermediate_size")]
    [InlineData("llama", "model_type")]
    public void MissingRequiredKeyIsNamed(string model, string key)
    {
        using var d = new Fixtures.TempDir();
        ModelFolders.CopyFixture(model, d.Path);
        ModelFolders.EditConfig(d.Path, o => o.Remove(key));
        var e = LoadFails(d.Path);
        Assert.Contains($"'{key}'", e.Message);
        Assert.Contains("config.json", e.Message);
    }

    [Fact]
    public void UnknownRopeScalingTypeIsRejected()
    {
        using var d = new Fixtures.TempDir();
        ModelFolders.CopyFixture("llama", d.Path);
        ModelFolders.EditConfig(d.Path, o => o["rope_scaling"] = new JsonObject { ["rope_type"] = "yarn", ["factor"] = 4.0 });
        var e = LoadFails(d.Path);
        Assert.Contains("'yarn'", e.Message);
        Assert.Contains("rope_scaling", e.Message);
    }

    [Fact]
    public void WrongTypedKeyIsNamed()
    {
        using var d = new Fixtures.TempDir();
        ModelFolders.CopyFixture("llama", d.Path);
        ModelFolders.EditConfig(d.Path, o => o["num_attention_heads"] = "four");
        var e = LoadFails(d.Path);
        Assert.Contains("'num_attention_heads'", e.Message);
    }

    [Fact]
    public void MissingConfigJsonIsAClearError()
    {
        using var d = new Fixtures.TempDir();
        ModelFolders.CopyFixture("llama", d.Path);
        File.Delete(d["config.json"]);
        var e = LoadFails(d.Path);
        Assert.Contains("config.json", e.Message);
        Assert.Contains("not found", e.Message);
    }

    [Fact]
    public void MissingFolderIsAClearError()
    {
        using var d = new Fixtures.TempDir();
        var e = LoadFails(d["does-not-exist"]);
        Assert.Contains("does-not-exist", e.Message);
        Assert.Contains("does not exist", e.Message);
    }

    [Fact]
    public void PickleOnlyFolderIsRefusedWithAnExplanation()
    {
        using var d = new Fixtures.TempDir();
        ModelFolders.CopyFixture("gpt2", d.Path);
        File.Delete(d["model.safetensors"]);
        File.WriteAllBytes(d["pytorch_model.bin"], new byte[] { 0x80, 0x02, (byte)'c', (byte)'o', (byte)'s', (byte)'\n' }); // a pickle opcode stream
        var e = LoadFails(d.Path);
        Assert.Contains("pickle", e.Message, StringComparison.OrdinalIgnoreCase);
        Assert.Contains("safetensors", e.Message);
    }

    [Fact]
    public void FolderWithoutWeightsIsAClearError()
    {
        using var d = new Fixtures.TempDir();
        ModelFolders.CopyFixture("gpt2", d.Path);
        File.Delete(d["model.safetensors"]);
        var e = LoadFails(d.Path);
        Assert.Contains("model.safetensors", e.Message);
    }

    // ---------- checkpoint errors ----------

    [Fact]
    public void WrongShapedTensorNamesTheKeyAndTheFile()
    {
        using var d = new Fixtures.TempDir();
        ModelFolders.CopyFixture("llama", d.Path);
        ModelFolders.EditWeights(d.Path, w => w["model.layers.1.self_attn.k_proj.weight"] = torch.zeros(48, 64));
        var e = LoadFails(d.Path);
        Assert.Contains("model.layers.1.self_attn.k_proj.weight", e.Message);
        Assert.Contains(d["model.safetensors"], e.Message);
        Assert.Contains("[48, 64]", e.Message);
        Assert.Contains("[32, 64]", e.Message);
    }

    [Fact]
    public void MissingTensorIsNamed()
    {
        using var d = new Fixtures.TempDir();
        ModelFolders.CopyFixture("qwen2", d.Path);
        ModelFolders.EditWeights(d.Path, w => w.Remove("model.layers.0.self_attn.q_proj.bias"));
        var e = LoadFails(d.Path);
        Assert.Contains("missing", e.Message);
        Assert.Contains("model.layers.0.self_attn.q_proj.bias", e.Message);
    }

    [Fact]
    public void UnexpectedExtraTensorIsNamed()
    {
        using var d = new Fixtures.TempDir();
        ModelFolders.CopyFixture("llama", d.Path);
        ModelFolders.EditWeights(d.Path, w => w["model.layers.2.input_layernorm.weight"] = torch.ones(64)); // a third layer the config does not have
        var e = LoadFails(d.Path);
        Assert.Contains("unexpected", e.Message);
        Assert.Contains("model.layers.2.input_layernorm.weight", e.Message);
        Assert.Contains(d["model.safetensors"], e.Message);
    }

    [Fact]
    public void IntegerWeightIsRejected()
    {
        using var d = new Fixtures.TempDir();
        ModelFolders.CopyFixture("llama", d.Path);
        ModelFolders.EditWeights(d.Path, w => w["model.norm.weight"] = torch.ones(new long[] { 64 }, ScalarType.Int64));
        var e = LoadFails(d.Path);
        Assert.Contains("model.norm.weight", e.Message);
        Assert.Contains("I64", e.Message);
    }

    [Fact]
    public void ConfigFromAnotherModelIsCaught()
    {
        // llama config with the gpt2 checkpoint: the loader must not silently build a model.
        using var d = new Fixtures.TempDir();
        ModelFolders.CopyFixture("gpt2", d.Path);
        File.Copy(Path.Combine(Fixtures.HfReference("llama"), "config.json"), d["config.json"], true);
        var e = LoadFails(d.Path);
        Assert.Contains("transformer.", e.Message);
    }

    // ---------- checkpoint variants ----------

    [Fact]
    public void ShardedCheckpointGivesIdenticalLogits()
    {
        using var d = new Fixtures.TempDir();
        ModelFolders.CopyFixture("qwen2", d.Path);
        var w = SafeTensors.Load(d["model.safetensors"]);
        File.Delete(d["model.safetensors"]);
        var names = w.Keys.OrderBy(k => k, StringComparer.Ordinal).ToList();
        var shards = new[] { "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors" };
        var map = new JsonObject();
        for (int s = 0; s < 2; s++)
        {
            // interleave so that both shards hold tensors of every layer
            var part = names.Where((_, i) => i % 2 == s).ToDictionary(n => n, n => w[n]);
            SafeTensors.Save(d[shards[s]], part, new Dictionary<string, string> { ["format"] = "pt" });
            foreach (var n in part.Keys) map[n] = shards[s];
        }
        File.WriteAllText(d["model.safetensors.index.json"], new JsonObject { ["metadata"] = new JsonObject { ["total_size"] = 808704 }, ["weight_map"] = map }.ToJsonString());

        Assert.Equal(shards.Select(s => d[s]), ModelLoader.WeightFiles(d.Path));
        using var sharded = ModelLoader.Load(d.Path);
        using var single = ModelLoader.Load(Fixtures.HfReference("qwen2"));
        var ids = ModelFolders.Seq2[..12];
        Assert.Equal(0.0, Fixtures.MaxAbsDiff(Logits(sharded, ids), Logits(single, ids)));
    }

    [Fact]
    public void ShardIndexPointingOutsideTheFolderIsRejected()
    {
        using var d = new Fixtures.TempDir();
        ModelFolders.CopyFixture("llama", d.Path);
        File.Move(d["model.safetensors"], d["model-00001-of-00001.safetensors"]);
        File.WriteAllText(d["model.safetensors.index.json"], "{\"weight_map\":{\"model.norm.weight\":\"../model-00001-of-00001.safetensors\"}}");
        var e = LoadFails(d.Path);
        Assert.Contains("model.safetensors.index.json", e.Message);
    }

    [Fact]
    public void ShardMissingFromTheFolderIsNamed()
    {
        using var d = new Fixtures.TempDir();
        ModelFolders.CopyFixture("llama", d.Path);
        File.Delete(d["model.safetensors"]);
        File.WriteAllText(d["model.safetensors.index.json"], "{\"weight_map\":{\"model.norm.weight\":\"model-00001-of-00002.safetensors\"}}");
        var e = LoadFails(d.Path);
        Assert.Contains("model-00001-of-00002.safetensors", e.Message);
    }

    [Fact]
    public void OriginalHubGpt2LayoutLoadsAndGivesIdenticalLogits()
    {
        using var d = new Fixtures.TempDir();
        ModelFolders.CopyFixture("gpt2", d.Path);
        int nPos = 128;
        ModelFolders.EditWeights(d.Path, w =>
        {
            foreach (var k in w.Keys.ToList())
            {
                w[k["transformer.".Length..]] = w[k];
                w.Remove(k);
            }
            for (int l = 0; l < 2; l++)
            {
                w[$"h.{l}.attn.bias"] = torch.ones(nPos, nPos).tril().view(1, 1, nPos, nPos);
                w[$"h.{l}.attn.masked_bias"] = torch.tensor(-1e4f);
            }
        });
        var keys = SafeTensors.ReadHeader(d["model.safetensors"]).Tensors.Keys.ToList();
        Assert.Contains("wte.weight", keys);
        Assert.Contains("h.1.attn.masked_bias", keys);
        Assert.DoesNotContain(keys, k => k.StartsWith("transformer."));

        using var hub = ModelLoader.Load(d.Path);
        using var fixture = ModelLoader.Load(Fixtures.HfReference("gpt2"));
        Assert.Equal(fixture.Weights.Keys.OrderBy(k => k), hub.Weights.Keys.OrderBy(k => k));
        var ids = ModelFolders.Seq2[..12];
        Assert.Equal(0.0, Fixtures.MaxAbsDiff(Logits(hub, ids), Logits(fixture, ids)));
    }

    [Theory]
    [InlineData("gpt2")]
    [InlineData("qwen2")]
    public void Bf16LoadIsCloseToFp32AndStoresBf16Weights(string model)
    {
        using var bf = ModelLoader.Load(Fixtures.HfReference(model), dtype: ScalarType.BFloat16);
        using var fp = ModelLoader.Load(Fixtures.HfReference(model));
        Assert.Equal(ScalarType.BFloat16, bf.DType);
        Assert.All(bf.Weights.Values, w => Assert.Equal(ScalarType.BFloat16, w.dtype));
        Assert.All(fp.Weights.Values, w => Assert.Equal(ScalarType.Float32, w.dtype));
        var ids = ModelFolders.Seq2[..12];
        var lb = Logits(bf, ids);
        Assert.Equal(ScalarType.Float32, lb.dtype); // logits come back in fp32
        var diff = Fixtures.MaxAbsDiff(lb, Logits(fp, ids));
        Assert.InRange(diff, 1e-7, 0.05); // close, but really computed in bf16
    }

    [Theory]
    [InlineData("gpt2")]
    [InlineData("llama")]
    [InlineData("qwen2")]
    public void EveryWeightIsFrozen(string model)
    {
        using var m = ModelLoader.Load(Fixtures.HfReference(model));
        Assert.NotEmpty(m.Weights);
        Assert.All(m.Weights, kv => Assert.False(kv.Value.requires_grad, $"{kv.Key} requires grad"));
        using var bf = ModelLoader.Load(Fixtures.HfReference(model), dtype: ScalarType.BFloat16);
        Assert.All(bf.Weights, kv => Assert.False(kv.Value.requires_grad, $"{kv.Key} requires grad"));
    }

    [Fact]
    public void ParameterCountsMatchCasesJson()
    {
        var cases = JsonNode.Parse(File.ReadAllText(Path.Combine(Fixtures.Root, "hf-reference", "cases.json")))!;
        foreach (var name in Fixtures.ReferenceModels)
        {
            using var m = ModelLoader.Load(Fixtures.HfReference(name));
            Assert.Equal(cases["models"]![name]!["n_parameters"]!.GetValue<long>(), m.ParameterCount);
        }
    }
}
