using System.Collections.Concurrent;
using System.Text;
using System.Text.Json;
using System.Text.RegularExpressions;

namespace SoftPrompt.Tokenization;

/// <summary>
/// Trains a GPT-2-style byte-level BPE and writes a Hugging Face <c>tokenizer.json</c> + <c>tokenizer_config.json</c>.
/// Vocabulary layout: id 0 is the special token (default <c>&lt;|endoftext|&gt;</c>, used as bos, eos and unk);
/// ids 1..256 are the 256 byte symbols in byte order; then one id per merge in the order learned.
/// Text is split on the special token, then with the GPT-2 pre-tokenizer regex; words are counted, then the most
/// frequent adjacent pair is merged repeatedly. Pair counts are updated incrementally: each merge only revisits the
/// words that contain the merged pair. Ties break on the smaller (left id, right id), so output is deterministic.
/// </summary>
public sealed class BpeTrainer
{
    public sealed record Options
    {
        public int VocabSize { get; init; } = 4096;
        /// <summary>Stop reading input after this many UTF-8 bytes (whole lines); null = everything.</summary>
        public long? MaxBytes { get; init; }
        public string SpecialToken { get; init; } = "<|endoftext|>";
        /// <summary>Pairs seen fewer times than this are never merged (training may stop below VocabSize).</summary>
        public int MinPairFrequency { get; init; } = 2;
        public int ModelMaxLength { get; init; } = 1024;
    }

    public sealed record Result(IReadOnlyList<string> Vocab, IReadOnlyList<(string Left, string Right)> Merges, long BytesRead, int DistinctWords);

    private readonly Options _o;
    public BpeTrainer(Options? options = null)
    {
        _o = options ?? new Options();
        if (_o.VocabSize < 257 + 1) throw new ArgumentOutOfRangeException(nameof(options), "VocabSize must exceed 257 (special token + 256 bytes)");
        if (string.IsNullOrEmpty(_o.SpecialToken)) throw new ArgumentException("SpecialToken must not be empty", nameof(options));
    }

    /// <summary>Trains on the given text files (read in the given order, up to MaxBytes).</summary>
    public Result TrainFiles(IEnumerable<string> files)
    {
        var texts = new List<string>();
        long budget = _o.MaxBytes ?? long.MaxValue, read = 0;
        foreach (var f in files)
        {
            if (read >= budget) break;
            var sb = new StringBuilder();
            foreach (var line in File.ReadLines(f))
            {
                long n = Encoding.UTF8.GetByteCount(line) + 1;
                if (read + n > budget) { read = budget; break; }
                sb.Append(line).Append('\n');
                read += n;
            }
            texts.Add(sb.ToString());
        }
        return Train(texts, read);
    }

    public Result Train(IEnumerable<string> texts) => Train(texts.ToList(), -1);

