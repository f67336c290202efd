using System.Text.Json.Nodes;
using SoftPrompt.IO;
using SoftPrompt.Runtime;
using TorchSharp;
using static TorchSharp.torch;

namespace SoftPrompt.Models;

/// <summary>Loads a Hugging Face model folder (config.json + model.safetensors or a sharded index) into a frozen <see cref="CausalLM"/>.</summary>
public static class ModelLoader
{
    /// <summary>Loads and freezes the model. <paramref name="checkFinite"/>: the NaN/infinity check of every weight
    /// (<c>--no-check</c> turns it off): one reduction per tensor, about the cost of reading the weights once more.</summary>
    public static CausalLM Load(string modelDir, Device? device = null, ScalarType dtype = ScalarType.Float32, bool checkFinite = true)
    {
        device ??= torch.CPU;
        var cfg = ModelConfig.Load(modelDir);
        if (cfg.IsEncoderDecoder) throw new SoftPromptException($"{modelDir}: {cfg.ModelType} is an encoder-decoder model; this command supports decoder-only models only (with T5: train, eval, generate, score, serve).");
        var weights = ReadWeights(modelDir, cfg.ModelType, ExpectedShapes(cfg), device, dtype, checkFinite,
            canonical: n => Canonical(cfg, n), ignored: n => Ignored(cfg, n), optional: n => Optional(cfg, n),
            unexpectedHint: h => $"is the config from another model?{LayerHint(cfg, h)}",
            missingHint: hs => LayerHint(cfg, hs),
            transform: (name, t) => cfg.Family == ArchFamily.Gpt2 && IsConv1D(name) ? t.t() : t); // Conv1D stores [in, out]
        try { return new CausalLM(cfg, weights, device, dtype); }
        catch { foreach (var t in weights.Values) t.Dispose(); throw; }
    }

    /// <summary>
    /// The one weight reader of every model class (CausalLM, T5Model). Every header first: names (as
    /// <paramref name="canonical"/> maps them), shapes and dtypes are checked against <paramref name="expected"/>, and the
    /// total size against the memory there is, before a single weight is allocated; then each tensor is read, checked for
    /// NaN/infinity, transformed, converted and moved, one at a time. The caller owns the result.
    /// </summary>
    internal static Dictionary<string, Tensor> ReadWeights(string modelDir, string modelType, IReadOnlyDictionary<string, long[]> expected, Device device,
        ScalarType dtype, bool checkFinite, Func<string, string> canonical, Func<string, bool> ignored, Func<string, bool> optional,
        Func<SafeTensors.Header, string> unexpectedHint, Func<IEnumerable<SafeTensors.Header>, string> missingHint,
        Func<string, Tensor, Tensor>? transform = null)
    {
        var files = WeightFiles(modelDir);
        var plan = new List<(string File, SafeTensors.Header Header, List<(SafeTensorInfo Info, string Name)> Tensors)>();
        var seen = new Dictionary<string, string>();
        long bytes = 0;
        int elementSize = dtype is ScalarType.Float32 ? 4 : dtype is ScalarType.Float64 ? 8 : 2;
        foreach (var file in files)
        {
            var header = SafeTensors.ReadHeader(file);
            var list = new List<(SafeTensorInfo, string)>();
            foreach (var info in header.Tensors.Values.OrderBy(t => t.Begin))
            {
                var name = canonical(info.Name);
                if (ignored(name)) continue;
                if (!expected.TryGetValue(name, out var shape))
                    throw new SoftPromptException($"{file}: unexpected tensor '{info.Name}' for a {modelType} model with this config.json ({unexpectedHint(header)}).");
                if (seen.TryGetValue(name, out var other))
                    throw new SoftPromptException($"{file}: tensor '{info.Name}' also appears in {other}.");
                if (!info.Shape.SequenceEqual(shape))
                    throw new SoftPromptException($"{file}: tensor '{info.Name}' has shape [{string.Join(", ", info.Shape)}], expected [{string.Join(", ", shape)}] from config.json.");
                if (info.DType is not ("F32" or "F16" or "BF16" or "F64"))
                    throw new SoftPromptException($"{file}: tensor '{info.Name}' has dtype {info.DType}; weights must be floating point.");
                seen[name] = file;
                try { bytes = checked(bytes + checked(info.Shape.Aggregate(1L, (a, d) => checked(a * d)) * elementSize)); }
                catch (OverflowException) { throw new SoftPromptException($"{file}: tensor sizes overflow a 64-bit byte count."); }
                list.Add((info, name));
            }
            plan.Add((file, header, list));
        }
        var missing = expected.Keys.Where(k => !seen.ContainsKey(k) && !optional(k)).ToList();
        if (missing.Count > 0)
            throw new SoftPromptException($"{modelDir}: missing tensor{(missing.Count > 1 ? "s" : "")} {string.Join(", ", missing.Take(5).Select(m => $"'{m}'"))}{(missing.Count > 5 ? $" and {missing.Count - 5} more" : "")} in {string.Join(", ", files.Select(Path.GetFileName))}{missingHint(plan.Select(p => p.Header))}.");
        MemoryBudget.Check(bytes, $"{modelDir}: the weights in {Runtime.TorchRuntime.DTypeName(dtype)}");

        var weights = new Dictionary<string, Tensor>();
        try
        {
            foreach (var (file, header, tensors) in plan)
            {
                using var fs = InputFile.OpenRead(file);
                foreach (var (info, name) in tensors)
                {
                    using var scope = torch.NewDisposeScope();
                    var t = SafeTensors.ReadTensor(fs, header, info);
                    if (checkFinite) CheckFinite(t, file, info.Name);
                    if (transform is not null) t = transform(name, t);
                    weights[name] = t.to(dtype).to(device).contiguous().MoveToOuterDisposeScope();
                }
            }
            return weights;
        }
        catch
        {
            foreach (var t in weights.Values) t.Dispose();
            throw;
        }
    }

