using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using SoftPrompt.IO;
using SoftPrompt.Models;
using SoftPrompt.Tokenization;
using TorchSharp;
using static TorchSharp.torch;

namespace SoftPrompt.Pretraining;

/// <summary>Held-out perplexity of a frozen model, computed the same way by the exporter and by the shipped-model test.</summary>
public static class Perplexity
{
    /// <summary>Mean next-token NLL (nats) over non-overlapping windows of <paramref name="window"/> + 1 ids (the last may be shorter).</summary>
    public static (double Nll, long Tokens) OfIds(CausalLM model, IReadOnlyList<int> ids, int window, int batch = 8)
    {
        double sum = 0; long count = 0;
        var starts = new List<int>();
        for (int s = 0; s + 1 < ids.Count; s += window) starts.Add(s);
        using var _ = torch.no_grad();
        foreach (var group in starts.Chunk(batch))
        {
            foreach (var lenGroup in group.GroupBy(s => Math.Min(window + 1, ids.Count - s)))
            {
                using var scope = torch.NewDisposeScope();
                int len = lenGroup.Key;
                var flat = lenGroup.SelectMany(s => Enumerable.Range(s, len).Select(i => (long)ids[i])).ToArray();
                var t = torch.tensor(flat, new long[] { lenGroup.Count(), len });
                var x = t.narrow(1, 0, len - 1); var y = t.narrow(1, 1, len - 1).reshape(-1);
                var h = model.Forward(new ForwardArgs { InputIds = x }).Hidden;
                var logits = model.Logits(h).reshape(-1, model.Config.VocabSize);
                sum += torch.nn.functional.cross_entropy(logits, y, reduction: nn.Reduction.Sum).item<float>();
                count += y.shape[0];
            }
        }
        return (sum / count, count);
    }

    /// <summary>Perplexity of a text: ids = [eos] + tokens (the special token in the text is recognised), windows of <paramref name="window"/>.</summary>
    public static (double Perplexity, long Tokens) OfText(CausalLM model, HfTokenizer tok, string text, int window)
    {
        var ids = new List<int> { tok.EosId ?? 0 };
        ids.AddRange(tok.Encode(text, addSpecialTokens: false));
        var (nll, n) = OfIds(model, ids, window);
        return (Math.Exp(nll), n);
    }
}

/// <summary>Writes a run's checkpoint as a Hugging Face model folder with a model card, evaluated in fp32.</summary>
public static class ModelExport
{
    public sealed record Result(string Folder, long TokensSeen, long Step, double ValLoss, double ValPerplexity, long ValTokens,
        double SlicePerplexity, long SliceTokens, double ModelMB);

    public static Result Export(string runDir, string dataDir, string tokDir, string outDir, string slicePath, string? plotPath, string? notesPath)
    {
        var opts = JsonSerializer.Deserialize<PretrainOptions>(File.ReadAllText(Path.Combine(runDir, Pretrainer.OptionsFile)), PretrainOptions.Json)!;
        var (weights, config, state) = Pretrainer.ReadCheckpointWeights(runDir);
        Directory.CreateDirectory(outDir);
        try
        {
            SafeTensors.Save(Path.Combine(outDir, "model.safetensors"), weights, new Dictionary<string, string> { ["format"] = "pt" });
        }
        finally { foreach (var w in weights.Values) w.Dispose(); }
        var jw = new JsonSerializerOptions { WriteIndented = true };
        AtomicFile.WriteAllText(Path.Combine(outDir, "config.json"), config.ToJsonString(jw) + "\n");
        var gen = new JsonObject { ["bos_token_id"] = opts.Shape.BosId, ["eos_token_id"] = opts.Shape.EosId, ["transformers_version"] = "4.46.0" };
        AtomicFile.WriteAllText(Path.Combine(outDir, "generation_config.json"), gen.ToJsonString(jw) + "\n");
        foreach (var f in new[] { HfTokenizer.TokenizerJson, HfTokenizer.TokenizerConfigJson })
            File.Copy(Path.Combine(tokDir, f), Path.Combine(outDir, f), overwrite: true);

        var tok = HfTokenizer.Load(outDir);
        var val = PretrainCorpus.ReadIds(Path.Combine(dataDir, "val.bin"));
        if (!File.Exists(slicePath)) WriteSlice(slicePath, val, tok);
        using var model = ModelLoader.Load(outDir);
        var (valNll, valTokens) = Perplexity.OfIds(model, val.Select(v => (int)v).ToArray(), opts.SeqLen);
        var (slicePpl, sliceTokens) = Perplexity.OfText(model, tok, File.ReadAllText(slicePath), opts.SeqLen);
        double mb = new FileInfo(Path.Combine(outDir, "model.safetensors")).Length / 1e6;
        var r = new Result(outDir, state.TokensSeen, state.Step, valNll, Math.Exp(valNll), valTokens, slicePpl, sliceTokens, mb);
        var evalJson = new JsonObject
        {
            ["tokens_seen"] = state.TokensSeen, ["steps"] = state.Step, ["epochs"] = Math.Round((double)state.TokensSeen / TrainTokens(dataDir), 3),
            ["train_seconds"] = Math.Round(state.TrainSeconds), ["seq_len"] = opts.SeqLen,
            ["validation_loss"] = Math.Round(valNll, 5), ["validation_perplexity"] = Math.Round(Math.Exp(valNll), 4), ["validation_tokens"] = valTokens,
            ["heldout_slice"] = Path.GetFileName(slicePath), ["heldout_slice_perplexity"] = Math.Round(slicePpl, 4), ["heldout_slice_tokens"] = sliceTokens,
            ["planned_tokens"] = opts.TotalTokens, ["lr_now"] = opts.LearningRate(state.Step),
        };
        AtomicFile.WriteAllText(Path.Combine(outDir, "eval_results.json"), evalJson.ToJsonString(jw) + "\n");
        var curve = ReadCurve(Path.Combine(runDir, Pretrainer.LogFile));
        if (plotPath is not null) Plot(curve, plotPath, r);
        JsonObject? notes = notesPath is not null && File.Exists(notesPath) ? JsonNode.Parse(File.ReadAllText(notesPath)) as JsonObject : null;
        var corpus = File.Exists(Path.Combine(dataDir, "corpus.json")) ? File.ReadAllText(Path.Combine(dataDir, "corpus.json")) : null;
        AtomicFile.WriteAllText(Path.Combine(outDir, "README.md"), ModelCard.Write(Path.GetFileName(Path.GetFullPath(outDir)), opts, state, r, curve, notes, corpus, tok.VocabSize, TrainTokens(dataDir)));
        return r;
    }

