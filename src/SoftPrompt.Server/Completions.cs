using System.Diagnostics;
using System.Text.Json;
using Microsoft.AspNetCore.Http;
using SoftPrompt.Inference;

namespace SoftPrompt.Server;

/// <summary>
/// One POST /v1/completions or /v1/chat/completions: parses and checks the request, submits one sequence per prompt
/// and choice to the shared engine, and answers as one JSON object or as server-sent events. Stop strings are found in
/// the decoded text (the sequence is then cancelled); text that could still become a stop string, or an incomplete
/// UTF-8 character, is held back from the stream until it is known.
/// </summary>
sealed class Completions
{
    sealed class Choice
    {
        public required int Index;
        public required PromptInput Prompt;
        public required SequenceHandle Handle;
        public readonly List<GeneratedToken> Tokens = new();
        public string Text = "";
        public int EmittedChars, EmittedTokens, Generated;
        public string? Finish;
    }

    sealed record PromptInput(int[] Ids, string Text);

    readonly SoftPromptServer _srv;
    readonly SoftPromptServer.Loaded _s;
    readonly HttpContext _ctx;
    readonly long _t0 = Stopwatch.GetTimestamp();
    readonly string _id;
    readonly long _created = DateTimeOffset.UtcNow.ToUnixTimeSeconds();
    readonly SemaphoreSlim _write = new(1, 1);
    bool _chat, _echo, _firstToken;
    int? _logprobs;
    string _model = "";
    string[] _stops = Array.Empty<string>();
    HashSet<int> _eos = new();
    readonly List<string> _chatStops = new();
    /// <summary>Cancelled when the client leaves or the request passes --request-timeout.</summary>
    CancellationToken _cancel;
    CancellationTokenSource? _deadline;

    public Completions(SoftPromptServer srv, SoftPromptServer.Loaded s, HttpContext ctx)
    {
        _srv = srv; _s = s; _ctx = ctx;
        _id = Guid.NewGuid().ToString("N")[..24];
    }

    public async Task RunAsync(bool chat)
    {
        var o = SoftPromptServerOptions;
        using var deadline = CancellationTokenSource.CreateLinkedTokenSource(_ctx.RequestAborted);
        if (o.RequestTimeoutSeconds > 0) deadline.CancelAfter(TimeSpan.FromSeconds(o.RequestTimeoutSeconds));
        _deadline = deadline;
        _cancel = deadline.Token;
        try { await RunCoreAsync(chat); }
        catch (Exception e) when (e is not (ApiError or BadHttpRequestException) && !_ctx.RequestAborted.IsCancellationRequested) { throw ToApiError(e); }
    }

    /// <summary>What the client is told when generation fails: a timeout is 408, a sequence that failed alone 500
    /// (logged), a stopping engine 503; other faults 500 (logged, no stack trace).</summary>
    ApiError ToApiError(Exception e)
    {
        while (e is System.Threading.Channels.ChannelClosedException { InnerException: { } inner }) e = inner;
        if (e is AggregateException { InnerException: { } ai }) e = ai;
        switch (e)
        {
            case ApiError a: return a;
            case OperationCanceledException when _deadline?.IsCancellationRequested == true && !_ctx.RequestAborted.IsCancellationRequested:
                return new ApiError(408, $"the request took longer than the server's limit of {SoftPromptServerOptions.RequestTimeoutSeconds} s (--request-timeout).", code: "request_timeout");
            case EngineStoppedException: return new ApiError(503, e.Message, code: "shutting_down");
            case SequenceFailedException:
                SoftPromptServerOptions.Log?.Invoke($"sequence failed ({_model}): {e.Message}{(e.InnerException is { } i ? $" [{i.GetType().Name}: {i.Message}]" : "")}");
                return new ApiError(500, $"generation failed for this request: {e.Message}", code: "generation_failed");
        }
        SoftPromptServerOptions.Log?.Invoke($"error: {_ctx.Request.Path}: {e.GetType().Name}: {e.Message}");
        return new ApiError(500, "internal error during generation (the server log has the details).");
    }