    /// <summary>Throws when a tensor holds NaN or infinity (one reduction), naming the file and tensor.</summary>
    public static void CheckFinite(Tensor t, string file, string name, string? hint = null)
    {
        if (t.NumberOfElements == 0 || !t.is_floating_point()) return;
        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        if (torch.isfinite(t).all().item<bool>()) return;
        long nan = torch.isnan(t).sum().item<long>(), inf = torch.isinf(t).sum().item<long>();
        throw new SoftPromptException($"{file}: tensor '{name}' holds {(nan > 0 ? $"{nan} NaN" : "")}{(nan > 0 && inf > 0 ? " and " : "")}{(inf > 0 ? $"{inf} infinite" : "")} " +
            $"value{(nan + inf == 1 ? "" : "s")} (of {t.NumberOfElements}); the file is corrupt or was saved from a diverged run{hint ?? " (--no-check skips this test)"}.");
    }

    /// <summary>" (config.json says N layers, the checkpoint has M)" when the layer count is what differs.</summary>
    static string LayerHint(ModelConfig cfg, params SafeTensors.Header[] headers) => LayerHint(cfg, (IEnumerable<SafeTensors.Header>)headers);

    static string LayerHint(ModelConfig cfg, IEnumerable<SafeTensors.Header> headers)
    {
        int max = -1;
        var rx = new System.Text.RegularExpressions.Regex(@"(?:^|\.)(?:layers|h)\.(\d{1,6})\.");
        foreach (var h in headers)
            foreach (var n in h.Tensors.Keys)
                if (rx.Match(n) is { Success: true } m && int.TryParse(m.Groups[1].Value, out var i)) max = Math.Max(max, i);
        if (max < 0 || max + 1 == cfg.NumLayers) return "";
        return $"; config.json says {(cfg.Family == ArchFamily.Gpt2 ? "n_layer" : "num_hidden_layers")} {cfg.NumLayers}, the checkpoint has {max + 1} layers";
    }

