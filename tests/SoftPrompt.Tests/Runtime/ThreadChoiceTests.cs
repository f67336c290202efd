using SoftPrompt.Runtime;

namespace SoftPrompt.Tests.Runtime;

/// <summary>
/// The automatic thread count's decision from what the machine says now (fake /proc/stat snapshots, cgroup quotas),
/// not from timing: idle CPUs over a short window (this process's own use counted as free) instead of the lagging
/// 1-minute load average, bounded by the cgroup's CPU quota.
/// </summary>
public class ThreadChoiceTests
{
    // /proc/stat: aggregate line "cpu user nice system idle iowait irq softirq steal guest guest_nice", then one line per CPU.
    static string Stat(long user, long system, long idle, long iowait = 0, int cpus = 2) =>
        $"cpu  {user} 0 {system} {idle} {iowait} 0 0 0 0 0\n" + string.Concat(Enumerable.Range(0, cpus).Select(i => $"cpu{i} 0 0 0 0 0 0 0 0 0 0\n")) + "intr 1 2 3\nctxt 5\n";

    [Theory]
    // 2 CPUs, 20 ticks in the window (100 ms): idle ticks -> idle CPUs.
    [InlineData(0, 0, 20, 0, 2.0)]     // idle machine (also right after a job: the load average would still say 2)
    [InlineData(10, 0, 10, 0, 1.0)]    // one other job on one CPU
    [InlineData(18, 2, 0, 0, 0.0)]     // two other jobs: nothing idle
    [InlineData(10, 0, 6, 4, 1.0)]     // iowait counts as idle
    [InlineData(20, 0, 0, 0, 1.0, 10)] // busy, but half of it is this process's own compiling: that half is free
    public void IdleCpusComeFromTheWindowNotTheLoadAverage(long user, long system, long idle, long iowait, double expected, long own = 0)
    {
        var before = Stat(1000, 500, 9000, 100);
        var after = Stat(1000 + user, 500 + system, 9000 + idle, 100 + iowait);
        Assert.Equal(expected, TorchRuntime.IdleCpus(before, after, own)!.Value, 3);
    }

    [Theory]
    [InlineData("garbage", "cpu  1 2 3 4 5 6 7 8 0 0\ncpu0 1\n")]
    [InlineData("cpu  1 2 3 4 5 6 7 8 0 0\ncpu0 1\n", "cpu  1 2 3 4 5 6 7 8 0 0\ncpu0 1\n")] // no time passed
    [InlineData("cpu  x 2 3 4\ncpu0 1\n", "cpu  1 2 3 4\ncpu0 1\n")]
    public void UnreadableSnapshotsMeanUnknown(string before, string after) => Assert.Null(TorchRuntime.IdleCpus(before, after, 0));

    [Theory]
    [InlineData("max 100000", null)]
    [InlineData("200000 100000", 2)]
    [InlineData("150000 100000", 2)]   // 1.5 CPUs: rounded up
    [InlineData("50000 100000", 1)]
    [InlineData("-1 100000", null)]    // cgroup v1 "no quota"
    [InlineData("", null)]
    [InlineData(null, null)]
    public void CgroupQuotasBoundTheCores(string? cpuMax, int? expected) => Assert.Equal(expected, TorchRuntime.CgroupCpuLimit(cpuMax));

    [Theory]
    [InlineData(0, 2, 2.0, 2, false)]      // idle machine: all cores, nothing said
    [InlineData(0, 2, 1.7, 2, false)]      // a little background noise does not cost a core
    [InlineData(0, 2, 1.0, 1, true)]       // another job on one core: one thread, and a note
    [InlineData(0, 2, 0.0, 1, true)]       // swamped: at least one thread
    [InlineData(0, 16, 15.9, 16, false)]   // 16 cores, idle: 16 (the load-average rule could pick 1 of 16 after a job)
    [InlineData(0, 16, 9.6, 10, true)]
    [InlineData(0, 4, 16.0, 4, false)]     // the host has more idle CPUs than this container's quota: the quota wins
    [InlineData(100000, 2, 2.0, 2, true)]  // more than the cores: clamped, with a warning
    [InlineData(2, 2, 0.1, 2, true)]       // explicit: kept (results do not depend on the load), with a warning
    [InlineData(1, 2, 1.0, 1, false)]      // explicit and fits: nothing said
    [InlineData(0, 4, null, 4, false)]     // unknown (not Linux): all cores
    public void WithSpinningWaitsThreadsAreTheIdleCpusWithinTheCoresAndOversubscriptionIsSaid(int requested, int cores, double? idle, int expected, bool says)
    {
        var (n, message) = TorchRuntime.ChooseThreads(requested, cores, idle, passiveWait: false);
        Assert.Equal(expected, n);
        Assert.Equal(says, message is not null);
    }

