using System.Text;
using System.Text.Json.Nodes;

namespace SoftPrompt.Inference;

/// <summary>One turn of a conversation: role (system, user, assistant) and text.</summary>
public sealed record ChatTurn(string Role, string Content);

/// <summary>
/// Chat prompt formats by family, recognised from the <c>chat_template</c> in tokenizer_config.json. Hugging Face
/// stores a Jinja template; rather than embed a Jinja interpreter for five well-known formats, each family's
/// layout is written out here (the formats are fixed by the model families, and a template from another family is
/// refused with a clear message instead of being rendered wrongly). One implementation for every user: the server's
/// /v1/chat/completions and OPRO's local optimizer model. The rendered text writes the special tokens out (BOS
/// included where the family starts with one): encode it without adding special tokens.
/// </summary>
public sealed class ChatTemplate
{
    public string Family { get; }
    /// <summary>Strings that end the assistant's turn (their token ids are added to the stop ids).</summary>
    public IReadOnlyList<string> EndOfTurn { get; }
    readonly Func<IReadOnlyList<ChatTurn>, string> _render;

    ChatTemplate(string family, string[] eot, Func<IReadOnlyList<ChatTurn>, string> render) { Family = family; EndOfTurn = eot; _render = render; }

    /// <summary>The prompt text: the conversation, then the opening of the assistant's turn.</summary>
    public string Render(IReadOnlyList<ChatTurn> messages) => _render(messages);

    public static ChatTemplate ChatMl { get; } = new("chatml", new[] { "<|im_end|>" }, ms =>
    {
        var sb = new StringBuilder();
        foreach (var m in ms) sb.Append("<|im_start|>").Append(m.Role).Append('\n').Append(m.Content).Append("<|im_end|>\n");
        return sb.Append("<|im_start|>assistant\n").ToString();
    });

    public static ChatTemplate Llama3 { get; } = new("llama3", new[] { "<|eot_id|>" }, ms =>
    {
        var sb = new StringBuilder("<|begin_of_text|>");
        foreach (var m in ms) sb.Append("<|start_header_id|>").Append(m.Role).Append("<|end_header_id|>\n\n").Append(m.Content.Trim()).Append("<|eot_id|>");
        return sb.Append("<|start_header_id|>assistant<|end_header_id|>\n\n").ToString();
    });

    /// <summary>Mistral / Llama 2 instruct: a system message is put before the first user turn.</summary>
    public static ChatTemplate Inst { get; } = new("mistral-inst", new[] { "</s>" }, ms =>
    {
        var sb = new StringBuilder("<s>");
        string? system = null;
        foreach (var m in ms)
        {
            switch (m.Role)
            {
                case "system": system = system is null ? m.Content : system + "\n\n" + m.Content; break;
                case "user":
                    var content = system is null ? m.Content : system + "\n\n" + m.Content;
                    system = null;
                    sb.Append("[INST] ").Append(content.Trim()).Append(" [/INST]");
                    break;
                case "assistant": sb.Append(' ').Append(m.Content.Trim()).Append("</s>"); break;
            }
        }
        return sb.ToString();
    });

    /// <summary>Gemma / Gemma 2: <c>&lt;start_of_turn&gt;user|model … &lt;end_of_turn&gt;</c> after BOS, contents trimmed.
    /// Their own template refuses a system turn; here it is put before the first user turn (as Gemma 3's template does)
    /// rather than failing a chat request.</summary>
    public static ChatTemplate Gemma { get; } = new("gemma", new[] { "<end_of_turn>" }, ms =>
    {
        var sb = new StringBuilder("<bos>");
        string? system = null;
        foreach (var m in ms)
        {
            if (m.Role == "system") { system = system is null ? m.Content.Trim() : system + "\n\n" + m.Content.Trim(); continue; }
            var content = m.Content.Trim();
            if (m.Role == "user" && system is not null) { content = system + "\n\n" + content; system = null; }
            sb.Append("<start_of_turn>").Append(m.Role == "assistant" ? "model" : m.Role).Append('\n').Append(content).Append("<end_of_turn>\n");
        }
        return sb.Append("<start_of_turn>model\n").ToString();
    });

    /// <summary>Phi-3 / Phi-3.5 (the template with a system turn, no BOS): <c>&lt;|user|&gt;\n… &lt;|end|&gt;\n</c>, then
    /// <c>&lt;|assistant|&gt;\n</c>. An empty system message is left out, as Phi-3.5's template does.</summary>
    public static ChatTemplate Phi3 { get; } = new("phi3", new[] { "<|end|>", "<|endoftext|>" }, ms =>
    {
        var sb = new StringBuilder();
        foreach (var m in ms)
        {
            if (m.Role is not ("system" or "user" or "assistant") || (m.Role == "system" && m.Content.Length == 0)) continue;
            sb.Append("<|").Append(m.Role).Append("|>\n").Append(m.Content).Append("<|end|>\n");
        }
        return sb.Append("<|assistant|>\n").ToString();
    });

    /// <summary>The family of the model folder's chat template; null when it has none or one of another family
    /// (<paramref name="why"/> says which). An unreadable tokenizer_config.json is an error naming it.</summary>
    public static ChatTemplate? Detect(string modelDir, out string why)
    {
        var path = Path.Combine(modelDir, "tokenizer_config.json");
        why = $"{path}: no chat_template";
        if (!File.Exists(path)) { why = $"{modelDir}: no tokenizer_config.json with a chat_template"; return null; }
        string? template = null;
        try
        {
            var node = JsonNode.Parse(File.ReadAllText(path))?["chat_template"];
            if (node is JsonValue v && v.TryGetValue<string>(out var s)) template = s;
            else if (node is JsonArray arr)   // [{"name": "default", "template": "..."}, ...]
                template = arr.OfType<JsonObject>().FirstOrDefault(o => o["name"]?.GetValue<string>() == "default")?["template"]?.GetValue<string>();
        }
        catch (System.Text.Json.JsonException e) { throw new SoftPromptException($"{path}: invalid JSON ({e.Message})."); }
        catch (InvalidOperationException e) { throw new SoftPromptException($"{path}: 'chat_template' is not a string or a list of named templates ({e.Message})."); }
        if (template is null) return null;
        return FromTemplate(template, out why, path);
    }

    public static ChatTemplate? FromTemplate(string template, out string why, string source = "chat_template")
    {
        why = "";
        if (template.Contains("<|im_start|>")) return ChatMl;
        if (template.Contains("<|start_header_id|>")) return Llama3;
        if (template.Contains("[INST]")) return Inst;
        if (template.Contains("<start_of_turn>")) return Gemma;
        // Zephyr-style templates (TinyLlama-Chat) also say <|user|> but end turns with </s>: only Phi-3's ends them with <|end|>.
        if (template.Contains("<|user|>") && template.Contains("<|end|>")) return Phi3;
        why = $"{source}: the chat template is not one of the supported families (ChatML/Qwen, Llama 3, Mistral/Llama 2 [INST], Gemma <start_of_turn>, Phi-3 <|user|>)";
        return null;
    }
}
