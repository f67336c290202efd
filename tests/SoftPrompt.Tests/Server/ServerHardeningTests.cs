using System.Net.Http.Json;
using System.Text.Json;
using SoftPrompt.Inference;
using SoftPrompt.Server;

namespace SoftPrompt.Tests.Server;

/// <summary>Issue 21: the server's start-up refusals, browser origins, shutdown, timeouts, a failed choice of an
/// n > 1 request, and non-finite numbers in responses.</summary>
[Collection("Server")]
public class ServerHardeningTests : IClassFixture<ServerWorld>
{
    readonly ServerWorld _w;
    public ServerHardeningTests(ServerWorld w) => _w = w;

    /// <summary>A host reachable from other machines. Only the start-up checks see it: every case below is refused (or,
    /// with --insecure, checked) before anything listens, so no test binds beyond loopback.</summary>
    const string AllInterfaces = "::";

    [Fact]
    public async Task UnsafeConfigurationsAreRefusedAtStart()
    {
        async Task Refused(ServerOptions o, string mentions)
        {
            var e = await Assert.ThrowsAsync<SoftPromptException>(() => SoftPromptServer.StartAsync(o));
            Assert.Contains(mentions, e.Message);
        }
        await Refused(new ServerOptions { ModelDir = _w.ModelDir, Port = 0, Host = AllInterfaces }, "--api-key-env");
        await Refused(new ServerOptions { ModelDir = _w.ModelDir, Port = 0, AllowAdapterAdmin = true }, "--adapters-dir");
        Environment.SetEnvironmentVariable("SOFTPROMPT_TEST_K1", "same");
        await Refused(new ServerOptions { ModelDir = _w.ModelDir, Port = 0, Host = AllInterfaces, ApiKeyEnv = "SOFTPROMPT_TEST_K1", AllowAdapterAdmin = true, AdaptersDir = _w.Tmp.Path }, "--admin-key-env");
        await Refused(new ServerOptions { ModelDir = _w.ModelDir, Port = 0, ApiKeyEnv = "SOFTPROMPT_TEST_K1", AdminKeyEnv = "SOFTPROMPT_TEST_K1", AllowAdapterAdmin = true, AdaptersDir = _w.Tmp.Path }, "different keys");
        await Refused(new ServerOptions { ModelDir = _w.ModelDir, Port = 0, CorsOrigins = new[] { "evil.example/path" } }, "--cors-origin");
        // --insecure says so explicitly: the checks pass (checked without listening: tests bind loopback only).
        SoftPromptServer.CheckOptions(new ServerOptions { ModelDir = _w.ModelDir, Port = 0, Host = AllInterfaces, Insecure = true });
        Assert.Throws<SoftPromptException>(() => SoftPromptServer.CheckOptions(new ServerOptions { ModelDir = _w.ModelDir, Port = 0, Host = AllInterfaces }));
    }

    [Fact]
    public async Task AllowedOriginsGetCorsHeadersOthersA403()
    {
        var (server, http) = await ServerWorld.Start(new ServerOptions { ModelDir = _w.ModelDir, Port = 0, CorsOrigins = new[] { "http://localhost:3000" } });
        await using var _ = server;
        using var __ = http;
        async Task<HttpResponseMessage> Send(HttpMethod m, string origin, string? site = null)
        {
            var req = new HttpRequestMessage(m, "/v1/models");
            req.Headers.Add("Origin", origin);
            if (site is not null) req.Headers.Add("Sec-Fetch-Site", site);
            if (m == HttpMethod.Options) req.Headers.Add("Access-Control-Request-Method", "POST");
            return await http.SendAsync(req);
        }
        using (var ok = await Send(HttpMethod.Get, "http://localhost:3000"))
        {
            Assert.Equal(200, (int)ok.StatusCode);
            Assert.Equal("http://localhost:3000", ok.Headers.GetValues("Access-Control-Allow-Origin").Single());
        }
        using (var pre = await Send(HttpMethod.Options, "http://localhost:3000"))
        {
            Assert.Equal(204, (int)pre.StatusCode);
            Assert.Contains("POST", pre.Headers.GetValues("Access-Control-Allow-Methods").Single());
        }
        using (var bad = await Send(HttpMethod.Get, "http://localhost:3001")) Assert.Equal(403, (int)bad.StatusCode);
        using (var bad = await Send(HttpMethod.Options, "https://evil.example")) Assert.Equal(403, (int)bad.StatusCode);
        // A browser's no-cors request carries Sec-Fetch-Site without an allowed Origin.
        using (var req = new HttpRequestMessage(HttpMethod.Get, "/v1/models"))
        {
            req.Headers.Add("Sec-Fetch-Site", "cross-site");
            using var r = await http.SendAsync(req);
            Assert.Equal(403, (int)r.StatusCode);
        }
    }

