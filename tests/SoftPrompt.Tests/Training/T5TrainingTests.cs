using SoftPrompt.Data;
using SoftPrompt.IO;
using SoftPrompt.Models;
using SoftPrompt.Scoring;
using SoftPrompt.Training;
using SoftPrompt.Tuning;
using TorchSharp;
using static TorchSharp.torch;

namespace SoftPrompt.Tests.Training;

/// <summary>Prompt tuning an encoder-decoder model (the tiny T5 of fixtures/hf-reference-more): the trainer, the
/// loss, the adapter's PEFT SEQ_2_SEQ_LM layout (2n rows, the first n used), and the refusals.</summary>
public class T5TrainingTests
{
    static string Dir => Path.Combine(Fixtures.Root, "hf-reference-more", "t5");

    /// <summary>Encoder input: 3-6 random tokens; target: tokens 7, 11 (then EOS 1).</summary>
    static List<TokenizedExample> Task(int count, int seed)
    {
        var rng = new Random(seed);
        return Enumerable.Range(0, count).Select(_ =>
            new TokenizedExample(Enumerable.Range(0, rng.Next(3, 7)).Select(_ => rng.Next(20, 900)).Append(1).ToArray(), new[] { 7, 11, 1 })).ToList();
    }

    [Fact]
    public void BatchLossEqualsTheGoldenPaddedBatchLoss()
    {
        using var model = T5Model.Load(Dir);
        var g = SafeTensors.Load(Path.Combine(Dir, "golden.safetensors"));
        int[] Row(Tensor t, int i) => t[i].data<long>().Where(x => x != -100).Select(x => (int)x).ToArray();
        var mask = g["batch.attention_mask"];
        var examples = new List<TokenizedExample>
        {
            new(Row(g["batch.input_ids"], 0), Row(g["batch.labels"], 0)),
            new(Row(g["batch.input_ids"], 1).Take(4).ToArray(), Row(g["batch.labels"], 1)),
        };
        using var prompt = new PromptTuning(g["soft_prompt"].clone());
        using var batch = PromptLoss.Collate(model, examples, 0);
        Assert.Equal(g["batch.input_ids"].data<long>().ToArray(), batch.InputIds.data<long>().ToArray());
        Assert.Equal(g["batch.decoder_input_ids"].data<long>().ToArray(), batch.DecoderInputIds!.data<long>().ToArray());
        var (sum, count) = PromptLoss.Compute(model, prompt, batch);
        Assert.Equal(8, count);
        Assert.InRange(Math.Abs(sum.item<float>() / count - g["batch.prompt.loss"].item<float>()), 0, 1e-5);
        Assert.Throws<SoftPromptException>(() => PromptLoss.Collate(model, examples, 0, lossOnPrompt: true));
    }

    [Fact]
    public void TrainingLowersTheLossAndTheExportedAdapterReloadsToTheSameLogits()
    {
        using var tmp = new Fixtures.TempDir();
        using var model = T5Model.Load(Dir);
        var before = model.Weights.ToDictionary(kv => kv.Key, kv => kv.Value.clone());
        var train = Task(32, 1); var val = Task(8, 2);
        using var m = PromptTuning.Create(model, 4, PromptInit.SampleVocab, 5);
        double initial = PromptLoss.ValidationLoss(model, m, val, 8, 0);
        var o = new TrainOptions
        {
            Method = TuningMethod.Prompt, VirtualTokens = 4, Lr = 0.3, Steps = 30, BatchSize = 4, EvalEvery = 10, LogEvery = 5,
            Seed = 3, Schedule = "constant", Output = tmp.Path, Model = "unused", Train = "unused",
        };
        var result = new Trainer(model, m, train, val, o, 0, tmp.Path).Run();
        double final = PromptLoss.ValidationLoss(model, m, val, 8, 0);
        Assert.True(final < initial - 0.15, $"validation loss {initial:F3} -> {final:F3}");
        Assert.Equal(30, result.Steps);
        foreach (var (k, w) in model.Weights) Assert.True(w.equal(before[k]).all().item<bool>(), $"base weight {k} changed");

        // PEFT's SEQ_2_SEQ_LM layout on disk: 2n rows, config with two transformer submodules.
        var adapter = Path.Combine(tmp.Path, "adapter");
        var cfg = JsonFile.ReadObject(Path.Combine(adapter, Adapter.ConfigFile));
        Assert.Equal("SEQ_2_SEQ_LM", cfg["task_type"]!.GetValue<string>());
        Assert.Equal(2, cfg["num_transformer_submodules"]!.GetValue<int>());
        Assert.Equal(4, cfg["num_virtual_tokens"]!.GetValue<int>());
        var saved = SafeTensors.Load(Path.Combine(adapter, Adapter.WeightsFile))["prompt_embeddings"];
        Assert.Equal(new long[] { 8, 64 }, saved.shape);

        using var loaded = Adapter.Load(adapter, model);
        Assert.Equal(4, loaded.NumVirtualTokens);
        using var _ = torch.no_grad();
        var expectedRows = Adapter.Load(Path.Combine(tmp.Path, "best"), model).ExportEmbeddings();
        Assert.True(loaded.ExportEmbeddings().equal(expectedRows).all().item<bool>());
        Assert.True(saved.narrow(0, 0, 4).equal(expectedRows).all().item<bool>());
        using var batch = PromptLoss.Collate(model, val, 0);
        var (a, _) = PromptLoss.Compute(model, loaded, batch);
        var enc = model.Encode(batch.InputIds, batch.AttentionMask, loaded.Inject(8).PrefixEmbeds);
        var viaModel = model.Logits(model.Decode(batch.DecoderInputIds!, enc).Hidden);
        var enc2 = model.Encode(batch.InputIds, batch.AttentionMask, saved.narrow(0, 0, 4).unsqueeze(0));
        Assert.InRange(Fixtures.MaxAbsDiff(viaModel, model.Logits(model.Decode(batch.DecoderInputIds!, enc2).Hidden)), 0, 1e-6);
    }

