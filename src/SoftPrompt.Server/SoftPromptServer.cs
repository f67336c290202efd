using System.Diagnostics;
using System.Net;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using OpenTelemetry.Metrics;
using SoftPrompt.Inference;

namespace SoftPrompt.Server;

/// <summary>
/// `softprompt serve`: one frozen model, many saved prompts, an OpenAI-compatible HTTP API (Kestrel, minimal APIs).
/// The request's <c>model</c> field picks the adapter (<c>base</c> = none); every request becomes sequences of the
/// shared <see cref="BatchEngine"/>, so requests for different adapters are decoded in the same batch.
/// Kestrel starts first and answers 503 until the model is loaded (<see cref="Ready"/>).
/// </summary>
public sealed class SoftPromptServer : IAsyncDisposable
{
    /// <summary>What exists once the model is loaded.</summary>
    internal sealed class Loaded
    {
        public required LanguageModel Lm;
        public required IGenerationEngine Engine;
        public required AdapterRegistry Adapters;
        public ChatTemplate? Chat;
        public string ChatWhy = "";
    }

    readonly ServerOptions _o;
    readonly WebApplication _app;
    readonly byte[]? _apiKey;
    readonly TaskCompletionSource _ready = new(TaskCreationOptions.RunContinuationsAsynchronously);
    readonly long _created = DateTimeOffset.UtcNow.ToUnixTimeSeconds();
    internal volatile Loaded? State;
    volatile bool _draining;
    internal ServerMetrics Metrics { get; }
    internal ServerOptions Options => _o;

    public Uri Address { get; private set; } = null!;
    /// <summary>Completes when the model and the start-up adapters are loaded; faults with the reason if they cannot be.</summary>
    public Task Ready => _ready.Task;

    SoftPromptServer(ServerOptions o, WebApplication app, byte[]? key, ServerMetrics metrics) { _o = o; _app = app; _apiKey = key; Metrics = metrics; }

    /// <summary>Checks the options, starts listening, and loads the model and adapters in the background.</summary>
    public static async Task<SoftPromptServer> StartAsync(ServerOptions o, CancellationToken cancel = default)
    {
        if (!Directory.Exists(o.ModelDir)) throw new SoftPromptException($"--model '{o.ModelDir}' does not exist.");
        if (o.Port is < 0 or > 65535) throw new SoftPromptException($"--port {o.Port} is not a port number (0-65535; 0 = any free port).");
        if (o.MaxBatch < 1) throw new SoftPromptException("--max-batch must be at least 1.");
        if (o.MaxQueue < 0) throw new SoftPromptException("--max-queue must be >= 0.");
        if (o.MaxTokens < 1) throw new SoftPromptException("--max-tokens must be at least 1.");
        if (o.MaxBodyBytes < 1024) throw new SoftPromptException("--max-body-bytes must be at least 1024.");
        IPAddress? ip = null;
        if (o.Host != "localhost" && !IPAddress.TryParse(o.Host, out ip)) throw new SoftPromptException($"--host '{o.Host}' is not an IP address (or 'localhost').");
        byte[]? key = null;
        if (o.ApiKeyEnv is { } env)
        {
            var v = Environment.GetEnvironmentVariable(env);
            if (string.IsNullOrEmpty(v)) throw new SoftPromptException($"--api-key-env {env}: the environment variable is not set or empty.");
            key = Encoding.UTF8.GetBytes(v);
        }
        foreach (var (name, path) in o.Adapters)
        {
            AdapterRegistry.CheckName(name);
            if (!Directory.Exists(path)) throw new SoftPromptException($"--adapter {name}={path}: the folder does not exist.");
        }
        var discovered = o.AdaptersDir is null ? new List<(string, string)>() : AdapterRegistry.Discover(o.AdaptersDir);

        var builder = WebApplication.CreateSlimBuilder(new WebApplicationOptions { Args = Array.Empty<string>(), ContentRootPath = AppContext.BaseDirectory });
        builder.Logging.ClearProviders();
        builder.WebHost.ConfigureKestrel(k =>
        {
            k.Limits.MaxRequestBodySize = o.MaxBodyBytes;
            k.AddServerHeader = false;
            if (ip is null) k.ListenLocalhost(o.Port); else k.Listen(ip, o.Port);
        });
        builder.Services.Configure<HostOptions>(h => h.ShutdownTimeout = TimeSpan.FromSeconds(o.DrainSeconds));
        SoftPromptServer? self = null;
        var metrics = new ServerMetrics(() => self?.State?.Engine.QueueDepth ?? 0, () => self?.State?.Engine.ActiveRows ?? 0,
            () => self?.State?.Adapters.ResidentCount ?? 0);
        builder.Services.AddOpenTelemetry().WithMetrics(m => m.AddMeter(metrics.Name).AddPrometheusExporter());
        var app = builder.Build();

        self = new SoftPromptServer(o, app, key, metrics);
        self.Map();
        app.Lifetime.ApplicationStopping.Register(() =>
        {
            self._draining = true;
            self.State?.Engine.StopAsync(drain: true);   // running and queued sequences finish; new ones get 503
        });
        try { await app.StartAsync(cancel); }
        catch (IOException e)   // Kestrel: the address is taken or cannot be bound
        {
            await app.DisposeAsync();
            metrics.Dispose();
            throw new SoftPromptException($"cannot listen on {o.Host}:{o.Port}: {e.Message}");
        }
        var addr = app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.First();
        self.Address = new Uri(addr.Replace("[::]", "127.0.0.1").Replace("0.0.0.0", "127.0.0.1"));
        _ = Task.Run(() => self.Load(discovered));
        return self;
    }