    [Fact]
    public async Task RequestsDuringShutdownGet503AndNoneHangs()
    {
        var (server, http) = await ServerWorld.Start(new ServerOptions { ModelDir = _w.ModelDir, Port = 0, MaxBatch = 2 });
        await using var _ = server;
        using var __ = http;
        var engine = server.State!.Engine;
        // Requests keep arriving while the engine stops: each is answered (200 if it ran, 503 if it came too late).
        var load = Enumerable.Range(0, 24).Select(async i =>
        {
            await Task.Delay(i * 10);
            using var r = await http.PostAsJsonAsync("/v1/completions", new { model = "base", prompt = "x", max_tokens = 20, temperature = 0, ignore_eos = true });
            return (int)r.StatusCode;
        }).ToList();
        await Task.Delay(60);
        await engine.StopAsync(drain: true).WaitAsync(TimeSpan.FromSeconds(60));
        var codes = await Task.WhenAll(load).WaitAsync(TimeSpan.FromSeconds(60));
        Assert.All(codes, c => Assert.True(c is 200 or 503, $"status {c}"));
        Assert.Contains(503, codes);
        Assert.Throws<EngineStoppedException>(() => engine.Submit(new SequenceRequest { PromptIds = new[] { 1, 2 } }));
    }

    [Fact]
    public async Task AFailedChoiceCancelsItsSiblingsAndFailsOnlyItsRequest()
    {
        var (server, http) = await ServerWorld.Start(new ServerOptions { ModelDir = _w.ModelDir, Port = 0, MaxTokens = 2000 });
        await using var _ = server;
        using var __ = http;
        var finished = new List<string>();
        server.State!.Engine.SequenceFinished += r => { lock (finished) finished.Add(r); };
        // The second choice of the request (its seed 41 + 1) fails in its prefill, as an out-of-memory error would.
        ((SoftPrompt.Inference.BatchEngine)server.State.Engine).PrefillFault = r => r.Options.Seed == 42 ? new System.Runtime.InteropServices.ExternalException("out of memory (injected)") : null;
        var other = http.PostAsJsonAsync("/v1/completions", new { model = "base", prompt = "joy ->", max_tokens = 8, temperature = 0 });
        var (status, body) = await ServerWorld.Post(http, "/v1/completions", new { model = "base", prompt = "x", n = 3, max_tokens = 900, temperature = 0.7, seed = 41, ignore_eos = true });
        Assert.Equal(500, status);
        Assert.Equal("generation_failed", body.GetProperty("error").GetProperty("code").GetString());
        Assert.DoesNotContain("   at ", body.ToString());
        using var o = await other;
        Assert.Equal(200, (int)o.StatusCode);
        // The two siblings were cancelled, not generated to 900 tokens.
        var sw = System.Diagnostics.Stopwatch.StartNew();
        while (sw.Elapsed < TimeSpan.FromSeconds(30)) { lock (finished) if (finished.Count(f => f == "cancelled") >= 2) break; await Task.Delay(20); }
        lock (finished)
        {
            Assert.Equal(1, finished.Count(f => f == "error"));
            Assert.Equal(2, finished.Count(f => f == "cancelled"));
        }
    }