    async Task RunCoreAsync(bool chat)
    {
        _chat = chat;
        var o = SoftPromptServerOptions;
        var f = new RequestFields(await SoftPromptServer.ReadJsonAsync(_ctx));
        _model = f.String("model", required: true)!;
        var lm = _s.Lm;
        _eos = new HashSet<int>(lm.EosIds);
        var prompts = chat ? ChatPrompt(f) : TextPrompts(f);
        int cap = o.MaxTokens;
        int? maxTokens = chat && f.Has("max_completion_tokens") ? f.Int("max_completion_tokens", 1, cap) : f.Int("max_tokens", 1, cap);
        double temperature = f.Double("temperature", 0, 2) ?? 1.0;
        double topP = f.Double("top_p", 0, 1, minExclusive: true) ?? 1.0;
        long? seed = f.Long("seed");
        _stops = f.Stop().Concat(_chatStops).ToArray();
        int n = f.Int("n", 1, o.MaxChoices) ?? 1;
        if (chat) _logprobs = f.Bool("logprobs", false) ? f.Int("top_logprobs", 0, 20) ?? 0 : null;
        else _logprobs = f.Int("logprobs", 0, 20);
        _echo = !chat && f.Bool("echo", false);
        bool stream = f.Bool("stream", false);
        if (f.Bool("ignore_eos", false)) _eos.Clear();   // vLLM's extension: generate max_tokens tokens (benchmarks)
        bool usageInStream = stream && f.Get("stream_options") is { ValueKind: JsonValueKind.Object } so && so.TryGetProperty("include_usage", out var iu) && iu.ValueKind == JsonValueKind.True;
        if (prompts.Count * n > o.MaxChoices) throw ApiError.BadField("n", $"{prompts.Count} prompts x n {n} exceed the server's cap of {o.MaxChoices} sequences per request.");
        // Fields that would change what is generated and are not implemented: refused unless neutral.
        f.Unsupported("best_of", v => v.ValueKind == JsonValueKind.Number && v.TryGetInt32(out var b) && b == n, "only best_of equal to n");
        f.Unsupported("logit_bias", v => v.ValueKind == JsonValueKind.Object && !v.EnumerateObject().Any(), "only an empty object");
        foreach (var field in new[] { "tools", "functions" }) f.Unsupported(field, v => v.ValueKind == JsonValueKind.Array && v.GetArrayLength() == 0, "no tool or function calling");
        foreach (var field in new[] { "tool_choice", "function_call" }) f.Unsupported(field, v => v.ValueKind == JsonValueKind.String && v.GetString() == "none", "no tool or function calling");
        f.Unsupported("response_format", v => v.ValueKind == JsonValueKind.Object && v.TryGetProperty("type", out var t) && t.ValueKind == JsonValueKind.String && t.GetString() == "text", "only {\"type\": \"text\"}");
        f.Unsupported("suffix", v => v.ValueKind == JsonValueKind.String && v.GetString() == "", "no insertion");
        foreach (var field in new[] { "presence_penalty", "frequency_penalty" }) f.Unsupported(field, v => v.ValueKind == JsonValueKind.Number && v.TryGetDouble(out var x) && x == 0, "only 0");
        // A fair share of the queue per client (its remote address), so one client cannot take every slot.
        int sequences = prompts.Count * n;
        var client = _ctx.Connection.RemoteIpAddress?.ToString() ?? "unknown";
        if (!_srv.Shares.TryTake(client, sequences))
            throw new ApiError(429, $"this client already holds its share of {_srv.Shares.PerClient} sequences (queued or running); retry when they finish.", code: "rate_limit_exceeded") { RetryAfterSeconds = 1 };
        try { await GenerateAsync(f, prompts, maxTokens, temperature, topP, seed, n, stream, usageInStream); }
        finally { _srv.Shares.Give(client, sequences); }
    }

