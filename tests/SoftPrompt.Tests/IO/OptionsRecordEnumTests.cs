using SoftPrompt.IO;
using SoftPrompt.Optimization;
using SoftPrompt.Pretraining;
using SoftPrompt.Scoring;
using SoftPrompt.Search;
using SoftPrompt.Training;
using SoftPrompt.Tuning;

namespace SoftPrompt.Tests.IO;

/// <summary>Method, task and strategy are enums in the options records, spelled in configs and on the command line as
/// they always were (snake_case words), with errors that list the choices.</summary>
public class OptionsRecordEnumTests
{
    [Theory]
    [InlineData(TuningMethod.Prompt, "prompt")]
    [InlineData(TuningMethod.Prefix, "prefix")]
    public void EnumsAreSpelledInSnakeCase(TuningMethod m, string text)
    {
        Assert.Equal(text, OptionsRecord.EnumName(m));
        Assert.Equal(m, OptionsRecord.ParseEnum<TuningMethod>(text, "--method"));
        Assert.Equal(new[] { "auto", "classification", "generation" }, OptionsRecord.EnumNames(typeof(TaskKind)));
        Assert.Equal(new[] { "gradient", "opro" }, OptionsRecord.EnumNames(typeof(SearchStrategy)));
    }

    [Fact]
    public void ConfigFilesReadAndWriteTheWords()
    {
        using var tmp = new Fixtures.TempDir();
        var path = Path.Combine(tmp.Path, "c.json");
        File.WriteAllText(path, "{\n  \"method\": \"prefix\"\n}");
        var o = OptionsRecord.FromFile(path, new TrainOptions());
        Assert.Equal(TuningMethod.Prefix, o.Method);
        Assert.Contains("\"method\": \"prefix\"", OptionsRecord.ToJson(o));
        Assert.DoesNotContain("check_finite", OptionsRecord.ToJson(o)); // a run-time setting, not a config key

        File.WriteAllText(path, "{\n  \"method\": \"lora\"\n}");
        var e = Assert.Throws<SoftPromptException>(() => OptionsRecord.FromFile(path, new TrainOptions()));
        Assert.Contains($"{path}:2", e.Message);
        Assert.Contains("expected prompt or prefix", e.Message);
        File.WriteAllText(path, "{ \"method\": 1 }");
        Assert.Contains("prompt or prefix", Assert.Throws<SoftPromptException>(() => OptionsRecord.FromFile(path, new TrainOptions())).Message);
    }

    [Fact]
    public void PretrainingUsesTheOneLearningRateSchedule()
    {
        var o = new PretrainOptions();
        foreach (long step in new[] { 0L, 1, o.WarmupSteps / 2, o.WarmupSteps, o.TotalSteps / 2, o.TotalSteps, o.TotalSteps + 5 })
            Assert.Equal(LearningRateSchedule.At("cosine", step, o.TotalSteps, o.WarmupSteps, o.LrMax, o.LrMin / o.LrMax), o.LearningRate(step), 12);
    }
}