    static long TrainTokens(string dataDir) => new FileInfo(Path.Combine(dataDir, "train.bin")).Length / 2;

    /// <summary>A small held-out slice for the shipped-model test: up to 200 tokens from each of 8 validation documents spread over the sources.</summary>
    static void WriteSlice(string path, ushort[] val, HfTokenizer tok)
    {
        int eos = tok.EosId ?? 0;
        var docs = new List<(int Start, int End)>();
        int s = -1;
        for (int i = 0; i <= val.Length; i++)
            if (i == val.Length || val[i] == eos) { if (s >= 0 && i - s > 50) docs.Add((s, i)); s = i + 1; }
        var pieces = new List<string>();
        for (int k = 0; k < 8 && docs.Count > 0; k++)
        {
            var (a, b) = docs[k * docs.Count / 8];
            var text = tok.Decode(val[a..Math.Min(b, a + 200)].Select(v => (int)v));
            // end at the last whitespace so no word is cut in two
            int cut = text.LastIndexOfAny(new[] { ' ', '\n' });
            pieces.Add((cut > 0 ? text[..cut] : text).Trim());
        }
        Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(path))!);
        File.WriteAllText(path, string.Join("<|endoftext|>", pieces) + "\n");
    }

    public sealed record CurvePoint(long Step, long Tokens, double ValPpl, double ElapsedS);

    public static List<CurvePoint> ReadCurve(string logPath)
    {
        var list = new List<CurvePoint>();
        if (!File.Exists(logPath)) return list;
        foreach (var line in File.ReadLines(logPath))
        {
            if (JsonNode.Parse(line) is not JsonObject o || o["val_ppl"] is null) continue;
            list.Add(new CurvePoint((long)o["step"]!, (long)o["tokens"]!, (double)o["val_ppl"]!, (double)o["elapsed_s"]!));
        }
        return list;
    }

    static void Plot(List<CurvePoint> curve, string path, Result r)
    {
        var pts = curve.Where(p => p.Tokens > 0).ToList();
        if (pts.Count == 0) return;
        ScottPlot.Fonts.Default = "DejaVu Sans";
        var plt = new ScottPlot.Plot();
        var s = plt.Add.Scatter(pts.Select(p => p.Tokens / 1e6).ToArray(), pts.Select(p => Math.Log10(p.ValPpl)).ToArray());
        s.LegendText = "held-out perplexity (periodic, bf16 compute)"; s.MarkerSize = 4; s.LineWidth = 1.5f;
        var f = plt.Add.Scatter(new[] { r.TokensSeen / 1e6 }, new[] { Math.Log10(r.ValPerplexity) });
        f.LegendText = $"export (fp32, all validation): {r.ValPerplexity:F1}"; f.MarkerSize = 10; f.LineWidth = 0;
        var ticks = new ScottPlot.TickGenerators.NumericManual();
        foreach (var v in new[] { 10, 15, 20, 30, 40, 50, 70, 100, 150, 200, 300, 500, 1000, 2000, 5000 }) ticks.AddMajor(Math.Log10(v), v.ToString(CultureInfo.InvariantCulture));
        plt.Axes.Left.TickGenerator = ticks;
        plt.Title("Pretraining: held-out perplexity");
        plt.XLabel("training tokens seen (millions)");
        plt.YLabel("perplexity (log scale)");
        plt.ShowLegend(ScottPlot.Alignment.UpperRight);
        Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(path))!);
        var tmp = path + ".tmp.png";
        plt.SavePng(tmp, 900, 500);
        File.Move(tmp, path, overwrite: true);
    }
}