    private Result Train(List<string> texts, long bytesRead)
    {
        if (bytesRead < 0) bytesRead = texts.Sum(t => (long)Encoding.UTF8.GetByteCount(t));
        var wordCounts = CountWords(texts);

        // Symbols: id -> string; 0 = special, 1..256 = bytes.
        var tokens = new List<string> { _o.SpecialToken };
        var idOf = new Dictionary<string, int>(StringComparer.Ordinal) { [_o.SpecialToken] = 0 };
        for (int b = 0; b < 256; b++) { var s = ByteLevel.MapByte((byte)b).ToString(); idOf[s] = tokens.Count; tokens.Add(s); }

        // Words in a deterministic order (ordinal), as symbol arrays.
        var keys = wordCounts.Keys.ToArray();
        Array.Sort(keys, StringComparer.Ordinal);
        var words = new List<int>[keys.Length];
        var freq = new long[keys.Length];
        for (int i = 0; i < keys.Length; i++)
        {
            var bytes = Encoding.UTF8.GetBytes(keys[i]);
            words[i] = new List<int>(bytes.Length);
            foreach (var b in bytes) words[i].Add(b + 1);
            freq[i] = wordCounts[keys[i]];
        }

        var pairCount = new Dictionary<long, long>();
        var where = new Dictionary<long, HashSet<int>>();
        for (int i = 0; i < words.Length; i++)
        {
            var w = words[i];
            for (int j = 0; j + 1 < w.Count; j++)
            {
                long p = Key(w[j], w[j + 1]);
                pairCount[p] = pairCount.GetValueOrDefault(p) + freq[i];
                if (!where.TryGetValue(p, out var set)) where[p] = set = new HashSet<int>();
                set.Add(i);
            }
        }
        // Max-heap by count, ties on smaller key; stale entries are skipped when popped.
        var heap = new PriorityQueue<long, (long NegCount, long Key)>();
        foreach (var (p, c) in pairCount) heap.Enqueue(p, (-c, p));

        var merges = new List<(string, string)>();
        var changed = new HashSet<long>();
        while (tokens.Count < _o.VocabSize && heap.TryDequeue(out var best, out var pri))
        {
            long current = pairCount.GetValueOrDefault(best);
            if (-pri.NegCount != current) continue;     // stale
            if (current < _o.MinPairFrequency || current == 0) break;
            int a = (int)(best >> 32), b = (int)(best & 0xFFFFFFFF);
            var merged = tokens[a] + tokens[b];
            if (!idOf.TryGetValue(merged, out var nid)) { nid = tokens.Count; tokens.Add(merged); idOf[merged] = nid; }
            merges.Add((tokens[a], tokens[b]));

            changed.Clear();
            foreach (var wi in where[best].ToArray())
            {
                var w = words[wi];
                long f = freq[wi];
                bool has = false;
                for (int j = 0; j + 1 < w.Count && !has; j++) has = w[j] == a && w[j + 1] == b;
                if (!has) continue; // stale entry: the pair left this word in an earlier merge
                // remove this word's pairs, merge, add them back
                for (int j = 0; j + 1 < w.Count; j++) Add(Key(w[j], w[j + 1]), -f, wi, remove: true);
                for (int j = 0; j + 1 < w.Count; j++)
                    if (w[j] == a && w[j + 1] == b) { w[j] = nid; w.RemoveAt(j + 1); }
                for (int j = 0; j + 1 < w.Count; j++) Add(Key(w[j], w[j + 1]), f, wi, remove: false);
            }
            foreach (var p in changed)
            {
                var c = pairCount.GetValueOrDefault(p);
                if (c > 0) heap.Enqueue(p, (-c, p));
            }
        }
        return new Result(tokens, merges, bytesRead, keys.Length);

        void Add(long p, long delta, int wi, bool remove)
        {
            var c = pairCount.GetValueOrDefault(p) + delta;
            if (c <= 0) { pairCount.Remove(p); where.Remove(p); }
            else
            {
                pairCount[p] = c;
                if (!remove) { if (!where.TryGetValue(p, out var set)) where[p] = set = new HashSet<int>(); set.Add(wi); }
            }
            changed.Add(p);
        }
    }

    private static long Key(int a, int b) => ((long)a << 32) | (uint)b;

    private Dictionary<string, long> CountWords(List<string> texts)
    {
        var regex = new Regex(ByteLevel.Gpt2Pattern, RegexOptions.CultureInvariant | RegexOptions.Compiled);
        // Cut the input into ~1 MB chunks at newlines and count in parallel.
        var chunks = new List<string>();
        foreach (var t in texts)
        {
            int pos = 0;
            while (pos < t.Length)
            {
                int end = Math.Min(t.Length, pos + (1 << 20));
                if (end < t.Length) { int nl = t.IndexOf('\n', end); end = nl < 0 ? t.Length : nl + 1; }
                chunks.Add(t[pos..end]);
                pos = end;
            }
        }
        var partials = new ConcurrentBag<Dictionary<string, long>>();
        Parallel.ForEach(chunks, () => new Dictionary<string, long>(StringComparer.Ordinal), (chunk, _, local) =>
        {
            foreach (var part in chunk.Split(_o.SpecialToken))
                for (var m = regex.Match(part); m.Success; m = m.NextMatch())
                    local[m.Value] = local.GetValueOrDefault(m.Value) + 1;
            return local;
        }, partials.Add);
        var total = new Dictionary<string, long>(StringComparer.Ordinal);
        foreach (var d in partials) foreach (var (k, v) in d) total[k] = total.GetValueOrDefault(k) + v;
        return total;
    }

