using System.Runtime.InteropServices;
using TorchSharp;
using static TorchSharp.torch;

namespace SoftPrompt.Runtime;

/// <summary>Device and dtype selection shared by the CLI and library users.</summary>
public static class TorchRuntime
{
    /// <summary>Parses <c>auto|cpu|cuda|cuda:N</c>. Asking for CUDA where there is none is a clear error.</summary>
    public static Device ResolveDevice(string? spec)
    {
        spec = (spec ?? "auto").Trim().ToLowerInvariant();
        if (spec == "auto") return torch.cuda.is_available() ? torch.CUDA : torch.CPU;
        if (spec == "cpu") return torch.CPU;
        if (spec == "cuda" || spec.StartsWith("cuda:"))
        {
            int index = 0;
            if (spec.StartsWith("cuda:") && !int.TryParse(spec[5..], out index))
                throw new SoftPromptException($"--device '{spec}': expected cuda or cuda:N with N a GPU index.");
            if (!torch.cuda.is_available())
                throw new SoftPromptException($"--device {spec}: CUDA is not available. This build carries the CPU libtorch unless built with " +
                    "`dotnet build -p:TorchBackend=cuda` (needs an NVIDIA GPU and driver). Use --device cpu or auto.");
            int count = torch.cuda.device_count();
            if (index < 0 || index >= count) throw new SoftPromptException($"--device {spec}: there {(count == 1 ? "is 1 GPU" : $"are {count} GPUs")} (indices 0..{count - 1}).");
            return torch.device(DeviceType.CUDA, index);
        }
        throw new SoftPromptException($"--device '{spec}': expected auto, cpu, cuda or cuda:N.");
    }

    /// <summary>Parses <c>fp32|bf16|fp16|auto</c> (auto = the checkpoint's torch_dtype, fp32 when absent).</summary>
    public static ScalarType ResolveDType(string? spec, string? checkpointDtype = null)
    {
        spec = (spec ?? "fp32").Trim().ToLowerInvariant();
        if (spec == "auto") spec = checkpointDtype ?? "float32";
        return spec switch
        {
            "fp32" or "float32" or "float" => ScalarType.Float32,
            "bf16" or "bfloat16" => ScalarType.BFloat16,
            "fp16" or "float16" or "half" => ScalarType.Float16,
            _ => throw new SoftPromptException($"--dtype '{spec}': expected fp32, bf16, fp16 or auto."),
        };
    }

    public static string DTypeName(ScalarType t) => t switch
    {
        ScalarType.Float32 => "fp32", ScalarType.BFloat16 => "bf16", ScalarType.Float16 => "fp16", _ => t.ToString(),
    };

    /// <summary>
    /// Sets libtorch's intra-op threads and says on stderr (or to <paramref name="log"/>) when the choice is not what
    /// was asked or will be slow. Rules (<see cref="ChooseThreads"/>): more than the cores is clamped to the cores
    /// this process may use (affinity and the cgroup's cpu.max quota, <see cref="UsableCores"/>); 0 (the default) takes
    /// all of them when libtorch's OpenMP threads wait passively (the CLI's default, <see cref="ConfigureOpenMp"/>),
    /// else the CPUs idle right now (<see cref="SampleIdleCpus"/>: /proc/stat over 100 ms, this process's own use
    /// counted as free), at least 1; an explicit count is kept (results do not depend on the machine's load). The
    /// 1-minute load average is not used: it lags by minutes, so right after any job it reads "busy" on an idle machine
    /// (measured: half the speed, docs/benchmarks.md).
    /// Returns the count set. Messages go to <paramref name="log"/>; without one, warnings go to stderr and the
    /// automatic choice's note is not shown (short commands such as score and generate stay quiet).
    /// </summary>
    public static int SetThreads(int threads, Action<string>? log = null)
    {
        if (threads < 0) throw new SoftPromptException($"--threads {threads}: expected 0 (automatic) or a positive number of threads.");
        bool passive = OpenMpWaitsPassively();
        var (n, message) = ChooseThreads(threads, UsableCores(), !passive && (threads == 0 || threads > 1) ? SampleIdleCpus() : null, passive);
        if (message is not null && (log is not null || message.StartsWith("warning:"))) (log ?? (m => Console.Error.WriteLine(m)))(message);
        torch.set_num_threads(n);
        return n;
    }