    /// <summary>model.safetensors, or the shards named by model.safetensors.index.json.</summary>
    public static IReadOnlyList<string> WeightFiles(string modelDir)
    {
        var single = Path.Combine(modelDir, "model.safetensors");
        var index = Path.Combine(modelDir, "model.safetensors.index.json");
        if (File.Exists(single)) return new[] { single };
        if (File.Exists(index))
        {
            var o = JsonFile.ReadObject(index);
            if (o["weight_map"] is not JsonObject map) throw new SoftPromptException($"{index}: missing 'weight_map'.");
            var shards = new List<string>();
            foreach (var (key, v) in map)
            {
                var f = v is JsonValue sv && sv.TryGetValue<string>(out var fs) ? fs : throw new SoftPromptException($"{index}: weight_map['{key}'] is not a file name.");
                if (f.Contains('/') || f.Contains('\\') || f.Contains("..")) throw new SoftPromptException($"{index}: weight_map['{key}'] = '{f}' must be a file name in the model folder.");
                var p = Path.Combine(modelDir, f);
                if (!shards.Contains(p))
                {
                    if (!File.Exists(p)) throw new SoftPromptException($"{index}: shard '{f}' (for '{key}') not found in {modelDir}.");
                    shards.Add(p);
                }
            }
            return shards;
        }
        if (Directory.EnumerateFiles(modelDir, "*.bin").Any() || Directory.EnumerateFiles(modelDir, "*.pt").Any())
            throw new SoftPromptException($"{modelDir}: only PyTorch pickle weights (*.bin/*.pt) found. Pickle can execute code and is not loaded; convert to safetensors (e.g. save_pretrained(..., safe_serialization=True)).");
        throw new SoftPromptException($"{modelDir}: no model.safetensors or model.safetensors.index.json found.");
    }

    static bool IsConv1D(string name) => name.EndsWith("attn.c_attn.weight") || name.EndsWith("attn.c_proj.weight") || name.EndsWith("mlp.c_fc.weight") || name.EndsWith("mlp.c_proj.weight");

    /// <summary>Original GPT-2 checkpoints store keys without the "transformer." prefix.</summary>
    static string Canonical(ModelConfig cfg, string name) =>
        cfg.Family == ArchFamily.Gpt2 && !name.StartsWith("transformer.") && !name.StartsWith("lm_head.") ? "transformer." + name : name;

    /// <summary>Buffers some checkpoints carry that are not weights (GPT-2's and GPT-NeoX's causal-mask buffers, rotary
    /// inv_freq and GPT-NeoX's cos/sin caches), and a tied head's duplicate.</summary>
    static bool Ignored(ModelConfig cfg, string name) =>
        name.EndsWith(".attn.bias") || name.EndsWith(".attn.masked_bias") || name.EndsWith("rotary_emb.inv_freq")
        || (cfg.Family == ArchFamily.GptNeoX && (name.EndsWith(".attention.bias") || name.EndsWith(".attention.masked_bias")
            || name.EndsWith("rotary_emb.cos_cached") || name.EndsWith("rotary_emb.sin_cached")))
        || (cfg.TieWordEmbeddings && name == (cfg.Family == ArchFamily.GptNeoX ? "embed_out.weight" : "lm_head.weight"));

    static bool Optional(ModelConfig cfg, string name) => false;

