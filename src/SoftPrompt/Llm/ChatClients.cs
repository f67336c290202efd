using System.ClientModel.Primitives;
using System.ClientModel;
using System.Net.Sockets;
using System.Security.Authentication;
using System.Text.Json;
using Microsoft.Extensions.AI;
using OpenAI;

namespace SoftPrompt.Llm;

/// <summary>A failure talking to an optimizer / judge endpoint, with the process exit code it maps to:
/// 3 cannot connect (unreachable, DNS, TLS, timeout), 4 key refused (401/403), 5 not found or bad request (404 model,
/// 400), 6 the service failed (429/5xx after the retries, a reply that is not JSON or has no choices).</summary>
public sealed class RemoteServiceException(string message, int exitCode) : SoftPromptException(message)
{
    public int ExitCode { get; } = exitCode;
}

/// <summary>Thrown by <see cref="MeteredChatClient"/> when --max-calls or --max-tokens-budget is used up; the search stops
/// cleanly (it is not an error).</summary>
public sealed class BudgetExhaustedException(string reason) : Exception($"budget used up: {reason}")
{
    public string Reason { get; } = reason;
}

/// <summary>Calls and tokens used by every optimizer and judge call of a run (shared by the clients), and the budget.</summary>
public sealed class CallMeter
{
    readonly object _lock = new();
    public int MaxCalls { get; init; }
    public long MaxTokens { get; init; }
    public int Calls { get; private set; }
    public int OptimizerCalls { get; private set; }
    public int JudgeCalls { get; private set; }
    public long InputTokens { get; private set; }
    public long OutputTokens { get; private set; }
    public long TotalTokens => InputTokens + OutputTokens;

    /// <summary>Counts from a resumed run.</summary>
    public void Restore(int optimizerCalls, int judgeCalls, long input, long output)
    {
        lock (_lock) { OptimizerCalls = optimizerCalls; JudgeCalls = judgeCalls; Calls = optimizerCalls + judgeCalls; InputTokens = input; OutputTokens = output; }
    }

    /// <summary>The reason the budget is used up, or null.</summary>
    public string? Exhausted()
    {
        lock (_lock)
            return MaxCalls > 0 && Calls >= MaxCalls ? "max_calls" : MaxTokens > 0 && TotalTokens >= MaxTokens ? "max_tokens" : null;
    }

    internal void Begin(bool judge)
    {
        lock (_lock)
        {
            if (Exhausted() is string r) throw new BudgetExhaustedException(r);
            Calls++;
            if (judge) JudgeCalls++; else OptimizerCalls++;
        }
    }

    internal void Add(UsageDetails? usage)
    {
        if (usage is null) return;
        lock (_lock) { InputTokens += usage.InputTokenCount ?? 0; OutputTokens += usage.OutputTokenCount ?? 0; }
    }
}

/// <summary>
/// Wraps a chat client: at most <c>parallel</c> calls at a time, each counted against the <see cref="CallMeter"/> budget
/// (with the token usage the server reports), and every failure turned into a one-line
/// <see cref="RemoteServiceException"/> that names the endpoint, the model and, for a refused key, the environment
/// variable, never the key itself.
/// </summary>
public sealed class MeteredChatClient(IChatClient inner, CallMeter meter, bool judge, int parallel, EndpointInfo info) : DelegatingChatClient(inner)
{
    readonly SemaphoreSlim _gate = new(parallel, parallel);

    public override async Task<ChatResponse> GetResponseAsync(IEnumerable<ChatMessage> messages, ChatOptions? options = null, CancellationToken cancellationToken = default)
    {
        await _gate.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            meter.Begin(judge);
            ChatResponse r;
            try { r = await base.GetResponseAsync(messages, options, cancellationToken).ConfigureAwait(false); }
            catch (Exception e) when (e is not OperationCanceledException || !cancellationToken.IsCancellationRequested)
            {
                throw ChatErrors.Describe(e, info);
            }
            meter.Add(r.Usage);
            return r;
        }
        finally { _gate.Release(); }
    }

    protected override void Dispose(bool disposing) { if (disposing) _gate.Dispose(); base.Dispose(disposing); }
}

/// <summary>What an error message may say about an endpoint (the key only to scrub it from server text).</summary>
public sealed record EndpointInfo(string Endpoint, string Model, string? KeyEnv, string Role, int MaxRetries, IReadOnlyList<string>? Secrets = null, string Provider = "openai")
{
    public override string ToString() => $"{Role} endpoint {Endpoint} (model {Model})"; // never the key
}

