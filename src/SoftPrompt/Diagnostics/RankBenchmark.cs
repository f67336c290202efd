using System.Diagnostics;
using System.Text.Json.Nodes;
using SoftPrompt.Models;
using SoftPrompt.Scoring;
using TorchSharp;

namespace SoftPrompt.Diagnostics;

/// <summary>
/// Measures the speed-up of shared-prefix rank classification (<see cref="RankClassifier.Score"/>: the input is run
/// once, the labels are scored over its KV cache) over one full forward per label
/// (<see cref="RankClassifier.ScoreNaive"/>), on a GPT-2-small-shaped model with random weights built in memory
/// (768 wide, 12 layers, 12 heads, 50257 tokens). Checks first that both give the same scores.
/// </summary>
public static class RankBenchmark
{
    public sealed record Row(int Labels, int InputTokens, int Examples, double SharedMsPerExample, double NaiveMsPerExample, double MaxAbsDiff)
    {
        public double SpeedUp => NaiveMsPerExample / SharedMsPerExample;
    }

    /// <summary>GPT-2 small's shape (optionally fewer layers for a quicker run).</summary>
    public static ModelConfig Gpt2Small(int layers = 12) => ModelFactory.ShapeConfig("gpt2-small") with { NumLayers = layers };

    public static IReadOnlyList<Row> Run(CausalLM model, int[] labelCounts, int inputTokens = 100, int examples = 10, int seed = 1, Action<string>? log = null)
    {
        var rng = new Random(seed);
        int vocab = model.Config.VocabSize;
        var rows = new List<Row>();
        foreach (int k in labelCounts)
        {
            var labels = Enumerable.Range(0, k).Select(_ => Enumerable.Range(0, rng.Next(1, 4)).Select(_ => rng.Next(vocab)).ToArray()).ToArray();
            var inputs = Enumerable.Range(0, examples).Select(_ => Enumerable.Range(0, inputTokens).Select(_ => rng.Next(vocab)).ToArray()).ToArray();
            // Warm-up (first-call allocations), and the equality check on every example.
            RankClassifier.Score(model, null, inputs[0], labels); RankClassifier.ScoreNaive(model, null, inputs[0], labels);
            double diff = 0;
            var shared = new Stopwatch(); var naive = new Stopwatch();
            foreach (var x in inputs)
            {
                shared.Start(); var a = RankClassifier.Score(model, null, x, labels); shared.Stop();
                naive.Start(); var b = RankClassifier.ScoreNaive(model, null, x, labels); naive.Stop();
                for (int l = 0; l < k; l++) diff = Math.Max(diff, Math.Abs(a.LogProbs[l] - b.LogProbs[l]));
            }
            var row = new Row(k, inputTokens, examples, shared.Elapsed.TotalMilliseconds / examples, naive.Elapsed.TotalMilliseconds / examples, diff);
            log?.Invoke($"{k} labels ({string.Join(", ", labels.Select(l => l.Length))} tokens): shared {row.SharedMsPerExample:F1} ms, naive {row.NaiveMsPerExample:F1} ms per example, x{row.SpeedUp:F2}, max |diff| {diff:E1}");
            if (diff > 1e-4) throw new SoftPromptException($"shared-prefix and per-label scores differ by {diff:E2} (> 1e-4) with {k} labels.");
            rows.Add(row);
        }
        return rows;
    }
}
