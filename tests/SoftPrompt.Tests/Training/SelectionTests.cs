using System.Text.Json.Nodes;
using SoftPrompt.Data;
using SoftPrompt.Models;
using SoftPrompt.Training;
using SoftPrompt.Tuning;

namespace SoftPrompt.Tests.Training;

/// <summary>Which checkpoint becomes the adapter, and what the run says about it (issue 12 class 7 / issue 13 item 4).</summary>
public class SelectionTests
{
    static List<TokenizedExample> Task(int count, int seed) => TrainerTests.Task(count, seed);

    static TrainOptions Options(string dir, int steps) => new()
    {
        Method = SoftPrompt.Tuning.TuningMethod.Prompt, VirtualTokens = 4, Lr = 0.3, Steps = steps, BatchSize = 4, EvalEvery = 2, LogEvery = 2,
        Seed = 3, Schedule = "constant", Output = dir, Model = "unused", Train = "unused",
    };

    static List<JsonObject> EvalRows(string dir) => File.ReadAllLines(Path.Combine(dir, "metrics.jsonl"))
        .Select(l => JsonNode.Parse(l)!.AsObject()).Where(r => r["kind"]!.GetValue<string>() == "eval").ToList();

    [Fact]
    public void AccuracyTiesGoToTheLowerValidationLossAndTheSummarySaysWhichCheckpointWasExported()
    {
        using var tmp = new Fixtures.TempDir();
        using var model = ModelLoader.Load(Fixtures.HfReference("llama"));
        using var m = PromptTuning.Create(model, 4, PromptInit.SampleVocab, 5);
        // Every evaluation ties on "accuracy" (a tiny validation set does this); the loss keeps moving.
        var trainer = new Trainer(model, m, Task(16, 1), Task(4, 2), Options(tmp.Path, 12), 0, tmp.Path)
        {
            ExtraMetrics = _ => new Dictionary<string, double> { ["accuracy"] = 0.5 },
        };
        var r = trainer.Run();
        var rows = EvalRows(tmp.Path);
        var bestLoss = rows.OrderBy(x => x["eval_loss"]!.GetValue<double>()).First();
        int expected = bestLoss["step"]!.GetValue<int>();
        Assert.True(rows.Count >= 3);
        Assert.Equal(expected, r.AdapterStep);                          // not frozen at the first tie (step 2)
        Assert.Equal("accuracy", r.SelectedBy);
        Assert.Equal(bestLoss["eval_loss"]!.GetValue<double>(), r.BestMetrics!["eval_loss"], 9);
        Assert.Contains($"step {expected}", r.Summary());
        Assert.Contains("accuracy", r.Summary());
        // The exported adapter is that checkpoint: it records its step.
        var meta = SoftPrompt.IO.SafeTensors.ReadHeader(Path.Combine(tmp.Path, "adapter", Adapter.WeightsFile)).Metadata;
        Assert.Equal(expected.ToString(), meta["softprompt.step"]);
        var summary = JsonNode.Parse(File.ReadAllText(Path.Combine(tmp.Path, "summary.json")))!;
        Assert.Equal(expected, summary["adapter_step"]!.GetValue<int>());
        Assert.Equal("accuracy", summary["selected_by"]!.GetValue<string>());
    }

    [Fact]
    public void AHigherAccuracyStillBeatsALowerLoss()
    {
        using var tmp = new Fixtures.TempDir();
        using var model = ModelLoader.Load(Fixtures.HfReference("llama"));
        using var m = PromptTuning.Create(model, 4, PromptInit.SampleVocab, 5);
        int calls = 0;
        // Accuracy peaks at the second evaluation (step 4) and falls after, whatever the loss does.
        var trainer = new Trainer(model, m, Task(16, 1), Task(4, 2), Options(tmp.Path, 10), 0, tmp.Path)
        {
            ExtraMetrics = _ => new Dictionary<string, double> { ["accuracy"] = ++calls == 2 ? 0.75 : 0.25 },
        };
        var r = trainer.Run();
        Assert.Equal(4, r.AdapterStep);
        Assert.Equal(0.75, r.BestMetrics!["accuracy"]);
    }

    [Fact]
    public void TempFilesLeftInBestByAKilledWriterAreNotExported()
    {
        using var tmp = new Fixtures.TempDir();
        using var model = ModelLoader.Load(Fixtures.HfReference("llama"));
        using var m = PromptTuning.Create(model, 4, PromptInit.SampleVocab, 5);
        var best = Path.Combine(tmp.Path, "best");
        Directory.CreateDirectory(best);
        // What AtomicFile leaves when the process is killed between writing its temp file and renaming it.
        File.WriteAllText(Path.Combine(best, $".{Adapter.WeightsFile}.12345.0123456789abcdef.tmp"), "partial");
        new Trainer(model, m, Task(16, 1), Task(4, 2), Options(tmp.Path, 4), 0, tmp.Path).Run();
        var exported = Directory.GetFiles(Path.Combine(tmp.Path, "adapter")).Select(Path.GetFileName).OrderBy(f => f).ToArray();
        Assert.Equal(new[] { Adapter.ConfigFile, Adapter.WeightsFile }, exported);
    }

    [Fact]
    public void AFewValidationExamplesGetAWarning()
    {
        using var tmp = new Fixtures.TempDir();
        var model = Fixtures.TinyModelWithTokenizer();
        var train = Fixtures.WriteSentimentTask(tmp["t.jsonl"], 30, 1);
        var reporter = new Collect();
        TrainingJob.Run(new TrainOptions { Model = model, Train = train, Output = tmp["run"], Steps = 1, BatchSize = 4, VirtualTokens = 2, ValidationSplit = 0.25, Threads = 1 }, reporter);
        Assert.Contains(reporter.Lines, l => l.StartsWith("warning: only 8 validation examples"));
    }

    sealed class Collect : ITrainingReporter
    {
        public List<string> Lines { get; } = new();
        public void Step(int step, int totalSteps, double loss, double lr, double tokensPerSecond, TimeSpan eta) { }
        public void Eval(int step, IReadOnlyDictionary<string, double> metrics, bool best) { }
        public void Message(string text) => Lines.Add(text);
    }
}