    async Task GenerateAsync(RequestFields f, List<PromptInput> prompts, int? maxTokens, double temperature, double topP, long? seed, int n, bool stream, bool usageInStream)
    {
        bool chat = _chat;
        var o = SoftPromptServerOptions;
        int cap = o.MaxTokens;

        AttachedPrompt? adapter = null;
        if (_model != AdapterRegistry.BaseName)
        {
            try { adapter = _s.Adapters.Acquire(_model); }
            catch (SoftPromptException e)
            {
                o.Log?.Invoke($"adapter '{_model}' could not be reloaded: {e.Message}");
                throw new ApiError(500, $"adapter '{_model}' could not be reloaded (the server log has the details).", "model", "adapter_unavailable");
            }
            if (adapter is null) throw SoftPromptServer.UnknownModel(_model);
        }
        var choices = new List<Choice>();
        try
        {
            int idx = 0;
            foreach (var p in prompts)
                for (int j = 0; j < n; j++)
                {
                    int virtualTokens = adapter?.VirtualTokens ?? 0;
                    int mt = maxTokens ?? (chat ? Math.Min(cap, _s.Engine.Capacity - virtualTokens - p.Ids.Length) : 16);
                    if (mt < 1) mt = 1;   // the engine reports that the prompt fills the context
                    var req = new SequenceRequest
                    {
                        PromptIds = p.Ids, Prompt = adapter,
                        Options = new GenerationOptions { MaxNewTokens = mt, Temperature = temperature, TopP = topP, Seed = seed is long sd ? sd + j : null, EosIds = _eos.ToArray() },
                        TopLogprobs = _logprobs ?? 0, PromptLogprobs = _echo && _logprobs is not null,
                    };
                    choices.Add(new Choice { Index = idx++, Prompt = p, Handle = Submit(req) });
                }
        }
        catch
        {
            foreach (var c in choices) c.Handle.Cancel();
            throw;
        }
        finally { adapter?.Release(); }

        _srv.Metrics.PromptTokens.Add(prompts.Sum(p => p.Ids.Length), new KeyValuePair<string, object?>("model", _model));
        if (stream) await StreamAsync(choices, usageInStream);
        else
        {
            await RunAll(choices, null);
            CountCompletion(choices);
            _ctx.Response.ContentType = "application/json";
            await _ctx.Response.WriteAsync(JsonSerializer.Serialize(new Dictionary<string, object?>
            {
                ["id"] = (chat ? "chatcmpl-" : "cmpl-") + _id, ["object"] = chat ? "chat.completion" : "text_completion",
                ["created"] = _created, ["model"] = _model,
                ["choices"] = choices.Select(c => chat ? ChatChoice(c) : TextChoice(c)).ToList(),
                ["usage"] = Usage(prompts, choices),
            }, Json.Options), _cancel);
        }
    }

    /// <summary>Runs every choice; when one fails, its siblings (the other choices of this request) are cancelled at
    /// once rather than generated for an answer that will not be sent.</summary>
    async Task RunAll(List<Choice> choices, Func<Choice, string, int, int, Task>? onDelta) =>
        await Task.WhenAll(choices.Select(async c =>
        {
            try { await RunChoice(c, onDelta); }
            catch
            {
                foreach (var x in choices) x.Handle.Cancel();
                throw;
            }
        }));

    ServerOptions SoftPromptServerOptions => _srv.Options;

    SequenceHandle Submit(SequenceRequest req)
    {
        try { return _s.Engine.Submit(req, _cancel); }
        catch (EngineBusyException e) { throw new ApiError(429, $"the server is busy: {e.Message} Retry shortly.", code: "rate_limit_exceeded") { RetryAfterSeconds = 1 }; }
        catch (EngineStoppedException e) { throw new ApiError(503, e.Message, code: "shutting_down"); }
        catch (ContextLengthException e) { throw new ApiError(400, e.Message, _chat ? "messages" : "prompt", "context_length_exceeded"); }
        catch (SoftPromptException e) { throw new ApiError(400, e.Message, "prompt"); }
    }

    void CountCompletion(List<Choice> choices) =>
        _srv.Metrics.CompletionTokens.Add(choices.Sum(c => c.Generated), new KeyValuePair<string, object?>("model", _model));

