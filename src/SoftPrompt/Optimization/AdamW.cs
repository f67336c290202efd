using TorchSharp;
using static TorchSharp.torch;

namespace SoftPrompt.Optimization;

/// <summary>
/// AdamW (Loshchilov &amp; Hutter): Adam with bias correction and decoupled weight decay, the same update as
/// torch.optim.AdamW (checked against TorchSharp's to 1e-6 in the tests). State per parameter: <c>exp_avg</c>,
/// <c>exp_avg_sq</c> (float32). Note the default weight decay is 0 (PyTorch's is 0.01).
/// </summary>
public sealed class AdamW : PromptOptimizerBase
{
    public double Beta1 { get; }
    public double Beta2 { get; }
    public double Eps { get; }
    public double WeightDecay { get; }

    readonly bool[] _decay;

    /// <param name="decay">Which parameters get weight decay (default: all); pretraining exempts norm weights.</param>
    public AdamW(IReadOnlyList<(string Name, Tensor Param)> parameters, double beta1 = 0.9, double beta2 = 0.999, double eps = 1e-8, double weightDecay = 0.0,
        Func<string, bool>? decay = null)
        : base(parameters)
    {
        _decay = parameters.Select(p => decay?.Invoke(p.Name) ?? true).ToArray();
        if (!(beta1 >= 0 && beta1 < 1)) throw new SoftPromptException($"AdamW beta1 must be in [0, 1) (got {beta1}).");
        if (!(beta2 >= 0 && beta2 < 1)) throw new SoftPromptException($"AdamW beta2 must be in [0, 1) (got {beta2}).");
        if (!(eps > 0)) throw new SoftPromptException($"AdamW eps must be > 0 (got {eps}).");
        if (!(weightDecay >= 0)) throw new SoftPromptException($"AdamW weight decay must be >= 0 (got {weightDecay}).");
        (Beta1, Beta2, Eps, WeightDecay) = (beta1, beta2, eps, weightDecay);
        foreach (var (name, p) in Params)
        {
            NewState($"{name}.exp_avg", p.shape, p.device);
            NewState($"{name}.exp_avg_sq", p.shape, p.device);
        }
    }

    protected override void StepParam(int i, string name, Tensor p, Tensor grad, double lr)
    {
        var g = grad.to(ScalarType.Float32);
        var m = State($"{name}.exp_avg");
        var v = State($"{name}.exp_avg_sq");
        long t = ParamSteps[i];
        if (WeightDecay != 0 && _decay[i]) p.mul_(1 - lr * WeightDecay);
        m.mul_(Beta1).add_(g, alpha: 1 - Beta1);
        v.mul_(Beta2).addcmul_(g, g, value: 1 - Beta2);
        double bc1 = 1 - Math.Pow(Beta1, t), bc2 = 1 - Math.Pow(Beta2, t);
        var denom = v.sqrt().div_(Math.Sqrt(bc2)).add_(Eps);
        var update = m.div(denom).mul_(lr / bc1);
        p.sub_(update.to(p.dtype));
    }
}
