namespace SoftPrompt.Tokenization;

/// <summary>Thrown when tokenizer files are absent, malformed or describe a tokenizer this loader cannot reproduce exactly.
/// The message names the file and, where relevant, the JSON key.</summary>
public sealed class TokenizerLoadException : SoftPromptException
{
    public string? FilePath { get; }
    public TokenizerLoadException(string message, string? filePath = null, Exception? inner = null) : base(message, inner) => FilePath = filePath;
}
