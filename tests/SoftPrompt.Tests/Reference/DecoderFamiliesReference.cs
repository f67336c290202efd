using TorchSharp;
using static TorchSharp.torch;

namespace SoftPrompt.Tests.ReferenceModels;

/// <summary>
/// An independent, deliberately plain float64 re-implementation of the Gemma, Gemma 2, Phi-3 and GPT-NeoX forward
/// passes, written from the formulas in fixtures/hf-reference-more/README.md ("Model math, as verified") and from
/// transformers' configuration semantics, not from src/: one sequence, explicit loops over layers and heads, explicit
/// masks and softmax. It shares nothing with <c>CausalLM</c> but the weight names. Checked against the HF goldens in
/// <c>DecoderFamiliesReferenceTests</c>, then used for the options the fixtures do not exercise (head_dim ≠
/// hidden/heads, use_parallel_residual false, LongRoPE, partial rotary on Phi-3, Gemma 2's window with a prefix).
/// <list type="bullet">
/// <item>Soft prompt: its rows come first and take positions 0..n-1 (Gemma scales them like every input embedding).</item>
/// <item>Prefix: P key/value entries per layer sit at cache positions 0..P-1, never rotated; tokens take positions
/// P..P+T-1; a sliding window counts cache positions (key s visible to query t iff t - w &lt; s ≤ t).</item>
/// </list>
/// </summary>
public static class DecoderFamiliesReference
{
    public sealed record Spec(string Type, int Heads, int KvHeads, int HeadDim, int Layers, double Eps, double Theta = 10000)
    {
        public double Partial { get; init; } = 1.0;
        public int? Window { get; init; }
        public Func<int, bool> Slides { get; init; } = _ => true;
        public double? AttnCap { get; init; }
        public double? FinalCap { get; init; }
        public double? QueryPreAttnScalar { get; init; }
        public bool ParallelResidual { get; init; } = true;
        public double[]? ShortFactor { get; init; }
        public double[]? LongFactor { get; init; }
        public int OriginalMax { get; init; }
        public double AttentionFactor { get; init; } = 1.0;
        /// <summary>"gelu" (erf), "gelu_tanh" or "silu".</summary>
        public string Act { get; init; } = "silu";
    }

