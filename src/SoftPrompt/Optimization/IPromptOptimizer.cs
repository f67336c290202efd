using TorchSharp;
using static TorchSharp.torch;

namespace SoftPrompt.Optimization;

/// <summary>
/// An optimiser over the (few, small) trainable prompt tensors, with explicit state that checkpoints save to
/// safetensors (see <see cref="StateDict"/>).
/// </summary>
public interface IPromptOptimizer : IDisposable
{
    /// <summary>One update from the parameters' current <c>.grad</c>, with learning rate <paramref name="lr"/>
    /// (the caller's schedule). Parameters without a grad are left alone.</summary>
    void Step(double lr);

    /// <summary>Zeroes the gradients of all parameters.</summary>
    void ZeroGrad();

    /// <summary>A CPU copy of the state (owned by the caller: dispose it, or let a dispose scope do so). Keys are
    /// <c>{paramName}.{slot}</c> plus <c>__step__</c>; all tensors are float32/int64 so safetensors can hold them.</summary>
    Dictionary<string, Tensor> StateDict();

    /// <summary>Loads state saved by <see cref="StateDict"/> of the same optimiser type over the same parameter
    /// names and shapes. Missing, unexpected or mis-shaped keys throw <see cref="SoftPromptException"/> naming the key.</summary>
    void LoadStateDict(IReadOnlyDictionary<string, Tensor> state);

    /// <summary>Number of <see cref="Step"/> calls so far (restored by <see cref="LoadStateDict"/>).</summary>
    int StepCount { get; }
}

/// <summary>
/// Shared plumbing. The optimisers are written over TorchSharp tensor ops with explicit state rather than wrapping
/// torch.optim, so that (a) the state is plain named tensors we can write atomically to safetensors and read back
/// with validation, and (b) Adafactor, which TorchSharp lacks, follows the same rules.
/// Memory rules: state tensors are created detached from any dispose scope and disposed by <see cref="Dispose"/>;
/// each step runs under torch.no_grad() inside its own dispose scope, so no temporaries escape.
/// </summary>
public abstract class PromptOptimizerBase : IPromptOptimizer
{
    protected const string StepKey = "__step__";
    protected readonly (string Name, Tensor Param)[] Params;
    /// <summary>Per-parameter step count (a parameter without grad in some step is not stepped, as in PyTorch).</summary>
    protected readonly long[] ParamSteps;
    readonly Dictionary<string, Tensor> _state = new();
    bool _disposed;

    public int StepCount { get; private set; }

    protected PromptOptimizerBase(IReadOnlyList<(string Name, Tensor Param)> parameters)
    {
        ArgumentNullException.ThrowIfNull(parameters);
        if (parameters.Count == 0) throw new SoftPromptException("the optimiser has no parameters.");
        var seen = new HashSet<string>();
        foreach (var (name, p) in parameters)
        {
            if (string.IsNullOrEmpty(name) || name.Contains("__")) throw new SoftPromptException($"bad parameter name \"{name}\" (must be non-empty, without \"__\").");
            if (!seen.Add(name)) throw new SoftPromptException($"parameter name \"{name}\" is used twice.");
            if (p is null || p.IsInvalid) throw new SoftPromptException($"parameter \"{name}\" is null or disposed.");
            if (!p.requires_grad) throw new SoftPromptException($"parameter \"{name}\" does not require grad.");
            if (!p.is_floating_point()) throw new SoftPromptException($"parameter \"{name}\" is {p.dtype}, expected a floating-point tensor.");
        }
        Params = parameters.ToArray();
        ParamSteps = new long[Params.Length];
    }

    /// <summary>Creates a zero state tensor owned by this optimiser (float32, on the parameter's device).</summary>
    protected Tensor NewState(string key, long[] shape, Device device)
    {
        var t = torch.zeros(shape, ScalarType.Float32, device).DetachFromDisposeScope();
        _state.Add(key, t);
        return t;
    }

