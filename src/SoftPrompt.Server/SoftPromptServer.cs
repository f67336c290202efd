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
using OpenTelemetry.Resources;
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
    readonly byte[]? _apiKey, _adminKey;
    readonly HashSet<string> _corsOrigins;
    internal readonly ClientShares Shares;
    readonly TaskCompletionSource _ready = new(TaskCreationOptions.RunContinuationsAsynchronously);
    readonly long _created = DateTimeOffset.UtcNow.ToUnixTimeSeconds();
    internal volatile Loaded? State;
    volatile bool _draining;
    internal ServerMetrics Metrics { get; }
    internal ServerOptions Options => _o;

    public Uri Address { get; private set; } = null!;
    /// <summary>Completes when the model and the start-up adapters are loaded; faults with the reason if they cannot be.</summary>
    public Task Ready => _ready.Task;

    SoftPromptServer(ServerOptions o, WebApplication app, byte[]? key, byte[]? adminKey, ServerMetrics metrics)
    {
        _o = o; _app = app; _apiKey = key; _adminKey = adminKey; Metrics = metrics;
        _corsOrigins = new HashSet<string>(o.CorsOrigins, StringComparer.OrdinalIgnoreCase);
        Shares = new ClientShares(o.MaxClientSequences ?? Math.Max(1, (o.MaxBatch + o.MaxQueue) / 2));
    }

    /// <summary>Every start-up check of the options (values, exposure, keys, CORS origins, adapter folders), before
    /// anything listens; returns the API and admin keys read from their variables.</summary>
    internal static (byte[]? Key, byte[]? AdminKey) CheckOptions(ServerOptions o)
    {
        if (!Directory.Exists(o.ModelDir)) throw new SoftPromptException($"--model '{o.ModelDir}' does not exist.");
        if (o.Port is < 0 or > 65535) throw new SoftPromptException($"--port {o.Port} is not a port number (0-65535; 0 = any free port).");
        if (o.MaxBatch < 1) throw new SoftPromptException("--max-batch must be at least 1.");
        if (o.MaxQueue < 0) throw new SoftPromptException("--max-queue must be >= 0.");
        if (o.MaxTokens < 1) throw new SoftPromptException("--max-tokens must be at least 1.");
        if (o.MaxBodyBytes < 1024) throw new SoftPromptException("--max-body-bytes must be at least 1024.");
        if (o.MaxConnections < 1) throw new SoftPromptException("--max-connections must be at least 1.");
        if (o.HeaderTimeoutSeconds < 1) throw new SoftPromptException("--header-timeout must be at least 1 second.");
        if (o.RequestTimeoutSeconds < 0) throw new SoftPromptException("--request-timeout must be >= 0 (0 = no limit).");
        if (o.MaxAdapters < 1) throw new SoftPromptException("--max-adapters must be at least 1.");
        if (o.MaxClientSequences is < 1) throw new SoftPromptException("--max-client-sequences must be at least 1.");
        if (o.MaxPrefillTokens is < 1) throw new SoftPromptException("--max-prefill-tokens must be at least 1.");
        IPAddress? ip = null;
        if (o.Host != "localhost" && !IPAddress.TryParse(o.Host, out ip)) throw new SoftPromptException($"--host '{o.Host}' is not an IP address (or 'localhost').");
        bool loopback = ip is null || IPAddress.IsLoopback(ip);
        if (!loopback && o.ApiKeyEnv is null && !o.Insecure)
            throw new SoftPromptException($"--host {o.Host} is reachable from other machines: set --api-key-env (or --insecure to serve without a key).");
        var key = ReadKey("--api-key-env", o.ApiKeyEnv);
        var adminKey = ReadKey("--admin-key-env", o.AdminKeyEnv);
        if (o.AdminKeyEnv is not null && !o.AllowAdapterAdmin) throw new SoftPromptException("--admin-key-env is only used with --allow-adapter-admin.");
        if (o.AllowAdapterAdmin)
        {
            if (o.AdaptersDir is null) throw new SoftPromptException("--allow-adapter-admin needs --adapters-dir: POST /v1/adapters loads only folders inside it.");
            if (!loopback && adminKey is null) throw new SoftPromptException($"--allow-adapter-admin on --host {o.Host} needs --admin-key-env.");
            if (key is not null && adminKey is not null && CryptographicOperations.FixedTimeEquals(key, adminKey))
                throw new SoftPromptException("--admin-key-env and --api-key-env must hold different keys.");
        }
        foreach (var origin in o.CorsOrigins)
            if (origin != "*" && !(Uri.TryCreate(origin, UriKind.Absolute, out var u) && u.Scheme is "http" or "https" && u.GetLeftPart(UriPartial.Authority) == origin.TrimEnd('/')))
                throw new SoftPromptException($"--cors-origin '{origin}': expected an origin such as https://app.example.com (scheme://host[:port]) or *.");
        foreach (var (name, path) in o.Adapters)
        {
            AdapterRegistry.CheckName(name);
            if (!Directory.Exists(path)) throw new SoftPromptException($"--adapter {name}={path}: the folder does not exist.");
        }
        return (key, adminKey);
    }

    /// <summary>Checks the options, starts listening, and loads the model and adapters in the background.</summary>
    public static async Task<SoftPromptServer> StartAsync(ServerOptions o, CancellationToken cancel = default)
    {
        var (key, adminKey) = CheckOptions(o);
        var discovered = o.AdaptersDir is null ? new List<(string, string)>() : AdapterRegistry.Discover(o.AdaptersDir);
        // What --adapters-dir serves obeys the rule POST /v1/adapters obeys: nothing reached through a link out of it.
        discovered = discovered.Where(d =>
        {
            var rel = Path.GetRelativePath(o.AdaptersDir!, d.Item2).Replace('\\', '/');
            if (rel == ".") return true;
            try { AdapterPaths.Resolve(o.AdaptersDir!, rel); return true; }
            catch (SoftPromptException e) { o.Log?.Invoke($"warning: skipped {d.Item2}: {e.Message}"); return false; }
        }).ToList();

        var builder = WebApplication.CreateSlimBuilder(new WebApplicationOptions { Args = Array.Empty<string>(), ContentRootPath = AppContext.BaseDirectory });
        builder.Logging.ClearProviders();
        builder.WebHost.ConfigureKestrel(k =>
        {
            k.Limits.MaxRequestBodySize = o.MaxBodyBytes;
            // Every resource a connection holds is bounded: connections, time to send the headers, body rate
            // (slowloris), idle keep-alive time; header sizes stay at Kestrel's defaults (32 KB, 100 headers).
            k.Limits.MaxConcurrentConnections = o.MaxConnections;
            k.Limits.MaxConcurrentUpgradedConnections = o.MaxConnections;
            k.Limits.RequestHeadersTimeout = TimeSpan.FromSeconds(o.HeaderTimeoutSeconds);
            k.Limits.MinRequestBodyDataRate = new Microsoft.AspNetCore.Server.Kestrel.Core.MinDataRate(240, TimeSpan.FromSeconds(o.HeaderTimeoutSeconds));
            k.Limits.KeepAliveTimeout = TimeSpan.FromSeconds(3 * o.HeaderTimeoutSeconds);   // also a connection that never sends
            k.AddServerHeader = false;
            if (o.Host == "localhost") k.ListenLocalhost(o.Port); else k.Listen(IPAddress.Parse(o.Host), o.Port); // checked in CheckOptions
        });
        builder.Services.Configure<HostOptions>(h => h.ShutdownTimeout = TimeSpan.FromSeconds(o.DrainSeconds));
        SoftPromptServer? self = null;
        var metrics = new ServerMetrics(() => self?.State?.Engine.QueueDepth ?? 0, () => self?.State?.Engine.ActiveRows ?? 0,
            () => self?.State?.Adapters.ResidentCount ?? 0);
        builder.Services.AddOpenTelemetry().ConfigureResource(r => r.AddService("softprompt"))
            .WithMetrics(m => m.AddMeter(metrics.Name).AddPrometheusExporter());
        var app = builder.Build();

        self = new SoftPromptServer(o, app, key, adminKey, metrics);
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
                : new BatchEngine(lm.Model, new BatchEngineOptions { MaxBatch = _o.MaxBatch, MaxQueue = _o.MaxQueue, Capacity = capacity, MaxPrefillTokens = _o.MaxPrefillTokens });
            engine.Stepped += Metrics.OnStep;
            engine.SequenceFinished += reason => Metrics.Sequences.Add(1, new KeyValuePair<string, object?>("finish", reason));
            var reg = new AdapterRegistry(lm.Base, _o.MaxResidentAdapters, _o.CheckFinite, _o.MaxAdapters);
            foreach (var (name, path) in _o.Adapters.Concat(discovered))
            {
                try { reg.Add(name, path); }
                catch (SoftPromptException e) when (discovered.Contains((name, path)))
                {
                    _o.Log?.Invoke($"warning: skipped {path}: {e.Message}");   // a folder found by --adapters-dir may be for another model
                }
                catch (InvalidOperationException e) { throw new SoftPromptException($"--adapter {name}: {e.Message}"); }
                catch (AdapterLimitException e) { throw new SoftPromptException($"--adapter {name}: {e.Message}"); }
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
            var rel = f.String("path", required: true)!;
            bool replace = f.Bool("replace", false);
            try { AdapterRegistry.CheckName(name); }
            catch (SoftPromptException e) { throw new ApiError(400, e.Message, "name"); }
            var root = _o.AdaptersDir!;
            string dir;
            try { dir = AdapterPaths.Resolve(root, rel); }
            catch (SoftPromptException e) { throw new ApiError(400, e.Message, "path", "invalid_adapter_path"); }
            AdapterInfo info;
            try { info = await Task.Run(() => s.Adapters.Add(name, dir, replace)); }
            catch (InvalidOperationException e) { throw new ApiError(409, e.Message, "name", "adapter_exists"); }
            catch (AdapterLimitException e) { throw new ApiError(409, e.Message, "name", "adapter_limit"); }
            catch (SoftPromptException e)
            {
                // The loader's message names files by their absolute path: the client sees them relative to the
                // adapters folder, the server log has them whole.
                _o.Log?.Invoke($"adapter '{name}' not added from {dir}: {e.Message}");
                throw new ApiError(400, $"adapter '{name}' ('{rel}') cannot be served: {HidePaths(e.Message, root, dir, rel)}", "path", "invalid_adapter");
            }
            _o.Log?.Invoke($"adapter '{name}' {(replace ? "added or replaced" : "added")} from {info.Path}");
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

    /// <summary>A loader message with the adapter folder's absolute paths replaced by the client's relative path.</summary>
    static string HidePaths(string message, string root, string dir, string rel)
    {
        foreach (var (abs, shown) in new[] { (dir, rel), (AdapterPaths.RealPath(root), "<adapters-dir>"), (Path.GetFullPath(root), "<adapters-dir>"), (root, "<adapters-dir>") })
            if (abs.Length > 0) message = message.Replace(abs, shown, StringComparison.Ordinal);
        return message;
    }

    static bool IsAdminPath(PathString p) => p.StartsWithSegments("/v1/adapters");

    /// <summary>Origin policy, auth, content type, error mapping (OpenAI error JSON, never a stack trace), metrics.</summary>
    async Task Guard(HttpContext ctx, RequestDelegate next)
    {
        var sw = Stopwatch.StartNew();
        try
        {
            var req = ctx.Request;
            // Browsers: a page on another origin may send requests to a server on localhost (cross-site request
            // forgery, DNS rebinding). They mark them with Origin (and Sec-Fetch-Site); only --cors-origin ones pass.
            var origin = req.Headers.Origin.ToString();
            var site = req.Headers["Sec-Fetch-Site"].ToString();
            if (origin.Length > 0 || site is "cross-site" or "same-site")
            {
                bool allowed = _corsOrigins.Contains("*") || (origin.Length > 0 && _corsOrigins.Contains(origin));
                if (!allowed)
                    throw new ApiError(403, $"cross-origin requests are refused{(origin.Length > 0 ? $" (Origin {origin})" : "")}; the server's --cors-origin lists the browser origins it accepts.", code: "cross_origin_forbidden");
                ctx.Response.Headers.AccessControlAllowOrigin = origin.Length > 0 ? origin : "*";
                ctx.Response.Headers.Vary = "Origin";
                if (HttpMethods.IsOptions(req.Method))
                {
                    ctx.Response.Headers.AccessControlAllowMethods = "GET, POST, DELETE, OPTIONS";
                    ctx.Response.Headers.AccessControlAllowHeaders = "Authorization, Content-Type";
                    ctx.Response.Headers.AccessControlMaxAge = "600";
                    ctx.Response.StatusCode = 204;
                    return;
                }
            }
            if (IsAdminPath(req.Path) && !HttpMethods.IsGet(req.Method))
            {
                if (!_o.AllowAdapterAdmin)
                    throw new ApiError(403, "adapter administration is disabled on this server (the operator starts it with --allow-adapter-admin).", code: "admin_disabled");
                var key = _adminKey ?? _apiKey;
                if (key is not null && !Authorized(req.Headers.Authorization.ToString(), key))
                    throw new ApiError(401, "missing or wrong admin key: send 'Authorization: Bearer ADMIN_KEY'.", code: "invalid_api_key");
            }
            else if (_apiKey is not null && req.Path != "/health" && !Authorized(req.Headers.Authorization.ToString(), _apiKey)
                     && !(_adminKey is not null && Authorized(req.Headers.Authorization.ToString(), _adminKey)))
                throw new ApiError(401, "missing or wrong API key: send 'Authorization: Bearer KEY'.", code: "invalid_api_key");
            if (HttpMethods.IsPost(req.Method) && !IsJson(req.ContentType))
                throw new ApiError(415, $"the request body must be JSON sent as 'Content-Type: application/json' (got '{Truncate(req.ContentType ?? "none", 100)}').", code: "unsupported_media_type");
            await next(ctx);
        }
        catch (Exception e) when (!ctx.Response.HasStarted)
        {
            var err = Classify(e, ctx);
            if (err is not null) { ctx.Response.Headers.Remove("Access-Control-Allow-Methods"); await err.WriteAsync(ctx); }
        }
        catch (Exception e)
        {
            // The response had started (a stream): the client sees the stream end; the server keeps serving.
            if (e is not ApiError && !ctx.RequestAborted.IsCancellationRequested) _o.Log?.Invoke($"error mid-response: {ctx.Request.Path}: {e.GetType().Name}: {e.Message}");
        }
        finally
        {
            var endpoint = ctx.GetEndpoint() is RouteEndpoint r ? r.RoutePattern.RawText ?? "?" : "other";
            Metrics.Requests.Add(1, new("endpoint", endpoint), new("status", ctx.Response.StatusCode));
            Metrics.RequestSeconds.Record(sw.Elapsed.TotalSeconds, new KeyValuePair<string, object?>("endpoint", endpoint));
        }
    }

    /// <summary>The answer to an exception: an <see cref="ApiError"/> as it is, a Kestrel refusal with its status
    /// (413 body too large, 408 too slow, 400 malformed), null for a client that left; anything else is a server
    /// fault: 500, logged as one line (type and message, no stack trace).</summary>
    ApiError? Classify(Exception e, HttpContext ctx)
    {
        switch (e)
        {
            case ApiError a: return a;
            case BadHttpRequestException b when b.StatusCode == 413: return new ApiError(413, $"the request body exceeds {_o.MaxBodyBytes} bytes.", code: "request_too_large");
            case BadHttpRequestException b when b.StatusCode == 408: return new ApiError(408, "the request body arrived too slowly.", code: "request_timeout");
            case BadHttpRequestException b: return new ApiError(b.StatusCode is >= 400 and < 500 ? b.StatusCode : 400, b.Message);
            case OperationCanceledException or IOException when ctx.RequestAborted.IsCancellationRequested: return null;
        }
        if (ctx.RequestAborted.IsCancellationRequested) return null;
        _o.Log?.Invoke($"error: {ctx.Request.Method} {ctx.Request.Path}: {e.GetType().Name}: {e.Message}");
        return new ApiError(500, "internal error (the server log has the details).");
    }

    static bool IsJson(string? contentType)
    {
        if (contentType is null || !Microsoft.Net.Http.Headers.MediaTypeHeaderValue.TryParse(contentType, out var mt)) return false;
        if (!mt.MediaType.Equals("application/json", StringComparison.OrdinalIgnoreCase)) return false;
        return !mt.Charset.HasValue || mt.Charset.Equals("utf-8", StringComparison.OrdinalIgnoreCase) || mt.Charset.Equals("utf8", StringComparison.OrdinalIgnoreCase);
    }

    static string Truncate(string s, int n) => s.Length <= n ? s : s[..n] + "...";

    static bool Authorized(string header, byte[] key)
    {
        const string scheme = "Bearer ";
        if (!header.StartsWith(scheme, StringComparison.OrdinalIgnoreCase)) return false;
        return CryptographicOperations.FixedTimeEquals(Encoding.UTF8.GetBytes(header[scheme.Length..].Trim()), key);
    }

    static byte[]? ReadKey(string option, string? env)
    {
        if (env is null) return null;
        var v = Environment.GetEnvironmentVariable(env);
        if (string.IsNullOrEmpty(v)) throw new SoftPromptException($"{option} {env}: the environment variable is not set or empty.");
        return Encoding.UTF8.GetBytes(v);
    }

    internal Loaded Need()
    {
        if (_draining) throw new ApiError(503, "the server is shutting down.", code: "shutting_down");
        return State ?? throw new ApiError(503, _ready.Task.IsFaulted ? "the model failed to load." : "the model is loading; try again shortly.", code: "loading") { RetryAfterSeconds = 1 };
    }

    internal static ApiError UnknownModel(string name) =>
        new(404, $"the model '{Truncate(name, 200)}' does not exist (GET /v1/models lists them; 'base' is the model without an adapter).", "model", "model_not_found");

    /// <summary>The request body as JSON: a parse error, a nesting beyond 64 levels, or a string that is not valid
    /// UTF-16 text (a lone surrogate escape such as "\udc00") is a 400.</summary>
    internal static async Task<JsonElement> ReadJsonAsync(HttpContext ctx)
    {
        JsonElement root;
        try
        {
            using var doc = await JsonDocument.ParseAsync(ctx.Request.Body, default, ctx.RequestAborted);
            root = doc.RootElement.Clone();
        }
        catch (JsonException e) { throw new ApiError(400, $"invalid JSON in the request body ({e.Message})."); }
        CheckStrings(root, "");
        return root;
    }

    static void CheckStrings(JsonElement e, string where)
    {
        switch (e.ValueKind)
        {
            case JsonValueKind.String:
                try { e.GetString(); }
                catch (InvalidOperationException) { throw new ApiError(400, $"{(where.Length == 0 ? "the body" : $"'{where}'")} is not valid text (an unpaired surrogate escape such as \\udc00).", where.Length == 0 ? null : where); }
                break;
            case JsonValueKind.Array:
                int i = 0;
                foreach (var x in e.EnumerateArray()) CheckStrings(x, $"{where}[{i++}]");
                break;
            case JsonValueKind.Object:
                foreach (var p in e.EnumerateObject())
                {
                    string name;
                    try { name = p.Name; }
                    catch (InvalidOperationException) { throw new ApiError(400, "a property name is not valid text (an unpaired surrogate escape)."); }
                    CheckStrings(p.Value, where.Length == 0 ? name : $"{where}.{name}");
                }
                break;
        }
    }

    List<Dictionary<string, object?>> Models(Loaded s)
    {
        var list = new List<Dictionary<string, object?>>
        {
            new()
            {
                ["id"] = AdapterRegistry.BaseName, ["object"] = "model", ["created"] = _created, ["owned_by"] = "softprompt",
                ["root"] = AdapterRegistry.BaseName, ["method"] = null, ["virtual_tokens"] = 0,
                ["max_model_len"] = s.Engine.Capacity, ["chat_template"] = s.Chat?.Family,
            },
        };
        list.AddRange(s.Adapters.List().Select(ModelObject));
        return list;
    }

    // Names only: where an adapter or the model lies on the server's disk stays in the server log.
    Dictionary<string, object?> ModelObject(AdapterInfo a) => new()
    {
        ["id"] = a.Name, ["object"] = "model", ["created"] = _created, ["owned_by"] = "softprompt", ["parent"] = AdapterRegistry.BaseName,
        ["root"] = AdapterRegistry.BaseName, ["method"] = a.Method, ["virtual_tokens"] = a.VirtualTokens,
        ["prompt_template"] = a.PromptTemplate, ["target_template"] = a.TargetTemplate, ["label_words"] = a.LabelWords,
    };
}

/// <summary>Each client's fair share of the engine's queue: sequences (queued or decoding) held per remote address
/// at most, so that one client cannot take every slot.</summary>
internal sealed class ClientShares
{
    readonly Dictionary<string, int> _held = new(StringComparer.Ordinal);
    public int PerClient { get; }
    public ClientShares(int perClient) => PerClient = perClient;

    public bool TryTake(string client, int n)
    {
        lock (_held)
        {
            _held.TryGetValue(client, out var have);
            if (have + n > PerClient) return false;
            _held[client] = have + n;
            return true;
        }
    }

    public int Held(string client) { lock (_held) return _held.TryGetValue(client, out var n) ? n : 0; }

    public void Give(string client, int n)
    {
        lock (_held)
        {
            if (!_held.TryGetValue(client, out var have)) return;
            if (have - n <= 0) _held.Remove(client); else _held[client] = have - n;
        }
    }
}
