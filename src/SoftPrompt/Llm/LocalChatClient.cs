using System.Runtime.CompilerServices;
using System.Text.Json;
using System.Text;
using Microsoft.Extensions.AI;
using SoftPrompt.Inference;
using SoftPrompt.Scoring;
using SoftPrompt.Tokenization;
using TorchSharp;

namespace SoftPrompt.Llm;

/// <summary>
/// How a local model is prompted: with its chat template's family (<see cref="ChatTemplate"/>, shared with the
/// server) or, for a base model without one, as plain text that it continues (OPRO then uses its plain
/// pre-trained-optimizer meta-prompt).
/// </summary>
public sealed record ChatFormat(ChatTemplate? Template)
{
    public static readonly ChatFormat None = new((ChatTemplate?)null);
    public bool IsBase => Template is null;
    public string Kind => Template?.Family ?? "none";

    /// <summary>From the model folder's tokenizer_config.json; a template of an unsupported family counts as none.</summary>
    public static ChatFormat Detect(string modelDir) => new(ChatTemplate.Detect(modelDir, out _));

    public static ChatFormat FromTemplate(string? template) => template is null ? None : new(ChatTemplate.FromTemplate(template, out _));

    /// <summary>The prompt text and whether the tokenizer should add its own special tokens (only for a base model:
    /// a chat template writes them out).</summary>
    public (string Text, bool AddSpecial) Render(IEnumerable<ChatMessage> messages)
    {
        var list = messages.ToList();
        return Template is null
            ? (string.Join("\n\n", list.Select(m => m.Text)), true)
            : (Template.Render(list.Select(m => new ChatTurn(m.Role.Value, m.Text)).ToList()), false);
    }
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
        foreach (var eot in format.Template?.EndOfTurn ?? Array.Empty<string>())
            if (tok.Encode(eot, false) is { Length: 1 } e) stop.Add(e[0]);
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
        if (options?.StopSequences?.Contains("\n") == true) stop.AddRange(TokenSets.NewlineIds(tok));
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
