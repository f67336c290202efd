using System.Text.Json.Serialization;
using System.Text.Json;
using SoftPrompt.IO;
using SoftPrompt.Tokenization;

namespace SoftPrompt.Tuning;

/// <summary>
/// A discrete prompt: token ids placed after the tokenizer's leading special tokens (BOS) and before the example's
/// prompt text. Instructions, few-shot demonstrations, projected soft prompts and searched prompts are all of this
/// form, so every hard-prompt baseline is evaluated by the same code. Stored as JSON
/// (<c>{"text": ..., "token_ids": [...], "score": ..., "objective": ..., "source": ...}</c>) by
/// <c>search-hard-prompt</c> and read back by <c>eval</c>.
/// </summary>
public sealed record HardPrompt
{
    [JsonPropertyName("text")] public string Text { get; init; } = "";
    [JsonPropertyName("token_ids")] public int[] TokenIds { get; init; } = Array.Empty<int>();
    [JsonPropertyName("score")] public double? Score { get; init; }
    [JsonPropertyName("objective")] public string? Objective { get; init; }
    [JsonPropertyName("source")] public string? Source { get; init; }
    /// <summary>Where the ids go: null / "before" the example's prompt text (the default), or "after" it (OPRO's q_end and
    /// a_begin instruction positions; the separator is part of the ids).</summary>
    [JsonPropertyName("position")] [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] public string? Position { get; init; }

    public const string FileName = "hard_prompt.json";

    /// <summary>Prompt ids for an example: tokenizer prefix (BOS) + hard prompt ids + the example's prompt text.</summary>
    public static int[] BuildPromptIds(HfTokenizer tok, IReadOnlyList<int> hardPromptIds, string promptText) =>
        tok.PrefixIds.Concat(hardPromptIds).Concat(tok.Encode(promptText, addSpecialTokens: false)).ToArray();

    /// <summary>This prompt's ids for an example, placed as <see cref="Position"/> says.</summary>
    public int[] PromptIds(HfTokenizer tok, string promptText) => Position == "after"
        ? tok.PrefixIds.Concat(tok.Encode(promptText, addSpecialTokens: false)).Concat(TokenIds).ToArray()
        : BuildPromptIds(tok, TokenIds, promptText);

    /// <summary>A hard prompt from text (an instruction, demonstrations): its tokens without special tokens.</summary>
    public static HardPrompt FromText(HfTokenizer tok, string text, string? source = null) =>
        new() { Text = text, TokenIds = tok.Encode(text, addSpecialTokens: false), Source = source };

    public void Save(string path) => AtomicFile.WriteAllText(path, JsonSerializer.Serialize(this, IO.JsonFile.WithNonFiniteAsNull(new JsonSerializerOptions { WriteIndented = true })) + "\n");

    /// <summary>Reads a hard prompt file, or <see cref="FileName"/> inside a run folder.</summary>
    public static HardPrompt Load(string pathOrDir)
    {
        var path = Directory.Exists(pathOrDir) ? Path.Combine(pathOrDir, FileName) : pathOrDir;
        if (!File.Exists(path) && new FileInfo(path).LinkTarget is null) throw new SoftPromptException($"{path}: hard prompt file not found.");
        var text = IO.InputFile.ReadAllText(path);
        try
        {
            var hp = JsonSerializer.Deserialize<HardPrompt>(text, new JsonSerializerOptions { AllowDuplicateProperties = false }) ?? throw new SoftPromptException($"{path}: empty file.");
            if (hp.Text is null || hp.TokenIds is null) throw new SoftPromptException($"{path}: 'text' must be a string and 'token_ids' an array of integers, not null.");
            if (hp.Position is not (null or "before" or "after")) throw new SoftPromptException($"{path}: 'position' is \"{hp.Position}\"; expected \"before\" or \"after\".");
            // An empty prompt written out as such ("text": "", e.g. OPRO finding the zero-shot prompt best) is valid.
            if (hp.TokenIds.Length == 0 && hp.Text.Length == 0 && !(System.Text.Json.Nodes.JsonNode.Parse(text) is System.Text.Json.Nodes.JsonObject o0 && o0.ContainsKey("text"))) throw new SoftPromptException($"{path}: neither 'text' nor 'token_ids' is given.");
            return hp;
        }
        catch (JsonException e) { throw IO.JsonFile.Invalid(path, text, e); }
    }
}
