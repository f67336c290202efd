using SoftPrompt.Models;
using SoftPrompt.Tuning;
using TorchSharp;
using static TorchSharp.torch;

namespace SoftPrompt.Inference;

/// <summary>
/// A saved prompt made ready for batched inference on one model: prompt tuning's virtual-token embeddings
/// [n, hidden], or prefix tuning's per-layer keys/values [kv_heads, n, head_dim], frozen and in the model's dtype.
/// Any number of rows of a batch can use it, next to rows with other prompts or none (<see cref="MixedBatch"/>,
/// <see cref="BatchEngine"/>). Owns its tensors; <see cref="Dispose"/> waits for the rows that still use them
/// (an adapter removed while requests wait for it stays alive until they have read it).
/// </summary>
public sealed class AttachedPrompt : IDisposable
{
    public string Name { get; }
    public TuningMethod Method { get; }
    public int VirtualTokens { get; }
    /// <summary>[n, hidden] embeddings placed before a row's tokens (prompt tuning), else null.</summary>
    public Tensor? Embeddings { get; }
    /// <summary>Per layer (key, value), each [kv_heads, n, head_dim] (prefix tuning), else null.</summary>
    public IReadOnlyList<(Tensor Key, Tensor Value)>? PastKeyValues { get; }

    readonly object _lock = new();
    int _users;
    bool _disposeRequested, _disposed;

    AttachedPrompt(string name, TuningMethod method, int n, Tensor? emb, IReadOnlyList<(Tensor, Tensor)>? pkv)
    {
        Name = name; Method = method; VirtualTokens = n; Embeddings = emb; PastKeyValues = pkv;
    }

    /// <summary>Computes the prompt's inference tensors once (a projection MLP, if any, is applied here).</summary>
    public static AttachedPrompt From(IPromptMethod method, IPromptableModel model, string name = "")
    {
        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        var inj = method.Inject(1);
        Tensor? emb = inj.PrefixEmbeds?[0].to(model.DType).contiguous().clone().DetachFromDisposeScope();
        var pkv = inj.PastKeyValues?.Select(p => (p.Key[0].to(model.DType).contiguous().clone().DetachFromDisposeScope(),
            p.Value[0].to(model.DType).contiguous().clone().DetachFromDisposeScope())).ToList();
        return new AttachedPrompt(name, method.Method, inj.VirtualTokens, emb, pkv);
    }

    /// <summary>Loads a PEFT adapter folder (checked against the model's fingerprint) and prepares it.</summary>
    public static AttachedPrompt Load(string adapterDir, IPromptableModel model, string name = "", bool checkFinite = true)
    {
        using var method = Adapter.Load(adapterDir, model, checkFinite: checkFinite);
        return From(method, model, name);
    }

    /// <summary>Marks a use; false when the prompt has been freed (disposed with no user left). A prompt disposed
    /// while in use can still be acquired by whoever holds it, and is freed when the last user releases it.</summary>
    public bool TryAcquire()
    {
        lock (_lock) { if (_disposed || (_disposeRequested && _users == 0)) return false; _users++; return true; }
    }

    public void Release()
    {
        lock (_lock) { _users--; if (_users == 0 && _disposeRequested) Free(); }
    }

    public void Dispose()
    {
        lock (_lock) { _disposeRequested = true; if (_users == 0) Free(); }
    }

    void Free()
    {
        if (_disposed) return;
        _disposed = true;
        Embeddings?.Dispose();
        if (PastKeyValues is not null) foreach (var (k, v) in PastKeyValues) { k.Dispose(); v.Dispose(); }
    }
}