    static object Usage(List<PromptInput> prompts, List<Choice> choices)
    {
        int p = prompts.Sum(x => x.Ids.Length), c = choices.Sum(x => x.Generated);
        return new { prompt_tokens = p, completion_tokens = c, total_tokens = p + c };
    }

    // ------------------------------------------------------------------ prompts

    List<PromptInput> TextPrompts(RequestFields f)
    {
        var v = f.Get("prompt") ?? throw ApiError.BadField("prompt", "'prompt' is required (a string, an array of strings, an array of token ids, or an array of arrays of token ids).");
        var result = new List<PromptInput>();
        switch (v.ValueKind)
        {
            case JsonValueKind.String: result.Add(FromText(v.GetString()!)); break;
            case JsonValueKind.Array:
            {
                var items = v.EnumerateArray().ToList();
                if (items.Count == 0) throw ApiError.BadField("prompt", "'prompt' is an empty array.");
                if (items.All(e => e.ValueKind == JsonValueKind.String)) result.AddRange(items.Select(e => FromText(e.GetString()!)));
                else if (items.All(e => e.ValueKind == JsonValueKind.Number)) result.Add(FromIds(items));
                else if (items.All(e => e.ValueKind == JsonValueKind.Array)) result.AddRange(items.Select(e => FromIds(e.EnumerateArray().ToList())));
                else throw ApiError.BadField("prompt", "'prompt' must be a string, an array of strings, an array of token ids, or an array of arrays of token ids.");
                break;
            }
            default: throw ApiError.BadField("prompt", "'prompt' must be a string, an array of strings, an array of token ids, or an array of arrays of token ids.");
        }
        if (result.Count > SoftPromptServerOptions.MaxChoices) throw ApiError.BadField("prompt", $"at most {SoftPromptServerOptions.MaxChoices} prompts per request.");
        return result;
    }

    PromptInput FromText(string text)
    {
        var tok = _s.Lm.Tokenizer ?? throw ApiError.BadField("prompt", "this model has no tokenizer files: send token ids instead of text.");
        var ids = Encode(() => tok.Encode(text), "prompt");
        if (ids.Length == 0) throw ApiError.BadField("prompt", "the prompt is empty (it encodes to no tokens).");
        return new PromptInput(ids, text);
    }

    PromptInput FromIds(List<JsonElement> items)
    {
        if (items.Count == 0) throw ApiError.BadField("prompt", "a token-id prompt is empty.");
        int vocab = _s.Lm.Base.Config.VocabSize;
        var ids = items.Select(e => e.ValueKind == JsonValueKind.Number && e.TryGetInt32(out var id) && id >= 0 && id < vocab ? id
            : throw ApiError.BadField("prompt", $"token ids must be integers in [0, {vocab}) (got {e.GetRawText()}).")).ToArray();
        return new PromptInput(ids, _s.Lm.Decode(ids));
    }