    /// <summary>The CPUs this process may use: the runtime's processor count (affinity mask) bounded by the cgroup v2
    /// cpu.max quota (or v1 cfs_quota_us / cfs_period_us) when there is one.</summary>
    public static int UsableCores()
    {
        int cores = Math.Max(1, Environment.ProcessorCount);
        string? ReadOrNull(string p) { try { return File.Exists(p) ? File.ReadAllText(p) : null; } catch (Exception e) when (e is IOException or UnauthorizedAccessException) { return null; } }
        var quota = CgroupCpuLimit(ReadOrNull("/sys/fs/cgroup/cpu.max"))
                    ?? CgroupCpuLimit(ReadOrNull("/sys/fs/cgroup/cpu/cpu.cfs_quota_us") is { } q && ReadOrNull("/sys/fs/cgroup/cpu/cpu.cfs_period_us") is { } per ? $"{q.Trim()} {per.Trim()}" : null);
        return quota is int qn ? Math.Min(cores, qn) : cores;
    }

    /// <summary>CPUs allowed by a cgroup quota "QUOTA PERIOD" (cpu.max; "max" = none), rounded up, at least 1; null =
    /// no quota or unreadable. Pure, for tests.</summary>
    public static int? CgroupCpuLimit(string? cpuMax)
    {
        var f = cpuMax?.Trim().Split((char[]?)null, StringSplitOptions.RemoveEmptyEntries);
        if (f is not { Length: 2 } || !long.TryParse(f[0], out var quota) || !long.TryParse(f[1], out var period) || quota <= 0 || period <= 0) return null;
        return (int)Math.Max(1, Math.Min(int.MaxValue, (quota + period - 1) / period));
    }

    /// <summary>
    /// How many CPUs other processes leave idle now: /proc/stat read twice <paramref name="windowMs"/> apart, this
    /// process's own CPU time in that window (it may be compiling code) counted as idle. Null where there is no
    /// /proc (not Linux). 100 ms is 10 scheduler ticks per CPU: coarse but current, where the load average lags.
    /// </summary>
    public static double? SampleIdleCpus(int windowMs = 100)
    {
        try
        {
            if (!File.Exists("/proc/stat")) return null;
            var s0 = File.ReadAllText("/proc/stat"); var own0 = OwnTicks();
            Thread.Sleep(windowMs);
            var s1 = File.ReadAllText("/proc/stat"); var own1 = OwnTicks();
            return IdleCpus(s0, s1, own0 is long a && own1 is long b ? b - a : 0);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or FormatException) { return null; }
    }

    static long? OwnTicks()
    {
        // /proc/self/stat: "pid (comm) state ..." — fields after the comm's closing parenthesis; utime and stime are the 14th and 15th.
        var t = File.ReadAllText("/proc/self/stat");
        var f = t[(t.LastIndexOf(')') + 2)..].Split(' ');
        return f.Length > 12 && long.TryParse(f[11], out var u) && long.TryParse(f[12], out var sy) ? u + sy : null;
    }

    /// <summary>Idle CPUs between two /proc/stat snapshots (aggregate "cpu" line; idle + iowait count as idle) plus
    /// <paramref name="ownTicks"/>, this process's CPU ticks in between. Null when the snapshots cannot be read. Pure, for tests.</summary>
    public static double? IdleCpus(string statBefore, string statAfter, long ownTicks)
    {
        static (long Idle, long Total, int Cpus)? Parse(string stat)
        {
            long idle = 0, total = 0; int cpus = 0; bool found = false;
            foreach (var line in stat.Split('\n'))
            {
                if (line.StartsWith("cpu ", StringComparison.Ordinal))
                {
                    var f = line.Split(' ', StringSplitOptions.RemoveEmptyEntries);
                    // user nice system idle iowait irq softirq steal (guest and guest_nice are already in user and nice).
                    for (int i = 1; i < Math.Min(f.Length, 9); i++) { if (!long.TryParse(f[i], out var v)) return null; total += v; if (i is 4 or 5) idle += v; }
                    found = true;
                }
                else if (line.StartsWith("cpu", StringComparison.Ordinal) && line.Length > 3 && char.IsDigit(line[3])) cpus++;
            }
            return found && cpus > 0 ? (idle, total, cpus) : null;
        }
        if (Parse(statBefore) is not { } a || Parse(statAfter) is not { } b) return null;
        long dt = b.Total - a.Total;
        if (dt <= 0) return null;
        double idleFraction = Math.Clamp((b.Idle - a.Idle + Math.Max(0, ownTicks)) / (double)dt, 0, 1);
        return idleFraction * b.Cpus;
    }