public static class ChatErrors
{
    /// <summary>A one-line description of a failed call (see <see cref="RemoteServiceException"/> for the exit codes).</summary>
    public static Exception Describe(Exception e, EndpointInfo info)
    {
        if (e is RemoteServiceException or BudgetExhaustedException) return e;
        string where = info.ToString();
        string retried = info.MaxRetries > 0 ? $" after {info.MaxRetries} retr{(info.MaxRetries == 1 ? "y" : "ies")}" : "";
        if (e is ClientResultException cre && cre.Status != 0)
            return FromStatus(cre.Status, Snippet(cre.GetRawResponse()?.Content?.ToString(), info.Secrets), info, where, retried);
        if (e is Anthropic.Exceptions.AnthropicApiException ae && (int)ae.StatusCode != 0)
            return FromStatus((int)ae.StatusCode, Snippet(ae.ResponseBody, info.Secrets), info, where, retried);
        for (Exception? x = e; x is not null; x = x.InnerException)
        {
            switch (x)
            {
                case SocketException { SocketErrorCode: SocketError.HostNotFound or SocketError.NoData or SocketError.TryAgain }:
                    return new RemoteServiceException($"{where}: cannot resolve the host name (DNS): {HostOf(info.Endpoint)}.", 3);
                case SocketException { SocketErrorCode: SocketError.ConnectionRefused }:
                    return new RemoteServiceException($"{where}: connection refused{retried}; is the server running?", 3);
                case SocketException se:
                    return new RemoteServiceException($"{where}: cannot connect ({se.SocketErrorCode}){retried}.", 3);
                case AuthenticationException:
                    return new RemoteServiceException($"{where}: TLS handshake failed (certificate or protocol); check the URL's scheme and the server's certificate.", 3);
                case TimeoutException or TaskCanceledException:
                    return new RemoteServiceException($"{where}: no reply within the timeout{retried} (--request-timeout).", 3);
                case JsonException or FormatException:
                    return new RemoteServiceException($"{where}: the reply is not the JSON of a chat completion; is this an OpenAI-compatible endpoint?", 6);
                case HttpRequestException hre when hre.InnerException is null:
                    return new RemoteServiceException($"{where}: {hre.Message}", 3);
            }
        }
        if (e is InvalidOperationException or ArgumentException or KeyNotFoundException or NullReferenceException)
            return new RemoteServiceException($"{where}: the reply is not a valid chat completion ({e.GetType().Name}).", 6);
        if (e is ClientResultException) return new RemoteServiceException($"{where}: the request failed{retried}.", 3);
        return e;
    }

    static RemoteServiceException FromStatus(int s, string body, EndpointInfo info, string where, string retried)
    {
        string refused = info.Provider == "bedrock"
            ? $"the AWS credentials were refused (check AWS_PROFILE / AWS_ACCESS_KEY_ID and the model's access in the region){body}."
            : info.KeyEnv is null
                ? $"the server wants an API key: put it in an environment variable and pass --api-key-env NAME{body}."
                : $"the key in ${info.KeyEnv} was refused{body}.";
        return s switch
        {
            401 or 403 => new RemoteServiceException($"{where}: {s} {(s == 401 ? "Unauthorized" : "Forbidden")}; {refused}", 4),
            404 => new RemoteServiceException(info.Provider == "openai"
                ? $"{where}: 404 Not Found; is the model name right, and is the endpoint the API base (ending in /v1)?{body}"
                : $"{where}: 404 Not Found; is the model name right (and, on Bedrock, enabled in this region)?{body}", 5),
            400 or 422 => new RemoteServiceException($"{where}: {s} Bad Request{body}.", 5),
            429 => new RemoteServiceException($"{where}: 429 Too Many Requests{retried}; lower --parallel or try later{body}.", 6),
            >= 500 => new RemoteServiceException($"{where}: server error {s}{retried}{body}.", 6),
            _ => new RemoteServiceException($"{where}: HTTP {s}{body}.", 6),
        };
    }

    static string HostOf(string endpoint) => Uri.TryCreate(endpoint, UriKind.Absolute, out var u) ? u.Host : endpoint;

    /// <summary>A short, one-line excerpt of a server's error text, with the key removed should the server echo it.</summary>
    static string Snippet(string? body, IReadOnlyList<string>? secrets)
    {
        if (string.IsNullOrWhiteSpace(body)) return "";
        try
        {
            using var doc = JsonDocument.Parse(body);
            if (doc.RootElement.ValueKind == JsonValueKind.Object && doc.RootElement.TryGetProperty("error", out var err))
                body = err.ValueKind == JsonValueKind.Object && err.TryGetProperty("message", out var m) ? m.ToString() : err.ToString();
        }
        catch (JsonException) { }
        foreach (var key in secrets ?? Array.Empty<string>()) if (!string.IsNullOrEmpty(key)) body = body.Replace(key, "***");
        body = string.Join(" ", body.Split((char[]?)null, StringSplitOptions.RemoveEmptyEntries));
        if (body.Length > 160) body = body[..160] + "...";
        return body.Length == 0 ? "" : $" (server: {body})";
    }

    /// <summary>
    /// A chat client for an OpenAI-compatible endpoint through the official OpenAI SDK: the base URL as given (the SDK
    /// posts to {endpoint}/chat/completions), the key from the environment variable <paramref name="keyEnv"/> as a
    /// bearer token (a placeholder when none is named, for local servers that want none), the SDK's own retry policy
    /// (System.ClientModel's: 408/429/5xx and transport errors, exponential backoff, Retry-After honoured) bounded to
    /// <paramref name="maxRetries"/>, and a per-call timeout.
    /// </summary>
    public static (IChatClient Client, EndpointInfo Info) OpenAiCompatible(string endpoint, string model, string? keyEnv, int maxRetries, TimeSpan timeout, string role,
        ClientRetryPolicy? retryPolicy = null)
    {
        if (!Uri.TryCreate(endpoint, UriKind.Absolute, out var uri) || uri.Scheme is not ("http" or "https"))
            throw new SoftPromptException($"--{role}-endpoint '{endpoint}': expected an http:// or https:// URL such as http://127.0.0.1:11434/v1.");
        string key = "no-key";
        if (keyEnv is not null)
        {
            var v = Environment.GetEnvironmentVariable(keyEnv);
            if (string.IsNullOrEmpty(v)) throw new SoftPromptException($"--api-key-env {keyEnv}: that environment variable is not set or empty.");
            key = v;
        }
        var options = new OpenAIClientOptions
        {
            Endpoint = uri,
            RetryPolicy = retryPolicy ?? new ClientRetryPolicy(maxRetries),
            NetworkTimeout = timeout,
        };
        var chat = new OpenAI.Chat.ChatClient(model, new ApiKeyCredential(key), options);
        return (chat.AsIChatClient(), new EndpointInfo(endpoint, model, keyEnv, role, maxRetries, keyEnv is null ? null : new[] { key }));
    }
}