    void Load(List<(string Name, string Path)> discovered)
    {
        try
        {
            var sw = Stopwatch.StartNew();
            var lm = LanguageModel.Load(_o.ModelDir, _o.Device, _o.DType, _o.CheckFinite);
            int positions = lm.Base.Config.MaxPositions;
            // An encoder-decoder model has no context window of learned positions: the decoder's length is capped by
            // --max-context (default 4096 tokens), and its requests are decoded one at a time (Seq2SeqEngine).
            int capacity = lm.IsEncoderDecoder ? _o.MaxContext ?? 4096 : Math.Min(_o.MaxContext ?? positions, positions);
            IGenerationEngine engine = lm.Seq2Seq is { } t5 ? new Seq2SeqEngine(t5, capacity, _o.MaxQueue)
                : new BatchEngine(lm.Model, new BatchEngineOptions { MaxBatch = _o.MaxBatch, MaxQueue = _o.MaxQueue, Capacity = capacity });
            engine.Stepped += Metrics.OnStep;
            engine.SequenceFinished += reason => Metrics.Sequences.Add(1, new KeyValuePair<string, object?>("finish", reason));
            var reg = new AdapterRegistry(lm.Base, _o.MaxResidentAdapters, _o.CheckFinite);
            foreach (var (name, path) in _o.Adapters.Concat(discovered))
            {
                try { reg.Add(name, path); }
                catch (SoftPromptException e) when (discovered.Contains((name, path)))
                {
                    _o.Log?.Invoke($"warning: skipped {path}: {e.Message}");   // a folder found by --adapters-dir may be for another model
                }
                catch (InvalidOperationException e) { throw new SoftPromptException($"--adapter {name}: {e.Message}"); }
            }
            var chat = ChatTemplate.Detect(_o.ModelDir, out var why); // an unreadable tokenizer_config.json stops the load
            State = new Loaded { Lm = lm, Engine = engine, Adapters = reg, Chat = chat, ChatWhy = why };
            _o.Log?.Invoke($"loaded {_o.ModelDir} ({lm.Base.Device}, context {capacity}, batch {_o.MaxBatch}) and {reg.List().Count} adapter(s) in {sw.Elapsed.TotalSeconds:F1} s; chat: {chat?.Family ?? "none"}");
            _ready.TrySetResult();
        }
        catch (Exception e)
        {
            _ready.TrySetException(e);
        }
    }

