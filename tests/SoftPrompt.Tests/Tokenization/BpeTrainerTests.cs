using System.Text;
using System.Text.Json;
using SoftPrompt.Tokenization;
using static SoftPrompt.Tests.Tokenization.TokenizerFixtures;

namespace SoftPrompt.Tests.Tokenization;

public class BpeTrainerTests
{
    private static string Corpus()
    {
        var sb = new StringBuilder();
        var words = new[] { "the", "tokenizer", "prompt", "soft", "learning", "model", "café", "naïve", "日本語", "data", "12345" };
        var rng = new Random(7);
        for (int i = 0; i < 3000; i++)
        {
            sb.Append(words[rng.Next(words.Length)]).Append(' ');
            if (i % 17 == 0) sb.Append("tokenizer tokenizer ");
            if (i % 50 == 0) sb.Append("\n<|endoftext|>");
        }
        return sb.ToString();
    }

    private static (string Dir, BpeTrainer.Result Result) TrainTo(string tag, int vocab = 300)
    {
        var dir = NewTempDir(tag);
        var input = Path.Combine(dir, "corpus.txt");
        File.WriteAllText(input, Corpus());
        var trainer = new BpeTrainer(new BpeTrainer.Options { VocabSize = vocab });
        var r = trainer.TrainFiles(new[] { input });
        var outDir = Path.Combine(dir, "tok");
        trainer.Save(r, outDir);
        return (outDir, r);
    }

    [Fact]
    public void Trained_LoadsBack_RoundTrips_AndMergesFrequentWords()
    {
        var (dir, r) = TrainTo("bpe-train");
        Assert.Equal(300, r.Vocab.Count);
        var t = HfTokenizer.Load(dir);
        Assert.Equal("byte-level BPE (tokenizer.json)", t.Kind);
        Assert.Equal(300, t.VocabSize);
        Assert.Equal(0, t.EosId);
        Assert.Equal(0, t.BosId);
        Assert.False(t.AddBos);
        Assert.Equal(new[] { 0 }, t.EosIds);
        Assert.Equal(1024, t.ModelMaxLength);

        // A frequent word (with its leading space, as GPT-2 pre-tokenizes it) becomes a single token.
        var ids = t.Encode(" tokenizer", addSpecialTokens: false);
        Assert.Single(ids);
        Assert.Equal(" tokenizer", t.TokenText(ids[0]));
        Assert.Single(t.Encode(" prompt"));
        // The special token is split out, never merged with text.
        Assert.Equal(0, t.Encode("a<|endoftext|>b")[1]);

        foreach (var s in ReferenceTexts().Append(Corpus()[..500]))
            Assert.Equal(s, t.Decode(t.Encode(s)));
    }

    [Fact]
    public void Merges_AreAppliedInRankOrder()
    {
        var (dir, r) = TrainTo("bpe-rank");
        var t = HfTokenizer.Load(dir);
        // Rank 0 is the most frequent pair: encoding its two symbols gives the merged token.
        var (a, b) = r.Merges[0];
        Assert.Equal(r.Vocab.ToList().IndexOf(a + b), t.TokenToId(a + b));
        // Reference BPE: repeatedly apply the lowest-ranked merge present; compare with the loaded tokenizer.
        var rank = r.Merges.Select((m, i) => (m, i)).ToDictionary(x => x.m, x => x.i);
        foreach (var word in new[] { " tokenizer", " learning", " naïve", " 12345", " the", "zzz", " model" })
        {
            var sym = ByteLevel.Encode(word).Select(c => c.ToString()).ToList();
            while (true)
            {
                int best = -1, bestRank = int.MaxValue;
                for (int i = 0; i + 1 < sym.Count; i++)
                    if (rank.TryGetValue((sym[i], sym[i + 1]), out var k) && k < bestRank) { bestRank = k; best = i; }
                if (best < 0) break;
                sym[best] += sym[best + 1];
                sym.RemoveAt(best + 1);
            }
            var want = sym.Select(s => r.Vocab.ToList().IndexOf(s)).ToArray();
            Assert.Equal(want, t.Encode(word, addSpecialTokens: false));
        }
    }

    [Fact]
    public void Training_IsDeterministic()
    {
        var (d1, _) = TrainTo("bpe-det1");
        var (d2, _) = TrainTo("bpe-det2");
        Assert.Equal(File.ReadAllBytes(Path.Combine(d1, "tokenizer.json")), File.ReadAllBytes(Path.Combine(d2, "tokenizer.json")));
        Assert.Equal(File.ReadAllBytes(Path.Combine(d1, "tokenizer_config.json")), File.ReadAllBytes(Path.Combine(d2, "tokenizer_config.json")));
        using var doc = JsonDocument.Parse(File.ReadAllText(Path.Combine(d1, "tokenizer.json")));
        Assert.Equal("BPE", doc.RootElement.GetProperty("model").GetProperty("type").GetString());
        Assert.Equal("ByteLevel", doc.RootElement.GetProperty("pre_tokenizer").GetProperty("type").GetString());
    }

    [Fact]
    public void MaxBytes_LimitsTheSample()
    {
        var dir = NewTempDir("bpe-max");
        var input = Path.Combine(dir, "c.txt");
        File.WriteAllText(input, Corpus());
        var r = new BpeTrainer(new BpeTrainer.Options { VocabSize = 300, MaxBytes = 2000 }).TrainFiles(new[] { input });
        Assert.True(r.BytesRead <= 2000);
    }
}