    /// <summary>Writes tokenizer.json and tokenizer_config.json (readable by HfTokenizer and by HF tokenizers/transformers).</summary>
    public void Save(Result r, string dir)
    {
        Directory.CreateDirectory(dir);
        var jw = new JsonWriterOptions { Indented = true, Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping };
        using (var fs = File.Create(Path.Combine(dir, HfTokenizer.TokenizerJson)))
        using (var w = new Utf8JsonWriter(fs, jw))
        {
            w.WriteStartObject();
            w.WriteString("version", "1.0");
            w.WriteNull("truncation");
            w.WriteNull("padding");
            w.WriteStartArray("added_tokens");
            WriteAddedToken(w, 0, _o.SpecialToken);
            w.WriteEndArray();
            w.WriteNull("normalizer");
            WriteByteLevel(w, "pre_tokenizer", addPrefixSpace: false, trimOffsets: true);
            WriteByteLevel(w, "post_processor", addPrefixSpace: true, trimOffsets: false);
            WriteByteLevel(w, "decoder", addPrefixSpace: true, trimOffsets: true);
            w.WriteStartObject("model");
            w.WriteString("type", "BPE");
            w.WriteNull("dropout");
            w.WriteNull("unk_token");
            w.WriteNull("continuing_subword_prefix");
            w.WriteNull("end_of_word_suffix");
            w.WriteBoolean("fuse_unk", false);
            w.WriteBoolean("byte_fallback", false);
            w.WriteBoolean("ignore_merges", false);
            w.WriteStartObject("vocab");
            for (int i = 0; i < r.Vocab.Count; i++) w.WriteNumber(r.Vocab[i], i);
            w.WriteEndObject();
            w.WriteStartArray("merges"); // "left right" strings: byte-level symbols never contain a space
            foreach (var (a, b) in r.Merges) w.WriteStringValue(a + " " + b);
            w.WriteEndArray();
            w.WriteEndObject();
            w.WriteEndObject();
        }
        using (var fs = File.Create(Path.Combine(dir, HfTokenizer.TokenizerConfigJson)))
        using (var w = new Utf8JsonWriter(fs, jw))
        {
            w.WriteStartObject();
            w.WriteBoolean("add_bos_token", false);
            w.WriteBoolean("add_eos_token", false);
            w.WriteBoolean("add_prefix_space", false);
            w.WriteStartObject("added_tokens_decoder");
            w.WriteStartObject("0");
            w.WriteString("content", _o.SpecialToken);
            foreach (var k in new[] { "lstrip", "normalized", "rstrip", "single_word" }) w.WriteBoolean(k, false);
            w.WriteBoolean("special", true);
            w.WriteEndObject();
            w.WriteEndObject();
            w.WriteString("bos_token", _o.SpecialToken);
            w.WriteString("eos_token", _o.SpecialToken);
            w.WriteString("unk_token", _o.SpecialToken);
            w.WriteBoolean("clean_up_tokenization_spaces", false);
            w.WriteNumber("model_max_length", _o.ModelMaxLength);
            w.WriteString("tokenizer_class", "PreTrainedTokenizerFast");
            w.WriteEndObject();
        }
    }

    private static void WriteAddedToken(Utf8JsonWriter w, int id, string content)
    {
        w.WriteStartObject();
        w.WriteNumber("id", id);
        w.WriteString("content", content);
        w.WriteBoolean("single_word", false);
        w.WriteBoolean("lstrip", false);
        w.WriteBoolean("rstrip", false);
        w.WriteBoolean("normalized", false);
        w.WriteBoolean("special", true);
        w.WriteEndObject();
    }

    private static void WriteByteLevel(Utf8JsonWriter w, string name, bool addPrefixSpace, bool trimOffsets)
    {
        w.WriteStartObject(name);
        w.WriteString("type", "ByteLevel");
        w.WriteBoolean("add_prefix_space", addPrefixSpace);
        w.WriteBoolean("trim_offsets", trimOffsets);
        w.WriteBoolean("use_regex", true);
        w.WriteEndObject();
    }
}
