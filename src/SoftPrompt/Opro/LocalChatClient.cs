using System.Runtime.CompilerServices;
using System.Text;
using System.Text.Json;
using Microsoft.Extensions.AI;
using SoftPrompt.Evaluation;
using SoftPrompt.Inference;
using TorchSharp;

namespace SoftPrompt.Opro;

/// <summary>
/// The chat format of a local model, detected from the <c>chat_template</c> in its tokenizer_config.json: ChatML
/// (Qwen and others: &lt;|im_start|&gt;), Llama 3 (&lt;|start_header_id|&gt;), Mistral / Llama 2 ([INST]), or none (a base
/// model: the text is continued as is, and OPRO uses its plain pre-trained-optimizer meta-prompt). Rendering is
/// written per family rather than by running the Jinja template (no Jinja engine for .NET is in the package list).
/// </summary>
public sealed record ChatFormat(string Kind)
{
    public static readonly ChatFormat None = new("none");
    public bool IsBase => Kind == "none";

    public static ChatFormat Detect(string modelDir)
    {
        var path = Path.Combine(modelDir, "tokenizer_config.json");
        if (!File.Exists(path)) return None;
        string? template = null;
        try
        {
            using var doc = JsonDocument.Parse(File.ReadAllText(path));
            if (doc.RootElement.ValueKind == JsonValueKind.Object && doc.RootElement.TryGetProperty("chat_template", out var t))
                template = t.ValueKind switch
                {
                    JsonValueKind.String => t.GetString(),
                    // A list of named templates: take "default" (else the first).
                    JsonValueKind.Array => t.EnumerateArray().Select(x => x.TryGetProperty("template", out var tt) ? (x.TryGetProperty("name", out var n) ? n.GetString() : null, tt.GetString()) : (null, null))
                        .OrderBy(x => x.Item1 == "default" ? 0 : 1).Select(x => x.Item2).FirstOrDefault(),
                    _ => null,
                };
        }
        catch (JsonException e) { throw new SoftPromptException($"{path}: invalid JSON ({e.Message})."); }
        return FromTemplate(template);
    }

    public static ChatFormat FromTemplate(string? template) =>
        template is null ? None
        : template.Contains("<|im_start|>") ? new("chatml")
        : template.Contains("<|start_header_id|>") ? new("llama3")
        : template.Contains("[INST]") ? new("mistral")
        : None;

    /// <summary>The prompt text (special tokens written out; the tokenizer maps them to their ids) and whether the
    /// tokenizer should add its own BOS.</summary>
    public (string Text, bool AddSpecial) Render(IEnumerable<ChatMessage> messages)
    {
        var list = messages.ToList();
        var sb = new StringBuilder();
        switch (Kind)
        {
            case "chatml":
                foreach (var m in list) sb.Append("<|im_start|>").Append(m.Role.Value).Append('\n').Append(m.Text).Append("<|im_end|>\n");
                sb.Append("<|im_start|>assistant\n");
                return (sb.ToString(), false);
            case "llama3":
                sb.Append("<|begin_of_text|>");
                foreach (var m in list) sb.Append("<|start_header_id|>").Append(m.Role.Value).Append("<|end_header_id|>\n\n").Append(m.Text.Trim()).Append("<|eot_id|>");
                sb.Append("<|start_header_id|>assistant<|end_header_id|>\n\n");
                return (sb.ToString(), false);
            case "mistral":
                // Mistral's template has no system role: a system message is put before the first user turn.
                var system = string.Join("\n\n", list.Where(m => m.Role == ChatRole.System).Select(m => m.Text));
                bool first = true;
                foreach (var m in list.Where(m => m.Role != ChatRole.System))
                {
                    if (m.Role == ChatRole.User)
                    {
                        sb.Append("[INST] ").Append(first && system.Length > 0 ? system + "\n\n" : "").Append(m.Text.Trim()).Append(" [/INST]");
                        first = false;
                    }
                    else sb.Append(' ').Append(m.Text.Trim()).Append("</s>");
                }
                return (sb.ToString(), true);
            default:
                return (string.Join("\n\n", list.Select(m => m.Text)), true);
        }
    }