    /// <summary>The thread count for a request, the cores this process may use, the CPUs idle now (null = unknown) and
    /// whether libtorch's OpenMP threads wait passively (sleep) rather than spin, and what to say about it (null =
    /// nothing). Pure, for tests.
    /// <para>Passive waiting (the CLI's default, <see cref="ConfigureOpenMp"/>): all usable cores. A thread that shares a
    /// core with another job then only costs its share of that core, and the scheduler's fair share gives a process
    /// with more runnable threads more of a busy machine: measured on 2 shared cores, 2 threads were as fast or faster
    /// than 1 on an idle machine, right after a job and alongside one or two other jobs (docs/benchmarks.md, "Threads").
    /// Spinning waits (OMP_WAIT_POLICY=ACTIVE, or SOFTPROMPT_OMP=default): a spinning thread burns the core it shares,
    /// 3x the CPU and up to 10x the time measured, so the count is the CPUs idle now (a CPU counts as free when at
    /// least 60% of it is idle), at least 1.</para></summary>
    public static (int Threads, string? Message) ChooseThreads(int requested, int cores, double? idleCpus, bool passiveWait = false)
    {
        cores = Math.Max(1, cores);
        int free = idleCpus is double d && double.IsFinite(d) ? Math.Clamp((int)Math.Floor(d + 0.4), 1, cores) : cores;
        string Idle() => idleCpus is double x ? string.Create(System.Globalization.CultureInfo.InvariantCulture, $"{x:F1} of the CPUs idle") : "load unknown";
        if (requested > cores)
            return (Math.Min(cores, requested), $"warning: --threads {requested} is more than the {cores} CPU core{(cores == 1 ? "" : "s")} this process may use; using {cores} " +
                $"(more threads than cores only makes libtorch's threads wait for each other).{(!passiveWait && free < cores ? $" Other jobs are running ({Idle()}): consider --threads {free}." : "")}");
        if (requested == 0)
        {
            if (passiveWait || free >= cores) return (cores, null);
            return (free, $"note: {Idle()} ({cores} cores) and libtorch's threads spin while waiting (OMP_WAIT_POLICY / {OpenMpEnvVar}): using {free} " +
                          $"thread{(free == 1 ? "" : "s")} instead of {cores} to avoid oversubscription (--threads N to choose).");
        }
        if (requested > free && !passiveWait)
            return (requested, $"warning: {Idle()} ({cores} cores) and --threads {requested} with spinning OpenMP threads: other jobs are using CPU, so the threads will contend and each step may run several times slower; consider --threads {free}.");
        return (requested, null);
    }

    /// <summary>True when libtorch's OpenMP threads sleep while waiting: OMP_WAIT_POLICY=PASSIVE (what
    /// <see cref="ConfigureOpenMp"/> sets) or GOMP_SPINCOUNT=0 in this process's environment.</summary>
    public static bool OpenMpWaitsPassively() =>
        string.Equals(Environment.GetEnvironmentVariable("OMP_WAIT_POLICY")?.Trim(), "passive", StringComparison.OrdinalIgnoreCase)
        || Environment.GetEnvironmentVariable("GOMP_SPINCOUNT")?.Trim() == "0";

    /// <summary>
    /// Process-wide, before libtorch is loaded (the CLI calls it first thing): tells libtorch's OpenMP runtime (GNU
    /// libgomp) to let idle threads sleep instead of spinning (OMP_WAIT_POLICY=PASSIVE), unless OMP_WAIT_POLICY or
    /// GOMP_SPINCOUNT is already set. Spinning threads burn the cores other jobs (and this process's other threads)
    /// need, which is what made oversubscription many times slower; see docs/benchmarks.md for the measurement.
    /// libgomp reads its settings from the C environment when it loads, and .NET's Environment.SetEnvironmentVariable
    /// does not change the C environment on Unix, so this calls libc's setenv. <c>SOFTPROMPT_OMP=default</c> leaves
    /// libgomp's own default (spin a while, then sleep). Returns what was done, for logs.
    /// </summary>
    public const string OpenMpEnvVar = "SOFTPROMPT_OMP";

