using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using TorchSharp;
using static TorchSharp.torch;

namespace SoftPrompt.Distributed;

/// <summary>What jobs build from the communicator's few calls: sharding, tensor and gradient reduction, gathering
/// results in order, agreement on a flag, and the start-up check that every rank was given the same inputs.</summary>
public static class Collectives
{
    /// <summary>This rank's share of items 0..n-1: every Size-th one from Rank (disjoint, deterministic, together all).</summary>
    public static IEnumerable<int> MyShare(this ICommunicator c, int n)
    {
        for (int i = c.Rank; i < n; i += c.Size) yield return i;
    }

    public static bool Owns(this ICommunicator c, int index) => index % c.Size == c.Rank;

    /// <summary>The cancellation token work inside collective calls may look at: none when there are several ranks
    /// (they would stop at different points and leave the others waiting in a collective); the job stops between steps
    /// instead, where every rank asks <see cref="Any"/>.</summary>
    public static CancellationToken InCollective(this ICommunicator c, CancellationToken cancel) => c.Size > 1 ? CancellationToken.None : cancel;

    /// <summary>True on every rank when it is true on any (a stop request seen by one rank stops all at the same step).</summary>
    public static bool Any(this ICommunicator c, bool flag)
    {
        if (c.Size == 1) return flag;
        Span<long> v = stackalloc long[] { flag ? 1 : 0 };
        c.AllReduceMax(v);
        return v[0] != 0;
    }

    /// <summary>
    /// Sums the gradients of <paramref name="parameters"/> over all ranks, in place, in one call (the tensors are
    /// flattened into one fp32 buffer: kilobytes for a soft prompt, a few MB for a prefix MLP). A parameter without a
    /// gradient on this rank (its shard had no target token) contributes zeros and receives the sum.
    /// </summary>
    public static void AllReduceGradients(this ICommunicator c, IEnumerable<Tensor> parameters)
    {
        if (c.Size == 1) return;
        var ps = parameters.ToList();
        long total = ps.Sum(p => p.NumberOfElements);
        var buf = new float[total];
        long at = 0;
        foreach (var p in ps)
        {
            var g = p.grad;
            if (g is not null)
            {
                using var host = g.detach().to(ScalarType.Float32).cpu().contiguous();
                host.data<float>().CopyTo(buf.AsSpan((int)at, (int)p.NumberOfElements));
            }
            at += p.NumberOfElements;
        }
        c.AllReduceSum(buf);
        at = 0;
        using (torch.no_grad())
            foreach (var p in ps)
            {
                using var summed = torch.tensor(buf.AsSpan((int)at, (int)p.NumberOfElements).ToArray(), p.shape, ScalarType.Float32).to(p.device).to(p.dtype);
                if (p.grad is null) p.grad = summed.clone();
                else p.grad.copy_(summed);
                at += p.NumberOfElements;
            }
    }

    /// <summary>
    /// Every rank computes <paramref name="compute"/> for its share of 0..n-1; every rank gets all n results, in index
    /// order, exactly as computed (JSON round-trips doubles exactly). Results must be JSON-serialisable.
    /// </summary>
    public static T[] Map<T>(this ICommunicator c, int n, Func<int, T> compute) =>
        c.MapShare(n, share => share.Select(compute).ToList());

    /// <summary>As <see cref="Map{T}"/>, for work done a share at a time (a batched generation): <paramref name="compute"/>
    /// gets this rank's indices (ascending) and returns one result per index.</summary>
    public static T[] MapShare<T>(this ICommunicator c, int n, Func<IReadOnlyList<int>, IReadOnlyList<T>> compute)
    {
        var share = c.MyShare(n).ToList();
        var mine = compute(share);
        if (mine.Count != share.Count) throw new InvalidOperationException($"expected {share.Count} results, got {mine.Count}");
        if (c.Size == 1) return mine.ToArray();
        var parts = c.AllGather(JsonSerializer.SerializeToUtf8Bytes(mine, Exact));
        var lists = parts.Select(b => JsonSerializer.Deserialize<List<T>>(b, Exact) ?? new List<T>()).ToList();
        var all = new T[n];
        for (int r = 0; r < c.Size; r++)
        {
            int k = 0;
            for (int i = r; i < n; i += c.Size) all[i] = lists[r][k++];
        }
        return all;
    }