    List<PromptInput> ChatPrompt(RequestFields f)
    {
        var tmpl = _s.Chat ?? throw new ApiError(400, $"this model has no chat template of a supported family ({_s.ChatWhy}); use /v1/completions.", "model", "chat_template_unsupported");
        var tok = _s.Lm.Tokenizer ?? throw new ApiError(400, "this model has no tokenizer files.", "model");
        var v = f.Get("messages");
        if (v is not { ValueKind: JsonValueKind.Array } arr || arr.GetArrayLength() == 0) throw ApiError.BadField("messages", "'messages' must be a non-empty array.");
        var msgs = new List<ChatTurn>();
        int i = 0;
        foreach (var m in arr.EnumerateArray())
        {
            string where = $"messages[{i++}]";
            if (m.ValueKind != JsonValueKind.Object) throw ApiError.BadField(where, $"'{where}' must be an object with role and content.");
            var role = m.TryGetProperty("role", out var r) && r.ValueKind == JsonValueKind.String ? r.GetString()! : throw ApiError.BadField(where, $"'{where}.role' must be a string.");
            if (role == "developer") role = "system";
            if (role is not ("system" or "user" or "assistant")) throw ApiError.BadField(where, $"'{where}.role' must be system, user or assistant (got '{role}').");
            string content = m.TryGetProperty("content", out var c) ? c.ValueKind switch
            {
                JsonValueKind.String => c.GetString()!,
                JsonValueKind.Array => string.Concat(c.EnumerateArray().Select(p =>
                    p.ValueKind == JsonValueKind.Object && p.TryGetProperty("type", out var t) && t.ValueKind == JsonValueKind.String && t.GetString() == "text" && p.TryGetProperty("text", out var tx) && tx.ValueKind == JsonValueKind.String
                        ? tx.GetString() : throw ApiError.BadField(where, $"'{where}.content' parts must be {{\"type\": \"text\", \"text\": ...}}."))),
                _ => throw ApiError.BadField(where, $"'{where}.content' must be a string or an array of text parts."),
            } : throw ApiError.BadField(where, $"'{where}.content' is required.");
            msgs.Add(new ChatTurn(role, content));
        }
        // The end of the assistant's turn stops generation: as a token id where the tokenizer has it as a special
        // token, else as text.
        foreach (var eot in tmpl.EndOfTurn)
            if (tok.SpecialTokens.TryGetValue(eot, out var id)) _eos.Add(id);
            else _chatStops.Add(eot);
        var text = tmpl.Render(msgs);
        var chatIds = Encode(() => tok.Encode(text, addSpecialTokens: false), "messages");
        if (chatIds.Length == 0) throw ApiError.BadField("messages", "the messages encode to no tokens.");
        return new List<PromptInput> { new(chatIds, text) };
    }

    /// <summary>A tokenizer failure on client text is that text's fault: a 400 naming the field (logged once).</summary>
    int[] Encode(Func<int[]> encode, string field)
    {
        try { return encode(); }
        catch (Exception e) when (e is not ApiError)
        {
            SoftPromptServerOptions.Log?.Invoke($"tokenizer refused the {field} text: {e.GetType().Name}: {e.Message}");
            throw ApiError.BadField(field, $"the {field} text could not be tokenized.");
        }
    }

    // ------------------------------------------------------------------ generation

    /// <summary>Reads a choice's tokens as they come; finds stop strings; calls <paramref name="onDelta"/> with text that is final.</summary>
    async Task RunChoice(Choice c, Func<Choice, string, int, int, Task>? onDelta)
    {
        int maxStop = _stops.Length == 0 ? 0 : _stops.Max(s => s.Length);
        var ids = new List<int>();
        await foreach (var tok in c.Handle.Tokens.ReadAllAsync(_cancel))
        {
            c.Generated++;
            if (!_firstToken) { _firstToken = true; _srv.Metrics.FirstTokenSeconds.Record(Stopwatch.GetElapsedTime(_t0).TotalSeconds); }
            if (_eos.Contains(tok.Id)) { c.Finish = "stop"; break; }
            c.Tokens.Add(tok);
            ids.Add(tok.Id);
            var text = Decode(ids);
            int cut = -1;
            foreach (var s in _stops)
            {
                int at = text.IndexOf(s, Math.Max(0, c.EmittedChars - maxStop), StringComparison.Ordinal);
                if (at >= 0 && (cut < 0 || at < cut)) cut = at;
            }
            if (cut >= 0)
            {
                c.Text = text[..Math.Max(cut, c.EmittedChars)];
                c.Finish = "stop";
                c.Handle.Cancel();
                break;
            }
            c.Text = text;
            int safe = text.Length;
            while (safe > c.EmittedChars && text[safe - 1] == '\uFFFD') safe--;
            if (maxStop > 0) safe = Math.Min(safe, text.Length - (maxStop - 1));
            if (safe > c.EmittedChars)
            {
                if (onDelta is not null) await onDelta(c, text[c.EmittedChars..safe], c.EmittedTokens, c.Tokens.Count);
                c.EmittedChars = safe; c.EmittedTokens = c.Tokens.Count;
            }
        }
        var r = await c.Handle.Completion;
        c.Finish ??= r.FinishReason == "eos" ? "stop" : "length";
        if (onDelta is not null && (c.Text.Length > c.EmittedChars || c.Tokens.Count > c.EmittedTokens))
            await onDelta(c, c.Text.Length > c.EmittedChars ? c.Text[c.EmittedChars..] : "", c.EmittedTokens, c.Tokens.Count);
        c.EmittedChars = c.Text.Length; c.EmittedTokens = c.Tokens.Count;
    }

