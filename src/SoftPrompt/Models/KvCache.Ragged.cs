using TorchSharp;
using static TorchSharp.torch;

namespace SoftPrompt.Models;

/// <summary>
/// The third mode of <see cref="KvCache"/>: ragged rows, for batches whose rows are different sequences (serving,
/// mixed-prompt scoring). Each row of the preallocated buffers is one sequence with its own length; a step appends
/// a different number of entries to each row at that row's own end, so rows never share a common "past length" and
/// a row can join or leave between steps (continuous batching). A row's content is contiguous from index 0 (a
/// prefix's keys/values first, then virtual-token and real-token entries), so a token's position equals its index.
/// The buffers have one scratch column past <see cref="Capacity"/> where the padding of shorter rows is written.
/// Usage per forward: <see cref="BeginRaggedStep"/> (returns the [rows, 1, T, S] attention mask to pass as
/// <see cref="ForwardArgs.AttentionMask"/>), the forward, whose <see cref="Commit"/> advances each row.
/// </summary>
public sealed partial class KvCache
{
    sealed class RaggedState
    {
        public required int[] Lens;
        public int? Window;
        public bool TwoMasks;   // some layers slide, some do not: channel 0 global, channel 1 sliding
        public long KvHeads, HeadDim;
        public int First, Count;
        public int[] Counts = Array.Empty<int>();
        public Tensor? Index;
        public long Width;
    }

    RaggedState? _ragged;

    /// <summary>A ragged cache of <paramref name="rows"/> sequences of up to <paramref name="capacity"/> entries each.</summary>
    public static KvCache Ragged(ModelConfig cfg, int rows, int capacity, ScalarType dtype, Device device)
    {
        if (rows < 1 || capacity < 1) throw new ArgumentOutOfRangeException(nameof(rows), "rows and capacity must be at least 1.");
        var c = new KvCache(cfg.NumLayers, true, capacity)
        {
            _ragged = new RaggedState { Lens = new int[rows], Window = cfg.MixedSlidingLayers ? cfg.SlidingWindow : cfg.UniformSlidingWindow, TwoMasks = cfg.MixedSlidingLayers, KvHeads = cfg.NumKvHeads, HeadDim = cfg.HeadDim },
        };
        for (int l = 0; l < cfg.NumLayers; l++)
        {
            c._k[l] = torch.zeros(new long[] { rows, cfg.NumKvHeads, capacity + 1, cfg.HeadDim }, dtype, device).DetachFromDisposeScope();
            c._v[l] = torch.zeros(new long[] { rows, cfg.NumKvHeads, capacity + 1, cfg.HeadDim }, dtype, device).DetachFromDisposeScope();
        }
        return c;
    }

    RaggedState R => _ragged ?? throw new InvalidOperationException("not a ragged cache (KvCache.Ragged).");

    public int Rows => R.Lens.Length;

    /// <summary>Entries held by <paramref name="row"/>.</summary>
    public int RowLength(int row) => R.Lens[row];

    /// <summary>Empties a row (its buffers are overwritten by later steps).</summary>
    public void ResetRow(int row) { R.Lens[row] = 0; Length = R.Lens.Max(); }

    /// <summary>Empties a row and zeroes its buffers. A row's entries past its length are read with zero attention
    /// weight, and 0 x NaN is NaN: after a row held non-finite keys/values (a failed sequence), clear it so that the
    /// next sequence in that row does not inherit them.</summary>
    public void ClearRow(int row)
    {
        using var scope = torch.NewDisposeScope();
        for (int l = 0; l < NumLayers; l++) { _k[l]![row].zero_(); _v[l]![row].zero_(); }
        ResetRow(row);
    }

    /// <summary>Seeds an empty row with a prefix: per layer (key, value), each [kv_heads, P, head_dim] or [1, kv_heads, P, head_dim].</summary>
    public void SetRowPrefix(int row, IReadOnlyList<(Tensor Key, Tensor Value)> prefix)
    {
        var r = R;
        if (prefix.Count != NumLayers) throw new ArgumentException($"prefix has {prefix.Count} layers, the model {NumLayers}.");
        if (r.Lens[row] != 0) throw new InvalidOperationException("The prefix must be set on an empty row.");
        using var scope = torch.NewDisposeScope();
        int p = (int)prefix[0].Key.shape[^2];
        if (p > Capacity) throw new ArgumentException($"prefix of {p} positions exceeds the cache capacity {Capacity}.");
        for (int l = 0; l < NumLayers; l++)
        {
            var (k, v) = prefix[l];
            if (k.dim() == 4) { k = k[0]; v = v[0]; }
            _k[l]![row].narrow(1, 0, p).copy_(k);
            _v[l]![row].narrow(1, 0, p).copy_(v);
        }
        r.Lens[row] = p;
        Length = r.Lens.Max();
    }

