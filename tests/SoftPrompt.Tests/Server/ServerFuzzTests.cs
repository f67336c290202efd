using System.Diagnostics;
using System.Net.Http.Headers;
using System.Net.Sockets;
using System.Text;
using System.Text.Json;

namespace SoftPrompt.Tests.Server;

/// <summary>
/// Issue 21's proof: ONE `softprompt serve` process on a loopback port (API key, adapter administration enabled with
/// its own key and an adapters folder holding a symbolic link out of it, 64 KB bodies, a 2 s header timeout) takes
/// several hundred malformed or hostile requests — bodies, JSON types, headers, sizes, encodings, slow clients,
/// disconnects mid-stream, admin attempts, methods and paths — from 8 concurrent workers, while a steady background
/// client asks three greedy completions over and over. Every hostile request must be answered 4xx within its timeout
/// (disconnects, which cannot be answered, must leave the server serving); every background answer must equal the
/// answer the same request got alone before the storm; the server's resident memory must stay bounded; and its log
/// must hold no internal error and no stack trace. Figures per class go to the test output (docs/reliability.md).
/// </summary>
[Collection("Server")]
public class ServerFuzzTests : IClassFixture<ServerWorld>
{
    readonly ServerWorld _w;
    readonly Xunit.Abstractions.ITestOutputHelper _out;
    public ServerFuzzTests(ServerWorld w, Xunit.Abstractions.ITestOutputHelper output) { _w = w; _out = output; }

    const string ApiKey = "fuzz-api-key", AdminKey = "fuzz-admin-key";
    const int HeaderTimeout = 2, MaxBody = 64 * 1024;
    /// <summary>What a case got: an HTTP status, or <see cref="Closed"/> when the server closed the connection without one.</summary>
    const int Closed = -1;

    /// <param name="NoAnswer">No HTTP answer is possible (the client leaves first, or never sends a request): the case
    /// must still end within its deadline (the server closes an idle connection) and leave the server serving.</param>
    sealed record Case(string Class, string Name, Func<Uri, Task<int>> Run, bool NoAnswer = false);

    // ------------------------------------------------------------------ transport

    static readonly HttpClient Http = new(new SocketsHttpHandler { MaxResponseDrainSize = 0, PooledConnectionLifetime = TimeSpan.FromSeconds(5) }) { Timeout = TimeSpan.FromSeconds(30) };

    static async Task<int> Send(Uri baseUri, HttpMethod method, string path, byte[]? body, string? contentType = "application/json",
        string? auth = "Bearer " + ApiKey, (string, string)[]? headers = null)
    {
        using var req = new HttpRequestMessage(method, new Uri(baseUri, path));
        if (body is not null)
        {
            req.Content = new ByteArrayContent(body);
            if (contentType is not null) req.Content.Headers.TryAddWithoutValidation("Content-Type", contentType);
        }
        if (auth is not null) req.Headers.TryAddWithoutValidation("Authorization", auth);
        foreach (var (k, v) in headers ?? Array.Empty<(string, string)>()) req.Headers.TryAddWithoutValidation(k, v);
        using var r = await Http.SendAsync(req);
        var text = await r.Content.ReadAsStringAsync();
        int status = (int)r.StatusCode;
        // Every API error is OpenAI's shape, with no stack trace.
        if (status >= 400 && text.Length > 0 && r.Content.Headers.ContentType?.MediaType == "application/json")
        {
            var err = JsonDocument.Parse(text).RootElement.GetProperty("error");
            Assert.False(string.IsNullOrEmpty(err.GetProperty("message").GetString()));
            Assert.DoesNotContain("   at ", text);
        }
        return status;
    }

    static Task<int> Post(Uri u, string raw, string path = "/v1/completions") => Send(u, HttpMethod.Post, path, Encoding.UTF8.GetBytes(raw));