    /// <summary>Every tensor the config implies, with its shape as stored in the checkpoint.</summary>
    public static Dictionary<string, long[]> ExpectedShapes(ModelConfig c)
    {
        var e = new Dictionary<string, long[]>();
        int H = c.HiddenSize, I = c.IntermediateSize, V = c.VocabSize, qd = c.NumHeads * c.HeadDim, kvd = c.KvDim;
        if (c.Family == ArchFamily.Gpt2)
        {
            e["transformer.wte.weight"] = new long[] { V, H };
            e["transformer.wpe.weight"] = new long[] { c.MaxPositions, H };
            for (int i = 0; i < c.NumLayers; i++)
            {
                string p = $"transformer.h.{i}.";
                e[p + "ln_1.weight"] = e[p + "ln_1.bias"] = e[p + "ln_2.weight"] = e[p + "ln_2.bias"] = new long[] { H };
                e[p + "attn.c_attn.weight"] = new long[] { H, 3 * H }; e[p + "attn.c_attn.bias"] = new long[] { 3 * H };
                e[p + "attn.c_proj.weight"] = new long[] { H, H }; e[p + "attn.c_proj.bias"] = new long[] { H };
                e[p + "mlp.c_fc.weight"] = new long[] { H, I }; e[p + "mlp.c_fc.bias"] = new long[] { I };
                e[p + "mlp.c_proj.weight"] = new long[] { I, H }; e[p + "mlp.c_proj.bias"] = new long[] { H };
            }
            e["transformer.ln_f.weight"] = e["transformer.ln_f.bias"] = new long[] { H };
            if (!c.TieWordEmbeddings) e["lm_head.weight"] = new long[] { V, H };
            return e;
        }
        if (c.Family == ArchFamily.GptNeoX)
        {
            e["gpt_neox.embed_in.weight"] = new long[] { V, H };
            for (int i = 0; i < c.NumLayers; i++)
            {
                string p = $"gpt_neox.layers.{i}.";
                e[p + "input_layernorm.weight"] = e[p + "input_layernorm.bias"] = e[p + "post_attention_layernorm.weight"] = e[p + "post_attention_layernorm.bias"] = new long[] { H };
                e[p + "attention.query_key_value.weight"] = new long[] { 3 * H, H };
                e[p + "attention.dense.weight"] = new long[] { H, H };
                if (c.QkvBias) { e[p + "attention.query_key_value.bias"] = new long[] { 3 * H }; e[p + "attention.dense.bias"] = new long[] { H }; }
                e[p + "mlp.dense_h_to_4h.weight"] = new long[] { I, H }; e[p + "mlp.dense_h_to_4h.bias"] = new long[] { I };
                e[p + "mlp.dense_4h_to_h.weight"] = new long[] { H, I }; e[p + "mlp.dense_4h_to_h.bias"] = new long[] { H };
            }
            e["gpt_neox.final_layer_norm.weight"] = e["gpt_neox.final_layer_norm.bias"] = new long[] { H };
            if (!c.TieWordEmbeddings) e["embed_out.weight"] = new long[] { V, H };
            return e;
        }
        e["model.embed_tokens.weight"] = new long[] { V, H };
        for (int i = 0; i < c.NumLayers; i++)
        {
            string p = $"model.layers.{i}.";
            e[p + "input_layernorm.weight"] = e[p + "post_attention_layernorm.weight"] = new long[] { H };
            if (c.SandwichNorms) e[p + "pre_feedforward_layernorm.weight"] = e[p + "post_feedforward_layernorm.weight"] = new long[] { H };
            if (c.FusedProjections) e[p + "self_attn.qkv_proj.weight"] = new long[] { qd + 2 * kvd, H };
            else
            {
                e[p + "self_attn.q_proj.weight"] = new long[] { qd, H };
                e[p + "self_attn.k_proj.weight"] = new long[] { kvd, H };
                e[p + "self_attn.v_proj.weight"] = new long[] { kvd, H };
            }
            e[p + "self_attn.o_proj.weight"] = new long[] { H, qd };
            if (c.QkvBias) { e[p + "self_attn.q_proj.bias"] = new long[] { qd }; e[p + "self_attn.k_proj.bias"] = e[p + "self_attn.v_proj.bias"] = new long[] { kvd }; }
            if (c.OutBias) e[p + "self_attn.o_proj.bias"] = new long[] { H };
            if (c.QkNorm) e[p + "self_attn.q_norm.weight"] = e[p + "self_attn.k_norm.weight"] = new long[] { c.HeadDim };
            if (c.FusedProjections) e[p + "mlp.gate_up_proj.weight"] = new long[] { 2 * I, H };
            else e[p + "mlp.gate_proj.weight"] = e[p + "mlp.up_proj.weight"] = new long[] { I, H };
            e[p + "mlp.down_proj.weight"] = new long[] { H, I };
            if (c.MlpBias) { e[p + "mlp.gate_proj.bias"] = e[p + "mlp.up_proj.bias"] = new long[] { I }; e[p + "mlp.down_proj.bias"] = new long[] { H }; }
        }
        e["model.norm.weight"] = new long[] { H };
        if (!c.TieWordEmbeddings) e["lm_head.weight"] = new long[] { V, H };
        return e;
    }
}
