using TorchSharp;
using static TorchSharp.torch;

namespace SoftPrompt.Models;

/// <summary>
/// Per-layer keys and values, in Hugging Face's cache layout <c>[batch, kv_heads, seq, head_dim]</c>.
/// Two modes:
/// <list type="bullet">
/// <item>growing (<see cref="Growing"/>): each update concatenates; differentiable, so a trainable prefix
/// (prefix tuning) can be the initial content. Tensors live in the caller's dispose scope.</item>
/// <item>preallocated (<see cref="Preallocated"/>): buffers of a fixed capacity written in place, for
/// generation; no per-token allocation. The cache owns its buffers.</item>
/// </list>
/// Keys are stored as given: prefix keys are never rotated (PEFT's convention: they are already-rotated entries).
/// </summary>
public sealed partial class KvCache : IDisposable
{
    readonly Tensor?[] _k, _v;
    readonly bool _prealloc;
    int _pending;

    /// <summary>Number of positions already in the cache (the "past length").</summary>
    public int Length { get; private set; }
    public int NumLayers => _k.Length;
    public int Capacity { get; }
    /// <summary>True when updates write into buffers the cache owns (preallocated or ragged), so the tensors a forward
    /// pass makes may be freed layer by layer; a growing cache keeps tensors of the caller's dispose scope.</summary>
    public bool InPlace => _prealloc || _ragged is not null;

    KvCache(int layers, bool prealloc, int capacity)
    {
        _k = new Tensor?[layers]; _v = new Tensor?[layers]; _prealloc = prealloc; Capacity = capacity;
    }

    public static KvCache Growing(int layers) => new(layers, false, int.MaxValue);

    public static KvCache Preallocated(ModelConfig cfg, int batch, int capacity, ScalarType dtype, Device device)
    {
        var c = new KvCache(cfg.NumLayers, true, capacity);
        for (int l = 0; l < cfg.NumLayers; l++)
        {
            c._k[l] = torch.zeros(new long[] { batch, cfg.NumKvHeads, capacity, cfg.HeadDim }, dtype, device).DetachFromDisposeScope();
            c._v[l] = torch.zeros(new long[] { batch, cfg.NumKvHeads, capacity, cfg.HeadDim }, dtype, device).DetachFromDisposeScope();
        }
        return c;
    }

    /// <summary>Seeds the cache with per-layer (key, value) tensors of shape [B, kv_heads, P, head_dim] (a prefix).</summary>
    public void SetPrefix(IReadOnlyList<(Tensor Key, Tensor Value)> prefix)
    {
        if (prefix.Count != NumLayers) throw new ArgumentException($"prefix has {prefix.Count} layers, the model {NumLayers}.");
        if (Length != 0) throw new InvalidOperationException("The prefix must be set on an empty cache.");
        int p = (int)prefix[0].Key.shape[2];
        for (int l = 0; l < NumLayers; l++)
        {
            var (k, v) = prefix[l];
            if (_prealloc)
            {
                if (p > Capacity) throw new ArgumentException($"prefix of {p} positions exceeds the cache capacity {Capacity}.");
                using var _ = torch.NewDisposeScope();
                _k[l]!.narrow(2, 0, p).copy_(k.to(_k[l]!.dtype));
                _v[l]!.narrow(2, 0, p).copy_(v.to(_v[l]!.dtype));
            }
            else { _k[l] = k; _v[l] = v; }
        }
        Length = p;
    }

    /// <summary>Adds this step's keys/values for one layer; returns all keys/values (past + new) to attend over.</summary>
    public (Tensor Keys, Tensor Values) Update(int layer, Tensor k, Tensor v)
    {
        if (_ragged is not null) return RaggedUpdate(layer, k, v);
        int t = (int)k.shape[2];
        _pending = t;
        if (_prealloc)
        {
            if (Length + t > Capacity) throw new InvalidOperationException($"KV cache capacity {Capacity} exceeded ({Length} + {t}).");
            _k[layer]!.narrow(2, Length, t).copy_(k);
            _v[layer]!.narrow(2, Length, t).copy_(v);
            return (_k[layer]!.narrow(2, 0, Length + t), _v[layer]!.narrow(2, 0, Length + t));
        }
        if (_k[layer] is null) { _k[layer] = k; _v[layer] = v; }
        else
        {
            var kb = _k[layer]!; var vb = _v[layer]!;
            // An fp32 trainable prefix on bf16/fp16 weights: attend in the model's dtype (PEFT casts past_key_values
            // the same way); the cast is differentiable, so the prefix's gradient stays fp32.
            if (kb.dtype != k.dtype) { kb = kb.to(k.dtype); vb = vb.to(v.dtype); }
            if (kb.shape[0] != k.shape[0]) { kb = kb.expand(k.shape[0], -1, -1, -1); vb = vb.expand(k.shape[0], -1, -1, -1); }
            _k[layer] = torch.cat(new[] { kb, k }, 2);
            _v[layer] = torch.cat(new[] { vb, v }, 2);
        }
        return (_k[layer]!, _v[layer]!);
    }

    /// <summary>Called by the model once every layer has been updated for this step.</summary>
    public void Commit()
    {
        if (_ragged is not null) { RaggedCommit(); return; }
        Length += _pending; _pending = 0;
    }

    /// <summary>Shortens the cache to <paramref name="length"/> positions (reuse a shared prefix for another continuation).</summary>
    public void Truncate(int length)
    {
        if (_ragged is not null) throw new InvalidOperationException("A ragged cache is shortened per row (ResetRow).");
        if (length > Length) throw new ArgumentOutOfRangeException(nameof(length));
        if (!_prealloc)
            for (int l = 0; l < NumLayers; l++)
                if (_k[l] is not null) { _k[l] = _k[l]!.narrow(2, 0, length); _v[l] = _v[l]!.narrow(2, 0, length); }
        Length = length;
    }

    public void Dispose()
    {
        if (!_prealloc) return;
        for (int l = 0; l < NumLayers; l++) { _k[l]?.Dispose(); _v[l]?.Dispose(); _k[l] = _v[l] = null; }
    }
}
