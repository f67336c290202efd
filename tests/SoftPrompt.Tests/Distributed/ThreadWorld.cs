using SoftPrompt.Distributed;

namespace SoftPrompt.Tests.Distributed;

/// <summary>N ranks as N threads: each collective call is a rendezvous where every rank deposits its buffer, the
/// last one combines them, and all read the result.</summary>
public sealed class ThreadWorld
{
    readonly int _size;
    readonly Barrier _barrier;
    readonly object[] _slots;
    object? _result;

    public ThreadWorld(int size) { _size = size; _barrier = new Barrier(size); _slots = new object[size]; }

    public ICommunicator Rank(int r) => new Member(this, r);

    T Exchange<T>(int rank, T mine, Func<T[], T> combine)
    {
        _slots[rank] = mine!;
        _barrier.SignalAndWait();
        if (rank == 0) _result = combine(_slots.Cast<T>().ToArray());
        _barrier.SignalAndWait();
        var r = (T)_result!;
        _barrier.SignalAndWait();
        return r;
    }

    sealed class Member(ThreadWorld w, int rank) : ICommunicator
    {
        public int Rank => rank;
        public int Size => w._size;
        public int LocalRank => rank;
        public int LocalSize => w._size;
        void Sum<T>(Span<T> v, Func<T, T, T> add)
        {
            var r = w.Exchange(rank, v.ToArray(), all => Enumerable.Range(0, all[0].Length).Select(i => all.Select(a => a[i]).Aggregate(add)).ToArray());
            r.CopyTo(v);
        }
        public void AllReduceSum(Span<float> values) => Sum(values, (a, b) => a + b);
        public void AllReduceSum(Span<double> values) => Sum(values, (a, b) => a + b);
        public void AllReduceSum(Span<long> values) => Sum(values, (a, b) => a + b);
        public void AllReduceMax(Span<long> values) => Sum(values, Math.Max);
        public void Broadcast(Span<byte> data, int root) => w.Exchange(rank, data.ToArray(), all => all[root]).CopyTo(data);
        public void Barrier() => w.Exchange(rank, 0, _ => 0);
        public void Abort(int exitCode) => throw new InvalidOperationException("abort");
        public void Dispose() { }
    }

    /// <summary>Runs <paramref name="body"/> on every rank of a world of <paramref name="size"/> threads; the results by
    /// rank (the first error is rethrown).</summary>
    public static T[] OnEveryRank<T>(int size, Func<ICommunicator, T> body, TimeSpan? limit = null)
    {
        var (results, errors) = Outcomes(size, body, limit);
        if (errors.FirstOrDefault(e => e is not null) is { } err) throw err;
        return results;
    }

    /// <summary>As <see cref="OnEveryRank{T}"/>, keeping each rank's error.</summary>
    public static (T[] Results, Exception?[] Errors) Outcomes<T>(int size, Func<ICommunicator, T> body, TimeSpan? limit = null)
    {
        var world = new ThreadWorld(size);
        var results = new T[size];
        var errors = new Exception?[size];
        var threads = Enumerable.Range(0, size).Select(r => new Thread(() =>
        {
            try { results[r] = body(world.Rank(r)); }
            catch (Exception e) { errors[r] = e; }
        })).ToList();
        threads.ForEach(t => t.Start());
        foreach (var t in threads) Assert.True(t.Join(limit ?? TimeSpan.FromSeconds(60)), "a rank did not finish");
        return (results, errors);
    }
}