    [Theory]
    [InlineData(0, 2, 2.0, 2, false)]      // idle machine
    [InlineData(0, 2, 0.0, 2, false)]      // right after a job / alongside others: sleeping waiters make all cores the best choice
    [InlineData(0, 16, 3.0, 16, false)]
    [InlineData(0, 4, null, 4, false)]
    [InlineData(100000, 2, 0.0, 2, true)]  // more than the cores: still clamped, with a warning
    [InlineData(2, 2, 0.0, 2, false)]      // explicit beyond the idle CPUs: no warning (it costs little when waits sleep)
    public void WithPassiveWaitsTheAutomaticCountIsTheUsableCores(int requested, int cores, double? idle, int expected, bool says)
    {
        var (n, message) = TorchRuntime.ChooseThreads(requested, cores, idle, passiveWait: true);
        Assert.Equal(expected, n);
        Assert.Equal(says, message is not null);
    }

    [Fact]
    public void PassiveWaitingIsReadFromTheEnvironment()
    {
        // The CLI's Program sets OMP_WAIT_POLICY=PASSIVE (C and .NET environments) before libtorch loads.
        var (p, c) = (Environment.GetEnvironmentVariable("OMP_WAIT_POLICY"), Environment.GetEnvironmentVariable("GOMP_SPINCOUNT"));
        try
        {
            Environment.SetEnvironmentVariable("GOMP_SPINCOUNT", null);
            Environment.SetEnvironmentVariable("OMP_WAIT_POLICY", "PASSIVE"); Assert.True(TorchRuntime.OpenMpWaitsPassively());
            Environment.SetEnvironmentVariable("OMP_WAIT_POLICY", "active"); Assert.False(TorchRuntime.OpenMpWaitsPassively());
            Environment.SetEnvironmentVariable("OMP_WAIT_POLICY", null); Assert.False(TorchRuntime.OpenMpWaitsPassively());
            Environment.SetEnvironmentVariable("GOMP_SPINCOUNT", "0"); Assert.True(TorchRuntime.OpenMpWaitsPassively());
        }
        finally { Environment.SetEnvironmentVariable("OMP_WAIT_POLICY", p); Environment.SetEnvironmentVariable("GOMP_SPINCOUNT", c); }
    }

    [Fact]
    public void TheLiveSampleIsWithinTheMachine()
    {
        if (!File.Exists("/proc/stat")) return;
        var idle = TorchRuntime.SampleIdleCpus(50);
        Assert.NotNull(idle);
        Assert.InRange(idle!.Value, 0, Environment.ProcessorCount + 1e-9 + 64);
        Assert.InRange(TorchRuntime.UsableCores(), 1, Environment.ProcessorCount);
    }
}

/// <summary>bench's peak-memory reading of /proc/self/status, on the layouts the kernel writes.</summary>
public class StatusLineTests
{
    [Theory]
    [InlineData("VmHWM:\t  123456 kB", 123456L * 1024)]
    [InlineData("VmHWM:\t16750436 kB", 16750436L * 1024)]   // from 8 digits on no space follows the tab (a 16 GB peak)
    [InlineData("VmHWM:\t123456789 kB", 123456789L * 1024)]
    public void PeakResidentSetIsReadAtEverySize(string line, long bytes) =>
        Assert.Equal(bytes, SoftPrompt.Diagnostics.Benchmark.StatusBytes(line));

    [Theory]
    [InlineData("VmHWM:")]
    [InlineData("VmHWM:\tlots kB")]
    [InlineData("VmHWM:\t12 MB")]
    public void OtherLinesAreNotSizes(string line) => Assert.Null(SoftPrompt.Diagnostics.Benchmark.StatusBytes(line));
}