    [Fact]
    public async Task ARequestPastItsDeadlineGets408()
    {
        var (server, http) = await ServerWorld.Start(new ServerOptions { ModelDir = _w.ModelDir, Port = 0, MaxBatch = 1, RequestTimeoutSeconds = 1, MaxTokens = 2000 });
        await using var _ = server;
        using var __ = http;
        // One long request holds the only row; the second waits in the queue past its deadline.
        var first = ServerWorld.Post(http, "/v1/completions", new { model = "base", prompt = "x", max_tokens = 1000, temperature = 0, ignore_eos = true });
        var (status, body) = await ServerWorld.Post(http, "/v1/completions", new { model = "base", prompt = "y", max_tokens = 1000, temperature = 0, ignore_eos = true });
        Assert.Equal(408, status);
        Assert.Equal("request_timeout", body.GetProperty("error").GetProperty("code").GetString());
        Assert.Contains((await first).Status, new[] { 200, 408 });
    }

    [Fact]
    public void NonFiniteLogprobsAreWrittenAsTheOpenAiApiDoes()
    {
        Assert.Equal(-9999f, Completions.Lp(float.NegativeInfinity));
        Assert.Null(Completions.Lp(float.NaN));
        Assert.Null(Completions.Lp(float.PositiveInfinity));
        Assert.Equal(-0.5f, Completions.Lp(-0.5f));
        // Any non-finite number that reaches the response writer is null, never an exception mid-body.
        var json = JsonSerializer.Serialize(new { a = float.NaN, b = double.NegativeInfinity, c = new[] { 1.5f, float.PositiveInfinity } }, Json.Options);
        Assert.Equal("{\"a\":null,\"b\":null,\"c\":[1.5,null]}", json);
    }

    /// <summary>Each client (remote address) holds at most its share of sequences; another client is not blocked by it.</summary>
    [Fact]
    public async Task OneClientCannotTakeEveryQueueSlot()
    {
        var (server, http) = await ServerWorld.Start(new ServerOptions { ModelDir = _w.ModelDir, Port = 0, MaxBatch = 1, MaxQueue = 16, MaxClientSequences = 2, MaxTokens = 2000 });
        await using var _ = server;
        using var __ = http;
        // Two long requests take this client's share; a third from the same address is refused.
        var hold = Enumerable.Range(0, 2).Select(i => http.PostAsJsonAsync("/v1/completions", new { model = "base", prompt = "x", max_tokens = 300, temperature = 0, ignore_eos = true })).ToList();
        var sw = System.Diagnostics.Stopwatch.StartNew();
        while (server.Shares.Held("127.0.0.1") < 2 && sw.Elapsed < TimeSpan.FromSeconds(30)) await Task.Delay(10);
        var (s, body) = await ServerWorld.Post(http, "/v1/completions", new { model = "base", prompt = "y", max_tokens = 2 });
        Assert.Equal(429, s);
        Assert.Contains("share", body.GetProperty("error").GetProperty("message").GetString());
        // Another client (loopback address 127.0.0.2) still gets in.
        using var other = new HttpClient(new SocketsHttpHandler
        {
            ConnectCallback = async (ctx, ct) =>
            {
                var sock = new System.Net.Sockets.Socket(System.Net.Sockets.SocketType.Stream, System.Net.Sockets.ProtocolType.Tcp);
                sock.Bind(new System.Net.IPEndPoint(System.Net.IPAddress.Parse("127.0.0.2"), 0));
                await sock.ConnectAsync(ctx.DnsEndPoint, ct);
                return new System.Net.Sockets.NetworkStream(sock, ownsSocket: true);
            },
        }) { BaseAddress = server.Address };
        Assert.Equal(200, (await ServerWorld.Post(other, "/v1/completions", new { model = "base", prompt = "y", max_tokens = 2 })).Status);
        foreach (var r in await Task.WhenAll(hold)) { Assert.Equal(200, (int)r.StatusCode); r.Dispose(); }
        Assert.Equal(0, server.Shares.Held("127.0.0.1"));
    }
}
