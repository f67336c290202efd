using SoftPrompt.Data;
using SoftPrompt.IO;
using SoftPrompt.Models;
using SoftPrompt.Tuning;

namespace SoftPrompt.Tests.Tuning;

/// <summary>The one owner of the softprompt.* adapter metadata keys: what it writes it reads back, what it cannot read
/// is a clear error, and what a newer version wrote is kept.</summary>
public class AdapterMetadataTests
{
    static AdapterMetadata Trained() => new AdapterMetadata { Method = TuningMethod.Prefix, Step = 40 }.WithData(new DataOptions
    {
        PromptTemplate = "Word: {input}\nSentiment:", TargetTemplate = " {output}",
        LabelWords = new Dictionary<string, string> { ["positive"] = "good", ["negative"] = "bad" }, Columns = new[] { "input", "output" },
    });

    [Fact]
    public void WhatIsWrittenIsReadBack()
    {
        using var model = ModelLoader.Load(Fixtures.HfReference("llama"));
        var m = Trained().WithFingerprintOf(model);
        var back = AdapterMetadata.Parse(m.ToDictionary(), "x.safetensors");
        Assert.Equal(m.ToDictionary(), back.ToDictionary());
        Assert.Equal(TuningMethod.Prefix, back.Method);
        Assert.Equal(40, back.Step);
        Assert.Equal("bad", back.LabelWords!["negative"]);
        Assert.Equal(new[] { "input", "output" }, back.Columns);
        Assert.Equal(model.Config.HiddenSize, back.HiddenSize);
        back.CheckFingerprint(model, "x"); // its own model passes
        Assert.All(m.ToDictionary().Keys, k => Assert.StartsWith(AdapterMetadata.KeyPrefix, k));
    }

    [Fact]
    public void SavedAdaptersCarryTheMetadataAndPeftsFormatKey()
    {
        using var tmp = new Fixtures.TempDir();
        using var model = ModelLoader.Load(Fixtures.HfReference("llama"));
        using var m = PromptTuning.Create(model, 3, PromptInit.SampleVocab, 1);
        Adapter.Save(tmp.Path, m, model, Trained() with { Method = TuningMethod.Prompt });
        var raw = SafeTensors.ReadHeader(Path.Combine(tmp.Path, Adapter.WeightsFile)).Metadata;
        Assert.Equal("pt", raw["format"]);
        var read = AdapterMetadata.Read(tmp.Path);
        Assert.Equal(TuningMethod.Prompt, read.Method);
        Assert.Equal("Word: {input}\nSentiment:", read.DataSettingsAsConfig()["prompt_template"]);
        Assert.Equal(new[] { "negative=bad", "positive=good" }, (string[])read.DataSettingsAsConfig()["label_words"]);
        Assert.Empty(read.DataSettingMismatches(Trained().ToDataOptions(), tmp.Path));
        var other = new DataOptions { PromptTemplate = "Q: {input}\nA:" };
        Assert.Contains(read.DataSettingMismatches(other, tmp.Path), s => s.Contains("prompt template"));
    }

    [Theory]
    [InlineData("softprompt.step", "ten", "expected an integer")]
    [InlineData("softprompt.method", "lora", "expected prompt or prefix")]
    [InlineData("softprompt.embedding_std", "NaN", "expected a finite number")]
    [InlineData("softprompt.label_words", "positive", "LABEL=WORD")]
    public void MalformedValuesAreErrorsNamingFileAndKey(string key, string value, string expected)
    {
        var meta = new Dictionary<string, string> { ["format"] = "pt", [key] = value };
        var e = Assert.Throws<SoftPromptException>(() => AdapterMetadata.Parse(meta, "a/adapter_model.safetensors"));
        Assert.Contains("a/adapter_model.safetensors", e.Message);
        Assert.Contains(key, e.Message);
        Assert.Contains(expected, e.Message);
    }

    [Fact]
    public void PeftAdaptersRecordNothingAndKeysOfANewerVersionAreKept()
    {
        var peft = AdapterMetadata.Parse(new Dictionary<string, string> { ["format"] = "pt" }, "p");
        Assert.False(peft.IsTrained);
        Assert.Empty(peft.ToDictionary());
        Assert.Empty(peft.DataSettingsAsConfig());
        var newer = AdapterMetadata.Parse(new Dictionary<string, string> { ["softprompt.method"] = "prompt", ["softprompt.future_key"] = "x" }, "p");
        Assert.Equal("x", newer.Unknown["softprompt.future_key"]);
        Assert.Equal("x", newer.ToDictionary()["softprompt.future_key"]);
    }

    [Fact]
    public void AnotherModelsAdapterIsRefusedByItsFingerprint()
    {
        using var llama = ModelLoader.Load(Fixtures.HfReference("llama"));
        using var qwen = ModelLoader.Load(Fixtures.HfReference("qwen2"));
        var m = new AdapterMetadata().WithFingerprintOf(llama);
        var e = Assert.Throws<SoftPromptException>(() => m.CheckFingerprint(qwen, "ad"));
        Assert.Contains("another model", e.Message);
    }
}
