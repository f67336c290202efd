namespace SoftPrompt.Data;

/// <summary>
/// How a dataset file becomes (prompt, target) text pairs.
/// </summary>
/// <remarks>
/// <para><b>Templates.</b> <see cref="PromptTemplate"/> and <see cref="TargetTemplate"/> use <c>{field}</c> placeholders;
/// <c>{{</c> and <c>}}</c> stand for literal braces. Any other lone brace is an error.</para>
/// <para><b>Default prompt</b> (PromptTemplate null): the value of <see cref="InputField"/>, as is.</para>
/// <para><b>Default target</b> (TargetTemplate null): the value of <see cref="OutputField"/> with exactly ONE leading
/// space added, unless the value already starts with whitespace. Chosen because BPE tokenizers (GPT-2, Llama-3, Qwen)
/// encode a word after a prompt as " word": "Sentiment:" + " great" tokenizes the way the model saw such text in
/// pre-training, whereas "great" glued to the prompt would be an unnatural token. With an explicit TargetTemplate
/// nothing is added: write the space yourself (" {label}").</para>
/// </remarks>
public sealed record DataOptions
{
    /// <summary>Field holding the prompt text when <see cref="PromptTemplate"/> is null.</summary>
    public string InputField { get; init; } = "input";

    /// <summary>Field holding the target text when <see cref="TargetTemplate"/> is null.</summary>
    public string OutputField { get; init; } = "output";

    /// <summary>null = the input field's value as is; else e.g. <c>"Review: {review}\nSentiment:"</c>.</summary>
    public string? PromptTemplate { get; init; }

    /// <summary>null = <c>" " + output</c> (one leading space unless it starts with whitespace); else e.g. <c>" {label}"</c>.</summary>
    public string? TargetTemplate { get; init; }

    /// <summary>"auto" (by extension: .jsonl/.ndjson, .tsv, .csv), "jsonl", "tsv" or "csv".</summary>
    public string Format { get; init; } = "auto";

    /// <summary>
    /// TSV/CSV only. null = auto: the first row is a header if it contains every field name the templates reference
    /// (with explicit <see cref="Columns"/>: only if the first row equals them). true/false force it.
    /// </summary>
    public bool? HasHeader { get; init; }

    /// <summary>
    /// TSV/CSV column names for a headerless file. null = <c>[InputField, OutputField]</c>, i.e. "input","output"
    /// by default (the shared task files are headerless <c>input TAB label</c>).
    /// </summary>
    public IReadOnlyList<string>? Columns { get; init; }

    /// <summary>false: any bad line throws <see cref="DatasetException"/>. true: bad lines are skipped and reported.</summary>
    public bool SkipBadLines { get; init; }

    /// <summary>
    /// Verbalizer: label value (of the label field: the output field, or the one field of the target template) ->
    /// the word the model is trained and scored on in its place. null = labels are used as written. When given,
    /// every example's label must have a word; <see cref="Example.Fields"/> keeps the original label, so metrics and
    /// reports speak of the data's labels.
    /// </summary>
    public IReadOnlyDictionary<string, string>? LabelWords { get; init; }

    /// <summary>The field that holds the label: the output field, or the one field the target template uses.</summary>
    public string LabelField()
    {
        if (TargetTemplate is null) return OutputField;
        var fields = new Template(TargetTemplate).Fields;
        if (fields.Count != 1)
            throw new SoftPromptException($"classification needs a target template with exactly one field (the label), but \"{TargetTemplate}\" uses {fields.Count}: {string.Join(", ", fields)}.");
        return fields[0];
    }

    /// <summary>The text the model sees for a label: its label word when <see cref="LabelWords"/> is set, else the label.</summary>
    public string Verbalize(string label) =>
        LabelWords is null ? label : LabelWords.TryGetValue(label, out var w) ? w : throw new SoftPromptException(NoLabelWord(label) + ".");

    /// <summary>The error for a label that <see cref="LabelWords"/> does not cover.</summary>
    public string NoLabelWord(string label) =>
        $"label \"{label}\" has no label word (--label-words gives {string.Join(", ", (LabelWords?.Keys ?? Enumerable.Empty<string>()).Select(k => $"\"{k}\""))})";

    /// <summary>How many problems an error message lists (the total is always given).</summary>
    public int MaxBadLinesReported { get; init; } = 20;
}
