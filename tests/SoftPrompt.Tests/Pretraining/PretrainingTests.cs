using SoftPrompt.Models;
using SoftPrompt.Pretraining;
using TorchSharp;
using static TorchSharp.torch;

namespace SoftPrompt.Tests.Pretraining;

public class PretrainingTests
{
    static readonly LlamaShape Tiny = new() { VocabSize = 300, Hidden = 32, Layers = 2, Heads = 2, KvHeads = 2, Intermediate = 64, MaxPositions = 64 };

    static ushort[] Data(int n, int seed = 1)
    {
        var r = new Random(seed); var d = new ushort[n];
        // a learnable pattern: runs of increasing ids
        for (int i = 0; i < n; i++) d[i] = (ushort)((i % 17 == 0 ? r.Next(300) : d[i - 1] + 1) % 300);
        return d;
    }

    static PretrainOptions Options(string compute = "fp32") => new()
    {
        Shape = Tiny, SeqLen = 16, MicroBatch = 4, Accum = 1, TotalTokens = 64 * 40, WarmupTokens = 64 * 2, LrMax = 1e-2, LrMin = 1e-3, Compute = compute,
    };

    [Fact]
    public void InitFollowsHuggingFaceAndConfigLoads()
    {
        var w = Tiny.InitWeights(7);
        try
        {
            Assert.Equal(Tiny.WeightShapes().Count(), w.Count);
            Assert.Equal(Tiny.Parameters, w.Values.Sum(t => t.NumberOfElements));
            Assert.True(w["model.norm.weight"].eq(1).all().item<bool>());
            var std = w["model.layers.0.mlp.up_proj.weight"].std().item<float>();
            Assert.InRange(std, 0.018, 0.022);
            Assert.All(w.Values, t => Assert.True(t.requires_grad));
            var cfg = Tiny.ToModelConfig();
            Assert.Equal(ArchFamily.Llama, cfg.Family);
            Assert.True(cfg.TieWordEmbeddings);
        }
        finally { foreach (var t in w.Values) t.Dispose(); }
    }

    [Fact]
    public void ForTrainingGivesGradientsAndLoadedModelsStayFrozen()
    {
        using var frozen = ModelLoader.Load(Fixtures.HfReference("llama"));
        Assert.All(frozen.Weights.Values, t => Assert.False(t.requires_grad));

        using var t = new Pretrainer(Options(), Data(2000), Data(300, 2));
        using var scope = torch.NewDisposeScope();
        var ids = torch.randint(0, 300, new long[] { 2, 17 });
        t.Loss(ids).backward();
        Assert.All(t.Weights, kv => Assert.True(kv.Value.grad is not null && kv.Value.grad.abs().sum().item<float>() > 0, kv.Key));
    }

    [Fact]
    public void Bf16ComputeMatchesFp32AndTrainingLowersTheLoss()
    {
        using var a = new Pretrainer(Options("fp32"), Data(4000), Data(400, 2));
        using var b = new Pretrainer(Options("bf16"), Data(4000), Data(400, 2));
        double la = a.Evaluate(), lb = b.Evaluate();
        Assert.InRange(Math.Abs(la - lb), 0, 0.02 * la);          // same seed, same weights; bf16 matmuls
        Assert.InRange(la, Math.Log(300) - 0.3, Math.Log(300) + 0.3); // random init predicts ~uniformly
        for (int i = 0; i < 30; i++) b.TrainStep();
        Assert.True(b.Evaluate() < lb - 0.5, "30 steps on a learnable pattern lower the held-out loss");
    }

    [Fact]
    public void CheckpointResumesExactly()
    {
        using var dir = new Fixtures.TempDir();
        using var a = new Pretrainer(Options(), Data(4000), Data(400, 2));
        for (int i = 0; i < 3; i++) a.TrainStep();
        a.SaveCheckpoint(dir.Path);
        var next = a.TrainStep().Loss;

        using var b = new Pretrainer(Options(), Data(4000), Data(400, 2));
        Assert.True(b.TryLoadCheckpoint(dir.Path));
        Assert.Equal(3, b.State.Step);
        Assert.Equal(a.State.Epoch, b.State.Epoch);
        var resumed = b.TrainStep().Loss;
        Assert.Equal(next, resumed, 5);                                // same weights, moments and next batch
        Assert.InRange(Fixtures.MaxAbsDiff(a.Weights["model.embed_tokens.weight"], b.Weights["model.embed_tokens.weight"]), 0, 1e-6);
    }

