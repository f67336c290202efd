using System.Text;
using System.Text.Json;
using SoftPrompt.Tokenization;

namespace SoftPrompt.Pretraining;

/// <summary>One pretraining document (a chunk of a source) and whether it is held out for validation.</summary>
public sealed record CorpusDoc(string Source, int Index, string Text, bool Validation);

/// <summary>
/// Builds the pretraining text: the public-domain corpus (../shared/data/corpus/*.txt) plus the unlabelled inputs of the
/// TRAIN side of the tasks (review texts without labels, words without answers; not the GPL FreeDict translation words).
/// Test-side text never enters.
/// Every source is cut into documents of about <see cref="ChunkChars"/> characters at paragraph or sentence ends
/// (short records — reviews, glosses, words — are grouped or kept whole); document i of a source is held out for
/// validation when i % 100 == 37 (about 1%, spread over every source).
/// The token stream is <c>&lt;|endoftext|&gt; doc &lt;|endoftext|&gt; doc ...</c> stored as little-endian uint16.
/// </summary>
public static class PretrainCorpus
{
    public const int ChunkChars = 8000;
    public const int ValEvery = 100, ValOffset = 37;

    public static List<CorpusDoc> Build(string corpusDir, string tasksDir)
    {
        var docs = new List<CorpusDoc>();
        if (!Directory.Exists(corpusDir)) throw new SoftPromptException($"{corpusDir}: corpus folder not found.");
        var files = Directory.GetFiles(corpusDir, "*.txt").OrderBy(f => Path.GetFileName(f), StringComparer.Ordinal).ToList();
        if (files.Count == 0) throw new SoftPromptException($"{corpusDir}: no *.txt files.");
        foreach (var f in files)
        {
            var name = Path.GetFileNameWithoutExtension(f);
            IEnumerable<string> units = name switch
            {
                // one address per line: each address is cut into chunks
                "sotu" => File.ReadLines(f).Where(l => l.Trim().Length > 0).SelectMany(l => Chunks(l.Trim())),
                // one gloss per line: 64 glosses per document
                "wordnet_glosses" => Group(File.ReadLines(f).Where(l => l.Trim().Length > 0), 64, "\n"),
                // books: paragraphs kept, cut into chunks
                _ => Chunks(Normalize(File.ReadAllText(f))),
            };
            Add(docs, name, units);
        }
        // The translation tasks come from FreeDict (GPL-2+): their words are left out of the weights' training data.
        foreach (var t in TaskSplits.Tasks.Where(t => !t.Name.StartsWith("translate_", StringComparison.Ordinal)))
        {
            var inputs = TaskSplits.TrainInputs(tasksDir, t);
            Add(docs, "task:" + t.Name, t.Name == "fine_foods" ? inputs.Select(s => s.Trim()) : Group(inputs, 200, "\n"));
        }
        return docs;
    }

    static void Add(List<CorpusDoc> docs, string source, IEnumerable<string> units)
    {
        int i = 0;
        foreach (var u in units)
        {
            if (u.Length == 0) continue;
            docs.Add(new CorpusDoc(source, i, u, i % ValEvery == ValOffset));
            i++;
        }
    }

    static string Normalize(string s) => s.Replace("\r\n", "\n").Trim();

    static IEnumerable<string> Group(IEnumerable<string> lines, int n, string sep)
    {
        var buf = new List<string>(n);
        foreach (var l in lines)
        {
            buf.Add(l.Trim());
            if (buf.Count == n) { yield return string.Join(sep, buf); buf.Clear(); }
        }
        if (buf.Count > 0) yield return string.Join(sep, buf);
    }

    /// <summary>Cuts text into pieces of at least ChunkChars characters, ending at a blank line or else a sentence end.</summary>
    public static IEnumerable<string> Chunks(string text)
    {
        int pos = 0;
        while (pos < text.Length)
        {
            if (text.Length - pos <= ChunkChars * 3 / 2) { yield return text[pos..].Trim(); yield break; }
            int from = pos + ChunkChars;
            int end = text.IndexOf("\n\n", from, Math.Min(text.Length - from, ChunkChars / 2), StringComparison.Ordinal);
            if (end < 0) { end = text.IndexOf(". ", from, StringComparison.Ordinal); if (end >= 0) end += 1; }
            if (end < 0) end = text.Length;
            yield return text[pos..end].Trim();
            pos = end;
        }
    }

    /// <summary>Tokenizes documents in parallel into one stream: EOS doc EOS doc ... (EOS = id <paramref name="eos"/>).</summary>
    public static ushort[] Tokenize(string tokenizerDir, IReadOnlyList<CorpusDoc> docs, int eos)
    {
        var parts = new int[docs.Count][];
        using var local = new ThreadLocal<HfTokenizer>(() => HfTokenizer.Load(tokenizerDir));
        Parallel.For(0, docs.Count, i => parts[i] = local.Value!.Encode(docs[i].Text, addSpecialTokens: false));
        var stream = new ushort[parts.Sum(p => (long)p.Length + 1)];
        long k = 0;
        foreach (var p in parts)
        {
            stream[k++] = checked((ushort)eos);
            foreach (var id in p) stream[k++] = checked((ushort)id);
        }
        return stream;
    }

    public static void WriteIds(string path, ushort[] ids) =>
        IO.AtomicFile.Write(path, s => s.Write(System.Runtime.InteropServices.MemoryMarshal.AsBytes(ids.AsSpan())));

    public static ushort[] ReadIds(string path)
    {
        var bytes = File.ReadAllBytes(path);
        if (bytes.Length % 2 != 0) throw new SoftPromptException($"{path}: odd byte count; not a uint16 token file.");
        var ids = new ushort[bytes.Length / 2];
        Buffer.BlockCopy(bytes, 0, ids, 0, bytes.Length);
        return ids;
    }

    /// <summary>Words (GPT-2 pre-tokenizer pieces containing a letter or digit) in a text: the denominator of tokens/word.</summary>
    public static long CountWords(string text)
    {
        long n = 0; bool inWord = false;
        foreach (var c in text)
        {
            bool w = char.IsLetterOrDigit(c);
            if (w && !inWord) n++;
            inWord = w;
        }
        return n;
    }

    public static string Summary(IReadOnlyList<CorpusDoc> docs) => JsonSerializer.Serialize(
        docs.GroupBy(d => d.Source).Select(g => new
        {
            source = g.Key, docs = g.Count(), val_docs = g.Count(d => d.Validation),
            chars = g.Sum(d => (long)d.Text.Length), val_chars = g.Where(d => d.Validation).Sum(d => (long)d.Text.Length),
        }), new JsonSerializerOptions { WriteIndented = true });
}
