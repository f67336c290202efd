using System.Security.Cryptography;
using System.Text;
using System.Text.RegularExpressions;

namespace SoftPrompt.Pretraining;

/// <summary>
/// Deterministic train/test splits of the labelled task files (TSV, two columns), made once and committed under
/// <c>data/tasks/</c>. A row's side depends only on a hash of its grouping key, never on row order or a random seed:
/// <list type="bullet">
/// <item>review tasks (label TAB text): the key is the normalised text, so duplicate reviews land on the same side;</item>
/// <item>word tasks (word TAB answer): the key is the input word, so all rows of a word (several hypernyms, synonyms or
/// senses) land on the same side and no test word is ever seen in training.</item>
/// </list>
/// </summary>
public static class TaskSplits
{
    public sealed record TaskSpec(string Name, int TextColumn, int TestPermille, string Description);

    /// <summary>The tasks of ../shared/data/tasks; the column holding the (unlabelled) input; the test share.</summary>
    public static readonly TaskSpec[] Tasks =
    {
        new("fine_foods", 1, 250, "label TAB review"),
        new("word_sentiment_bing_liu", 0, 200, "word TAB positive|negative"),
        new("wordnet_hypernyms", 0, 200, "word TAB hypernym"),
        new("wordnet_synonyms", 0, 200, "word TAB synonym"),
        new("translate_en_fr", 0, 200, "English TAB French"),
        new("translate_en_es", 0, 200, "English TAB Spanish"),
    };

    static string SourceFile(TaskSpec t) => t.Name == "fine_foods" ? "fine_foods_train.tsv" : t.Name + ".tsv";

    public static string GroupKey(string input) => Regex.Replace(input.Trim().ToLowerInvariant(), @"\s+", " ");

    /// <summary>True when the row with this grouping key belongs to the test side.</summary>
    public static bool IsTest(string input, int testPermille)
    {
        var h = SHA256.HashData(Encoding.UTF8.GetBytes("softprompt-split-v1\n" + GroupKey(input)));
        return BitConverter.ToUInt64(h, 0) % 1000 < (ulong)testPermille;
    }

    /// <summary>Writes <c>NAME.train.tsv</c> and <c>NAME.test.tsv</c> for every task; returns (name, train rows, test rows).</summary>
    public static List<(string Name, int Train, int Test)> Split(string sourceDir, string outDir)
    {
        Directory.CreateDirectory(outDir);
        var result = new List<(string, int, int)>();
        foreach (var t in Tasks)
        {
            var src = Path.Combine(sourceDir, SourceFile(t));
            if (!File.Exists(src)) throw new SoftPromptException($"{src}: task file not found.");
            var train = new List<string>(); var test = new List<string>();
            foreach (var line in File.ReadLines(src))
            {
                if (line.Length == 0) continue;
                var cols = line.Split('\t');
                if (cols.Length != 2) throw new SoftPromptException($"{src}: expected 2 tab-separated columns, got {cols.Length}: {line[..Math.Min(80, line.Length)]}");
                (IsTest(cols[t.TextColumn], t.TestPermille) ? test : train).Add(line);
            }
            File.WriteAllLines(Path.Combine(outDir, t.Name + ".train.tsv"), train);
            File.WriteAllLines(Path.Combine(outDir, t.Name + ".test.tsv"), test);
            result.Add((t.Name, train.Count, test.Count));
        }
        return result;
    }

    /// <summary>The unlabelled inputs of a task's TRAIN side (review texts, or words), in file order, deduplicated.</summary>
    public static List<string> TrainInputs(string tasksDir, TaskSpec t)
    {
        var path = Path.Combine(tasksDir, t.Name + ".train.tsv");
        if (!File.Exists(path)) throw new SoftPromptException($"{path}: not found (run `softprompt pretrain split-tasks` first).");
        var seen = new HashSet<string>(StringComparer.Ordinal);
        var list = new List<string>();
        foreach (var line in File.ReadLines(path))
        {
            var cols = line.Split('\t');
            if (cols.Length == 2 && seen.Add(cols[t.TextColumn])) list.Add(cols[t.TextColumn]);
        }
        return list;
    }
}
