using System.Collections.Concurrent;
using System.Text.Json.Nodes;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;

namespace SoftPrompt.Tests.Opro;

/// <summary>A request the fake Anthropic / Bedrock server received: path, every header, the JSON body.</summary>
public sealed record AnthropicRequest(int Index, string Path, IReadOnlyDictionary<string, string> Headers, JsonObject Body)
{
    public string UserText => string.Join("\n", Body["messages"]!.AsArray().Where(m => m!["role"]!.GetValue<string>() == "user")
        .Select(m => m!["content"] is JsonArray parts ? string.Join("", parts.Select(p => p!["text"]?.ToString())) : m["content"]!.ToString()));
    public string SystemText => Body["system"] switch { JsonArray a => string.Join("", a.Select(p => p!["text"]?.ToString())), JsonNode n => n.ToString(), null => "" };
    public string? Header(string name) => Headers.FirstOrDefault(h => h.Key.Equals(name, StringComparison.OrdinalIgnoreCase)).Value;
}

/// <summary>
/// An in-process fake of the Anthropic Messages API (POST /v1/messages) and of Bedrock's InvokeModel for Claude
/// (POST /model/{model}/invoke) on 127.0.0.1, random port; every request is recorded with all its headers. Replies are
/// scripted by <see cref="Handler"/>: a text (wrapped as a Messages API reply with usage) or an error status.
/// </summary>
public sealed class FakeAnthropicServer : IAsyncDisposable
{
    readonly WebApplication _app;
    readonly ConcurrentQueue<AnthropicRequest> _requests = new();
    int _count;
    public Func<AnthropicRequest, (int Status, string Text)> Handler { get; set; } = _ => (200, "<INS>Answer the question.</INS>");
    public string BaseUrl { get; }
    public IReadOnlyList<AnthropicRequest> Requests => _requests.OrderBy(r => r.Index).ToList();

    FakeAnthropicServer(WebApplication app, string url) { _app = app; BaseUrl = url; }

    public static string Message(string text, int input = 120, int output = 12) => new JsonObject
    {
        ["id"] = "msg_fake", ["type"] = "message", ["role"] = "assistant", ["model"] = "claude-fake",
        ["content"] = new JsonArray(new JsonObject { ["type"] = "text", ["text"] = text }),
        ["stop_reason"] = "end_turn", ["stop_sequence"] = null,
        ["usage"] = new JsonObject { ["input_tokens"] = input, ["output_tokens"] = output },
    }.ToJsonString();

    public static FakeAnthropicServer Start()
    {
        var builder = WebApplication.CreateSlimBuilder();
        builder.Logging.ClearProviders();
        builder.WebHost.UseUrls("http://127.0.0.1:0");
        var app = builder.Build();
        FakeAnthropicServer? self = null;
        async Task Serve(HttpContext ctx)
        {
            using var reader = new StreamReader(ctx.Request.Body);
            var text = await reader.ReadToEndAsync();
            var headers = ctx.Request.Headers.ToDictionary(h => h.Key, h => h.Value.ToString());
            var req = new AnthropicRequest(Interlocked.Increment(ref self!._count), ctx.Request.Path, headers, JsonNode.Parse(text)!.AsObject());
            self._requests.Enqueue(req);
            var (status, reply) = self.Handler(req);
            ctx.Response.StatusCode = status;
            ctx.Response.ContentType = "application/json";
            if (status >= 429) { ctx.Response.Headers["retry-after-ms"] = "1"; ctx.Response.Headers["retry-after"] = "0"; } // retries do not wait
            await ctx.Response.WriteAsync(status == 200 ? Message(reply)
                : new JsonObject { ["type"] = "error", ["error"] = new JsonObject { ["type"] = "invalid_request_error", ["message"] = reply } }.ToJsonString());
        }
        app.MapPost("/v1/messages", Serve);
        app.MapPost("/model/{model}/invoke", Serve);
        app.StartAsync().GetAwaiter().GetResult();
        var address = app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.First();
        self = new FakeAnthropicServer(app, address.TrimEnd('/'));
        return self;
    }

    public async ValueTask DisposeAsync() { await _app.StopAsync(); await _app.DisposeAsync(); }
}