    [Fact]
    public void ScheduleWarmsUpThenDecaysToTheMinimum()
    {
        var o = Options();
        Assert.True(o.LearningRate(0) < o.LearningRate(1));
        Assert.Equal(o.LrMax, o.LearningRate(o.WarmupSteps), 9);
        Assert.Equal(o.LrMin, o.LearningRate(o.TotalSteps), 9);
        Assert.Equal(o.LrMin, o.LearningRate(o.TotalSteps + 100), 9);
    }

    [Fact]
    public void SeenWordsKeepsTheWordsTheRunningTextUsesOften()
    {
        var docs = new List<CorpusDoc>
        {
            new("austen", 0, "Good, good; GOOD! A well-known bad day. Bad.", false),
            new("austen", 37, "dreadful dreadful dreadful", true),                 // validation: not counted
            new("task:word_sentiment_bing_liu", 0, "dreadful\ndreadful\ndreadful", false), // a word list: not counted
            new("task:fine_foods", 0, "dreadful taste, well-known brand", false),
        };
        var counts = TaskSplits.CorpusWordCounts(docs);
        Assert.Equal(3, counts["good"]);
        Assert.Equal(2, counts["bad"]);
        Assert.Equal(2, counts["well-known"]);
        Assert.Equal(1, counts["dreadful"]);

        using var dir = new Fixtures.TempDir();
        File.WriteAllLines(dir["word_sentiment_bing_liu.train.tsv"], ["good\tpositive", "dreadful\tnegative", "Bad\tnegative"]);
        File.WriteAllLines(dir["word_sentiment_bing_liu.test.tsv"], ["well-known\tpositive", "zany\tpositive"]);
        var (train, test) = TaskSplits.WriteSeenWords(dir.Path, "word_sentiment_bing_liu", "seen", counts, minCount: 2);
        Assert.Equal((2, 1), (train, test));
        Assert.Equal(["good\tpositive", "Bad\tnegative"], File.ReadAllLines(dir["seen.train.tsv"]));
        Assert.Equal(["well-known\tpositive"], File.ReadAllLines(dir["seen.test.tsv"]));
        Assert.Contains("lower --min-count", Assert.Throws<SoftPromptException>(() => TaskSplits.WriteSeenWords(dir.Path, "word_sentiment_bing_liu", "none", counts, 100)).Message);
        Assert.Contains("unknown task", Assert.Throws<SoftPromptException>(() => TaskSplits.WriteSeenWords(dir.Path, "nope", "x", counts, 2)).Message);
    }

    [Fact]
    public void TaskSplitIsDeterministicAndKeepsGroupsTogether()
    {
        Assert.Equal(TaskSplits.IsTest("Great coffee!", 250), TaskSplits.IsTest("  great   COFFEE! ", 250));
        int test = Enumerable.Range(0, 4000).Count(i => TaskSplits.IsTest("word" + i, 200));
        Assert.InRange(test, 700, 900);
    }
}

