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

    static readonly Regex WordPattern = new(@"[\p{L}\p{N}]+(?:['’-][\p{L}\p{N}]+)*", RegexOptions.Compiled);

    /// <summary>
    /// How often each word (lower-cased; letters and digits, with inner apostrophes or hyphens) occurs in the
    /// pretraining TRAINING documents that are running text: the corpus files and the review texts, not the bare
    /// word lists of the word tasks (a word listed there says nothing about its use). Validation documents are left out.
    /// </summary>
    public static Dictionary<string, int> CorpusWordCounts(IEnumerable<CorpusDoc> docs)
    {
        var counts = new Dictionary<string, int>(StringComparer.Ordinal);
        foreach (var d in docs)
        {
            if (d.Validation || (d.Source.StartsWith("task:", StringComparison.Ordinal) && d.Source != "task:fine_foods")) continue;
            foreach (Match m in WordPattern.Matches(d.Text))
            {
                var w = m.Value.ToLowerInvariant();
                counts[w] = counts.GetValueOrDefault(w) + 1;
            }
        }
        return counts;
    }

    /// <summary>
    /// A derived word task: the rows of <paramref name="task"/> (both sides, the split unchanged) whose input word occurs
    /// at least <paramref name="minCount"/> times in the pretraining text (<see cref="CorpusWordCounts"/>), written as
    /// <c>NAME.train.tsv</c> / <c>NAME.test.tsv</c>. A small model cannot know what a word it has (almost) never read
    /// means; this keeps the words it could. Returns the row counts.
    /// </summary>
    /// <summary>The spec of a word task (input = one word), or a clear error naming the known ones.</summary>
    public static TaskSpec WordTask(string task)
    {
        var spec = Tasks.FirstOrDefault(t => t.Name == task) ?? throw new SoftPromptException($"--task {task}: unknown task (known: {string.Join(", ", Tasks.Select(t => t.Name))}).");
        return spec.Name == "fine_foods" ? throw new SoftPromptException("--task fine_foods: not a word task.") : spec;
    }

    public static (int Train, int Test) WriteSeenWords(string tasksDir, string task, string name, IReadOnlyDictionary<string, int> counts, int minCount)
    {
        var spec = WordTask(task);
        if (minCount < 1) throw new SoftPromptException($"--min-count must be at least 1 (got {minCount}).");
        var result = new int[2];
        string[] sides = ["train", "test"];
        for (int k = 0; k < 2; k++)
        {
            var src = Path.Combine(tasksDir, $"{task}.{sides[k]}.tsv");
            if (!File.Exists(src)) throw new SoftPromptException($"{src}: not found (run `softprompt pretrain split-tasks` first).");
            var kept = File.ReadLines(src).Where(l =>
            {
                var cols = l.Split('\t');
                return cols.Length == 2 && counts.GetValueOrDefault(cols[spec.TextColumn].Trim().ToLowerInvariant()) >= minCount;
            }).ToList();
            if (kept.Count == 0) throw new SoftPromptException($"{src}: no word occurs {minCount} times in the corpus; lower --min-count.");
            IO.AtomicFile.WriteAllText(Path.Combine(tasksDir, $"{name}.{sides[k]}.tsv"), string.Join("\n", kept) + "\n");
            result[k] = kept.Count;
        }
        return (result[0], result[1]);
    }
}