    /// <summary>Logits [n + T, V] (float64) of the soft-prompt rows (if any) and the tokens; with a prefix, [T, V].</summary>
    public static Tensor Logits(IReadOnlyDictionary<string, Tensor> weights, Spec s, long[] ids, Tensor? softPrompt = null,
        IReadOnlyList<(Tensor Key, Tensor Value)>? prefix = null)
    {
        Tensor W(string k) => weights[k].to(ScalarType.Float64);
        Tensor? O(string k) => weights.TryGetValue(k, out var t) ? t.to(ScalarType.Float64) : null;
        Tensor Lin(Tensor x, string name) { var y = x.matmul(W(name + ".weight").t()); var b = O(name + ".bias"); return b is null ? y : y + b; }
        bool neox = s.Type == "gpt_neox", gemma = s.Type is "gemma" or "gemma2", g2 = s.Type == "gemma2";
        string root = neox ? "gpt_neox." : "model.";
        var embed = W(neox ? "gpt_neox.embed_in.weight" : "model.embed_tokens.weight");
        var h = torch.stack(ids.Select(i => embed[i]).ToArray());
        if (softPrompt is not null) h = torch.cat(new[] { softPrompt.to(ScalarType.Float64), h }, 0);
        if (gemma) h = h * Math.Sqrt(h.shape[1]);
        int T = (int)h.shape[0], P = prefix is null ? 0 : (int)prefix[0].Key.shape[^2], d = s.HeadDim, groups = s.Heads / s.KvHeads;
        int r = (int)(d * s.Partial);
        var pos = Enumerable.Range(P, T).ToArray();

        // RoPE over the first r dims; LongRoPE picks one factor list for the whole forward.
        double[]? factors = s.ShortFactor is null ? null : (pos.Max() + 1 > s.OriginalMax ? s.LongFactor : s.ShortFactor);
        var cos = new double[T, r]; var sin = new double[T, r];
        for (int t = 0; t < T; t++)
            for (int j = 0; j < r / 2; j++)
            {
                double ang = pos[t] / ((factors?[j] ?? 1.0) * Math.Pow(s.Theta, 2.0 * j / r));
                cos[t, j] = cos[t, j + r / 2] = Math.Cos(ang) * s.AttentionFactor;
                sin[t, j] = sin[t, j + r / 2] = Math.Sin(ang) * s.AttentionFactor;
            }
        var cosT = torch.tensor(cos.Cast<double>().ToArray()).view(T, 1, r);
        var sinT = torch.tensor(sin.Cast<double>().ToArray()).view(T, 1, r);
        Tensor Rope(Tensor x) // [T, nh, d]
        {
            var xr = x.narrow(-1, 0, r);
            var x1 = xr.narrow(-1, 0, r / 2); var x2 = xr.narrow(-1, r / 2, r / 2);
            var rot = xr * cosT + torch.cat(new[] { -x2, x1 }, -1) * sinT;
            return r == d ? rot : torch.cat(new[] { rot, x.narrow(-1, r, d - r) }, -1);
        }
        Tensor Rms(Tensor x, string name)
        {
            var n = x * torch.rsqrt(x.pow(2).mean(new long[] { -1 }, keepdim: true) + s.Eps);
            return gemma ? n * (1 + W(name)) : n * W(name);
        }
        Tensor Ln(Tensor x, string name)
        {
            var mu = x.mean(new long[] { -1 }, keepdim: true);
            var var_ = (x - mu).pow(2).mean(new long[] { -1 }, keepdim: true);
            return (x - mu) / torch.sqrt(var_ + s.Eps) * W(name + ".weight") + W(name + ".bias");
        }
        Tensor Act(Tensor x) => s.Act switch
        {
            "gelu" => 0.5 * x * (1 + torch.special.erf(x / Math.Sqrt(2))),
            "gelu_tanh" => 0.5 * x * (1 + torch.tanh(Math.Sqrt(2 / Math.PI) * (x + 0.044715 * x.pow(3)))),
            _ => x * torch.sigmoid(x),
        };

        for (int l = 0; l < s.Layers; l++)
        {
            string p = $"{root}layers.{l}.";
            var x = neox ? Ln(h, p + "input_layernorm") : Rms(h, p + "input_layernorm.weight");
            Tensor q, k, v;
            if (neox)
            {
                var qkv = Lin(x, p + "attention.query_key_value").view(T, s.Heads, 3 * d);
                q = qkv.narrow(-1, 0, d); k = qkv.narrow(-1, d, d); v = qkv.narrow(-1, 2 * d, d);
            }
            else if (s.Type == "phi3")
            {
                var qkv = Lin(x, p + "self_attn.qkv_proj");
                int qd = s.Heads * d, kvd = s.KvHeads * d;
                q = qkv.narrow(-1, 0, qd).view(T, s.Heads, d); k = qkv.narrow(-1, qd, kvd).view(T, s.KvHeads, d); v = qkv.narrow(-1, qd + kvd, kvd).view(T, s.KvHeads, d);
            }
            else
            {
                q = Lin(x, p + "self_attn.q_proj").view(T, s.Heads, d);
                k = Lin(x, p + "self_attn.k_proj").view(T, s.KvHeads, d);
                v = Lin(x, p + "self_attn.v_proj").view(T, s.KvHeads, d);
            }
            q = Rope(q); k = Rope(k);
            if (prefix is not null)
            {
                // [kvh, P, d] entries before the tokens' [T, kvh, d]
                var pk = prefix[l].Key.to(ScalarType.Float64).reshape(s.KvHeads, P, d).transpose(0, 1);
                var pv = prefix[l].Value.to(ScalarType.Float64).reshape(s.KvHeads, P, d).transpose(0, 1);
                k = torch.cat(new[] { pk, k }, 0); v = torch.cat(new[] { pv, v }, 0);
            }
            int S = P + T;
            var mask = new double[T, S];
            bool slides = s.Window is not null && s.Slides(l);
            for (int t = 0; t < T; t++)
                for (int u = 0; u < S; u++)
                    mask[t, u] = u <= P + t && (!slides || u > P + t - s.Window!.Value) ? 0 : double.NegativeInfinity;
            var maskT = torch.tensor(mask.Cast<double>().ToArray()).view(T, S);
            double scale = s.QueryPreAttnScalar is double qs ? 1 / Math.Sqrt(qs) : 1 / Math.Sqrt(d);
            var heads = new Tensor[s.Heads];
            for (int j = 0; j < s.Heads; j++)
            {
                var sc = q.select(1, j).matmul(k.select(1, j / groups).t()) * scale;
                if (s.AttnCap is double cap) sc = cap * torch.tanh(sc / cap);
                sc = sc + maskT;
                var e = (sc - sc.max(-1, keepdim: true).values).exp();
                heads[j] = (e / e.sum(-1, keepdim: true)).matmul(v.select(1, j / groups));
            }
            var attnIn = torch.cat(heads, -1);
            if (neox)
            {
                var attn = Lin(attnIn, p + "attention.dense");
                Tensor Mlp(Tensor y) => Lin(Act(Lin(y, p + "mlp.dense_h_to_4h")), p + "mlp.dense_4h_to_h");
                if (s.ParallelResidual) h = h + attn + Mlp(Ln(h, p + "post_attention_layernorm"));
                else { h = h + attn; h = h + Mlp(Ln(h, p + "post_attention_layernorm")); }
                continue;
            }
            var a = Lin(attnIn, p + "self_attn.o_proj");
            if (g2) a = Rms(a, p + "post_attention_layernorm.weight");
            h = h + a;
            x = Rms(h, p + (g2 ? "pre_feedforward_layernorm.weight" : "post_attention_layernorm.weight"));
            Tensor gate, up;
            if (s.Type == "phi3")
            {
                var gu = Lin(x, p + "mlp.gate_up_proj");
                long I = gu.shape[1] / 2;
                gate = gu.narrow(-1, 0, I); up = gu.narrow(-1, I, I);
            }
            else { gate = Lin(x, p + "mlp.gate_proj"); up = Lin(x, p + "mlp.up_proj"); }
            var m = Lin(Act(gate) * up, p + "mlp.down_proj");
            if (g2) m = Rms(m, p + "post_feedforward_layernorm.weight");
            h = h + m;
        }
        h = neox ? Ln(h, "gpt_neox.final_layer_norm") : Rms(h, "model.norm.weight");
        var head = O(neox ? "embed_out.weight" : "lm_head.weight") ?? embed;
        var logits = h.matmul(head.t());
        return s.FinalCap is double fc ? fc * torch.tanh(logits / fc) : logits;
    }

    /// <summary>The spec of each fixture in fixtures/hf-reference-more.</summary>
    public static Spec Fixture(string model) => model switch
    {
        "gemma" => new Spec("gemma", 4, 1, 16, 2, 1e-6) { Act = "gelu_tanh" },
        "gemma2" => new Spec("gemma2", 4, 2, 16, 2, 1e-6) { Act = "gelu_tanh", AttnCap = 5.0, FinalCap = 6.0, QueryPreAttnScalar = 24, Window = 4, Slides = l => l % 2 == 0 },
        "phi3" => new Spec("phi3", 4, 2, 16, 2, 1e-5),
        "gpt_neox" => new Spec("gpt_neox", 4, 4, 16, 2, 1e-5) { Act = "gelu", Partial = 0.25 },
        _ => throw new ArgumentException(model),
    };
}
