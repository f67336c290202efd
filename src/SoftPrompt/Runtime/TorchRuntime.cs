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
}