    string Decode(IEnumerable<int> ids) => _s.Lm.Tokenizer?.Decode(ids, skipSpecialTokens: true) ?? string.Concat(ids.Select(i => $"<{i}>"));

    Dictionary<string, object?> TextChoice(Choice c) => new()
    {
        ["index"] = c.Index, ["text"] = (_echo ? c.Prompt.Text : "") + c.Text,
        ["logprobs"] = _logprobs is null ? null : TextLogprobs(c, 0, c.Tokens.Count, _echo, 0), ["finish_reason"] = c.Finish,
    };

    Dictionary<string, object?> ChatChoice(Choice c) => new()
    {
        ["index"] = c.Index, ["message"] = new { role = "assistant", content = c.Text },
        ["logprobs"] = _logprobs is null ? null : new { content = ChatLogprobs(c, 0, c.Tokens.Count) }, ["finish_reason"] = c.Finish,
    };

    /// <summary>OpenAI's legacy logprobs object for tokens [from, to) (and the prompt's tokens first with echo).</summary>
    object TextLogprobs(Choice c, int from, int to, bool withPrompt, int textOffset)
    {
        var tokens = new List<string>(); var lps = new List<float?>(); var tops = new List<Dictionary<string, float?>?>(); var offsets = new List<int>();
        int off = textOffset;
        if (withPrompt)
        {
            var plp = c.Handle.PromptLogProbs;
            for (int i = 0; i < c.Prompt.Ids.Length; i++)
            {
                var t = _s.Lm.TokenText(c.Prompt.Ids[i]);
                tokens.Add(t); lps.Add(plp?[i] is double d ? Lp((float)d) : null); tops.Add(null); offsets.Add(off); off += t.Length;
            }
        }
        else if (from == 0 && _echo) off += c.Prompt.Text.Length;
        for (int i = from; i < to; i++)
        {
            var g = c.Tokens[i];
            var t = _s.Lm.TokenText(g.Id);
            tokens.Add(t); lps.Add(Lp(g.LogProb)); offsets.Add(off); off += t.Length;
            var d = new Dictionary<string, float?>();
            if (g.Top is not null) foreach (var a in g.Top) d.TryAdd(_s.Lm.TokenText(a.Id), Lp(a.LogProb));
            tops.Add(d);
        }
        return new { tokens, token_logprobs = lps, top_logprobs = tops, text_offset = offsets };
    }

    /// <summary>A log-probability as JSON can carry it: -infinity (a token the model rules out) is -9999, the value
    /// OpenAI's API uses for "very unlikely"; NaN or +infinity (never a log-probability) are null.</summary>
    internal static float? Lp(float x) => float.IsNegativeInfinity(x) ? -9999f : float.IsFinite(x) ? x : null;

    List<object> ChatLogprobs(Choice c, int from, int to)
    {
        var list = new List<object>();
        for (int i = from; i < to; i++)
        {
            var g = c.Tokens[i];
            list.Add(new
            {
                token = _s.Lm.TokenText(g.Id), logprob = Lp(g.LogProb), bytes = (int[]?)null,
                top_logprobs = (g.Top ?? Array.Empty<TokenLogprob>()).Select(a => new { token = _s.Lm.TokenText(a.Id), logprob = Lp(a.LogProb), bytes = (int[]?)null }).ToList(),
            });
        }
        return list;
    }

    // ------------------------------------------------------------------ streaming