    /// <summary>Doubles round-trip exactly (shortest round-trip form), infinities and NaN included.</summary>
    static readonly JsonSerializerOptions Exact = new() { NumberHandling = System.Text.Json.Serialization.JsonNumberHandling.AllowNamedFloatingPointLiterals, IncludeFields = true };

    /// <summary>Every rank's bytes, on every rank (lengths by an all-reduce, then one broadcast per rank).</summary>
    public static byte[][] AllGather(this ICommunicator c, byte[] mine)
    {
        if (c.Size == 1) return new[] { mine };
        var lengths = new long[c.Size];
        lengths[c.Rank] = mine.Length;
        c.AllReduceSum(lengths);
        var parts = new byte[c.Size][];
        for (int r = 0; r < c.Size; r++)
        {
            parts[r] = r == c.Rank ? (byte[])mine.Clone() : new byte[lengths[r]];
            c.Broadcast(parts[r], r);
        }
        return parts;
    }

    /// <summary>Marks, in <see cref="Exception.Data"/>, an error rank 0 met in work it alone does and passed to every rank
    /// (see <see cref="OnRoot{T}"/>): every rank is ending, no abort is needed.</summary>
    public const string AllRanksKey = "SoftPrompt.Distributed.AllRanks";

    /// <summary>True for an error every rank met at the same point (a start-up disagreement, a failure of rank 0's own
    /// work passed to all): rank 0 reports it and every rank exits with its code, no MPI_Abort.</summary>
    public static bool MetByAllRanks(Exception e) => e is RanksDisagreeException or RootFailedException || e.Data.Contains(AllRanksKey);

    /// <summary>
    /// Work done by rank 0 alone, its result on every rank: calls to a remote service (an LLM optimizer, a judge) that
    /// must be made once per job, not once per rank. Rank 0 runs <paramref name="compute"/> and broadcasts the result
    /// as JSON (doubles round-trip exactly); the other ranks wait for it. When it throws, every rank learns so at the
    /// same point: rank 0 rethrows its own exception (marked <see cref="AllRanksKey"/>), the others throw
    /// <see cref="RootFailedException"/>, and the job ends cleanly instead of rank 0 aborting the others mid-collective.
    /// </summary>
    public static T OnRoot<T>(this ICommunicator c, Func<T> compute)
    {
        if (c.Size == 1) return compute();
        T value = default!;
        Exception? failure = null;
        string payload = "";
        if (c.IsWriter)
        {
            try
            {
                value = compute();
                payload = JsonSerializer.Serialize(new RootReply<T>(true, value, null), Exact);
            }
            catch (Exception e)
            {
                failure = e;
                payload = JsonSerializer.Serialize(new RootReply<T>(false, default, Describe(e)), Exact);
            }
        }
        var got = c.Broadcast(payload);
        if (failure is not null)
        {
            failure.Data[AllRanksKey] = true;
            System.Runtime.ExceptionServices.ExceptionDispatchInfo.Throw(failure);
        }
        if (c.IsWriter) return value;
        var reply = JsonSerializer.Deserialize<RootReply<T>>(got, Exact) ?? throw new InvalidOperationException("empty reply from rank 0");
        if (!reply.Ok) throw new RootFailedException($"rank 0 failed ({reply.Error}); it reports the error.");
        return reply.Value!;
    }

    sealed record RootReply<T>(bool Ok, T? Value, string? Error);

    /// <summary>
    /// A step every rank takes that makes no collective call itself (validating options, reading data, loading the
    /// model): its outcome is agreed on, so that a failure ends the job cleanly, said once, instead of each failing rank
    /// aborting it on its own. When the step fails on some rank, every rank learns so here (one all-reduce of a flag
    /// when nothing failed; the failures' messages gathered when something did). If rank 0 failed and every rank that
    /// failed met its very error (a bad option, a missing file: every rank meets it), rank 0 reports its own error, with
    /// its exit code, and the others follow silently; otherwise rank 0 reports which ranks failed and how
    /// (<see cref="RanksDisagreeException"/>, exit 2). In one process the step runs as it is.
    /// </summary>
    public static T Agree<T>(this ICommunicator c, Func<T> step)
    {
        if (c.Size == 1) return step();
        T value = default!;
        Exception? mine = null;
        try { value = step(); }
        catch (Exception e) { mine = e; }
        if (!c.Any(mine is not null)) return value;
        var said = c.AllGather(Encoding.UTF8.GetBytes(mine is null ? "" : Describe(mine))).Select(Encoding.UTF8.GetString).ToArray();
        var failed = Enumerable.Range(0, c.Size).Where(r => said[r].Length > 0).ToList();
        if (failed[0] == 0 && failed.All(r => said[r] == said[0]))
        {
            if (mine is null) throw new RootFailedException($"rank 0 failed ({said[0]}); it reports the error.");
            mine.Data[AllRanksKey] = true;
            System.Runtime.ExceptionServices.ExceptionDispatchInfo.Throw(mine);
        }
        var groups = failed.GroupBy(r => said[r]).Select(g => $"rank{(g.Count() == 1 ? "" : "s")} {string.Join(", ", g)} of {c.Size} failed: {g.Key}");
        throw new RanksDisagreeException(string.Join("; ", groups));
    }

