using SoftPrompt.Distributed;
using TorchSharp;

namespace SoftPrompt.Tests.Distributed;

/// <summary>
/// The collective helpers (sharding, gather in order, gradient sum, the start-up agreement check) over an in-process
/// world of threads standing in for MPI ranks, so they are checked on machines without Open MPI too.
/// </summary>
public class CollectivesTests
{
    /// <summary>N ranks as N threads: each collective call is a rendezvous where every rank deposits its buffer, the
    /// last one combines them, and all read the result.</summary>
    sealed class ThreadWorld
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
    }

    static T[] OnEveryRank<T>(int size, Func<ICommunicator, T> body)
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
        foreach (var t in threads) Assert.True(t.Join(TimeSpan.FromSeconds(60)), "a rank did not finish");
        if (errors.FirstOrDefault(e => e is not null) is { } err) throw err;
        return results;
    }

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    public void SharesAreDisjointAndCoverEveryIndex(int size)
    {
        var shares = OnEveryRank(size, c => c.MyShare(10).ToArray());
        Assert.Equal(Enumerable.Range(0, 10), shares.SelectMany(s => s).Order());
        Assert.Equal(10, shares.SelectMany(s => s).Distinct().Count());
    }

    [Theory]
    [InlineData(2)]
    [InlineData(3)]
    public void MapGivesEveryRankAllResultsInOrderExactly(int size)
    {
        // Values whose JSON form must round-trip exactly (and the infinities of a log-probability).
        Func<int, double[]> f = i => new[] { Math.PI * i / 7, -1.0 / (i + 3), i == 4 ? double.NegativeInfinity : 1e-300 * i };
        var all = OnEveryRank(size, c => c.Map(9, f));
        foreach (var r in all)
            for (int i = 0; i < 9; i++) Assert.Equal(f(i), r[i]);
    }

    [Fact]
    public void GradientsAreSummedAndAParameterWithoutAGradientReceivesTheSum()
    {
        var sums = OnEveryRank(2, c =>
        {
            using var p = torch.zeros(3, requires_grad: true);
            if (c.Rank == 0) p.grad = torch.tensor(new float[] { 1, 2, 3 });  // rank 1's shard had no target token: no grad
            c.AllReduceGradients(new[] { p });
            return p.grad!.data<float>().ToArray();
        });
        Assert.All(sums, s => Assert.Equal(new float[] { 1, 2, 3 }, s));
    }

    [Fact]
    public void AnyIsTrueOnEveryRankWhenOneRankSaysSo()
    {
        Assert.All(OnEveryRank(3, c => c.Any(c.Rank == 2)), Assert.True);
        Assert.All(OnEveryRank(3, c => c.Any(false)), Assert.False);
    }

    [Fact]
    public void ARankWithAnotherFingerprintMakesEveryRankThrowTheSameErrorNamingIt()
    {
        var errors = OnEveryRank(3, c =>
        {
            var fp = Collectives.Fingerprint(c.Rank == 1 ? "other" : "same", Array.Empty<string>());
            try { c.CheckSame("data file (contents)", fp); return null; }
            catch (RanksDisagreeException e) { return e.Message; }
        });
        Assert.All(errors, e => Assert.StartsWith("rank 1 of 3 was given a different data file (contents) than rank 0", e));
        Assert.All(OnEveryRank(2, c => { c.CheckSame("config", Collectives.Fingerprint("x", Array.Empty<string>())); return true; }), Assert.True);
    }

    [Fact]
    public void BroadcastAndAllGatherCarryBytesOfEveryLength()
    {
        var got = OnEveryRank(3, c => c.AllGather(Enumerable.Repeat((byte)(c.Rank + 1), c.Rank * 2).ToArray()));
        foreach (var parts in got)
        {
            Assert.Empty(parts[0]);
            Assert.Equal(new byte[] { 2, 2 }, parts[1]);
            Assert.Equal(new byte[] { 3, 3, 3, 3 }, parts[2]);
        }
        Assert.All(OnEveryRank(2, c => c.Broadcast(c.Rank == 0 ? "héllo" : "")), s => Assert.Equal("héllo", s));
    }

    [Fact]
    public void OneProcessIsTheDefaultOutsideALauncher()
    {
        if (Launch.WorldSizeFromEnvironment() is > 1) return; // the suite itself launched under mpirun
        Assert.Same(SingleProcess.Instance, Launch.Communicator());
        Assert.Same(SingleProcess.Instance, Launch.Communicator("none"));
        Assert.Throws<SoftPromptException>(() => Launch.Communicator("nccl"));
        Assert.Equal("cuda:0", Launch.DeviceFor("cuda:0", SingleProcess.Instance));
    }
}
