using System.Collections.Concurrent;
using System.Text.Json;
using System.Text.Json.Nodes;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;

namespace SoftPrompt.Tests.Opro;

/// <summary>A request the fake server received: path, Authorization header, the JSON body, and the user message text.</summary>
public sealed record RecordedRequest(int Index, string Path, string? Authorization, JsonObject Body)
{
    public string UserText => string.Join("\n", Body["messages"]!.AsArray().Where(m => m!["role"]!.GetValue<string>() == "user").Select(m => m!["content"]!.ToString()));
    public double? Temperature => Body["temperature"]?.GetValue<double>();
}

/// <summary>What the fake server answers: a status, a body and headers.</summary>
public sealed record FakeReply(int Status, string Body, IReadOnlyDictionary<string, string>? Headers = null)
{
    /// <summary>A chat completion holding <paramref name="content"/>, with usage.</summary>
    public static FakeReply Chat(string content, int promptTokens = 100, int completionTokens = 10) => new(200, new JsonObject
    {
        ["id"] = "chatcmpl-fake", ["object"] = "chat.completion", ["created"] = 1_700_000_000, ["model"] = "fake-model",
        ["choices"] = new JsonArray(new JsonObject
        {
            ["index"] = 0, ["finish_reason"] = "stop",
            ["message"] = new JsonObject { ["role"] = "assistant", ["content"] = content },
        }),
        ["usage"] = new JsonObject { ["prompt_tokens"] = promptTokens, ["completion_tokens"] = completionTokens, ["total_tokens"] = promptTokens + completionTokens },
    }.ToJsonString());

    /// <summary>An error reply with OpenAI's error shape; Retry-After: 0 so that retries do not wait.</summary>
    public static FakeReply Error(int status, string message = "scripted error") =>
        new(status, new JsonObject { ["error"] = new JsonObject { ["message"] = message, ["type"] = "fake" } }.ToJsonString(),
            new Dictionary<string, string> { ["Retry-After"] = "0" });
}

/// <summary>
/// An in-process OpenAI-compatible server (ASP.NET Core minimal API on 127.0.0.1, random port): POST
/// {Endpoint}/chat/completions is answered by the scripted <see cref="Handler"/>, and every request is recorded.
/// </summary>
public sealed class FakeOpenAiServer : IAsyncDisposable
{
    readonly WebApplication _app;
    readonly ConcurrentQueue<RecordedRequest> _requests = new();
    int _count;
    public Func<RecordedRequest, FakeReply> Handler { get; set; } = _ => FakeReply.Chat("<INS>Answer the question.</INS>");
    public string Endpoint { get; }
    public IReadOnlyList<RecordedRequest> Requests => _requests.OrderBy(r => r.Index).ToList();

    FakeOpenAiServer(WebApplication app, string endpoint) { _app = app; Endpoint = endpoint; }

    public static FakeOpenAiServer Start()
    {
        var builder = WebApplication.CreateSlimBuilder();
        builder.Logging.ClearProviders();
        builder.WebHost.UseUrls("http://127.0.0.1:0");
        var app = builder.Build();
        FakeOpenAiServer? self = null;
        app.MapPost("/v1/chat/completions", async (HttpContext ctx) =>
        {
            using var reader = new StreamReader(ctx.Request.Body);
            var text = await reader.ReadToEndAsync();
            var req = new RecordedRequest(Interlocked.Increment(ref self!._count), ctx.Request.Path, ctx.Request.Headers.Authorization.FirstOrDefault(), JsonNode.Parse(text)!.AsObject());
            self._requests.Enqueue(req);
            var reply = self.Handler(req);
            ctx.Response.StatusCode = reply.Status;
            foreach (var (k, v) in reply.Headers ?? new Dictionary<string, string>()) ctx.Response.Headers[k] = v;
            ctx.Response.ContentType = reply.Body.TrimStart().StartsWith('{') ? "application/json" : "text/html";
            await ctx.Response.WriteAsync(reply.Body);
        });
        app.StartAsync().GetAwaiter().GetResult();
        var address = app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.First();
        self = new FakeOpenAiServer(app, address.TrimEnd('/') + "/v1");
        return self;
    }

    public async ValueTask DisposeAsync() { await _app.StopAsync(); await _app.DisposeAsync(); }
}