    /// <summary>The token that ends an assistant turn in this format (besides the tokenizer's EOS).</summary>
    public string? EndOfTurn => Kind switch { "chatml" => "<|im_end|>", "llama3" => "<|eot_id|>", _ => null };
}

/// <summary>
/// An <see cref="IChatClient"/> over a local model run in-process with the project's own generator: the messages are
/// rendered with the model's <see cref="ChatFormat"/>, sampled at the request's temperature (seeded when the request
/// has a seed), stopped at EOS, the end-of-turn token, or (for a "\n" stop sequence) the first newline. Calls are
/// serialised (one model). Usage is the prompt and generated token counts.
/// </summary>
public sealed class LocalChatClient : IChatClient
{
    readonly LanguageModel _lm;
    readonly bool _owns;
    readonly object _lock = new();
    readonly int[] _stop;
    public ChatFormat Format { get; }

    public LocalChatClient(LanguageModel lm, ChatFormat format, bool ownsModel = false)
    {
        _lm = lm; _owns = ownsModel; Format = format;
        var tok = lm.RequireTokenizer();
        var stop = lm.EosIds.ToList();
        if (format.EndOfTurn is string eot && tok.Encode(eot, false) is { Length: 1 } e) stop.Add(e[0]);
        _stop = stop.Distinct().ToArray();
    }

    public static LocalChatClient Load(string modelDir, string device, string dtype) =>
        new(LanguageModel.Load(modelDir, device, dtype), ChatFormat.Detect(modelDir), ownsModel: true);

    public Task<ChatResponse> GetResponseAsync(IEnumerable<ChatMessage> messages, ChatOptions? options = null, CancellationToken cancellationToken = default)
    {
        cancellationToken.ThrowIfCancellationRequested();
        var tok = _lm.RequireTokenizer();
        var (text, addSpecial) = Format.Render(messages);
        var ids = tok.Encode(text, addSpecial);
        int maxNew = options?.MaxOutputTokens ?? 256;
        int room = Math.Max(1, _lm.Model.Config.MaxPositions - maxNew);
        if (ids.Length > room) ids = PromptBuilder.Truncate(ids, tok.PrefixIds.Count, room, out _); // keep the end: the request is there
        var stop = _stop.ToList();
        if (options?.StopSequences?.Contains("\n") == true) stop.AddRange(Evaluator.NewlineIds(tok));
        GenerationResult r;
        lock (_lock)
        {
            using var scope = torch.NewDisposeScope();
            r = Generator.Generate(_lm.Model, ids, new GenerationOptions
            {
                MaxNewTokens = maxNew, Temperature = options?.Temperature ?? 1.0, Seed = options?.Seed, EosIds = stop,
            });
        }
        var reply = tok.Decode(r.NewIds.Where(id => !_stop.Contains(id)), skipSpecialTokens: true);
        var response = new ChatResponse(new ChatMessage(ChatRole.Assistant, reply))
        {
            Usage = new UsageDetails { InputTokenCount = ids.Length, OutputTokenCount = r.NewIds.Length, TotalTokenCount = ids.Length + r.NewIds.Length },
            FinishReason = r.StopReason == "eos" ? ChatFinishReason.Stop : ChatFinishReason.Length,
            ModelId = Path.GetFileName(Path.GetFullPath(_lm.Directory).TrimEnd(Path.DirectorySeparatorChar)),
        };
        return Task.FromResult(response);
    }

    public async IAsyncEnumerable<ChatResponseUpdate> GetStreamingResponseAsync(IEnumerable<ChatMessage> messages, ChatOptions? options = null,
        [EnumeratorCancellation] CancellationToken cancellationToken = default)
    {
        var r = await GetResponseAsync(messages, options, cancellationToken).ConfigureAwait(false);
        foreach (var u in r.ToChatResponseUpdates()) yield return u;
    }

    public object? GetService(Type serviceType, object? serviceKey = null) => serviceType.IsInstanceOfType(this) ? this : null;

    bool _disposed;
    public void Dispose() { if (_owns && !_disposed) _lm.Dispose(); _disposed = true; }
}
