using SoftPrompt.IO;
using static TorchSharp.torch;

namespace SoftPrompt.Tests;

public static class Fixtures
{
    public static string Root => Path.Combine(AppContext.BaseDirectory, "fixtures");
    public static string HfReference(string model) => Path.Combine(Root, "hf-reference", model);
    public static readonly string[] ReferenceModels = { "gpt2", "llama", "qwen2", "llama3rope", "mistral" };
    public static Dictionary<string, Tensor> Golden(string model) => SafeTensors.Load(Path.Combine(HfReference(model), "golden.safetensors"));

    public static double MaxAbsDiff(Tensor a, Tensor b) => (a.to(ScalarType.Float64) - b.to(ScalarType.Float64)).abs().max().item<double>();

    /// <summary>A fresh temp directory, deleted at dispose.</summary>
    public sealed class TempDir : IDisposable
    {
        public string Path { get; } = System.IO.Path.Combine(System.IO.Path.GetTempPath(), "softprompt-test-" + Guid.NewGuid().ToString("N")[..10]);
        public TempDir() => Directory.CreateDirectory(Path);
        public string this[string name] => System.IO.Path.Combine(Path, name);
        public void Dispose() { try { Directory.Delete(Path, true); } catch { } }
    }
}
