using TorchSharp;
using static TorchSharp.torch;

namespace SoftPrompt.Tests.ReferenceModels;

/// <summary>
/// An independent, deliberately plain re-implementation of the Llama-family forward pass (Llama, Mistral, Qwen2,
/// Qwen3) in float64, written from Hugging Face's formulas (modeling_llama.py / modeling_mistral.py /
/// modeling_qwen2.py / modeling_qwen3.py), not from src/: one sequence, explicit loops over layers, explicit
/// softmax, explicit masks. It shares nothing with <c>CausalLM</c> but the weight names. Verified against the HF
/// golden logits of the llama / qwen2 / mistral fixtures in <c>ReferenceImplementationTests</c>.
/// <list type="bullet">
/// <item>RMSNorm: <c>x * rsqrt(mean(x²) + eps) * w</c>.</item>
/// <item>Qwen3: <c>q = q_norm(q_proj(x).view(T, heads, head_dim))</c> per head, before RoPE; the same for k.</item>
/// <item>RoPE (rotate_half): <c>inv_freq_j = θ^(-2j/d)</c>, <c>x·cos + cat(-x2, x1)·sin</c> with angles duplicated.</item>
/// <item>GQA: KV head of query head j is <c>j / (heads / kv_heads)</c> (repeat_interleave).</item>
/// <item>Attention: <c>softmax(q kᵀ / sqrt(d) + mask) v</c>; key s is visible to query t iff s ≤ t and, with a sliding
/// window w (Mistral), s &gt; t - w (HF excludes <c>s &lt;= t - w</c>).</item>
/// <item>MLP: <c>down(silu(gate(x)) * up(x))</c>; head tied to the embeddings when there is no lm_head.weight.</item>
/// </list>
/// </summary>
public static class LlamaReference
{
    public sealed record Spec(int Heads, int KvHeads, int HeadDim, int Layers, double Eps, double Theta, int? Window = null, bool QkNorm = false);

    public static Tensor Logits(IReadOnlyDictionary<string, Tensor> weights, Spec s, long[] ids, long[]? positions = null)
    {
        Tensor W(string k) => weights[k].to(ScalarType.Float64);
        Tensor? O(string k) => weights.TryGetValue(k, out var t) ? t.to(ScalarType.Float64) : null;
        int T = ids.Length, d = s.HeadDim, groups = s.Heads / s.KvHeads;
        positions ??= Enumerable.Range(0, T).Select(i => (long)i).ToArray();

        var embed = W("model.embed_tokens.weight");
        var h = torch.stack(ids.Select(i => embed[i]).ToArray()); // [T, H]

        // RoPE tables [T, d]
        var cos = new double[T, d];
        var sin = new double[T, d];
        for (int t = 0; t < T; t++)
            for (int j = 0; j < d / 2; j++)
            {
                double ang = positions[t] * Math.Pow(s.Theta, -2.0 * j / d);
                cos[t, j] = cos[t, j + d / 2] = Math.Cos(ang);
                sin[t, j] = sin[t, j + d / 2] = Math.Sin(ang);
            }
        var cosT = torch.tensor(cos.Cast<double>().ToArray()).view(T, 1, d);
        var sinT = torch.tensor(sin.Cast<double>().ToArray()).view(T, 1, d);
        Tensor Rope(Tensor x) // x [T, nh, d]
        {
            var x1 = x.narrow(-1, 0, d / 2);
            var x2 = x.narrow(-1, d / 2, d / 2);
            return x * cosT + torch.cat(new[] { -x2, x1 }, -1) * sinT;
        }

        // Additive mask [T, T]
        var mask = new double[T, T];
        for (int t = 0; t < T; t++)
            for (int u = 0; u < T; u++)
            {
                bool visible = u <= t && (s.Window is not int w || u > t - w);
                mask[t, u] = visible ? 0 : double.NegativeInfinity;
            }
        var maskT = torch.tensor(mask.Cast<double>().ToArray()).view(T, T);

        Tensor Lin(Tensor x, string name) { var y = x.matmul(W(name + ".weight").t()); var b = O(name + ".bias"); return b is null ? y : y + b; }

        for (int l = 0; l < s.Layers; l++)
        {
            string p = $"model.layers.{l}.";
            var x = RmsNorm(h, W(p + "input_layernorm.weight"), s.Eps);
            var q = Lin(x, p + "self_attn.q_proj").view(T, s.Heads, d);
            var k = Lin(x, p + "self_attn.k_proj").view(T, s.KvHeads, d);
            var v = Lin(x, p + "self_attn.v_proj").view(T, s.KvHeads, d);
            if (s.QkNorm)
            {
                q = RmsNorm(q, W(p + "self_attn.q_norm.weight"), s.Eps);
                k = RmsNorm(k, W(p + "self_attn.k_norm.weight"), s.Eps);
            }
            q = Rope(q); k = Rope(k);
            var heads = new Tensor[s.Heads];
            for (int j = 0; j < s.Heads; j++)
            {
                int kvh = j / groups;
                var qj = q.select(1, j);                     // [T, d]
                var kj = k.select(1, kvh);
                var vj = v.select(1, kvh);
                var scores = qj.matmul(kj.t()) / Math.Sqrt(d) + maskT;
                var e = (scores - scores.max(-1, keepdim: true).values).exp();
                heads[j] = (e / e.sum(-1, keepdim: true)).matmul(vj);
            }
            var attn = torch.cat(heads, -1); // [T, heads*d], head-major as view(T, heads, d) merges
            h = h + Lin(attn, p + "self_attn.o_proj");
            x = RmsNorm(h, W(p + "post_attention_layernorm.weight"), s.Eps);
            var g = Lin(x, p + "mlp.gate_proj");
            h = h + Lin(g * torch.sigmoid(g) * Lin(x, p + "mlp.up_proj"), p + "mlp.down_proj");
        }
        h = RmsNorm(h, W("model.norm.weight"), s.Eps);
        var head = O("lm_head.weight") ?? embed;
        return h.matmul(head.t()); // [T, V] float64
    }

    static Tensor RmsNorm(Tensor x, Tensor w, double eps) => x * torch.rsqrt(x.pow(2).mean(new long[] { -1 }, keepdim: true) + eps) * w;
}
