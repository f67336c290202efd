using System.Buffers.Binary;
using System.Text;
using System.Text.Json.Nodes;
using SoftPrompt.IO;
using SoftPrompt.Tests.Cli;
using TorchSharp;
using static TorchSharp.torch;

namespace SoftPrompt.Tests.Fuzz;

/// <summary>
/// The material the malformed inputs are made from, built once per test run from what the repository ships: the
/// small model (models/sp-llama-6m: its config, tokenizer and weights, linked rather than copied), the tiny llama
/// reference fixture (for weight-file mutations, which need a copy), a small sentiment data set, a prompt adapter for
/// the shipped model, and a short finished training run (for corrupt-checkpoint cases).
/// </summary>
public sealed class FuzzWorld
{
    static readonly Lazy<FuzzWorld> Lazy = new(() => new FuzzWorld());
    public static FuzzWorld Instance => Lazy.Value;

    public string Root { get; } = Path.Combine(Path.GetTempPath(), $"softprompt-fuzz-{Environment.ProcessId}-{Guid.NewGuid().ToString("N")[..8]}");
    public string Shipped { get; } = Path.Combine(Demo.DemoPipelineTests.RepoRoot, "models", "sp-llama-6m");
    public string Tiny => Fixtures.HfReference("llama");
    public string TrainData => Path.Combine(Root, "train.jsonl");
    public string TestData => Path.Combine(Root, "test.jsonl");
    public string AdapterDir => Path.Combine(Root, "adapter");
    public string RunDir => Path.Combine(Root, "run");
    public byte[] TinyWeights { get; }

    FuzzWorld()
    {
        SweepStale();
        Directory.CreateDirectory(Root);
        AppDomain.CurrentDomain.ProcessExit += (_, _) => { try { Directory.Delete(Root, true); } catch { } };
        Fixtures.WriteSentimentTask(TrainData, 40, 1);
        Fixtures.WriteSentimentTask(TestData, 12, 2);
        TinyWeights = File.ReadAllBytes(Path.Combine(Tiny, "model.safetensors"));
        WriteAdapter(AdapterDir, e => { });
        // A finished two-step run with a checkpoint, to corrupt for --resume.
        var (rc, _, err) = CliRunner.Run("train", "--model", Shipped, "--train", TrainData, "--output", RunDir, "--steps", "2", "--batch-size", "4",
            "--virtual-tokens", "2", "--eval-every", "1", "--threads", "1", "--validation-split", "0.2");
        if (rc != 0) throw new InvalidOperationException("fuzz world: the base training run failed: " + err);
    }

    /// <summary>The test host does not always run exit handlers: worlds of test processes that are gone are removed here.</summary>
    static void SweepStale()
    {
        foreach (var d in Directory.GetDirectories(Path.GetTempPath(), "softprompt-fuzz-*"))
        {
            var parts = Path.GetFileName(d).Split('-');
            if (parts.Length < 4 || !int.TryParse(parts[2], out var pid) || pid == Environment.ProcessId) continue;
            bool alive;
            try { using var p = System.Diagnostics.Process.GetProcessById(pid); alive = !p.HasExited; } catch (ArgumentException) { alive = false; }
            if (!alive) try { Directory.Delete(d, true); } catch (IOException) { } catch (UnauthorizedAccessException) { }
        }
    }

    /// <summary>Removes a case's folder once it has been checked.</summary>
    public static void Remove(string dir) { try { Directory.Delete(dir, true); } catch (IOException) { } catch (UnauthorizedAccessException) { } }

    /// <summary>A fresh, empty folder for one case.</summary>
    public string Dir(string id)
    {
        var d = Path.Combine(Root, "cases", id.Replace('/', '_').Replace(' ', '_'));
        if (Directory.Exists(d)) Directory.Delete(d, true);
        Directory.CreateDirectory(d);
        return d;
    }

