using TorchSharp;
using static TorchSharp.torch;

namespace SoftPrompt.Optimization;

public static class GradientClipping
{
    /// <summary>
    /// Scales the gradients in place so that their global L2 norm is at most <paramref name="maxNorm"/> and returns the
    /// norm before clipping as a 0-d float32 tensor on the gradients' device (no .item(): the caller decides when to
    /// sync, e.g. only at logging steps). The returned tensor belongs to the caller's dispose scope if there is one.
    /// Written here because TorchSharp 0.107's <c>torch.nn.utils.clip_grad_norm_</c> returns a double, i.e. forces a
    /// device sync every step. Like PyTorch, the scale is <c>min(1, maxNorm / (norm + 1e-6))</c>, and non-finite norms
    /// are passed through (they make the grads non-finite; check the returned norm).
    /// </summary>
    public static Tensor ClipGradNorm(IEnumerable<Tensor> parameters, double maxNorm)
    {
        ArgumentNullException.ThrowIfNull(parameters);
        if (!(maxNorm > 0)) throw new SoftPromptException($"max grad norm must be > 0 (got {maxNorm}).");
        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        var ps = parameters.ToList();
        var grads = ps.Select(p => p.grad).Where(g => g is not null).Select(g => g!).ToList();
        if (grads.Count == 0) return torch.zeros(Array.Empty<long>(), ScalarType.Float32, ps.Count > 0 ? ps[0].device : torch.CPU).MoveToOuterDisposeScope();
        var norms = grads.Select(g => g.to(ScalarType.Float32).norm()).ToArray();
        var total = norms.Length == 1 ? norms[0] : torch.stack(norms).norm();
        var coef = total.add(1e-6).reciprocal_().mul_(maxNorm).clamp_max_(1.0);
        foreach (var g in grads) g.mul_(coef.to(g.dtype));
        return total.MoveToOuterDisposeScope();
    }
}