public class ModelExportTests
{
    [Fact]
    public void ExportWritesAHuggingFaceFolderThatLoadsAndScores()
    {
        using var dir = new Fixtures.TempDir();
        var text = string.Join("\n", Enumerable.Range(0, 400).Select(i => $"The cat {i % 7} sat on the mat number {i % 13}, and the dog barked."));
        var trainer = new SoftPrompt.Tokenization.BpeTrainer(new() { VocabSize = 300 });
        var tokDir = dir["tok"];
        trainer.Save(trainer.Train(new[] { text }), tokDir);
        var tok = SoftPrompt.Tokenization.HfTokenizer.Load(tokDir);
        var docs = text.Split('\n').Select((t, i) => new CorpusDoc("x", i, t, i % 10 == 3)).ToList();
        var dataDir = dir["data"];
        Directory.CreateDirectory(dataDir);
        PretrainCorpus.WriteIds(Path.Combine(dataDir, "train.bin"), PretrainCorpus.Tokenize(tokDir, docs.Where(d => !d.Validation).ToList(), 0));
        PretrainCorpus.WriteIds(Path.Combine(dataDir, "val.bin"), PretrainCorpus.Tokenize(tokDir, docs.Where(d => d.Validation).ToList(), 0));

        var o = new PretrainOptions
        {
            Shape = new LlamaShape { VocabSize = tok.VocabSize, Hidden = 32, Layers = 1, Heads = 2, KvHeads = 2, Intermediate = 64, MaxPositions = 64 },
            SeqLen = 32, MicroBatch = 4, Accum = 1, TotalTokens = 128 * 20, WarmupTokens = 256, LrMax = 1e-2, LrMin = 1e-3, EvalEverySteps = 10,
        };
        var runDir = dir["run"];
        Directory.CreateDirectory(runDir);
        File.WriteAllText(Path.Combine(runDir, Pretrainer.OptionsFile), System.Text.Json.JsonSerializer.Serialize(o, PretrainOptions.Json));
        using (var t = new Pretrainer(o, PretrainCorpus.ReadIds(Path.Combine(dataDir, "train.bin")), PretrainCorpus.ReadIds(Path.Combine(dataDir, "val.bin"))))
            t.Run(runDir, 0, CancellationToken.None, _ => { });

        var outDir = dir["model"];
        var r = ModelExport.Export(runDir, dataDir, tokDir, outDir, dir["slice.txt"], dir["curve.png"], null);
        Assert.Equal(20, r.Step);
        Assert.True(r.ValPerplexity < 100, $"val perplexity {r.ValPerplexity}");
        foreach (var f in new[] { "config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json", "README.md", "eval_results.json" })
            Assert.True(File.Exists(Path.Combine(outDir, f)), f);
        Assert.True(File.Exists(dir["curve.png"]));
        var header = SoftPrompt.IO.SafeTensors.ReadHeader(Path.Combine(outDir, "model.safetensors"));
        Assert.Equal("pt", header.Metadata["format"]);
        Assert.DoesNotContain("lm_head.weight", header.Tensors.Keys);

        using var lm = SoftPrompt.Inference.LanguageModel.Load(outDir, "cpu");
        var ids = lm.Encode("The cat 3 sat on the mat");
        var s = lm.Score(ids);
        Assert.True(s.Perplexity < 100);
        var (ppl, _) = Perplexity.OfText(lm.Model, lm.Tokenizer!, File.ReadAllText(dir["slice.txt"]), o.SeqLen);
        Assert.Equal(r.SlicePerplexity, ppl, 6);

        // A later session without the checkpoint continues from the export: same weights, step, tokens and data
        // position, fresh optimizer moments.
        var o2 = o with { TotalTokens = 128 * 30 };
        var (ckptWeights, _, ckptState) = Pretrainer.ReadCheckpointWeights(runDir);
        using (var t2 = new Pretrainer(o2, PretrainCorpus.ReadIds(Path.Combine(dataDir, "train.bin")), PretrainCorpus.ReadIds(Path.Combine(dataDir, "val.bin"))))
        {
            t2.InitFrom(outDir, rewarmSteps: 3);
            Assert.Equal(ckptState.Step, t2.State.Step);
            Assert.Equal(ckptState.TokensSeen, t2.State.TokensSeen);
            Assert.Equal(ckptState.Epoch, t2.State.Epoch);
            Assert.Equal(ckptState.Cursor, t2.State.Cursor);
            foreach (var (k, w) in t2.Weights) Assert.True(w.equal(ckptWeights[k]).all().item<bool>(), k);
            var (loss, _, lr) = t2.TrainStep();
            Assert.True(double.IsFinite(loss));
            Assert.InRange(lr, 0, o2.LearningRate(20) / 3 + 1e-12); // re-warm-up: a third of the schedule's rate on the first step
        }
    }
}