    /// <summary>Waits until the server stops (SIGTERM / Ctrl+C, or <see cref="StopAsync"/>).</summary>
    public Task WaitForShutdownAsync() => _app.WaitForShutdownAsync();

    /// <summary>Stops listening after the requests in flight are answered.</summary>
    public Task StopAsync() => _app.StopAsync();

    public async ValueTask DisposeAsync()
    {
        try { await _app.StopAsync(); } catch (Exception) { }
        await _app.DisposeAsync();
        var s = State;
        State = null;
        if (s is not null)
        {
            s.Engine.Dispose();
            s.Adapters.Dispose();
            s.Lm.Dispose();
        }
        Metrics.Dispose();
    }

    // ------------------------------------------------------------------ endpoints

    void Map()
    {
        var app = _app;
        app.Use(Guard);
        app.MapGet("/health", (HttpContext ctx) =>
        {
            if (_draining) return Results.Json(new { status = "draining" }, statusCode: 503);
            if (_ready.Task.IsFaulted) return Results.Json(new { status = "failed" }, statusCode: 503);
            return State is null ? Results.Json(new { status = "loading" }, statusCode: 503) : Results.Json(new { status = "ok" });
        });
        app.MapGet("/v1/models", () => Results.Json(new { @object = "list", data = Models(Need()) }, Json.Options));
        app.MapGet("/v1/models/{**name}", (string name) =>
        {
            var m = Models(Need()).FirstOrDefault(x => x["id"] as string == name) ?? throw UnknownModel(name);
            return Results.Json(m, Json.Options);
        });
        app.MapPost("/v1/completions", (HttpContext ctx) => new Completions(this, Need(), ctx).RunAsync(chat: false));
        app.MapPost("/v1/chat/completions", (HttpContext ctx) => new Completions(this, Need(), ctx).RunAsync(chat: true));
        app.MapPost("/v1/adapters", async (HttpContext ctx) =>
        {
            var s = Need();
            var f = new RequestFields(await ReadJsonAsync(ctx));
            var name = f.String("name", required: true)!;
            var path = f.String("path", required: true)!;
            AdapterInfo info;
            try { info = await Task.Run(() => s.Adapters.Add(name, path)); }
            catch (InvalidOperationException e) { throw new ApiError(409, e.Message, "name", "adapter_exists"); }
            catch (SoftPromptException e) { throw new ApiError(400, e.Message, "path", "invalid_adapter"); }
            _o.Log?.Invoke($"adapter '{name}' added from {info.Path}");
            return Results.Json(ModelObject(info), Json.Options, statusCode: 201);
        });
        app.MapDelete("/v1/adapters/{**name}", (string name) =>
        {
            var s = Need();
            if (name == AdapterRegistry.BaseName) throw new ApiError(400, "the base model cannot be removed.", "name");
            if (!s.Adapters.Remove(name)) throw UnknownModel(name);
            _o.Log?.Invoke($"adapter '{name}' removed");
            return Results.Json(new { id = name, @object = "model", deleted = true }, Json.Options);
        });
        app.MapPrometheusScrapingEndpoint("/metrics");
        app.MapFallback((HttpContext ctx) => throw new ApiError(404, $"no route {ctx.Request.Method} {ctx.Request.Path}.", code: "not_found"));
    }

