namespace SoftPrompt.Data;

/// <summary>One training example: rendered prompt and target text, where it came from (file, 1-based physical line
/// where its record starts) and the raw field values.</summary>
public sealed record Example(string Prompt, string Target, string File, int Line, IReadOnlyDictionary<string, string> Fields)
{
    /// <summary><c>file:line</c>, for messages.</summary>
    public string Location => $"{File}:{Line}";
}

/// <summary>Result of <see cref="DatasetReader.Read"/>. <see cref="Problems"/> holds every bad line as
/// <c>file:line: reason</c> (only non-empty with <see cref="DataOptions.SkipBadLines"/>).</summary>
public sealed record DatasetReadResult(IReadOnlyList<Example> Examples, int Skipped, IReadOnlyList<string> Problems);

/// <summary>A dataset file could not be used; the message names the file (and lines).</summary>
public class DatasetException : SoftPromptException
{
    public IReadOnlyList<string> Problems { get; }
    public DatasetException(string message, IReadOnlyList<string>? problems = null) : base(message) => Problems = problems ?? Array.Empty<string>();
}
