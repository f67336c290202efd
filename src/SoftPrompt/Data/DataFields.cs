using System.ComponentModel;

namespace SoftPrompt.Data;

/// <summary>
/// The data settings every command that reads a task file shares (train, eval, search-hard-prompt): which fields hold
/// the input and the target, the templates, headerless-file columns and bad-line handling. The option records of those
/// commands derive from it, so each setting is one config key and one CLI option, defined once.
/// </summary>
public abstract record DataFields
{
    [Description("Field of each example holding the input.")] public string InputField { get; init; } = "input";
    [Description("Field of each example holding the target.")] public string OutputField { get; init; } = "output";
    [Description("Template of the prompt side, e.g. \"Review: {review}\\nSentiment:\" (default: the input field).")] public string? PromptTemplate { get; init; }
    [Description("Template of the target side, e.g. \" {label}\" (default: the output field after one space).")] public string? TargetTemplate { get; init; }
    [Description("Column names for headerless TSV/CSV files, comma-separated (default input,output).")] public string? Columns { get; init; }
    [Description("Skip malformed lines (reported with a count) instead of refusing to start.")] public bool SkipBadLines { get; init; }
    [Description("Label word (verbalizer) LABEL=WORD, repeatable: the model is trained and scored on WORD where the data says LABEL (e.g. positive=good); reports keep LABEL.")] public string[] LabelWords { get; init; } = Array.Empty<string>();

    /// <summary>The reader's options for these settings.</summary>
    public DataOptions DataOptions() => new()
    {
        InputField = InputField, OutputField = OutputField, PromptTemplate = PromptTemplate, TargetTemplate = TargetTemplate,
        Columns = Columns?.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries),
        SkipBadLines = SkipBadLines,
        LabelWords = ParseLabelWords(LabelWords),
    };

    /// <summary>Parses LABEL=WORD pairs (the first '=' splits; the word is used as written, spaces included).</summary>
    public static IReadOnlyDictionary<string, string>? ParseLabelWords(IReadOnlyList<string> pairs)
    {
        if (pairs.Count == 0) return null;
        var map = new Dictionary<string, string>(StringComparer.Ordinal);
        var byWord = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var p in pairs)
        {
            int eq = p.IndexOf('=');
            if (eq <= 0 || eq == p.Length - 1 || p[(eq + 1)..].Trim().Length == 0)
                throw new SoftPromptException($"--label-words \"{p}\": expected LABEL=WORD, e.g. positive=good.");
            string label = p[..eq].Trim(), word = p[(eq + 1)..];
            if (label.Length == 0) throw new SoftPromptException($"--label-words \"{p}\": the label before '=' is empty.");
            if (!map.TryAdd(label, word)) throw new SoftPromptException($"--label-words: label \"{label}\" is given twice.");
            if (!byWord.TryAdd(word.Trim(), label))
                throw new SoftPromptException($"--label-words: labels \"{byWord[word.Trim()]}\" and \"{label}\" both map to \"{word.Trim()}\"; rank classification could not tell them apart.");
        }
        return map;
    }
}

/// <summary>The data settings alone, without a command around them (e.g. to build <see cref="Data.DataOptions"/> in code).</summary>
public sealed record DataSettings : DataFields;
