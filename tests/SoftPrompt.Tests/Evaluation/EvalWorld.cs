using System.Text.Json.Nodes;
using System.Text;
using SoftPrompt.Tokenization;
using SoftPrompt.Training;

namespace SoftPrompt.Tests.Evaluation;

/// <summary>
/// A tiny world for evaluation tests, built once per test class: the llama reference fixture (vocab 1000) with a
/// byte-level BPE tokenizer (300 tokens) trained here on the task's text, a learnable classification task
/// (a colour word → " warm" / " cold"), a generation task, and a real short training run of a soft prompt on it.
/// </summary>
public sealed class EvalWorld : IDisposable
{
    public static readonly string[] Warm = { "red", "orange", "yellow", "pink", "amber", "coral" };
    public static readonly string[] Cold = { "blue", "green", "cyan", "teal", "navy", "mint" };
    static readonly string[] Things = { "item", "thing", "object", "box", "cup", "hat" };

    public string Root { get; } = Path.Combine(Path.GetTempPath(), "softprompt-eval-" + Guid.NewGuid().ToString("N")[..8]);
    public string ModelDir => Path.Combine(Root, "model");
    public string TrainFile => Path.Combine(Root, "train.jsonl");
    public string TestFile => Path.Combine(Root, "test.jsonl");
    public string GenFile => Path.Combine(Root, "gen.jsonl");
    public string RunDir => Path.Combine(Root, "run");
    public string AdapterDir => Path.Combine(RunDir, "adapter");

    public EvalWorld()
    {
        Directory.CreateDirectory(Root);
        ModelFolders.CopyFixture("llama", ModelDir);
        // The fixture's near-random weights (std 0.02) give every token ~1/1000 whatever the prompt; sharper
        // attention and a larger head give a prompt the leverage a pretrained model has (same shapes, same vocab).
        ModelFolders.EditWeights(ModelDir, w =>
        {
            foreach (var k in w.Keys.ToList())
            {
                double f = k == "lm_head.weight" ? Scale.Head : k.Contains("q_proj") || k.Contains("k_proj") ? Scale.Qk : 1;
                if (f != 1) { var old = w[k]; w[k] = old * f; old.Dispose(); }
            }
        });
        var rng = new Random(11);
        string Line(int i)
        {
            bool warm = i % 2 == 0;
            var colour = (warm ? Warm : Cold)[rng.Next(6)];
            return new JsonObject { ["input"] = $"{Things[rng.Next(6)]} {Things[rng.Next(6)]}: {colour}", ["output"] = warm ? "warm" : "cold" }.ToJsonString();
        }
        File.WriteAllLines(TrainFile, Enumerable.Range(0, 120).Select(Line));
        File.WriteAllLines(TestFile, Enumerable.Range(0, 24).Select(Line));
        // Generation: several rows per input (any listed answer is right), one row with "|"-separated answers.
        File.WriteAllLines(GenFile, new[]
        {
            new JsonObject { ["input"] = "red is", ["output"] = "warm" }.ToJsonString(),
            new JsonObject { ["input"] = "red is", ["output"] = "hot" }.ToJsonString(),
            new JsonObject { ["input"] = "blue is", ["output"] = "cold|cool" }.ToJsonString(),
            new JsonObject { ["input"] = "mint is", ["output"] = "cold" }.ToJsonString(),
        });

        var corpus = new StringBuilder();
        foreach (var l in File.ReadLines(TrainFile)) corpus.AppendLine(l);
        for (int i = 0; i < 200; i++) corpus.AppendLine("Say whether the colour is warm or cold. warm cold hot cool is the a an");
        var corpusFile = Path.Combine(Root, "corpus.txt");
        File.WriteAllText(corpusFile, corpus.ToString());
        var bpe = new BpeTrainer(new BpeTrainer.Options { VocabSize = 300 });
        bpe.Save(bpe.TrainFiles(new[] { corpusFile }), ModelDir);

        // A real (short) prompt-tuning run on the learnable task; its validation uses rank classification.
        TrainingJob.Run(new TrainOptions
        {
            Model = ModelDir, Train = TrainFile, Output = RunDir, ValidationSplit = 0.2, Method = SoftPrompt.Tuning.TuningMethod.Prompt, VirtualTokens = Scale.Virtual,
            Lr = Scale.Lr, Steps = Scale.Steps, BatchSize = 8, EvalEvery = 20, LogEvery = 10, Schedule = "constant", Seed = 5,
        });
    }

    /// <summary>Weight scales of the edited fixture and the training run (found by trying a few; on this world a
    /// prompt reaches 0.875 test accuracy against zero-shot's 0.75).</summary>
    static readonly (double Head, double Qk, double Lr, int Steps, int Virtual) Scale = (25, 4, 0.3, 100, 4);

    public HfTokenizer Tokenizer => HfTokenizer.Load(ModelDir);

    public void Dispose() { try { Directory.Delete(Root, true); } catch { } }
}