    [Fact]
    public void APeftSeq2SeqAdapterLoadsItsFirstNRows()
    {
        using var tmp = new Fixtures.TempDir();
        using var model = T5Model.Load(Dir);
        // As PEFT writes it: 2n distinct rows, no softprompt.* metadata.
        var rows = torch.randn(10, 64);
        SafeTensors.Save(tmp["adapter_model.safetensors"], new Dictionary<string, Tensor> { ["prompt_embeddings"] = rows }, new Dictionary<string, string> { ["format"] = "pt" });
        File.WriteAllText(tmp["adapter_config.json"], """{"peft_type": "PROMPT_TUNING", "task_type": "SEQ_2_SEQ_LM", "num_virtual_tokens": 5, "num_transformer_submodules": 2, "token_dim": 64, "num_layers": 2, "num_attention_heads": 4}""");
        using var p = Adapter.Load(tmp.Path, model);
        Assert.True(p.ExportEmbeddings().equal(rows.narrow(0, 0, 5)).all().item<bool>());

        // A decoder-only adapter on T5, and prefix tuning, are refused by name.
        File.WriteAllText(tmp["adapter_config.json"], """{"peft_type": "PROMPT_TUNING", "task_type": "CAUSAL_LM", "num_virtual_tokens": 5}""");
        Assert.Contains("SEQ_2_SEQ_LM", Assert.Throws<SoftPromptException>(() => Adapter.Load(tmp.Path, model)).Message);
        File.WriteAllText(tmp["adapter_config.json"], """{"peft_type": "PREFIX_TUNING", "task_type": "SEQ_2_SEQ_LM", "num_virtual_tokens": 5}""");
        Assert.Contains("prefix tuning is not supported for encoder-decoder", Assert.Throws<SoftPromptException>(() => Adapter.Load(tmp.Path, model)).Message);
        Assert.Throws<SoftPromptException>(() => PrefixTuning.Create(model.Config, 4, false, 0, 1, model.Device));
        // And a T5 checkpoint is not a decoder-only model.
        Assert.Contains("encoder-decoder", Assert.Throws<SoftPromptException>(() => ModelLoader.Load(Dir)).Message);
    }

    [Fact]
    public void RankClassificationScoresLabelsAsDecoderContinuations()
    {
        using var model = T5Model.Load(Dir);
        var g = SafeTensors.Load(Path.Combine(Dir, "golden.safetensors"));
        var input = g["seq2.input_ids"][0].data<long>().Select(x => (int)x).ToArray();
        var target = g["seq2.labels"][0].data<long>().Select(x => (int)x).ToArray();
        using var prompt = new PromptTuning(g["soft_prompt"].clone());
        var labels = new[] { target, target.Take(3).ToArray(), new[] { 5 } };
        var s = RankClassifier.Score((IPromptableModel)model, prompt, input, labels);
        // Label 0 is the golden target: its summed log-probability is -12 x the golden mean loss.
        Assert.InRange(Math.Abs(s.LogProbs[0] + 12 * g["seq2.prompt.loss"].item<float>()), 0, 1e-4);
        for (int l = 0; l < labels.Length; l++)
        {
            var one = SoftPrompt.Inference.Seq2SeqGenerator.Score(model, input, labels[l], prompt.Inject(1));
            Assert.InRange(Math.Abs(s.LogProbs[l] - one.Total), 0, 1e-4);
            Assert.Equal(labels[l].Length, s.TokenCounts[l]);
        }
    }
}
