using System.Text;
using System.Text.Json.Nodes;
using SoftPrompt.Tokenization;

namespace SoftPrompt.Tests.Evaluation;

/// <summary>
/// A model folder with a tokenizer for the search / inspect tests: the tiny gpt2 reference fixture (vocab 1000)
/// plus a 400-token byte-level BPE trained here on a small English corpus, with BOS added to every encoded text
/// (so the hard prompt sits at position 1, after BOS, as with Llama-family tokenizers). Built once per test run.
/// </summary>
public static class SearchFixture
{
    static readonly Lazy<string> _dir = new(Build);
    public static string ModelDir => _dir.Value;

    static readonly string[] Words = { "the", "movie", "film", "was", "is", "good", "great", "bad", "awful", "review", "answer",
        "yes", "no", "positive", "negative", "sentiment", "this", "story", "actor", "plot", "boring", "lovely", "fun", "dull" };

    static string Build()
    {
        var dir = Path.Combine(Path.GetTempPath(), "softprompt-search-fixture-" + Guid.NewGuid().ToString("N")[..8]);
        ModelFolders.CopyFixture("gpt2", dir);
        AppDomain.CurrentDomain.ProcessExit += (_, _) => { try { Directory.Delete(dir, true); } catch { } };
        var sb = new StringBuilder();
        var rng = new Random(11);
        for (int i = 0; i < 4000; i++)
        {
            sb.Append(Words[rng.Next(Words.Length)]).Append(i % 9 == 0 ? ". " : i % 13 == 0 ? ", " : " ");
            if (i % 40 == 0) sb.Append("\n<|endoftext|>");
        }
        var trainer = new BpeTrainer(new BpeTrainer.Options { VocabSize = 400 });
        var r = trainer.Train(new[] { sb.ToString() });
        trainer.Save(r, dir);
        var cfgPath = Path.Combine(dir, HfTokenizer.TokenizerConfigJson);
        var cfg = JsonNode.Parse(File.ReadAllText(cfgPath))!.AsObject();
        cfg["add_bos_token"] = true;
        File.WriteAllText(cfgPath, cfg.ToJsonString());
        return dir;
    }

    /// <summary>A learnable toy task: a review, answered " yes" (good words) or " no" (bad words).</summary>
    public static string WriteTask(string path, int count, int seed)
    {
        var good = new[] { "good", "great", "lovely", "fun" };
        var bad = new[] { "bad", "awful", "boring", "dull" };
        var things = new[] { "movie", "film", "story", "plot", "actor" };
        var rng = new Random(seed);
        var lines = new List<string>();
        for (int i = 0; i < count; i++)
        {
            bool pos = i % 2 == 0;
            var adj = pos ? good[rng.Next(good.Length)] : bad[rng.Next(bad.Length)];
            var text = $"the {things[rng.Next(things.Length)]} was {adj}. answer:";
            lines.Add(new JsonObject { ["input"] = text, ["output"] = pos ? "yes" : "no" }.ToJsonString());
        }
        File.WriteAllLines(path, lines);
        return path;
    }
}