    /// <summary>A step without a result, agreed on as <see cref="Agree{T}"/>.</summary>
    public static void Agree(this ICommunicator c, Action step) => c.Agree(() => { step(); return true; });

    /// <summary>An error as one line for another rank to report: the message of the errors a user can act on, the type
    /// too for anything else.</summary>
    static string Describe(Exception e)
    {
        var inner = e is AggregateException { InnerExceptions.Count: 1 } ae ? ae.InnerException! : e;
        var text = inner is SoftPromptException or IOException or UnauthorizedAccessException ? inner.Message : $"{inner.GetType().Name}: {inner.Message}";
        return text.Length == 0 ? inner.GetType().Name : text;
    }

    /// <summary>Rank 0's string on every rank.</summary>
    public static string Broadcast(this ICommunicator c, string value)
    {
        if (c.Size == 1) return value;
        var bytes = Encoding.UTF8.GetBytes(value);
        Span<long> len = stackalloc long[] { c.Rank == 0 ? bytes.Length : 0 };
        c.AllReduceSum(len);
        var buf = c.Rank == 0 ? bytes : new byte[len[0]];
        c.Broadcast(buf, 0);
        return Encoding.UTF8.GetString(buf);
    }

    /// <summary>
    /// Start-up check that every rank was given the same input: <paramref name="fingerprint"/> (a SHA-256 of a
    /// config, a data file, a model's files) is compared with rank 0's. A rank that differs makes every rank throw the
    /// same <see cref="RanksDisagreeException"/> naming the ranks and <paramref name="what"/>, instead of training on
    /// diverging inputs.
    /// </summary>
    public static void CheckSame(this ICommunicator c, string what, byte[] fingerprint)
    {
        if (c.Size == 1) return;
        var root = (byte[])fingerprint.Clone();
        if (root.Length != 32) throw new ArgumentException("expected a SHA-256 fingerprint", nameof(fingerprint));
        c.Broadcast(root, 0);
        var differ = new long[c.Size];
        differ[c.Rank] = root.AsSpan().SequenceEqual(fingerprint) ? 0 : 1;
        c.AllReduceSum(differ);
        var bad = Enumerable.Range(0, c.Size).Where(r => differ[r] != 0).ToList();
        if (bad.Count > 0)
            throw new RanksDisagreeException($"rank{(bad.Count == 1 ? "" : "s")} {string.Join(", ", bad)} of {c.Size} {(bad.Count == 1 ? "was" : "were")} given a different {what} than rank 0; " +
                                             "every rank must read the same config, data and model (same files, same contents).");
    }

    /// <summary>SHA-256 of a text and of files (in the order given): each file's length and its first
    /// <paramref name="headBytes"/> bytes (all of it by default).</summary>
    public static byte[] Fingerprint(string text, IEnumerable<string> files, long headBytes = long.MaxValue)
    {
        using var sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        sha.AppendData(Encoding.UTF8.GetBytes(text));
        var buf = new byte[1 << 20];
        foreach (var f in files)
        {
            using var s = File.OpenRead(f);
            sha.AppendData(Encoding.UTF8.GetBytes($"\n--file of {s.Length} bytes--\n"));
            long left = headBytes;
            int k;
            while (left > 0 && (k = s.Read(buf, 0, (int)Math.Min(buf.Length, left))) > 0) { sha.AppendData(buf, 0, k); left -= k; }
        }
        return sha.GetHashAndReset();
    }
}
