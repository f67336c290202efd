using SoftPrompt.IO;
using static TorchSharp.torch;

namespace SoftPrompt.Tests;

public static class Fixtures
{
    public static string Root => Path.Combine(AppContext.BaseDirectory, "fixtures");
    public static string HfReference(string model) => Path.Combine(Root, MoreReferenceModels.Contains(model) ? "hf-reference-more" : "hf-reference", model);
    public static readonly string[] ReferenceModels = { "gpt2", "llama", "qwen2", "llama3rope", "mistral" };
    /// <summary>The decoder-only families of fixtures/hf-reference-more (same cases; Gemma 2 has no prefix golden).</summary>
    public static readonly string[] MoreReferenceModels = { "gemma", "gemma2", "phi3", "gpt_neox" };
    public static Dictionary<string, Tensor> Golden(string model) => SafeTensors.Load(Path.Combine(HfReference(model), "golden.safetensors"));

    public static double MaxAbsDiff(Tensor a, Tensor b) => (a.to(ScalarType.Float64) - b.to(ScalarType.Float64)).abs().max().item<double>();

    static readonly object TinyLock = new();
    static readonly Dictionary<string, string> TinyDirs = new();

    /// <summary>Words of a toy sentiment task and filler text for the tiny tokenizer.</summary>
    public static readonly string[] PositiveWords = { "good", "great", "happy", "lovely", "nice", "fine", "bright", "sweet", "kind", "warm", "fresh", "calm" };
    public static readonly string[] NegativeWords = { "bad", "awful", "sad", "ugly", "nasty", "poor", "dark", "sour", "cruel", "cold", "stale", "angry" };

    /// <summary>
    /// A copy of a reference model (vocab 1000) with a byte-level BPE tokenizer of 400 tokens trained on a small
    /// text, so text-level commands (train, eval, score --text) can run on a model of a few hundred thousand parameters.
    /// Built once per test run.
    /// </summary>
    public static string TinyModelWithTokenizer(string model = "llama")
    {
        lock (TinyLock)
        {
            if (TinyDirs.TryGetValue(model, out var d) && Directory.Exists(d)) return d;
            var dir = System.IO.Path.Combine(System.IO.Path.GetTempPath(), $"softprompt-tiny-{model}-{Environment.ProcessId}");
            if (Directory.Exists(dir)) Directory.Delete(dir, true);
            Directory.CreateDirectory(dir);
            foreach (var f in new[] { "config.json", "model.safetensors" }) File.Copy(System.IO.Path.Combine(HfReference(model), f), System.IO.Path.Combine(dir, f));
            var rng = new Random(11);
            var sb = new System.Text.StringBuilder();
            var filler = new[] { "the", "word", "is", "a", "review", "sentiment", "positive", "negative", "this", "was", "very", "food" };
            for (int i = 0; i < 4000; i++)
            {
                var pool = rng.Next(3) switch { 0 => PositiveWords, 1 => NegativeWords, _ => filler };
                sb.Append(pool[rng.Next(pool.Length)]).Append(i % 13 == 12 ? ".\n" : " ");
            }
            var corpus = System.IO.Path.Combine(dir, "corpus.txt");
            File.WriteAllText(corpus, sb.ToString());
            var trainer = new SoftPrompt.Tokenization.BpeTrainer(new SoftPrompt.Tokenization.BpeTrainer.Options { VocabSize = 400 });
            trainer.Save(trainer.TrainFiles(new[] { corpus }), dir);
            File.Delete(corpus);
            TinyDirs[model] = dir;
            return dir;
        }
    }

    /// <summary>Writes a JSONL word-sentiment task (input word, output positive/negative).</summary>
    public static string WriteSentimentTask(string path, int count, int seed)
    {
        var rng = new Random(seed);
        var lines = Enumerable.Range(0, count).Select(_ =>
        {
            bool pos = rng.Next(2) == 0;
            var w = (pos ? PositiveWords : NegativeWords)[rng.Next(PositiveWords.Length)];
            return System.Text.Json.JsonSerializer.Serialize(new { input = w, output = pos ? "positive" : "negative" });
        });
        File.WriteAllLines(path, lines);
        return path;
    }

    /// <summary>A fresh temp directory, deleted at dispose.</summary>
    public sealed class TempDir : IDisposable
    {
        public string Path { get; } = System.IO.Path.Combine(System.IO.Path.GetTempPath(), "softprompt-test-" + Guid.NewGuid().ToString("N")[..10]);
        public TempDir() => Directory.CreateDirectory(Path);
        public string this[string name] => System.IO.Path.Combine(Path, name);
        public void Dispose() { try { Directory.Delete(Path, true); } catch { } }
    }
}