    public static string ConfigureOpenMp()
    {
        if (!OperatingSystem.IsLinux()) return "default (not Linux)";
        var env = Environment.GetEnvironmentVariable(OpenMpEnvVar);
        if (env is not null && env.Trim().ToLowerInvariant() is "default" or "0" or "off" or "false") return $"default ({OpenMpEnvVar}={env})";
        if (Environment.GetEnvironmentVariable("OMP_WAIT_POLICY") is { } p) return $"OMP_WAIT_POLICY={p} (from the environment)";
        if (Environment.GetEnvironmentVariable("GOMP_SPINCOUNT") is { } c) return $"GOMP_SPINCOUNT={c} (from the environment)";
        try
        {
            if (Glibc.setenv("OMP_WAIT_POLICY", "PASSIVE", 0) != 0) return "default (setenv failed)";
            Environment.SetEnvironmentVariable("OMP_WAIT_POLICY", "PASSIVE");  // child processes and .NET readers see it too
            return "OMP_WAIT_POLICY=PASSIVE";
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException) { return "default (no libc setenv)"; }
    }

    /// <summary>The environment variable that turns <see cref="ConfigureAllocator"/> off: <c>SOFTPROMPT_MALLOC=default</c>.</summary>
    public const string AllocatorEnvVar = "SOFTPROMPT_MALLOC";

    /// <summary>
    /// Returns what it did, for logs and benchmarks: "keep", or why it did nothing.
    /// Linux/glibc only, process-wide, once at start-up (the CLI calls it first thing): tells glibc's malloc to
    /// keep freed memory for reuse instead of handing it back to the kernel. By default glibc serves every block
    /// above its mmap threshold (at most 32 MB) with a fresh mmap and unmaps it on free, and trims the heap top
    /// past 128 KB, so a training step that allocates the same activations, logits and gradients every step
    /// faults in fresh zeroed pages every step (measured here: ~0.6 GB/s for fresh pages against ~25 GB/s for
    /// reused memory; the LM head and its backward ran 2x faster with this setting, see docs/benchmarks.md).
    /// Settings: M_MMAP_MAX = 0 (no mmap'd blocks; large tensors come from the heap), M_TRIM_THRESHOLD = 2 GiB (the most mallopt takes)
    /// and M_TOP_PAD = 256 MiB (the heap is not shrunk between steps). Cost: the resident set stays at its
    /// high-water mark (which peak-RSS figures show anyway). Opt out with <c>SOFTPROMPT_MALLOC=default</c>; an
    /// explicit <c>MALLOC_MMAP_MAX_</c>/<c>MALLOC_TRIM_THRESHOLD_</c> in the environment also wins (we leave
    /// glibc's own tunables alone). No effect on CUDA memory, which libtorch's caching allocator already reuses.
    /// </summary>
    public static string ConfigureAllocator()
    {
        if (!OperatingSystem.IsLinux()) return "default (not Linux)";
        var env = Environment.GetEnvironmentVariable(AllocatorEnvVar);
        if (env is not null && env.Trim().ToLowerInvariant() is "default" or "0" or "off" or "false")
        return $"default ({AllocatorEnvVar}={env})";
        if (Environment.GetEnvironmentVariable("MALLOC_MMAP_MAX_") is not null || Environment.GetEnvironmentVariable("MALLOC_TRIM_THRESHOLD_") is not null
            || Environment.GetEnvironmentVariable("GLIBC_TUNABLES") is not null)
        return "default (glibc MALLOC_* / GLIBC_TUNABLES set in the environment)";
        try
        {
            // mallopt returns 1 on success. Not glibc (e.g. musl): the symbol is missing and nothing changes.
            bool ok = Glibc.mallopt(Glibc.M_MMAP_MAX, 0) == 1
                      & Glibc.mallopt(Glibc.M_TRIM_THRESHOLD, int.MaxValue) == 1
                      & Glibc.mallopt(Glibc.M_TOP_PAD, 256 << 20) == 1;
            return ok ? "keep (glibc mallopt: no mmap, no trim)" : "default (mallopt refused)";
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException)
        {
            return "default (no glibc mallopt)";
        }
    }

    static class Glibc
    {
        public const int M_TRIM_THRESHOLD = -1, M_TOP_PAD = -2, M_MMAP_MAX = -4;
        [DllImport("libc", CallingConvention = CallingConvention.Cdecl)]
        public static extern int mallopt(int param, int value);
        [DllImport("libc", CallingConvention = CallingConvention.Cdecl)]
        public static extern int setenv([MarshalAs(UnmanagedType.LPUTF8Str)] string name, [MarshalAs(UnmanagedType.LPUTF8Str)] string value, int overwrite);
    }
}
