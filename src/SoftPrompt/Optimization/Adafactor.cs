using TorchSharp;
using static TorchSharp.torch;

namespace SoftPrompt.Optimization;

/// <summary>
/// Adafactor (Shazeer &amp; Stern 2018), following the algorithm of Hugging Face transformers' <c>Adafactor</c>
/// (re-implemented here, not copied):
/// <list type="bullet">
/// <item>second moments factored for parameters with ≥ 2 dims: a row mean <c>exp_avg_sq_row</c> of shape
/// <c>shape[:-1]</c> and a column mean <c>exp_avg_sq_col</c> of shape <c>shape[:-2] + shape[-1:]</c> (for a [n, d] prompt:
/// [n] and [d]); unfactored <c>exp_avg_sq</c> for 1-D;</item>
/// <item>β2 at step t is <c>1 − t^decayRate</c>; the update <c>g / sqrt(v̂)</c> is scaled down so its RMS is at most
/// <c>clipThreshold</c>; optional first moment (<c>beta1</c>, state <c>exp_avg</c>) applied after the lr;</item>
/// <item>lr: with <c>relativeStep</c>, <c>min(warmupInit ? 1e-6·t : 1e-2, 1/sqrt(t))</c> and the lr passed to
/// <see cref="PromptOptimizerBase.Step"/> is IGNORED; else the passed lr. With <c>scaleParameter</c> it is multiplied by
/// <c>max(eps2, RMS(param))</c>;</item>
/// <item>weight decay: <c>p -= weightDecay · lr · p</c>.</item>
/// </list>
/// Defaults are the ones for an explicit lr (relativeStep = false, scaleParameter = false), as used for prompt tuning by
/// Lester et al. (lr 0.3).
/// </summary>
public sealed class Adafactor : PromptOptimizerBase
{
    public double Eps1 { get; }
    public double Eps2 { get; }
    public double ClipThreshold { get; }
    public double DecayRate { get; }
    public double? Beta1 { get; }
    public double WeightDecay { get; }
    public bool ScaleParameter { get; }
    public bool RelativeStep { get; }
    public bool WarmupInit { get; }

    public Adafactor(IReadOnlyList<(string Name, Tensor Param)> parameters,
        double eps1 = 1e-30, double eps2 = 1e-3, double clipThreshold = 1.0, double decayRate = -0.8, double? beta1 = null,
        double weightDecay = 0.0, bool scaleParameter = false, bool relativeStep = false, bool warmupInit = false)
        : base(parameters)
    {
        if (warmupInit && !relativeStep) throw new SoftPromptException("Adafactor: warmupInit requires relativeStep.");
        if (beta1 is { } b && !(b >= 0 && b < 1)) throw new SoftPromptException($"Adafactor beta1 must be in [0, 1) (got {b}).");
        if (!(decayRate < 0)) throw new SoftPromptException($"Adafactor decay rate must be negative (got {decayRate}).");
        if (!(clipThreshold > 0)) throw new SoftPromptException($"Adafactor clip threshold must be > 0 (got {clipThreshold}).");
        if (!(eps1 >= 0 && eps2 >= 0)) throw new SoftPromptException("Adafactor eps values must be >= 0.");
        if (!(weightDecay >= 0)) throw new SoftPromptException($"Adafactor weight decay must be >= 0 (got {weightDecay}).");
        (Eps1, Eps2, ClipThreshold, DecayRate, Beta1, WeightDecay, ScaleParameter, RelativeStep, WarmupInit) =
            (eps1, eps2, clipThreshold, decayRate, beta1, weightDecay, scaleParameter, relativeStep, warmupInit);
        foreach (var (name, p) in Params)
        {
            var shape = p.shape;
            if (Beta1 != null) NewState($"{name}.exp_avg", shape, p.device);
            if (shape.Length >= 2)
            {
                NewState($"{name}.exp_avg_sq_row", shape[..^1], p.device);
                NewState($"{name}.exp_avg_sq_col", [.. shape[..^2], shape[^1]], p.device);
            }
            else NewState($"{name}.exp_avg_sq", shape, p.device);
        }
    }

    static Tensor Rms(Tensor t) => t.norm().div(Math.Sqrt(Math.Max(1, t.numel())));

    protected override void StepParam(int i, string name, Tensor p, Tensor grad, double lr)
    {
        var g = grad.to(ScalarType.Float32);
        var p32 = p.dtype == ScalarType.Float32 ? p : p.to(ScalarType.Float32);
        long t = ParamSteps[i];

        double stepSize = lr;
        if (RelativeStep) stepSize = Math.Min(WarmupInit ? 1e-6 * t : 1e-2, 1.0 / Math.Sqrt(t));
        // lr is a host double, or a 0-d tensor when it depends on the parameter's RMS (no .item() sync).
        Tensor? lrT = ScaleParameter ? Rms(p32).clamp_min(Eps2).mul_(stepSize) : null;

        double beta2t = 1.0 - Math.Pow(t, DecayRate);
        var sq = g.square().add_(Eps1);
        Tensor update;
        if (p.shape.Length >= 2)
        {
            var row = State($"{name}.exp_avg_sq_row");
            var col = State($"{name}.exp_avg_sq_col");
            row.mul_(beta2t).add_(sq.mean([-1L]), alpha: 1 - beta2t);
            col.mul_(beta2t).add_(sq.mean([-2L]), alpha: 1 - beta2t);
            // v̂[r, c] ≈ row[r] · col[c] / mean(row): the rank-1 approximation of the second moment.
            var rFactor = row.div(row.mean([-1L], keepdim: true)).rsqrt_().unsqueeze(-1);
            var cFactor = col.unsqueeze(-2).rsqrt();
            update = rFactor.mul(cFactor).mul_(g);
        }
        else
        {
            var v = State($"{name}.exp_avg_sq");
            v.mul_(beta2t).add_(sq, alpha: 1 - beta2t);
            update = v.rsqrt().mul_(g);
        }
        update.div_(Rms(update).div_(ClipThreshold).clamp_min_(1.0));
        if (lrT is null) update.mul_(stepSize); else update.mul_(lrT);

        if (Beta1 is { } b1)
        {
            var m = State($"{name}.exp_avg");
            m.mul_(b1).add_(update, alpha: 1 - b1);
            update = m;
        }
        if (WeightDecay != 0)
        {
            if (lrT is null) p32.mul_(1 - WeightDecay * stepSize);
            else p32.sub_(p32.mul(lrT).mul_(WeightDecay));
        }
        p32.sub_(update);
        if (!ReferenceEquals(p32, p)) p.copy_(p32);
    }
}
