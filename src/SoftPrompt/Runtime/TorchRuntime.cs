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
    /// Sets libtorch's intra-op threads and says on stderr (or to <paramref name="warn"/>) when the choice is not what
    /// was asked or will be slow. libtorch's OpenMP threads busy-wait for each other, so more threads than free cores
    /// (asked for, or because other jobs hold cores) makes every step several times slower (measured ~10x with two jobs
    /// on 2 cores). Rules (<see cref="ChooseThreads"/>): more than the cores is clamped to the cores; 0 (the default)
    /// takes the cores the 1-minute load average leaves free (at least 1); an explicit count is kept (results do not
    /// depend on the machine's load) but a warning names the oversubscription. Returns the count set.
    /// Messages go to <paramref name="log"/>; without one, warnings go to stderr and the automatic choice's note is
    /// not shown (short commands such as score and generate stay quiet).
    /// </summary>
    public static int SetThreads(int threads, Action<string>? log = null)
    {
        if (threads < 0) throw new SoftPromptException($"--threads {threads}: expected 0 (automatic) or a positive number of threads.");
        var (n, message) = ChooseThreads(threads, Environment.ProcessorCount, LoadAverage());
        if (message is not null && (log is not null || message.StartsWith("warning:"))) (log ?? (m => Console.Error.WriteLine(m)))(message);
        torch.set_num_threads(n);
        return n;
    }

    /// <summary>The 1-minute load average from /proc/loadavg (Linux), null elsewhere.</summary>
    public static double? LoadAverage()
    {
        try
        {
            if (!File.Exists("/proc/loadavg")) return null;
            var first = File.ReadAllText("/proc/loadavg").Split(' ')[0];
            return double.TryParse(first, System.Globalization.NumberStyles.Float, System.Globalization.CultureInfo.InvariantCulture, out var l) ? l : null;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { return null; }
    }

    /// <summary>The thread count for a request, the core count and the load average (null = unknown), and what to say
    /// about it (null = nothing). Pure, for tests.</summary>
    public static (int Threads, string? Message) ChooseThreads(int requested, int cores, double? load)
    {
        cores = Math.Max(1, cores);
        // The load average counts runnable threads; this process has not started its work yet, so all of it is others'.
        int busy = load is double l && double.IsFinite(l) && l > 0 ? (int)Math.Floor(l + 0.25) : 0;
        int free = Math.Max(1, cores - busy);
        string Load() => load is double l ? string.Create(System.Globalization.CultureInfo.InvariantCulture, $"load average {l:F2}") : "load unknown";
        if (requested > cores)
            return (Math.Min(cores, requested), $"warning: --threads {requested} is more than the {cores} CPU core{(cores == 1 ? "" : "s")}; using {cores} " +
                $"(more threads than cores only makes libtorch's threads wait for each other).{(busy > 0 ? $" Other jobs are running ({Load()}): consider --threads {free}." : "")}");
        if (requested == 0)
            return free < cores
                ? (free, $"note: {Load()} on {cores} cores: other jobs are using CPU, so using {free} libtorch thread{(free == 1 ? "" : "s")} instead of {cores} to avoid oversubscription (--threads N to choose).")
                : (cores, null);
        if (requested > free)
            return (requested, $"warning: {Load()} on {cores} cores and --threads {requested}: other jobs are using CPU, so the threads will contend and each step may run several times slower; consider --threads {free}.");
        return (requested, null);
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
    }
}