    async Task StreamAsync(List<Choice> choices, bool usage)
    {
        var res = _ctx.Response;
        res.ContentType = "text/event-stream";
        res.Headers.CacheControl = "no-cache";
        res.Headers["X-Accel-Buffering"] = "no";
        await res.StartAsync(_cancel);
        if (_chat)
            foreach (var c in choices) await Event(ChatChunk(c.Index, new { role = "assistant", content = "" }, null, null));
        else if (_echo)
            foreach (var c in choices)
                await Event(TextChunk(c.Index, c.Prompt.Text, _logprobs is null ? null : TextLogprobs(c, 0, 0, true, 0), null));
        try
        {
            await RunAll(choices, (ch, delta, from, to) =>
                Event(_chat
                    ? ChatChunk(ch.Index, new { content = delta }, _logprobs is null ? null : new { content = ChatLogprobs(ch, from, to) }, null)
                    : TextChunk(ch.Index, delta, _logprobs is null ? null : TextLogprobs(ch, from, to, false, (_echo ? ch.Prompt.Text.Length : 0) + ch.EmittedChars), null)));
        }
        catch (Exception e) when (!_ctx.RequestAborted.IsCancellationRequested)
        {
            // Headers are sent: report in the stream, as OpenAI-compatible servers do, then end it.
            var err = ToApiError(e);
            try { await Event(err.Body, CancellationToken.None); }
            catch (Exception) { }   // a client that stopped reading does not get it either
            throw err;
        }
        foreach (var c in choices)
            await Event(_chat ? ChatChunk(c.Index, new { }, null, c.Finish) : TextChunk(c.Index, "", null, c.Finish));
        CountCompletion(choices);
        if (usage)
            await Event(new Dictionary<string, object?>
            {
                ["id"] = (_chat ? "chatcmpl-" : "cmpl-") + _id, ["object"] = _chat ? "chat.completion.chunk" : "text_completion",
                ["created"] = _created, ["model"] = _model, ["choices"] = Array.Empty<object>(),
                ["usage"] = Usage(choices.Select(c => c.Prompt).Distinct().ToList(), choices),
            });
        await _write.WaitAsync();
        try { await res.WriteAsync("data: [DONE]\n\n", _cancel); await res.Body.FlushAsync(_cancel); }
        finally { _write.Release(); }
    }

    Dictionary<string, object?> TextChunk(int index, string text, object? logprobs, string? finish) => new()
    {
        ["id"] = "cmpl-" + _id, ["object"] = "text_completion", ["created"] = _created, ["model"] = _model,
        ["choices"] = new[] { new Dictionary<string, object?> { ["index"] = index, ["text"] = text, ["logprobs"] = logprobs, ["finish_reason"] = finish } },
    };

    Dictionary<string, object?> ChatChunk(int index, object delta, object? logprobs, string? finish) => new()
    {
        ["id"] = "chatcmpl-" + _id, ["object"] = "chat.completion.chunk", ["created"] = _created, ["model"] = _model,
        ["choices"] = new[] { new Dictionary<string, object?> { ["index"] = index, ["delta"] = delta, ["logprobs"] = logprobs, ["finish_reason"] = finish } },
    };

    Task Event(object payload) => Event(payload, _cancel);

    async Task Event(object payload, CancellationToken cancel)
    {
        var line = "data: " + JsonSerializer.Serialize(payload, Json.Options) + "\n\n";
        await _write.WaitAsync();
        try
        {
            using var bounded = CancellationTokenSource.CreateLinkedTokenSource(_ctx.RequestAborted, cancel);
            bounded.CancelAfter(TimeSpan.FromSeconds(30));   // a client that stops reading does not hold the request forever
            try
            {
                await _ctx.Response.WriteAsync(line, bounded.Token);
                await _ctx.Response.Body.FlushAsync(bounded.Token);
            }
            catch (OperationCanceledException) when (!cancel.IsCancellationRequested && !_ctx.RequestAborted.IsCancellationRequested)
            {
                throw new ApiError(408, "the client stopped reading the stream for 30 s.", code: "request_timeout");
            }
        }
        finally { _write.Release(); }
    }
}
