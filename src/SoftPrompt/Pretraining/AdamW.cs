using TorchSharp;
using static TorchSharp.torch;

namespace SoftPrompt.Pretraining;

/// <summary>
/// AdamW (Loshchilov &amp; Hutter; PyTorch's update rule: decoupled decay p -= lr*wd*p, bias-corrected moments) over
/// named fp32 parameters. Written out rather than TorchSharp's optimizer so that its state is plain named tensors
/// a checkpoint stores in safetensors, and so the update runs in place with no per-step allocation beyond one temp.
/// </summary>
public sealed class AdamW : IDisposable
{
    public double Beta1 { get; init; } = 0.9;
    public double Beta2 { get; init; } = 0.95;
    public double Eps { get; init; } = 1e-8;
    public double WeightDecay { get; init; } = 0.1;
    public long Step { get; set; }

    readonly List<(string Name, Tensor P, bool Decay)> _params;
    public Dictionary<string, Tensor> M { get; } = new();
    public Dictionary<string, Tensor> V { get; } = new();

    /// <param name="decay">Which parameters get weight decay (matrices yes, norm weights no).</param>
    public AdamW(IReadOnlyDictionary<string, Tensor> parameters, Func<string, bool> decay)
    {
        _params = parameters.OrderBy(kv => kv.Key, StringComparer.Ordinal).Select(kv => (kv.Key, kv.Value, decay(kv.Key))).ToList();
        foreach (var (n, p, _) in _params)
        {
            M[n] = torch.zeros_like(p).DetachFromDisposeScope();
            V[n] = torch.zeros_like(p).DetachFromDisposeScope();
        }
    }

    /// <summary>Global L2 norm of the gradients; scales them down to <paramref name="maxNorm"/> when above it. Returns the norm before clipping.</summary>
    public double ClipGradNorm(double maxNorm)
    {
        using var scope = torch.NewDisposeScope();
        var sq = torch.zeros(1, ScalarType.Float64);
        foreach (var (_, p, _) in _params) if (p.grad is { } g) sq.add_(g.to(ScalarType.Float64).pow(2).sum());
        double norm = Math.Sqrt(sq.item<double>());
        if (maxNorm > 0 && norm > maxNorm)
        {
            double c = maxNorm / (norm + 1e-6);
            using var _ = torch.no_grad();
            foreach (var (_, p, _) in _params) p.grad?.mul_(c);
        }
        return norm;
    }

    public void Update(double lr)
    {
        Step++;
        double bc1 = 1 - Math.Pow(Beta1, Step), bc2 = 1 - Math.Pow(Beta2, Step);
        using var scope = torch.NewDisposeScope();
        using var _ = torch.no_grad();
        foreach (var (n, p, decay) in _params)
        {
            var g = p.grad;
            if (g is null) continue;
            if (decay && WeightDecay > 0) p.mul_(1 - lr * WeightDecay);
            var m = M[n]; var v = V[n];
            m.mul_(Beta1).add_(g, alpha: 1 - Beta1);
            v.mul_(Beta2).addcmul_(g, g, value: 1 - Beta2);
            var denom = v.sqrt().div_(Math.Sqrt(bc2)).add_(Eps);
            p.addcdiv_(m, denom, value: -lr / bc1);
        }
    }

    public void ZeroGrad()
    {
        using var _ = torch.no_grad();
        foreach (var (_, p, _) in _params) p.grad?.zero_();
    }

    public void Dispose()
    {
        foreach (var t in M.Values) t.Dispose();
        foreach (var t in V.Values) t.Dispose();
    }
}
