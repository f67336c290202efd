using SoftPrompt.Distributed;
using TorchSharp;

namespace SoftPrompt.Tests.Distributed;

/// <summary>
/// The collective helpers (sharding, gather in order, gradient sum, the start-up agreement check) over an in-process
/// world of threads standing in for MPI ranks, so they are checked on machines without Open MPI too.
/// </summary>
public class CollectivesTests
{
    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    public void SharesAreDisjointAndCoverEveryIndex(int size)
    {
        var shares = ThreadWorld.OnEveryRank(size, c => c.MyShare(10).ToArray());
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
        var all = ThreadWorld.OnEveryRank(size, c => c.Map(9, f));
        foreach (var r in all)
            for (int i = 0; i < 9; i++) Assert.Equal(f(i), r[i]);
    }

    [Fact]
    public void GradientsAreSummedAndAParameterWithoutAGradientReceivesTheSum()
    {
        var sums = ThreadWorld.OnEveryRank(2, c =>
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
        Assert.All(ThreadWorld.OnEveryRank(3, c => c.Any(c.Rank == 2)), Assert.True);
        Assert.All(ThreadWorld.OnEveryRank(3, c => c.Any(false)), Assert.False);
    }

    [Fact]
    public void ARankWithAnotherFingerprintMakesEveryRankThrowTheSameErrorNamingIt()
    {
        var errors = ThreadWorld.OnEveryRank(3, c =>
        {
            var fp = Collectives.Fingerprint(c.Rank == 1 ? "other" : "same", Array.Empty<string>());
            try { c.CheckSame("data file (contents)", fp); return null; }
            catch (RanksDisagreeException e) { return e.Message; }
        });
        Assert.All(errors, e => Assert.StartsWith("rank 1 of 3 was given a different data file (contents) than rank 0", e));
        Assert.All(ThreadWorld.OnEveryRank(2, c => { c.CheckSame("config", Collectives.Fingerprint("x", Array.Empty<string>())); return true; }), Assert.True);
    }

    [Fact]
    public void BroadcastAndAllGatherCarryBytesOfEveryLength()
    {
        var got = ThreadWorld.OnEveryRank(3, c => c.AllGather(Enumerable.Repeat((byte)(c.Rank + 1), c.Rank * 2).ToArray()));
        foreach (var parts in got)
        {
            Assert.Empty(parts[0]);
            Assert.Equal(new byte[] { 2, 2 }, parts[1]);
            Assert.Equal(new byte[] { 3, 3, 3, 3 }, parts[2]);
        }
        Assert.All(ThreadWorld.OnEveryRank(2, c => c.Broadcast(c.Rank == 0 ? "héllo" : "")), s => Assert.Equal("héllo", s));
    }

    [Fact]
    public void OnRootRunsOnRankZeroAloneAndEveryRankGetsItsResultExactly()
    {
        int calls = 0;
        var got = ThreadWorld.OnEveryRank(3, c => c.OnRoot(() => { Interlocked.Increment(ref calls); return new[] { Math.PI / 3, double.NegativeInfinity, c.Rank }; }));
        Assert.Equal(1, calls);
        Assert.All(got, g => Assert.Equal(new[] { Math.PI / 3, double.NegativeInfinity, 0 }, g));
        Assert.Equal("x", SingleProcess.Instance.OnRoot(() => "x"));
    }

    [Fact]
    public void AFailureOnRankZeroEndsEveryRankAtThatPointAsAnErrorAllRanksMet()
    {
        var (results, errors) = ThreadWorld.Outcomes(3, c =>
        {
            c.OnRoot<int>(() => throw new SoftPromptException("the optimizer endpoint refused the key"));
            return "went on";
        });
        Assert.All(results, r => Assert.Null(r));
        var root = Assert.IsType<SoftPromptException>(errors[0]);
        Assert.Equal("the optimizer endpoint refused the key", root.Message); // rank 0 keeps its own error (and exit code)
        Assert.True(Collectives.MetByAllRanks(root));
        foreach (var e in errors.Skip(1))
        {
            var follower = Assert.IsType<RootFailedException>(e);
            Assert.Contains("the optimizer endpoint refused the key", follower.Message);
            Assert.True(Collectives.MetByAllRanks(follower));
        }
        Assert.False(Collectives.MetByAllRanks(new SoftPromptException("one rank's own error")));
    }

    [Fact]
    public void AgreeGivesTheStepsResultWhenNoRankFailed()
    {
        Assert.Equal(new[] { 0, 10, 20 }, ThreadWorld.OnEveryRank(3, c => c.Agree(() => c.Rank * 10)));
        Assert.Equal(7, SingleProcess.Instance.Agree(() => 7));
    }

    [Fact]
    public void AnErrorEveryRankMeetsInAnAgreedStepIsRankZerosAndTheOthersFollowSilently()
    {
        var (_, errors) = ThreadWorld.Outcomes(3, c => c.Agree<int>(() => throw new FileNotFoundException("data.jsonl: dataset file not found.")));
        var root = Assert.IsType<FileNotFoundException>(errors[0]); // its own type, so its own exit code
        Assert.Equal("data.jsonl: dataset file not found.", root.Message);
        Assert.All(errors, e => Assert.True(Collectives.MetByAllRanks(e!)));
        // Rank 0 alone may fail (the run folder's lock is rank 0's): the others follow.
        var (_, lockErrors) = ThreadWorld.Outcomes(2, c => c.Agree(() => c.Rank == 0 ? throw new SoftPromptException("runs/x is locked by pid 7") : 1));
        Assert.Equal("runs/x is locked by pid 7", Assert.IsType<SoftPromptException>(lockErrors[0]).Message);
        Assert.IsType<RootFailedException>(lockErrors[1]);
    }

    [Fact]
    public void AnErrorOfSomeRanksInAnAgreedStepEndsEveryRankNamingThem()
    {
        var (_, errors) = ThreadWorld.Outcomes(3, c => c.Agree(() => c.Rank switch
        {
            1 => throw new SoftPromptException("missing.tsv: dataset file not found."),
            2 => throw new InvalidOperationException("boom"),
            _ => 0,
        }));
        Assert.All(errors, e =>
        {
            var d = Assert.IsType<RanksDisagreeException>(e);
            Assert.Equal("rank 1 of 3 failed: missing.tsv: dataset file not found.; rank 2 of 3 failed: InvalidOperationException: boom", d.Message);
        });
    }

    [Fact]
    public void RootCallsGiveEveryRankTheRepliesAndTheMetersCountsSoTheBudgetStopsAllAtOnce()
    {
        var seen = ThreadWorld.OnEveryRank(2, c =>
        {
            var meter = new SoftPrompt.Llm.CallMeter { MaxCalls = 3 };
            var calls = new SoftPrompt.Search.RootCalls(c, meter);
            // Rank 0's meter counts three calls; rank 1 made none and must see the same counts (and the same "exhausted").
            var reply = calls.Run(() => { meter.Restore(3, 0, 120, 30); return "reply"; });
            return (reply, meter.Calls, meter.TotalTokens, meter.Exhausted(), calls.Calls);
        });
        Assert.Equal(("reply", 3, 150L, "max_calls", true), seen[0]);
        Assert.Equal(("reply", 3, 150L, "max_calls", false), seen[1]);
    }

    static Func<string, string?> Env(params (string Key, string Value)[] vars) => k => vars.FirstOrDefault(v => v.Key == k).Value;

    [Fact]
    public void TheLaunchersVariablesGiveTheWorldAndTheRanksOnThisHost()
    {
        // Open MPI's mpirun.
        var ompi = Env(("OMPI_COMM_WORLD_SIZE", "4"), ("OMPI_COMM_WORLD_LOCAL_RANK", "1"), ("OMPI_COMM_WORLD_LOCAL_SIZE", "2"));
        Assert.Equal(4, Launch.WorldSizeFromEnvironment(ompi));
        Assert.Equal((1, 2), Launch.LocalRankAndSize(ompi));
        // MPICH's Hydra.
        var hydra = Env(("PMI_SIZE", "3"), ("PMI_RANK", "2"), ("MPI_LOCALRANKID", "0"), ("MPI_LOCALNRANKS", "1"));
        Assert.Equal(3, Launch.WorldSizeFromEnvironment(hydra));
        Assert.Equal((0, 1), Launch.LocalRankAndSize(hydra));
        // Slurm's srun: 7 tasks as 2 on each of the first three nodes and 1 on the fourth; this is the fourth node.
        var srun = Env(("SLURM_STEP_ID", "0"), ("SLURM_NTASKS", "7"), ("SLURM_LOCALID", "0"), ("SLURM_NODEID", "3"), ("SLURM_STEP_TASKS_PER_NODE", "2(x3),1"));
        Assert.Equal(7, Launch.WorldSizeFromEnvironment(srun));
        Assert.Equal((0, 1), Launch.LocalRankAndSize(srun));
        Assert.Equal((1, 2), Launch.LocalRankAndSize(Env(("SLURM_LOCALID", "1"), ("SLURM_NODEID", "1"), ("SLURM_TASKS_PER_NODE", "2(x3),1"))));
        // A Slurm batch script outside srun is no job step: one process.
        Assert.Null(Launch.WorldSizeFromEnvironment(Env(("SLURM_NTASKS", "8"), ("SLURM_JOB_ID", "12"))));
        Assert.Null(Launch.WorldSizeFromEnvironment(Env()));
        Assert.Null(Launch.LocalRankAndSize(Env()));
        // This process's rank, before any MPI call.
        Assert.Equal(3, Launch.WorldRankFromEnvironment(Env(("OMPI_COMM_WORLD_RANK", "3"))));
        Assert.Equal(2, Launch.WorldRankFromEnvironment(hydra));
        Assert.Equal(5, Launch.WorldRankFromEnvironment(Env(("SLURM_STEP_ID", "0"), ("SLURM_PROCID", "5"))));
        Assert.Null(Launch.WorldRankFromEnvironment(Env(("SLURM_PROCID", "0"))));
    }

    [Fact]
    public void TheBannerSaysWhereEveryRankRuns()
    {
        var two = ThreadWorld.OnEveryRank(2, c => (Launch.Banner(c, "cpu", 1), Launch.Banner(c, "cuda:0", 4, gpuPerRank: true)))[0];
        Assert.Equal("distributed: 2 ranks (MPI), 2 on this host; every rank on cpu, 1 thread per rank; rank 0 writes the run folder", two.Item1);
        Assert.Equal("distributed: 2 ranks (MPI), 2 on this host; each rank on cuda:<local rank> (rank 0 on cuda:0), 4 threads per rank; rank 0 writes the run folder", two.Item2);
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