    /// <summary>Auth, error mapping (OpenAI error JSON, never a stack trace), request metrics.</summary>
    async Task Guard(HttpContext ctx, RequestDelegate next)
    {
        var sw = Stopwatch.StartNew();
        try
        {
            if (_apiKey is not null && ctx.Request.Path != "/health" && !Authorized(ctx.Request.Headers.Authorization.ToString()))
                throw new ApiError(401, "missing or wrong API key: send 'Authorization: Bearer KEY'.", code: "invalid_api_key");
            await next(ctx);
        }
        catch (Exception e) when (!ctx.Response.HasStarted)
        {
            var err = e switch
            {
                ApiError a => a,
                BadHttpRequestException b when b.StatusCode == 413 => new ApiError(413, $"the request body exceeds {_o.MaxBodyBytes} bytes.", code: "request_too_large"),
                BadHttpRequestException b => new ApiError(b.StatusCode, b.Message),
                OperationCanceledException when ctx.RequestAborted.IsCancellationRequested => null,
                _ => null,
            };
            if (err is null && !ctx.RequestAborted.IsCancellationRequested)
            {
                _o.Log?.Invoke($"error: {ctx.Request.Method} {ctx.Request.Path}: {e.GetType().Name}: {e.Message}");
                err = new ApiError(500, "internal error (the server log has the details).");
            }
            if (err is not null) await err.WriteAsync(ctx);
        }
        catch (Exception e)
        {
            // The response had started (a stream): the client sees the stream end; the server keeps serving.
            if (!ctx.RequestAborted.IsCancellationRequested) _o.Log?.Invoke($"error mid-response: {ctx.Request.Path}: {e.GetType().Name}: {e.Message}");
        }
        finally
        {
            var endpoint = ctx.GetEndpoint() is RouteEndpoint r ? r.RoutePattern.RawText ?? "?" : "other";
            Metrics.Requests.Add(1, new("endpoint", endpoint), new("status", ctx.Response.StatusCode));
            Metrics.RequestSeconds.Record(sw.Elapsed.TotalSeconds, new KeyValuePair<string, object?>("endpoint", endpoint));
        }
    }

    bool Authorized(string header)
    {
        const string scheme = "Bearer ";
        if (!header.StartsWith(scheme, StringComparison.OrdinalIgnoreCase)) return false;
        return CryptographicOperations.FixedTimeEquals(Encoding.UTF8.GetBytes(header[scheme.Length..].Trim()), _apiKey);
    }

    internal Loaded Need()
    {
        if (_draining) throw new ApiError(503, "the server is shutting down.", code: "shutting_down");
        return State ?? throw new ApiError(503, _ready.Task.IsFaulted ? "the model failed to load." : "the model is loading; try again shortly.", code: "loading") { RetryAfterSeconds = 1 };
    }

    internal static ApiError UnknownModel(string name) =>
        new(404, $"the model '{name}' does not exist (GET /v1/models lists them; 'base' is the model without an adapter).", "model", "model_not_found");

    internal static async Task<JsonElement> ReadJsonAsync(HttpContext ctx)
    {
        try
        {
            using var doc = await JsonDocument.ParseAsync(ctx.Request.Body, default, ctx.RequestAborted);
            return doc.RootElement.Clone();
        }
        catch (JsonException e) { throw new ApiError(400, $"invalid JSON in the request body ({e.Message})."); }
    }

    List<Dictionary<string, object?>> Models(Loaded s)
    {
        var list = new List<Dictionary<string, object?>>
        {
            new()
            {
                ["id"] = AdapterRegistry.BaseName, ["object"] = "model", ["created"] = _created, ["owned_by"] = "softprompt",
                ["root"] = s.Lm.Base.Config.NameOrPath, ["method"] = null, ["virtual_tokens"] = 0,
                ["max_model_len"] = s.Engine.Capacity, ["chat_template"] = s.Chat?.Family,
            },
        };
        list.AddRange(s.Adapters.List().Select(ModelObject));
        return list;
    }

    Dictionary<string, object?> ModelObject(AdapterInfo a) => new()
    {
        ["id"] = a.Name, ["object"] = "model", ["created"] = _created, ["owned_by"] = "softprompt", ["parent"] = AdapterRegistry.BaseName,
        ["root"] = a.Path, ["method"] = a.Method, ["virtual_tokens"] = a.VirtualTokens,
        ["prompt_template"] = a.PromptTemplate, ["target_template"] = a.TargetTemplate, ["label_words"] = a.LabelWords,
    };
}