    protected Tensor State(string key) => _state[key];

    public void Step(double lr)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (!double.IsFinite(lr) || lr < 0) throw new SoftPromptException($"learning rate must be finite and >= 0 (got {lr}).");
        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        StepCount++;
        for (int i = 0; i < Params.Length; i++)
        {
            var grad = Params[i].Param.grad;
            if (grad is null) continue;
            ParamSteps[i]++;
            StepParam(i, Params[i].Name, Params[i].Param, grad, lr);
        }
    }

    /// <summary>Updates parameter <paramref name="i"/> in place. Runs inside a dispose scope and no_grad.</summary>
    protected abstract void StepParam(int i, string name, Tensor p, Tensor grad, double lr);

    public void ZeroGrad()
    {
        using var scope = torch.NewDisposeScope();
        foreach (var (_, p) in Params) p.grad?.zero_();
    }

    public Dictionary<string, Tensor> StateDict()
    {
        using var scope = torch.NewDisposeScope();
        var d = new Dictionary<string, Tensor>();
        foreach (var (k, t) in _state) d[k] = t.detach().cpu().clone().MoveToOuterDisposeScope();
        d[StepKey] = torch.tensor(new long[] { StepCount }, ScalarType.Int64, torch.CPU).MoveToOuterDisposeScope();
        for (int i = 0; i < Params.Length; i++)
            d[$"{Params[i].Name}.step"] = torch.tensor(new long[] { ParamSteps[i] }, ScalarType.Int64, torch.CPU).MoveToOuterDisposeScope();
        return d;
    }

    public void LoadStateDict(IReadOnlyDictionary<string, Tensor> state)
    {
        ArgumentNullException.ThrowIfNull(state);
        var expected = new HashSet<string>(_state.Keys) { StepKey };
        for (int i = 0; i < Params.Length; i++) expected.Add($"{Params[i].Name}.step");
        var missing = expected.Where(k => !state.ContainsKey(k)).OrderBy(k => k).ToList();
        if (missing.Count > 0)
            throw new SoftPromptException($"{GetType().Name} state: missing key(s) {string.Join(", ", missing)} (saved by a different optimiser or for other parameters?).");
        var extra = state.Keys.Where(k => !expected.Contains(k)).OrderBy(k => k).ToList();
        if (extra.Count > 0)
            throw new SoftPromptException($"{GetType().Name} state: unexpected key(s) {string.Join(", ", extra)} (saved by a different optimiser or for other parameters?).");
        foreach (var (k, t) in _state)
        {
            var src = state[k];
            if (!src.shape.SequenceEqual(t.shape))
                throw new SoftPromptException($"{GetType().Name} state: key {k} has shape [{string.Join(", ", src.shape)}], expected [{string.Join(", ", t.shape)}].");
            if (!src.is_floating_point()) throw new SoftPromptException($"{GetType().Name} state: key {k} is {src.dtype}, expected floating point.");
        }
        long ReadCount(string k)
        {
            var s = state[k];
            if (s.numel() != 1 || s.is_floating_point()) throw new SoftPromptException($"{GetType().Name} state: key {k} must be one integer.");
            var v = s.item<long>();
            if (v < 0) throw new SoftPromptException($"{GetType().Name} state: key {k} is negative ({v}).");
            return v;
        }
        long total = ReadCount(StepKey);
        var steps = Params.Select(p => ReadCount($"{p.Name}.step")).ToArray();
        if (total > int.MaxValue) throw new SoftPromptException($"{GetType().Name} state: {StepKey} {total} is too large.");
        using (var scope = torch.NewDisposeScope())
        using (torch.no_grad())
            foreach (var (k, t) in _state) t.copy_(state[k]);
        StepCount = (int)total;
        steps.CopyTo(ParamSteps, 0);
    }

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        foreach (var t in _state.Values) t.Dispose();
        _state.Clear();
    }
}