    /// <summary>A model folder in <paramref name="dir"/>/model: the shipped model's files linked, its config.json edited or replaced.</summary>
    public string Model(string dir, Action<JsonObject>? edit = null, string? rawConfig = null, params string[] replace)
    {
        var m = Path.Combine(dir, "model");
        Directory.CreateDirectory(m);
        foreach (var f in Directory.GetFiles(Shipped))
        {
            var name = Path.GetFileName(f);
            if (name == "config.json" || replace.Contains(name)) continue;
            File.CreateSymbolicLink(Path.Combine(m, name), f);
        }
        var cfg = JsonNode.Parse(File.ReadAllText(Path.Combine(Shipped, "config.json")))!.AsObject();
        edit?.Invoke(cfg);
        File.WriteAllText(Path.Combine(m, "config.json"), rawConfig ?? cfg.ToJsonString());
        return m;
    }

    /// <summary>A copy of the tiny reference model (no tokenizer: use --ids) with its weights file given as bytes.</summary>
    public string TinyModel(string dir, byte[]? weights = null, Action<Dictionary<string, Tensor>>? edit = null)
    {
        var m = Path.Combine(dir, "tiny");
        Directory.CreateDirectory(m);
        File.Copy(Path.Combine(Tiny, "config.json"), Path.Combine(m, "config.json"));
        var path = Path.Combine(m, "model.safetensors");
        File.WriteAllBytes(path, weights ?? TinyWeights);
        if (edit is not null)
        {
            var w = SafeTensors.Load(path);
            edit(w);
            SafeTensors.Save(path, w, new Dictionary<string, string> { ["format"] = "pt" });
            foreach (var t in w.Values) t.Dispose();
        }
        return m;
    }

    /// <summary>The tiny weights with their header JSON edited (re-padded, length fixed, data kept).</summary>
    public byte[] TinyWithHeader(Func<JsonObject, string> edit)
    {
        ulong n = BinaryPrimitives.ReadUInt64LittleEndian(TinyWeights);
        var header = JsonNode.Parse(Encoding.UTF8.GetString(TinyWeights, 8, (int)n))!.AsObject();
        var json = Encoding.UTF8.GetBytes(edit(header));
        int padded = (json.Length + 7) / 8 * 8;
        var result = new byte[8 + padded + (TinyWeights.Length - 8 - (int)n)];
        BinaryPrimitives.WriteUInt64LittleEndian(result, (ulong)padded);
        json.CopyTo(result, 8);
        for (int i = 8 + json.Length; i < 8 + padded; i++) result[i] = (byte)' ';
        TinyWeights.AsSpan(8 + (int)n).CopyTo(result.AsSpan(8 + padded));
        return result;
    }

    /// <summary>A prompt-tuning adapter for the shipped model (4 virtual tokens, hidden 256), edited before saving.</summary>
    public string WriteAdapter(string dir, Action<Tensor> editEmbeddings, Action<JsonObject>? editConfig = null, string? rawConfig = null)
    {
        Directory.CreateDirectory(dir);
        using (var e = torch.randn(4, 256) * 0.02)
        {
            editEmbeddings(e);
            SafeTensors.Save(Path.Combine(dir, "adapter_model.safetensors"), new Dictionary<string, Tensor> { ["prompt_embeddings"] = e }, new Dictionary<string, string> { ["format"] = "pt" });
        }
        var c = new JsonObject
        {
            ["peft_type"] = "PROMPT_TUNING", ["task_type"] = "CAUSAL_LM", ["num_virtual_tokens"] = 4, ["token_dim"] = 256,
            ["num_transformer_submodules"] = 1, ["inference_mode"] = true,
        };
        editConfig?.Invoke(c);
        File.WriteAllText(Path.Combine(dir, "adapter_config.json"), rawConfig ?? c.ToJsonString());
        return dir;
    }

    /// <summary>A copy of the finished run folder (for --resume cases).</summary>
    public string CopyRun(string dir)
    {
        var to = Path.Combine(dir, "run");
        foreach (var f in Directory.GetFiles(RunDir, "*", SearchOption.AllDirectories))
        {
            var target = Path.Combine(to, Path.GetRelativePath(RunDir, f));
            Directory.CreateDirectory(Path.GetDirectoryName(target)!);
            File.Copy(f, target);
        }
        return to;
    }
}