    /// <summary>Raw bytes over a socket; the status of the first response line, or <see cref="Closed"/>.
    /// <paramref name="stallAfterSend"/>: keep the connection open without sending more (a slow client).</summary>
    static async Task<int> Raw(Uri u, byte[] request, bool closeAfterSend = false)
    {
        using var tcp = new TcpClient();
        await tcp.ConnectAsync(u.Host, u.Port);
        var stream = tcp.GetStream();
        await stream.WriteAsync(request);
        await stream.FlushAsync();
        if (closeAfterSend) { tcp.Client.Shutdown(SocketShutdown.Both); return Closed; }
        var buf = new byte[4096];
        var got = new MemoryStream();
        while (true)
        {
            int n;
            try { n = await stream.ReadAsync(buf); }
            catch (IOException) { n = 0; }
            if (n == 0) break;
            got.Write(buf, 0, n);
            var text = Encoding.ASCII.GetString(got.ToArray());
            if (text.Contains("\r\n")) return int.Parse(text.Split(' ')[1]);
        }
        return Closed;
    }

    static byte[] Ascii(string s) => Encoding.ASCII.GetBytes(s);

    static string Body(string fields) => "{\"model\":\"base\",\"prompt\":\"x\",\"max_tokens\":2" + (fields.Length > 0 ? "," + fields : "") + "}";

    // ------------------------------------------------------------------ the cases

