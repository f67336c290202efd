namespace SoftPrompt;

/// <summary>
/// An error in what the user gave us (a file, a key, an option), with a message meant to be read by a person:
/// it names the file / line / key and says what was expected. The CLI prints the message and exits non-zero
/// instead of a stack trace.
/// </summary>
public class SoftPromptException : Exception
{
    public SoftPromptException(string message) : base(message) { }
    public SoftPromptException(string message, Exception? inner) : base(message, inner) { }
}