    /// <summary>Copies row <paramref name="from"/> over row <paramref name="to"/> (to keep live rows contiguous when one leaves).</summary>
    public void MoveRow(int from, int to)
    {
        var r = R;
        if (from == to) return;
        int len = r.Lens[from];
        if (len > 0)
        {
            using var scope = torch.NewDisposeScope();
            for (int l = 0; l < NumLayers; l++)
            {
                _k[l]![to].narrow(1, 0, len).copy_(_k[l]![from].narrow(1, 0, len));
                _v[l]![to].narrow(1, 0, len).copy_(_v[l]![from].narrow(1, 0, len));
            }
        }
        r.Lens[to] = len;
        r.Lens[from] = 0;
        Length = r.Lens.Max();
    }

    /// <summary>
    /// Prepares the next forward over rows [<paramref name="first"/>, first + counts.Length): row first+b appends
    /// counts[b] entries (the forward's input is padded to T = max(counts) per row). Returns the boolean attention
    /// mask [rows, 1, T, S] (true = attend): a query sees its row's entries up to its own index (causal), and within
    /// the sliding window when the model has one; a padding query sees its row's real entries. For a model whose layers
    /// mix global and sliding-window attention (Gemma 2) the mask is [rows, 2, T, S]: channel 0 for the global layers,
    /// channel 1 for the sliding ones. Tensors live in the caller's dispose scope.
    /// </summary>
    public Tensor BeginRaggedStep(int first, IReadOnlyList<int> counts)
    {
        var r = R;
        int n = counts.Count;
        if (n == 0 || first < 0 || first + n > Rows) throw new ArgumentOutOfRangeException(nameof(first));
        int T = counts.Max();
        var index = new long[n * T];
        var limit = new long[n * T];      // the last key index each query may see
        var lower = new long[n * T];      // the first (sliding window)
        long width = 0;
        for (int b = 0; b < n; b++)
        {
            int len = r.Lens[first + b], c = counts[b];
            if (c < 1) throw new ArgumentException("every row of a step appends at least one entry.");
            if (len + c > Capacity) throw new InvalidOperationException($"KV cache capacity {Capacity} exceeded ({len} + {c}).");
            width = Math.Max(width, len + c);
            for (int t = 0; t < T; t++)
            {
                int i = b * T + t;
                index[i] = t < c ? len + t : Capacity;           // padding goes to the scratch column
                limit[i] = len + Math.Min(t, c - 1);
                lower[i] = r.Window is int w ? limit[i] - w + 1 : 0;
            }
        }
        var dev = _k[0]!.device;
        r.First = first; r.Count = n; r.Counts = counts.ToArray(); r.Width = width;
        r.Index = torch.tensor(index, ScalarType.Int64, dev).view(n, 1, T, 1).expand(n, r.KvHeads, T, r.HeadDim);
        var j = torch.arange(0, width, ScalarType.Int64, dev).view(1, 1, 1, width);
        var hi = torch.tensor(limit, ScalarType.Int64, dev).view(n, 1, T, 1);
        var mask = j <= hi;
        if (r.Window is null) return mask;
        var windowed = mask & (j >= torch.tensor(lower, ScalarType.Int64, dev).view(n, 1, T, 1));
        return r.TwoMasks ? torch.cat(new[] { mask, windowed }, 1) : windowed;
    }

    (Tensor Keys, Tensor Values) RaggedUpdate(int layer, Tensor k, Tensor v)
    {
        var r = R;
        if (r.Index is null) throw new InvalidOperationException("BeginRaggedStep must be called before each forward over a ragged cache.");
        var kb = _k[layer]!.narrow(0, r.First, r.Count);
        var vb = _v[layer]!.narrow(0, r.First, r.Count);
        kb.scatter_(2, r.Index, k.to(kb.dtype));
        vb.scatter_(2, r.Index, v.to(vb.dtype));
        return (kb.narrow(2, 0, r.Width), vb.narrow(2, 0, r.Width));
    }

    void RaggedCommit()
    {
        var r = R;
        for (int b = 0; b < r.Count; b++) r.Lens[r.First + b] += r.Counts[b];
        r.Index = null;
        Length = r.Lens.Max();
    }
}
