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

    /// <summary>The reader's options for these settings.</summary>
    public DataOptions DataOptions() => new()
    {
        InputField = InputField, OutputField = OutputField, PromptTemplate = PromptTemplate, TargetTemplate = TargetTemplate,
        Columns = Columns?.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries),
        SkipBadLines = SkipBadLines,
    };
}
