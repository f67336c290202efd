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

    /// <summary>Sets libtorch's intra-op threads (0 = leave the default, the core count).</summary>
    public static void SetThreads(int threads)
    {
        if (threads > 0) torch.set_num_threads(threads);
    }

    /// <summary>The environment variable that turns <see cref="ConfigureAllocator"/> off: <c>SOFTPROMPT_MALLOC=default</c>.</summary>
    public const string AllocatorEnvVar = "SOFTPROMPT_MALLOC";

    /// <summary>What <see cref="ConfigureAllocator"/> did, for logs: "keep" or why it did nothing.</summary>
    public static string AllocatorMode { get; private set; } = "default (not configured)";

    /// <summary>
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
    public static void ConfigureAllocator()
    {
        if (!OperatingSystem.IsLinux()) { AllocatorMode = "default (not Linux)"; return; }
        var env = Environment.GetEnvironmentVariable(AllocatorEnvVar);
        if (env is not null && env.Trim().ToLowerInvariant() is "default" or "0" or "off" or "false")
        { AllocatorMode = $"default ({AllocatorEnvVar}={env})"; return; }
        if (Environment.GetEnvironmentVariable("MALLOC_MMAP_MAX_") is not null || Environment.GetEnvironmentVariable("MALLOC_TRIM_THRESHOLD_") is not null
            || Environment.GetEnvironmentVariable("GLIBC_TUNABLES") is not null)
        { AllocatorMode = "default (glibc MALLOC_* / GLIBC_TUNABLES set in the environment)"; return; }
        try
        {
            // mallopt returns 1 on success. Not glibc (e.g. musl): the symbol is missing and nothing changes.
            bool ok = Glibc.mallopt(Glibc.M_MMAP_MAX, 0) == 1
                      & Glibc.mallopt(Glibc.M_TRIM_THRESHOLD, int.MaxValue) == 1
                      & Glibc.mallopt(Glibc.M_TOP_PAD, 256 << 20) == 1;
            AllocatorMode = ok ? "keep (glibc mallopt: no mmap, no trim)" : "default (mallopt refused)";
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException)
        {
            AllocatorMode = "default (no glibc mallopt)";
        }
    }

    static class Glibc
    {
        public const int M_TRIM_THRESHOLD = -1, M_TOP_PAD = -2, M_MMAP_MAX = -4;
        [DllImport("libc", CallingConvention = CallingConvention.Cdecl)]
        public static extern int mallopt(int param, int value);
    }
}