    IEnumerable<Case> Cases(string adaptersRoot)
    {
        // bodies: not JSON, not an object, truncated, too deep, invalid text
        var valid = Body("\"temperature\":0,\"stop\":[\"a\"]");
        foreach (var raw in new[] { "", " ", "{", "}", "[", "null", "true", "1", "\"str\"", "[1,2]", "{\"model\":}", "{'model':'base'}", "{}x",
                     "{\"model\":\"base\",}", "{\"model\":\"base\" \"prompt\":\"x\"}", "{\"model\":\"base\",\"prompt\":\"x\",\"temperature\":NaN}",
                     "{\"model\":\"base\",\"prompt\":\"x\",\"temperature\":Infinity}", "{\"model\":\"base\",\"prompt\":\"x\"}/*c*/", "{}", "{\"prompt\":\"x\"}",
                     new string('[', 100) + new string(']', 100), "{\"a\":" + string.Concat(Enumerable.Repeat("{\"a\":", 200)) + "1" + new string('}', 201) })
            yield return new("bodies", $"raw {Trim(raw)}", u => Post(u, raw));
        for (int cut = 1; cut < valid.Length; cut += 3)
        {
            var prefix = valid[..cut];
            yield return new("bodies", $"truncated at {cut}", u => Post(u, prefix));
        }
        foreach (var (where, raw) in new[] { ("model", "{\"model\":\"\\udc00\",\"prompt\":\"x\"}"), ("prompt", "{\"model\":\"base\",\"prompt\":\"a\\ud800b\"}"),
                     ("stop", Body("\"stop\":[\"\\udfff\"]")), ("name", "{\"\\ud800\":1,\"model\":\"base\",\"prompt\":\"x\"}"),
                     ("prompt list", "{\"model\":\"base\",\"prompt\":[\"ok\",\"\\udc00\"]}") })
            yield return new("encodings", $"lone surrogate in {where}", u => Post(u, raw));
        foreach (var (name, bytes) in new[]
                 {
                     ("invalid UTF-8", Encoding.UTF8.GetBytes("{\"model\":\"base\",\"prompt\":\"").Concat(new byte[] { 0xff, 0xfe, 0xc3 }).Concat(Encoding.UTF8.GetBytes("\"}")).ToArray()),
                     ("overlong UTF-8", Encoding.UTF8.GetBytes("{\"model\":\"base\",\"prompt\":\"").Concat(new byte[] { 0xc0, 0xaf }).Concat(Encoding.UTF8.GetBytes("\"}")).ToArray()),
                     ("UTF-16 body", Encoding.Unicode.GetBytes(Body(""))),
                     ("UTF-32 body", Encoding.UTF32.GetBytes(Body(""))),
                     ("NUL bytes", new byte[] { 0, 0, 0, 0 }),
                     ("gzip bytes", new byte[] { 0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3, 0xab, 0xae, 5, 0 }),
                     ("raw control chars in string", Encoding.UTF8.GetBytes("{\"model\":\"base\",\"prompt\":\"a\u0001\nb\"}")),
                 })
            yield return new("encodings", name, u => Send(u, HttpMethod.Post, "/v1/completions", bytes));
        yield return new("encodings", "Content-Encoding gzip on plain JSON", u => Send(u, HttpMethod.Post, "/v1/completions", new byte[] { 0x1f, 0x8b, 8, 0 }, headers: new[] { ("Content-Encoding", "gzip") }));

        // types and ranges, field by field (values known to be wrong for that field)
        var bad = new Dictionary<string, string[]>
        {
            ["model"] = new[] { "1", "true", "[]", "{}", "\"\"", "\"nope\"", "\"" + new string('m', 5000) + "\"", "\"../../etc/passwd\"" },
            ["prompt"] = new[] { "1", "true", "{}", "[]", "[[]]", "[1,\"a\"]", "[-1]", "[999999]", "[1.5]", "[[1],[]]", "[\"a\",1]", "[[1,2],\"x\"]", "[1e400]", "null" },
            ["max_tokens"] = new[] { "0", "-1", "1e9", "\"5\"", "1.5", "true", "[]", "100000", "9223372036854775808" },
            ["temperature"] = new[] { "-0.1", "2.5", "\"1\"", "true", "[]", "1e999", "-1e999" },
            ["top_p"] = new[] { "0", "-1", "1.5", "\"x\"", "{}" },
            ["n"] = new[] { "0", "-1", "1000", "\"2\"", "1.5" },
            ["stop"] = new[] { "1", "[1]", "[\"a\",\"b\",\"c\",\"d\",\"e\"]", "[\"\"]", "\"\"", "\"" + new string('s', 300) + "\"", "{}", "[null]" },
            ["logprobs"] = new[] { "-1", "21", "\"1\"", "1.5", "true" },
            ["echo"] = new[] { "\"yes\"", "1", "[]" },
            ["stream"] = new[] { "\"yes\"", "1", "{}" },
            ["seed"] = new[] { "\"1\"", "1.5", "1e30", "true" },
            ["ignore_eos"] = new[] { "\"yes\"", "0" },
            ["best_of"] = new[] { "2", "\"1\"", "0" },
            ["logit_bias"] = new[] { "{\"1\":5}", "[]", "\"x\"", "{\"50256\":-100}" },
            ["tools"] = new[] { "[{\"type\":\"function\"}]", "\"x\"", "{}" },
            ["functions"] = new[] { "[{}]" },
            ["tool_choice"] = new[] { "\"auto\"", "{}", "\"required\"" },
            ["function_call"] = new[] { "\"auto\"" },
            ["response_format"] = new[] { "{\"type\":\"json_object\"}", "\"text\"", "{}", "{\"type\":\"json_schema\",\"json_schema\":{}}" },
            ["suffix"] = new[] { "\"x\"", "1" },
            ["presence_penalty"] = new[] { "0.5", "\"0\"" },
            ["frequency_penalty"] = new[] { "-1", "2" },
        };
        foreach (var (field, values) in bad)
            foreach (var v in values)
            {
                var raw = field is "model" or "prompt"
                    ? (field == "model" ? $"{{\"model\":{v},\"prompt\":\"x\"}}" : $"{{\"model\":\"base\",\"prompt\":{v}}}")
                    : Body($"\"{field}\":{v}");
                yield return new("types", $"{field}={Trim(v)}", u => Post(u, raw));
            }
        var chatBad = new[]
        {
            "\"messages\":\"hi\"", "\"messages\":[]", "\"messages\":[1]", "\"messages\":[{}]", "\"messages\":[{\"role\":1,\"content\":\"x\"}]",
            "\"messages\":[{\"role\":\"robot\",\"content\":\"x\"}]", "\"messages\":[{\"role\":\"user\"}]", "\"messages\":[{\"role\":\"user\",\"content\":1}]",
            "\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":1,\"text\":\"x\"}]}]", "\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\",\"image_url\":{}}]}]",
            "\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":1}]}]", "\"messages\":[{\"role\":\"user\",\"content\":[1]}]",
            "\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"max_completion_tokens\":0", "\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"logprobs\":\"yes\"",
            "\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"logprobs\":true,\"top_logprobs\":99", "\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"tools\":[{\"type\":\"function\"}]",
            "\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"response_format\":{\"type\":\"json_object\"}", "\"messages\":[{\"role\":\"user\",\"content\":\"\\udc00\"}]",
        };
        foreach (var c in chatBad)
        {
            var raw = "{\"model\":\"sent\"," + c + "}";
            yield return new("types", $"chat {Trim(c)}", u => Post(u, raw, "/v1/chat/completions"));
        }

        // headers: content type, auth, browser origins, oversized headers
        foreach (var ct in new[] { "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "application/json; charset=utf-16",
                     "application/jsonx", "*/*", "application/json; charset=latin1", "text/json", "application/xml", "" })
            yield return new("headers", $"Content-Type '{ct}'", u => Send(u, HttpMethod.Post, "/v1/completions", Encoding.UTF8.GetBytes(Body("")), ct.Length == 0 ? null : ct));
        foreach (var auth in new[] { null, "Bearer wrong", "Basic Zm9vOmJhcg==", "Bearer ", "bearer" + ApiKey, "Bearer " + ApiKey + "x", "Token " + ApiKey })
            foreach (var path in new[] { "/v1/models", "/v1/completions", "/metrics" })
                yield return new("headers", $"auth '{auth}' {path}", u => path == "/v1/completions"
                    ? Send(u, HttpMethod.Post, path, Encoding.UTF8.GetBytes(Body("")), auth: auth)
                    : Send(u, HttpMethod.Get, path, null, auth: auth));
        foreach (var (origin, site) in new[] { ("https://evil.example", (string?)null), ("null", null), ("http://127.0.0.1:1", null), ("", "cross-site"), ("", "same-site"), ("https://evil.example", "cross-site") })
            foreach (var m in new[] { HttpMethod.Get, HttpMethod.Post, HttpMethod.Options })
            {
                var hs = new List<(string, string)>();
                if (origin.Length > 0) hs.Add(("Origin", origin));
                if (site is not null) hs.Add(("Sec-Fetch-Site", site));
                if (m == HttpMethod.Options) hs.Add(("Access-Control-Request-Method", "POST"));
                yield return new("headers", $"{m} Origin '{origin}' site '{site}'", u => Send(u, m, m == HttpMethod.Get ? "/v1/models" : "/v1/completions", m == HttpMethod.Post ? Encoding.UTF8.GetBytes(Body("")) : null, headers: hs.ToArray()));
            }
        yield return new("headers", "a 40 KB header", u => Send(u, HttpMethod.Get, "/v1/models", null, headers: new[] { ("X-Big", new string('h', 40_000)) }));
        yield return new("headers", "150 headers", u => Send(u, HttpMethod.Get, "/v1/models", null, headers: Enumerable.Range(0, 150).Select(i => ($"X-H{i}", "v")).ToArray()));
        yield return new("headers", "a 20 KB request line", u => Raw(u, Ascii($"GET /v1/models/{new string('a', 20_000)} HTTP/1.1\r\nHost: x\r\n\r\n")));
        yield return new("headers", "no Host header", u => Raw(u, Ascii("GET /v1/models HTTP/1.1\r\n\r\n")));
        yield return new("headers", "two Content-Length headers", u => Raw(u, Ascii("POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}")));
        yield return new("headers", "Content-Length and chunked", u => Raw(u, Ascii("POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")));
        yield return new("headers", "a header without a colon", u => Raw(u, Ascii("GET /v1/models HTTP/1.1\r\nHost: x\r\nbroken header\r\n\r\n")));
        yield return new("headers", "an invalid method token", u => Raw(u, Ascii("G@T /v1/models HTTP/1.1\r\nHost: x\r\n\r\n")));
        yield return new("headers", "a non-ASCII header value", u => Raw(u, Encoding.UTF8.GetBytes("GET /v1/models HTTP/1.1\r\nHost: x\r\nX-A: \u00ff\u0000\r\n\r\n")));

        // sizes
        yield return new("sizes", "body over 64 KB", u => Post(u, Body($"\"suffix\":\"\",\"user\":\"{new string('u', MaxBody)}\"")));
        yield return new("sizes", "body over 64 KB, chunked", u => Raw(u, Ascii($"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ApiKey}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n{MaxBody + 10:x}\r\n{new string(' ', MaxBody + 10)}\r\n0\r\n\r\n")));
        yield return new("sizes", "Content-Length 10 GB", u => Raw(u, Ascii($"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ApiKey}\r\nContent-Type: application/json\r\nContent-Length: 10000000000\r\n\r\n{{")));
        yield return new("sizes", "token ids beyond the context", u => Post(u, JsonSerializer.Serialize(new { model = "base", prompt = Enumerable.Repeat(5, 1020).ToArray(), max_tokens = 10 })));
        yield return new("sizes", "text beyond the context", u => Post(u, JsonSerializer.Serialize(new { model = "sent", prompt = string.Concat(Enumerable.Repeat("word ", 2000)), max_tokens = 10 })));
        yield return new("sizes", "16 prompts x n 16", u => Post(u, JsonSerializer.Serialize(new { model = "base", prompt = Enumerable.Repeat("x", 16).ToArray(), n = 16, max_tokens = 1 })));
        yield return new("sizes", "max_tokens over the server cap", u => Post(u, Body("\"max_tokens\":65").Replace("\"max_tokens\":2,", "")));
        yield return new("sizes", "100 prompts", u => Post(u, JsonSerializer.Serialize(new { model = "base", prompt = Enumerable.Repeat("x", 100).ToArray() })));
        yield return new("sizes", "5000 stop strings", u => Post(u, JsonSerializer.Serialize(new { model = "base", prompt = "x", stop = Enumerable.Repeat("ab", 5000).ToArray() })));
        yield return new("sizes", "a 300-character stop string", u => Post(u, JsonSerializer.Serialize(new { model = "base", prompt = "x", stop = new string('z', 300) })));

        // slow clients (slowloris): the header timeout and the minimum body rate answer them
        yield return new("slow", "headers never finished", u => Raw(u, Ascii("POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n")));
        yield return new("slow", "request line never finished", u => Raw(u, Ascii("POST /v1/compl")));
        // An idle connection gets no answer (there is no request to answer): it must be closed, by the keep-alive timeout.
        yield return new("slow", "connection opened, nothing sent", u => Raw(u, Array.Empty<byte>()), NoAnswer: true);
        yield return new("slow", "body stalls after 10 of 5000 bytes", u => Raw(u, Ascii($"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ApiKey}\r\nContent-Type: application/json\r\nContent-Length: 5000\r\n\r\n{{\"model\":\"")));
        yield return new("slow", "chunked body stalls", u => Raw(u, Ascii($"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ApiKey}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{{\"mod\r\n")));
        yield return new("slow", "admin body stalls", u => Raw(u, Ascii($"POST /v1/adapters HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {AdminKey}\r\nContent-Type: application/json\r\nContent-Length: 900\r\n\r\n{{")));

        // disconnects: before the body ends, after sending, mid-stream
        yield return new("disconnects", "body cut short", u => Raw(u, Ascii($"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ApiKey}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"model\""), closeAfterSend: true), NoAnswer: true);
        foreach (var stream in new[] { false, true })
            yield return new("disconnects", $"request sent, client gone (stream {stream})", u => Raw(u, Request("/v1/completions", JsonSerializer.Serialize(new { model = "sent", prompt = "x", max_tokens = 40, temperature = 0, ignore_eos = true, stream })), closeAfterSend: true), NoAnswer: true);
        for (int i = 0; i < 4; i++)
        {
            int events = i;
            yield return new("disconnects", $"mid-stream after {events + 1} event(s)", u => MidStream(u, events + 1), NoAnswer: true);
        }

        // admin attempts
        var admin = "Bearer " + AdminKey;
        Task<int> Admin(Uri u, object body, string? auth = null, string ct = "application/json") =>
            Send(u, HttpMethod.Post, "/v1/adapters", Encoding.UTF8.GetBytes(body as string ?? JsonSerializer.Serialize(body)), ct, auth ?? admin);
        yield return new("admin", "no key", u => Admin(u, new { name = "x", path = "p" }, auth: ""));
        yield return new("admin", "the API key", u => Admin(u, new { name = "x", path = "p" }, auth: "Bearer " + ApiKey));
        yield return new("admin", "a wrong key", u => Admin(u, new { name = "x", path = "p" }, auth: "Bearer nope"));
        yield return new("admin", "DELETE with the API key", u => Send(u, HttpMethod.Delete, "/v1/adapters/sent", null));
        yield return new("admin", "DELETE without a key", u => Send(u, HttpMethod.Delete, "/v1/adapters/sent", null, auth: null));
        foreach (var path in new[] { "", "/", "/etc", adaptersRoot, "..", "../..", "p/../../x", "./p", "p/./x", "p//x", "escape", "half", "nowhere", "p\\..\\..", "p\u0000x",
                     "foreign", new string('d', 2000), "~", "~root", "%2e%2e/x", "p/adapter_config.json", "/proc/self/cwd" })
            yield return new("admin", $"path '{Trim(path)}'", u => Admin(u, new { name = "x" + Math.Abs(path.GetHashCode()), path }));
        foreach (var body in new object[] { new { name = "base", path = "p" }, new { name = "", path = "p" }, new { name = "a b", path = "p" }, new { name = new string('n', 300), path = "p" },
                     new { name = "sent", path = "p" }, new { name = 1, path = "p" }, new { name = "x", path = 1 }, new { name = "x" }, new { path = "p" }, new { name = "x", path = "p", replace = "yes" },
                     "[]", "{", "{\"name\":\"\\udc00\",\"path\":\"p\"}", "{\"name\":\"x\",\"path\":\"\\ud800\"}" })
            yield return new("admin", $"body {Trim(body as string ?? JsonSerializer.Serialize(body))}", u => Admin(u, body));
        yield return new("admin", "text/plain (a cross-site form)", u => Admin(u, new { name = "x", path = "p" }, ct: "text/plain"));
        yield return new("admin", "from a web page", u => Send(u, HttpMethod.Post, "/v1/adapters", Encoding.UTF8.GetBytes("{\"name\":\"x\",\"path\":\"p\"}"), auth: admin, headers: new[] { ("Origin", "https://evil.example") }));
        yield return new("admin", "DELETE base", u => Send(u, HttpMethod.Delete, "/v1/adapters/base", null, auth: admin));
        yield return new("admin", "DELETE unknown", u => Send(u, HttpMethod.Delete, "/v1/adapters/no-such", null, auth: admin));
        yield return new("admin", "DELETE ../sent", u => Send(u, HttpMethod.Delete, "/v1/adapters/../sent", null, auth: admin));
        yield return new("admin", "PUT an adapter", u => Send(u, HttpMethod.Put, "/v1/adapters/x", Encoding.UTF8.GetBytes("{}"), auth: admin));

        // methods and paths
        foreach (var (m, path) in new[] { ("GET", "/v1/completions"), ("PUT", "/v1/completions"), ("DELETE", "/v1/models"), ("PATCH", "/v1/chat/completions"), ("GET", "/v1/nothing"),
                     ("GET", "/v1/models/no-such"), ("GET", "/%2e%2e/%2e%2e/etc/passwd"), ("GET", "/v1/models/%00"), ("POST", "/v1/embeddings"), ("GET", "/admin"), ("TRACE", "/v1/models"),
                     ("GET", "/v1/models/" + new string('x', 3000)), ("POST", "/health") })
            yield return new("methods", $"{m} {Trim(path)}", u => Send(u, new HttpMethod(m), path, m is "GET" or "TRACE" or "DELETE" ? null : Encoding.UTF8.GetBytes(Body(""))));
        yield return new("methods", "BREW (unknown method)", u => Raw(u, Ascii($"BREW /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ApiKey}\r\n\r\n")));
        yield return new("methods", "CONNECT", u => Raw(u, Ascii("CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: 127.0.0.1:22\r\n\r\n")));
        yield return new("methods", "absolute-form target", u => Raw(u, Ascii("GET http://evil.example/v1/models HTTP/1.1\r\nHost: evil.example\r\n\r\n")));
    }

    static byte[] Request(string path, string json) =>
        Encoding.UTF8.GetBytes($"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ApiKey}\r\nContent-Type: application/json\r\nContent-Length: {Encoding.UTF8.GetByteCount(json)}\r\n\r\n{json}");

    static async Task<int> MidStream(Uri u, int events)
    {
        using var req = new HttpRequestMessage(HttpMethod.Post, new Uri(u, "/v1/completions"))
        {
            Content = new StringContent(JsonSerializer.Serialize(new { model = "sent", prompt = "x", max_tokens = 60, temperature = 0, ignore_eos = true, stream = true }), Encoding.UTF8, "application/json"),
        };
        req.Headers.Authorization = new AuthenticationHeaderValue("Bearer", ApiKey);
        using var client = new HttpClient(new SocketsHttpHandler { MaxResponseDrainSize = 0 });
        using var r = await client.SendAsync(req, HttpCompletionOption.ResponseHeadersRead);
        Assert.Equal(200, (int)r.StatusCode);
        using var reader = new StreamReader(await r.Content.ReadAsStreamAsync());
        for (int seen = 0; seen < events;)
            if ((await reader.ReadLineAsync())?.StartsWith("data: ") == true) seen++;
        return Closed;   // the connection is dropped here
    }

    static string Trim(string s) => (s.Length > 40 ? s[..40] + "..." : s).Replace("\n", "\\n");

    // ------------------------------------------------------------------ the run

    [Fact]
    public async Task ThreeHundredHostileRequestsAgainstOneServerEachGetA4xxAndChangeNoOtherAnswer()
    {
        if (!OperatingSystem.IsLinux()) return;   // /proc for the server's memory
        using var tmp = new Fixtures.TempDir();
        var root = tmp["adapters"];
        foreach (var (src, name) in new[] { (_w.PromptDir, "p"), (_w.ForeignDir, "foreign") })
        {
            Directory.CreateDirectory(Path.Combine(root, name));
            foreach (var f in Directory.GetFiles(src)) File.Copy(f, Path.Combine(root, name, Path.GetFileName(f)));
        }
        Directory.CreateSymbolicLink(Path.Combine(root, "escape"), _w.PrefixDir);
        Directory.CreateDirectory(Path.Combine(root, "half"));
        File.CreateSymbolicLink(Path.Combine(root, "half", "adapter_config.json"), Path.Combine(_w.PrefixDir, "adapter_config.json"));
        File.Copy(Path.Combine(_w.PrefixDir, "adapter_model.safetensors"), Path.Combine(root, "half", "adapter_model.safetensors"));
        Environment.SetEnvironmentVariable("SOFTPROMPT_FUZZ_API_KEY", ApiKey);
        Environment.SetEnvironmentVariable("SOFTPROMPT_FUZZ_ADMIN_KEY", AdminKey);
        var server = await ServeProcess.Start("--model", _w.ModelDir, "--port", "0", "--threads", "1", "--adapter", $"sent={_w.PromptDir}", "--adapter", $"pre={_w.PrefixDir}",
            "--api-key-env", "SOFTPROMPT_FUZZ_API_KEY", "--allow-adapter-admin", "--admin-key-env", "SOFTPROMPT_FUZZ_ADMIN_KEY", "--adapters-dir", root,
            "--max-body-bytes", MaxBody.ToString(), "--header-timeout", HeaderTimeout.ToString(), "--request-timeout", "60", "--max-tokens", "64", "--max-batch", "8");
        var u = server.Address;
        try
        {
            // The background client's requests, each answered alone first (the reference), then a warm-up.
            var steady = new[]
            {
                new { model = "base", prompt = "The day was", max_tokens = 8, temperature = 0, logprobs = 1 },
                new { model = "sent", prompt = "Word: joy\nSentiment:", max_tokens = 8, temperature = 0, logprobs = 1 },
                new { model = "pre", prompt = "A storm", max_tokens = 8, temperature = 0, logprobs = 1 },
            };
            async Task<(string Text, float[] LogProbs)> Ask(object body)
            {
                using var req = new HttpRequestMessage(HttpMethod.Post, new Uri(u, "/v1/completions")) { Content = new StringContent(JsonSerializer.Serialize(body), Encoding.UTF8, "application/json") };
                req.Headers.Authorization = new AuthenticationHeaderValue("Bearer", ApiKey);
                using var r = await Http.SendAsync(req);
                var text = await r.Content.ReadAsStringAsync();
                Assert.True(r.IsSuccessStatusCode, $"background request: {(int)r.StatusCode} {text}");
                var c = JsonDocument.Parse(text).RootElement.GetProperty("choices")[0];
                return (c.GetProperty("text").GetString()!, c.GetProperty("logprobs").GetProperty("token_logprobs").EnumerateArray().Select(x => x.GetSingle()).ToArray());
            }
            var reference = new List<(string Text, float[] LogProbs)>();
            foreach (var s in steady) reference.Add(await Ask(s));
            for (int i = 0; i < 3; i++) foreach (var s in steady) await Ask(s);
            long rssWarm = server.ResidentBytes();

            var cases = Cases(root).ToList();
            Assert.True(cases.Count(c => !c.NoAnswer) >= 300, $"{cases.Count} cases");
            using var stop = new CancellationTokenSource();
            int backgroundAnswers = 0, mismatches = 0;
            var background = Task.Run(async () =>
            {
                for (int i = 0; !stop.IsCancellationRequested; i++)
                {
                    var got = await Ask(steady[i % steady.Length]);
                    var want = reference[i % steady.Length];
                    // The same text, and log-probabilities within 1e-4 (batched rows differ from a lone row by float rounding only).
                    if (got.Text != want.Text || got.LogProbs.Length != want.LogProbs.Length || got.LogProbs.Zip(want.LogProbs).Any(p => Math.Abs(p.First - p.Second) > 1e-4))
                        Interlocked.Increment(ref mismatches);
                    Interlocked.Increment(ref backgroundAnswers);
                }
            });

            var results = new System.Collections.Concurrent.ConcurrentBag<(Case Case, int Status, double Seconds, string? Error)>();
            var sw = Stopwatch.StartNew();
            var queue = new System.Collections.Concurrent.ConcurrentQueue<Case>(cases);
            var workers = Enumerable.Range(0, 8).Select(_ => Task.Run(async () =>
            {
                while (queue.TryDequeue(out var c))
                {
                    var t = Stopwatch.StartNew();
                    // Each case has a deadline: a hang fails it (slow clients: the header timeout plus slack).
                    var limit = TimeSpan.FromSeconds(c.Class == "slow" ? HeaderTimeout + 15 : 20);
                    try { results.Add((c, await c.Run(u).WaitAsync(limit), t.Elapsed.TotalSeconds, null)); }
                    catch (Exception e) { results.Add((c, 0, t.Elapsed.TotalSeconds, $"{e.GetType().Name}: {e.Message}")); }
                }
            })).ToList();
            await Task.WhenAll(workers);
            double stormSeconds = sw.Elapsed.TotalSeconds;
            // The server still answers health, and the background client keeps its answers a moment longer.
            Assert.Equal(200, await Send(u, HttpMethod.Get, "/health", null));
            await Task.Delay(500);
            stop.Cancel();
            await background;
            long rssEnd = server.ResidentBytes();

            var lines = new List<string> { $"{cases.Count} cases in {stormSeconds:F1} s; background: {backgroundAnswers} answers, {mismatches} mismatches; RSS {rssWarm / 1e6:F0} -> {rssEnd / 1e6:F0} MB" };
            foreach (var g in results.GroupBy(r => r.Case.Class).OrderBy(g => g.Key))
                lines.Add($"| {g.Key} | {g.Count()} | {g.Count(r => r.Status is >= 400 and < 500)} | {g.Count(r => r.Case.NoAnswer)} | " +
                          $"{string.Join(" ", g.Where(r => r.Status > 0).GroupBy(r => r.Status).OrderBy(x => x.Key).Select(x => $"{x.Key}x{x.Count()}"))} | {g.Max(r => r.Seconds):F2} |");
            foreach (var l in lines) _out.WriteLine(l);

            var failures = results.Where(r => r.Error is not null || (r.Case.NoAnswer ? r.Status >= 500 : r.Status is < 400 or >= 500))
                .Select(r => $"{r.Case.Class}/{r.Case.Name}: {(r.Error ?? r.Status.ToString())}").ToList();
            Assert.True(failures.Count == 0, "not a 4xx:\n" + string.Join("\n", failures));
            Assert.Equal(0, mismatches);
            Assert.True(backgroundAnswers >= 3, $"{backgroundAnswers} background answers");
            Assert.InRange(rssEnd - rssWarm, long.MinValue, 100_000_000);
        }
        finally
        {
            int rc = await server.StopAsync();
            var log = await server.Stderr;
            _out.WriteLine(string.Join("\n", log.Split('\n').Take(40)));
            Assert.Equal(0, rc);
            Assert.DoesNotContain("   at ", log);
            Assert.DoesNotContain("[serve] error", log);
        }
    }
}
