using System.Diagnostics;
using System.Net;
using System.Net.Http.Headers;
using System.Net.Http.Json;
using System.Text.Json;
using SoftPrompt.Inference;
using SoftPrompt.Server;

namespace SoftPrompt.Tests.Server;

/// <summary>The HTTP server on a random loopback port, driven with HttpClient: every endpoint and error.</summary>
[Collection("Server")]
public class ServerTests : IClassFixture<ServerWorld>
{
    readonly ServerWorld _w;
    HttpClient Http => _w.Http;
    public ServerTests(ServerWorld w) => _w = w;

    static int[] Ints(JsonElement e) => e.EnumerateArray().Select(x => x.GetInt32()).ToArray();

    [Fact]
    public async Task HealthAndModelsListTheBaseAndEveryAdapter()
    {
        var h = await ServerWorld.Send(Http, HttpMethod.Get, "/health");
        Assert.Equal(200, h.Status);
        Assert.Equal("ok", h.Body.GetProperty("status").GetString());
        var (status, body) = await ServerWorld.Send(Http, HttpMethod.Get, "/v1/models");
        Assert.Equal(200, status);
        var models = body.GetProperty("data").EnumerateArray().ToDictionary(m => m.GetProperty("id").GetString()!);
        Assert.Contains("base", models.Keys);
        Assert.Equal("prompt_tuning", models["sent"].GetProperty("method").GetString());
        Assert.Equal(5, models["sent"].GetProperty("virtual_tokens").GetInt32());
        Assert.Equal("Word: {input}\nSentiment:", models["sent"].GetProperty("prompt_template").GetString());
        Assert.Equal("good", models["sent"].GetProperty("label_words").GetProperty("positive").GetString());
        Assert.Equal("prefix_tuning", models["pre"].GetProperty("method").GetString());
        Assert.Equal(3, models["pre"].GetProperty("virtual_tokens").GetInt32());
        Assert.Equal("chatml", models["base"].GetProperty("chat_template").GetString());
    }

    [Fact]
    public async Task GreedyCompletionsEqualTheLibraryAloneForEveryAdapter()
    {
        using var lm = LanguageModel.Load(_w.ModelDir, "cpu");
        var ids = lm.Encode("joy ->");
        foreach (var (name, dir) in new[] { ("base", (string?)null), ("sent", _w.PromptDir), ("pre", _w.PrefixDir) })
        {
            using var prompt = dir is null ? null : lm.LoadPrompt(dir);
            var alone = lm.Generate(ids, new GenerationOptions { MaxNewTokens = 6, EosIds = lm.EosIds }, prompt);
            // as text and as token ids
            foreach (object p in new object[] { "joy ->", ids })
            {
                var (status, body) = await ServerWorld.Post(Http, "/v1/completions", new { model = name, prompt = p, max_tokens = 6, temperature = 0, logprobs = 2 });
                Assert.Equal(200, status);
                var choice = body.GetProperty("choices")[0];
                var expected = lm.Tokenizer!.Decode(alone.NewIds.Where(t => !lm.EosIds.Contains(t)), skipSpecialTokens: true);
                Assert.Equal(expected, choice.GetProperty("text").GetString());
                Assert.Equal(alone.NewIds.Length == 6 && !lm.EosIds.Contains(alone.NewIds[^1]) ? "length" : "stop", choice.GetProperty("finish_reason").GetString());
                var lps = choice.GetProperty("logprobs");
                Assert.Equal(alone.NewIds.Count(t => !lm.EosIds.Contains(t)), lps.GetProperty("token_logprobs").GetArrayLength());
                Assert.Equal(ids.Length, body.GetProperty("usage").GetProperty("prompt_tokens").GetInt32());
                var generated = alone.NewIds.Where(t => !lm.EosIds.Contains(t)).ToArray();
                for (int i = 0; i < generated.Length; i++)
                {
                    Assert.Equal(2, lps.GetProperty("top_logprobs")[i].EnumerateObject().Count());
                    Assert.Equal(lm.TokenText(generated[i]), lps.GetProperty("tokens")[i].GetString());
                }
            }
        }
    }

    [Fact]
    public async Task ConcurrentTextRequestsGetTheirOwnAnswers()
    {
        var words = new[] { "joy", "pain", "calm", "storm", "bright", "dull", "kind", "cruel" };
        var models = new[] { "base", "sent", "pre" };
        var reqs = words.SelectMany((w, i) => new[] { (Model: models[i % 3], Prompt: $"Word: {w}\nSentiment:") }).Concat(words.Select((w, i) => (Model: models[(i + 1) % 3], Prompt: w + " is"))).ToList();
        var alone = new List<string>();
        foreach (var r in reqs) alone.Add((await ServerWorld.Post(Http, "/v1/completions", new { model = r.Model, prompt = r.Prompt, max_tokens = 6, temperature = 0 })).Body.GetProperty("choices")[0].GetProperty("text").GetString()!);
        var together = await Task.WhenAll(reqs.Select(r => ServerWorld.Post(Http, "/v1/completions", new { model = r.Model, prompt = r.Prompt, max_tokens = 6, temperature = 0 })));
        Assert.Equal(alone, together.Select(t => t.Body.GetProperty("choices")[0].GetProperty("text").GetString()!));
    }

    [Fact]
    public async Task StreamingGivesTheSameTextAsOneResponse()
    {
        foreach (var model in new[] { "sent", "pre" })
        {
            var req = new { model, prompt = "The day was", max_tokens = 12, temperature = 0 };
            var (_, whole) = await ServerWorld.Post(Http, "/v1/completions", req);
            var (events, done) = await ServerWorld.Stream(Http, "/v1/completions", new { model, prompt = "The day was", max_tokens = 12, temperature = 0, stream = true });
            Assert.True(done);
            Assert.True(events.Count >= 3);
            var text = string.Concat(events.Select(e => e.GetProperty("choices")[0].GetProperty("text").GetString()));
            Assert.Equal(whole.GetProperty("choices")[0].GetProperty("text").GetString(), text);
            Assert.Equal("text_completion", events[0].GetProperty("object").GetString());
            Assert.Equal(whole.GetProperty("choices")[0].GetProperty("finish_reason").GetString(), events[^1].GetProperty("choices")[0].GetProperty("finish_reason").GetString());
        }
    }

    [Fact]
    public async Task StopStringsEchoLogprobsAndSeveralChoices()
    {
        var (_, plain) = await ServerWorld.Post(Http, "/v1/completions", new { model = "sent", prompt = "The cat", max_tokens = 16, temperature = 0 });
        var text = plain.GetProperty("choices")[0].GetProperty("text").GetString()!;
        Assert.True(text.Length >= 6, text);
        var stop = text.Substring(3, 2);
        int at = text.IndexOf(stop, StringComparison.Ordinal);
        var (_, stopped) = await ServerWorld.Post(Http, "/v1/completions", new { model = "sent", prompt = "The cat", max_tokens = 16, temperature = 0, stop = new[] { stop } });
        Assert.Equal(text[..at], stopped.GetProperty("choices")[0].GetProperty("text").GetString());
        Assert.Equal("stop", stopped.GetProperty("choices")[0].GetProperty("finish_reason").GetString());
        var (events, _) = await ServerWorld.Stream(Http, "/v1/completions", new { model = "sent", prompt = "The cat", max_tokens = 16, temperature = 0, stop, stream = true });
        Assert.Equal(text[..at], string.Concat(events.Select(e => e.GetProperty("choices")[0].GetProperty("text").GetString())));

        var (_, echo) = await ServerWorld.Post(Http, "/v1/completions", new { model = "sent", prompt = "The cat", max_tokens = 3, temperature = 0, echo = true, logprobs = 0 });
        var c0 = echo.GetProperty("choices")[0];
        Assert.StartsWith("The cat", c0.GetProperty("text").GetString());
        var tl = c0.GetProperty("logprobs").GetProperty("token_logprobs");
        int promptTokens = echo.GetProperty("usage").GetProperty("prompt_tokens").GetInt32();
        Assert.Equal(promptTokens + 3, tl.GetArrayLength());
        Assert.Equal(JsonValueKind.Number, tl[0].ValueKind);   // a prompt-tuning adapter's last virtual token predicts the first token

        var (_, many) = await ServerWorld.Post(Http, "/v1/completions", new { model = "pre", prompt = new[] { "a", "b" }, n = 2, max_tokens = 5, temperature = 1.0, seed = 3 });
        var ch = many.GetProperty("choices").EnumerateArray().ToList();
        Assert.Equal(new[] { 0, 1, 2, 3 }, ch.Select(c => c.GetProperty("index").GetInt32()));
        var (_, again) = await ServerWorld.Post(Http, "/v1/completions", new { model = "pre", prompt = new[] { "a", "b" }, n = 2, max_tokens = 5, temperature = 1.0, seed = 3 });
        Assert.Equal(ch.Select(c => c.GetProperty("text").GetString()), again.GetProperty("choices").EnumerateArray().Select(c => c.GetProperty("text").GetString()));
    }

    [Fact]
    public async Task ChatCompletionsWithTheChatTemplate()
    {
        var msgs = new object[] { new { role = "system", content = "Be brief." }, new { role = "user", content = "Say a word." } };
        var (status, body) = await ServerWorld.Post(Http, "/v1/chat/completions", new { model = "sent", messages = msgs, max_tokens = 5, temperature = 0, logprobs = true, top_logprobs = 2 });
        Assert.Equal(200, status);
        var c = body.GetProperty("choices")[0];
        Assert.Equal("assistant", c.GetProperty("message").GetProperty("role").GetString());
        Assert.Equal("chat.completion", body.GetProperty("object").GetString());
        // The same as a completion of the rendered ChatML text without added special tokens.
        var rendered = ChatTemplate.ChatMl.Render(new[] { new ChatTurn("system", "Be brief."), new ChatTurn("user", "Say a word.") });
        using var lm = LanguageModel.Load(_w.ModelDir, "cpu");
        var ids = lm.Tokenizer!.Encode(rendered, addSpecialTokens: false);
        var (_, comp) = await ServerWorld.Post(Http, "/v1/completions", new { model = "sent", prompt = ids, max_tokens = 5, temperature = 0 });
        Assert.Equal(comp.GetProperty("choices")[0].GetProperty("text").GetString(), c.GetProperty("message").GetProperty("content").GetString());
        Assert.Equal(2, c.GetProperty("logprobs").GetProperty("content")[0].GetProperty("top_logprobs").GetArrayLength());
        var (events, done) = await ServerWorld.Stream(Http, "/v1/chat/completions", new { model = "sent", messages = msgs, max_tokens = 5, temperature = 0, stream = true });
        Assert.True(done);
        Assert.Equal("assistant", events[0].GetProperty("choices")[0].GetProperty("delta").GetProperty("role").GetString());
        Assert.Equal(c.GetProperty("message").GetProperty("content").GetString(),
            string.Concat(events.Select(e => e.GetProperty("choices")[0].GetProperty("delta").TryGetProperty("content", out var t) ? t.GetString() : "")));
    }

    [Fact]
    public async Task BadRequestsGetOpenAiErrorsWithTheRightStatus()
    {
        async Task Expect(int status, string? param, HttpMethod method, string path, string? raw)
        {
            var (s, body) = await ServerWorld.Send(Http, method, path, raw);
            Assert.True(status == s, $"{path} {raw}: expected {status}, got {s}: {body}");
            var err = body.GetProperty("error");
            Assert.False(string.IsNullOrEmpty(err.GetProperty("message").GetString()));
            Assert.DoesNotContain("   at ", err.GetProperty("message").GetString());
            if (param is not null) Assert.Equal(param, err.GetProperty("param").GetString());
        }
        var post = HttpMethod.Post;
        await Expect(400, null, post, "/v1/completions", "{not json");
        await Expect(400, null, post, "/v1/completions", "[1,2]");
        await Expect(400, "model", post, "/v1/completions", "{\"prompt\":\"x\"}");
        await Expect(404, "model", post, "/v1/completions", "{\"model\":\"nope\",\"prompt\":\"x\"}");
        await Expect(400, "prompt", post, "/v1/completions", "{\"model\":\"base\"}");
        await Expect(400, "prompt", post, "/v1/completions", "{\"model\":\"base\",\"prompt\":[1,\"a\"]}");
        await Expect(400, "prompt", post, "/v1/completions", "{\"model\":\"base\",\"prompt\":[999999]}");
        await Expect(400, "max_tokens", post, "/v1/completions", "{\"model\":\"base\",\"prompt\":\"x\",\"max_tokens\":0}");
        await Expect(400, "max_tokens", post, "/v1/completions", "{\"model\":\"base\",\"prompt\":\"x\",\"max_tokens\":100000}");
        await Expect(400, "temperature", post, "/v1/completions", "{\"model\":\"base\",\"prompt\":\"x\",\"temperature\":\"hot\"}");
        await Expect(400, "top_p", post, "/v1/completions", "{\"model\":\"base\",\"prompt\":\"x\",\"top_p\":0}");
        await Expect(400, "stop", post, "/v1/completions", "{\"model\":\"base\",\"prompt\":\"x\",\"stop\":[\"a\",\"b\",\"c\",\"d\",\"e\"]}");
        await Expect(400, "n", post, "/v1/completions", "{\"model\":\"base\",\"prompt\":\"x\",\"n\":1000}");
        await Expect(400, "stream", post, "/v1/completions", "{\"model\":\"base\",\"prompt\":\"x\",\"stream\":\"yes\"}");
        // Prompt + max_tokens beyond the model's 1024 positions: 400 context_length_exceeded.
        var longPrompt = JsonSerializer.Serialize(new { model = "sent", prompt = Enumerable.Repeat(5, 1020).ToArray(), max_tokens = 10 });
        var (ls, lb) = await ServerWorld.Send(Http, post, "/v1/completions", longPrompt);
        Assert.Equal(400, ls);
        Assert.Equal("context_length_exceeded", lb.GetProperty("error").GetProperty("code").GetString());
        // Body over the 64 KB cap: 413.
        var big = JsonSerializer.Serialize(new { model = "base", prompt = new string('a', 100_000) });
        await Expect(413, null, post, "/v1/completions", big);
        await Expect(400, "messages", post, "/v1/chat/completions", "{\"model\":\"base\",\"messages\":[]}");
        await Expect(400, "messages[0]", post, "/v1/chat/completions", "{\"model\":\"base\",\"messages\":[{\"role\":\"robot\",\"content\":\"x\"}]}");
        await Expect(404, null, HttpMethod.Get, "/v1/nothing", null);
        // Issue 21: what used to be a 500 (an unhandled exception) is a 400 naming the field.
        await Expect(400, "model", post, "/v1/completions", "{\"model\":\"\\udc00\",\"prompt\":\"x\"}");
        await Expect(400, "messages[0]", post, "/v1/chat/completions", "{\"model\":\"base\",\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":1,\"text\":\"x\"}]}]}");
        await Expect(400, "temperature", post, "/v1/completions", "{\"model\":\"base\",\"prompt\":\"x\",\"temperature\":1e999}");
        foreach (var (field, value) in new[] { ("best_of", "3"), ("logit_bias", "{\"50\":100}"), ("tools", "[{\"type\":\"function\"}]"), ("response_format", "{\"type\":\"json_object\"}"),
                     ("suffix", "\"x\""), ("presence_penalty", "1"), ("tool_choice", "\"auto\"") })
            await Expect(400, field, post, "/v1/completions", $"{{\"model\":\"base\",\"prompt\":\"x\",\"{field}\":{value}}}");
        await Expect(400, "stop", post, "/v1/completions", JsonSerializer.Serialize(new { model = "base", prompt = "x", stop = new string('s', 300) }));
        // Neutral values of those fields pass.
        Assert.Equal(200, (await ServerWorld.Send(Http, post, "/v1/completions", "{\"model\":\"base\",\"prompt\":\"x\",\"max_tokens\":1,\"best_of\":1,\"logit_bias\":{},\"tools\":[],\"response_format\":{\"type\":\"text\"},\"presence_penalty\":0}")).Status);
        // Only JSON bodies; no browser cross-origin requests; adapter administration is off unless enabled.
        var (ct, ctBody) = await ServerWorld.Send(Http, post, "/v1/completions", "{\"model\":\"base\",\"prompt\":\"x\"}", "text/plain");
        Assert.Equal(415, ct);
        Assert.Equal("unsupported_media_type", ctBody.GetProperty("error").GetProperty("code").GetString());
        using (var cross = new HttpRequestMessage(HttpMethod.Get, "/v1/models"))
        {
            cross.Headers.Add("Origin", "https://evil.example");
            using var r = await Http.SendAsync(cross);
            Assert.Equal(403, (int)r.StatusCode);
        }
        await Expect(403, null, HttpMethod.Delete, "/v1/adapters/sent", null);
        await Expect(403, null, post, "/v1/adapters", "{\"name\":\"x\",\"path\":\"\"}");
        // The server still serves.
        var (ok, _) = await ServerWorld.Post(Http, "/v1/completions", new { model = "base", prompt = "x", max_tokens = 1 });
        Assert.Equal(200, ok);
    }

    [Fact]
    public async Task ChatWithoutASupportedTemplateIsAClear400()
    {
        var (server, http) = await ServerWorld.Start(new ServerOptions { ModelDir = Tests.Models.ShippedModelTests.ModelDir, Port = 0, MaxBatch = 2 });
        await using var _ = server;
        using var __ = http;
        var (s, body) = await ServerWorld.Post(http, "/v1/chat/completions", new { model = "base", messages = new[] { new { role = "user", content = "hi" } } });
        Assert.Equal(400, s);
        Assert.Equal("chat_template_unsupported", body.GetProperty("error").GetProperty("code").GetString());
        Assert.Null(ChatTemplate.FromTemplate("{{ bos_token }}{% for m in messages %}<<SYS>>{% endfor %}", out var why));
        Assert.Contains("not one of the supported families", why);
        Assert.Same(ChatTemplate.Llama3, ChatTemplate.FromTemplate("<|start_header_id|>{{ role }}", out var _2));
        Assert.Equal("<s>[INST] S\n\nhi [/INST] yo</s>[INST] more [/INST]",
            ChatTemplate.Inst.Render(new[] { new ChatTurn("system", "S"), new ChatTurn("user", "hi"), new ChatTurn("assistant", "yo"), new ChatTurn("user", "more") }));
    }

    [Fact]
    public async Task WithoutALoadedModelEveryApiCallIs503()
    {
        using var tmp = new Fixtures.TempDir();
        File.Copy(Path.Combine(_w.ModelDir, "config.json"), tmp["config.json"]);
        File.WriteAllText(tmp["model.safetensors"], "not a safetensors file");
        var server = await SoftPromptServer.StartAsync(new ServerOptions { ModelDir = tmp.Path, Port = 0 });
        await using var _ = server;
        using var http = new HttpClient { BaseAddress = server.Address };
        await Assert.ThrowsAnyAsync<Exception>(() => server.Ready.WaitAsync(TimeSpan.FromSeconds(60)));
        var (h, hb) = await ServerWorld.Send(http, HttpMethod.Get, "/health");
        Assert.Equal(503, h);
        Assert.Equal("failed", hb.GetProperty("status").GetString());
        Assert.Equal(503, (await ServerWorld.Send(http, HttpMethod.Get, "/v1/models")).Status);
        var (c, cb) = await ServerWorld.Post(http, "/v1/completions", new { model = "base", prompt = "x" });
        Assert.Equal(503, c);
        Assert.Equal("server_error", cb.GetProperty("error").GetProperty("type").GetString());
    }

    static void CopyDir(string from, string to)
    {
        Directory.CreateDirectory(to);
        foreach (var f in Directory.GetFiles(from)) File.Copy(f, Path.Combine(to, Path.GetFileName(f)));
    }

    /// <summary>Adapter administration (issue 21): off unless --allow-adapter-admin, with its own key, loads confined
    /// to --adapters-dir (no absolute paths, no "..", no symbolic link out), 409 on a taken name unless "replace",
    /// and no absolute path in any answer.</summary>
    [Fact]
    public async Task AdaptersAreAddedAndRemovedWhileServing()
    {
        using var tmp = new Fixtures.TempDir();
        var root = tmp["admin-root"];
        CopyDir(_w.PromptDir, Path.Combine(root, "p"));
        CopyDir(_w.PrefixDir, Path.Combine(root, "q"));
        CopyDir(_w.ForeignDir, Path.Combine(root, "foreign"));
        CopyDir(_w.PromptDir, Path.Combine(root, "runs", "r1", "adapter"));   // a training run folder
        Directory.CreateSymbolicLink(Path.Combine(root, "escape"), _w.PrefixDir);  // a link out of the root
        Directory.CreateDirectory(Path.Combine(root, "half"));
        File.CreateSymbolicLink(Path.Combine(root, "half", "adapter_config.json"), Path.Combine(_w.PromptDir, "adapter_config.json"));
        File.Copy(Path.Combine(_w.PromptDir, "adapter_model.safetensors"), Path.Combine(root, "half", "adapter_model.safetensors"));
        Environment.SetEnvironmentVariable("SOFTPROMPT_TEST_ADMIN_KEY", "admin-key-1");
        var (server, http) = await ServerWorld.Start(new ServerOptions { ModelDir = _w.ModelDir, Port = 0, Adapters = new[] { ("sent", _w.PromptDir), ("pre", _w.PrefixDir) },
            AdaptersDir = root, AllowAdapterAdmin = true, AdminKeyEnv = "SOFTPROMPT_TEST_ADMIN_KEY" });
        await using var _ = server;
        using var __ = http;
        Assert.Equal(401, (await ServerWorld.Post(http, "/v1/adapters", new { name = "hot", path = "p" })).Status);
        http.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Bearer", "admin-key-1");

        var (s1, added) = await ServerWorld.Post(http, "/v1/adapters", new { name = "hot", path = "p" });
        Assert.Equal(201, s1);
        Assert.Equal("hot", added.GetProperty("id").GetString());
        async Task<string> Text(string model) => (await ServerWorld.Post(http, "/v1/completions", new { model, prompt = "joy ->", max_tokens = 4, temperature = 0 })).Body.GetProperty("choices")[0].GetProperty("text").GetString()!;
        Assert.Equal(await Text("sent"), await Text("hot"));
        var (s409, taken) = await ServerWorld.Post(http, "/v1/adapters", new { name = "hot", path = "q" });
        Assert.Equal(409, s409);
        Assert.Contains("replace", taken.GetProperty("error").GetProperty("message").GetString());
        Assert.Equal(await Text("sent"), await Text("hot"));   // unchanged
        Assert.Equal(201, (await ServerWorld.Post(http, "/v1/adapters", new { name = "hot", path = "q", replace = true })).Status);
        Assert.Equal(await Text("pre"), await Text("hot"));    // re-pointed on request only
        // A training run folder stands for its adapter/, as on the command line.
        Assert.Equal(201, (await ServerWorld.Post(http, "/v1/adapters", new { name = "from-run", path = "runs/r1" })).Status);
        Assert.Equal(await Text("sent"), await Text("from-run"));
        Assert.Equal(200, (await ServerWorld.Send(http, HttpMethod.Delete, "/v1/adapters/from-run")).Status);

        var answers = new List<string>();
        async Task Refused(int status, object body, string? mentions = null)
        {
            var (st, b) = await ServerWorld.Post(http, "/v1/adapters", body);
            var msg = b.GetProperty("error").GetProperty("message").GetString()!;
            Assert.True(st == status, $"{JsonSerializer.Serialize(body)}: {st} {msg}");
            if (mentions is not null) Assert.Contains(mentions, msg);
            answers.Add(b.ToString());
        }
        await Refused(400, new { name = "foreign", path = "foreign" }, "another model");
        await Refused(400, new { name = "missing", path = "nowhere" });
        await Refused(400, new { name = "x", path = "" }, "empty");
        await Refused(400, new { name = "x", path = _w.PromptDir }, "absolute");
        await Refused(400, new { name = "x", path = "../prompt" }, "'..'");
        await Refused(400, new { name = "x", path = "p/../../prompt" }, "'..'");
        await Refused(400, new { name = "x", path = "escape" }, "outside");
        await Refused(400, new { name = "x", path = "half" }, "outside");
        await Refused(400, new { name = "base", path = "p" });
        await Refused(400, new { name = "bad name", path = "p" });
        var (_, models) = await ServerWorld.Send(http, HttpMethod.Get, "/v1/models");
        answers.Add(models.ToString());
        // --adapters-dir discovery skips what a link leads out of it, as POST does.
        var served = models.GetProperty("data").EnumerateArray().Select(m => m.GetProperty("id").GetString()).ToList();
        Assert.Contains("p", served);
        Assert.DoesNotContain("escape", served);
        Assert.DoesNotContain("half", served);
        foreach (var a in answers)
            foreach (var secret in new[] { root, tmp.Path, _w.Tmp.Path, Environment.CurrentDirectory })
                Assert.DoesNotContain(secret, a);

        var (s4, del) = await ServerWorld.Send(http, HttpMethod.Delete, "/v1/adapters/hot");
        Assert.Equal(200, s4);
        Assert.True(del.GetProperty("deleted").GetBoolean());
        Assert.Equal(404, (await ServerWorld.Post(http, "/v1/completions", new { model = "hot", prompt = "x" })).Status);
        Assert.Equal(400, (await ServerWorld.Send(http, HttpMethod.Delete, "/v1/adapters/base")).Status);

        // The registry's cap on registered adapters.
        using var model = SoftPrompt.Models.ModelLoader.Load(_w.ModelDir);
        using var reg = new AdapterRegistry(model, 4, maxRegistered: 1);
        reg.Add("a", _w.PromptDir);
        Assert.Throws<AdapterLimitException>(() => reg.Add("b", _w.PrefixDir));
        reg.Add("a", _w.PrefixDir, replace: true);   // replacing takes no new slot
    }

    [Fact]
    public async Task LeastRecentlyUsedAdaptersAreReloadedOnDemand()
    {
        using var tmp = new Fixtures.TempDir();
        Directory.CreateDirectory(tmp["runs/a"]);
        foreach (var (src, dst) in new[] { (_w.PromptDir, tmp["runs/a/adapter"]), (_w.PrefixDir, tmp["runs/b/adapter"]) })
        {
            Directory.CreateDirectory(dst);
            foreach (var f in Directory.GetFiles(src)) File.Copy(f, Path.Combine(dst, Path.GetFileName(f)));
        }
        var (server, http) = await ServerWorld.Start(new ServerOptions { ModelDir = _w.ModelDir, Port = 0, AdaptersDir = tmp["runs"], MaxResidentAdapters = 1, AllowAdapterAdmin = true });
        await using var _ = server;
        using var __ = http;
        var (_, models) = await ServerWorld.Send(http, HttpMethod.Get, "/v1/models");
        var ids = models.GetProperty("data").EnumerateArray().Select(m => m.GetProperty("id").GetString()).ToList();
        Assert.Contains("a/adapter", ids);
        Assert.Contains("b/adapter", ids);
        var first = new Dictionary<string, string>();
        for (int round = 0; round < 2; round++)
            foreach (var name in new[] { "a/adapter", "b/adapter" })
            {
                var (s, body) = await ServerWorld.Post(http, "/v1/completions", new { model = name, prompt = "joy ->", max_tokens = 4, temperature = 0 });
                Assert.Equal(200, s);
                var text = body.GetProperty("choices")[0].GetProperty("text").GetString()!;
                if (round == 0) first[name] = text; else Assert.Equal(first[name], text);
            }
        var metrics = await http.GetStringAsync("/metrics");
        var line = metrics.Split('\n').First(l => l.StartsWith("softprompt_resident_adapters"));
        Assert.EndsWith(" 1", line.Trim());
        // Names with slashes work in every route.
        Assert.Equal(200, (await ServerWorld.Send(http, HttpMethod.Get, "/v1/models/a/adapter")).Status);
        Assert.Equal(200, (await ServerWorld.Send(http, HttpMethod.Delete, "/v1/adapters/b/adapter")).Status);
    }

    [Fact]
    public async Task MetricsAreInPrometheusTextFormat()
    {
        await ServerWorld.Post(Http, "/v1/completions", new { model = "sent", prompt = "x", max_tokens = 2 });
        using var r = await Http.GetAsync("/metrics");
        Assert.Equal(HttpStatusCode.OK, r.StatusCode);
        Assert.StartsWith("text/plain", r.Content.Headers.ContentType?.MediaType);
        var text = await r.Content.ReadAsStringAsync();
        foreach (var name in new[] { "softprompt_requests_total", "softprompt_completion_tokens_total", "softprompt_queue_depth", "softprompt_batch_rows_bucket", "softprompt_request_duration_seconds_bucket", "softprompt_active_sequences" })
            Assert.Contains(name, text);
        Assert.Contains("service_name=\"softprompt\"", text);   // the Prometheus service name (docs: README, Serving)
    }

    [Fact]
    public async Task BearerAuthWhenAnApiKeyIsSet()
    {
        Environment.SetEnvironmentVariable("SOFTPROMPT_TEST_KEY", "s3cret-key");
        var (server, http) = await ServerWorld.Start(new ServerOptions { ModelDir = _w.ModelDir, Port = 0, ApiKeyEnv = "SOFTPROMPT_TEST_KEY" });
        await using var _ = server;
        using var __ = http;
        Assert.Equal(200, (await ServerWorld.Send(http, HttpMethod.Get, "/health")).Status);
        var (s, body) = await ServerWorld.Send(http, HttpMethod.Get, "/v1/models");
        Assert.Equal(401, s);
        Assert.Equal("invalid_api_key", body.GetProperty("error").GetProperty("code").GetString());
        http.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Bearer", "wrong");
        Assert.Equal(401, (await ServerWorld.Send(http, HttpMethod.Get, "/v1/models")).Status);
        http.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Bearer", "s3cret-key");
        Assert.Equal(200, (await ServerWorld.Send(http, HttpMethod.Get, "/v1/models")).Status);
        await Assert.ThrowsAsync<SoftPromptException>(() => SoftPromptServer.StartAsync(new ServerOptions { ModelDir = _w.ModelDir, Port = 0, ApiKeyEnv = "SOFTPROMPT_TEST_UNSET_KEY" }));
    }

    [Fact]
    public async Task AFullQueueAnswers429AndTheServerRecovers()
    {
        var (server, http) = await ServerWorld.Start(new ServerOptions { ModelDir = _w.ModelDir, Port = 0, MaxBatch = 1, MaxQueue = 1 });
        await using var _ = server;
        using var __ = http;
        var tasks = Enumerable.Range(0, 8).Select(i => http.PostAsJsonAsync("/v1/completions", new { model = "base", prompt = "x", max_tokens = 200, temperature = 0, ignore_eos = true })).ToList();
        var responses = await Task.WhenAll(tasks);
        var codes = responses.Select(r => (int)r.StatusCode).ToList();
        Assert.Contains(429, codes);
        Assert.Contains(200, codes);
        Assert.All(codes, c => Assert.True(c is 200 or 429));
        var limited = responses.First(r => (int)r.StatusCode == 429);
        Assert.NotNull(limited.Headers.RetryAfter);
        Assert.Equal("rate_limit_exceeded", JsonDocument.Parse(await limited.Content.ReadAsStringAsync()).RootElement.GetProperty("error").GetProperty("code").GetString());
        foreach (var r in responses) r.Dispose();
        Assert.Equal(200, (await ServerWorld.Post(http, "/v1/completions", new { model = "base", prompt = "x", max_tokens = 2 })).Status);
    }

    [Fact]
    public async Task AClientThatLeavesCancelsItsSequence()
    {
        static double Cancelled(string metrics) => metrics.Split('\n').Where(l => l.StartsWith("softprompt_sequences_total") && l.Contains("finish=\"cancelled\""))
            .Select(l => double.Parse(l.Trim().Split(' ')[^1], System.Globalization.CultureInfo.InvariantCulture)).DefaultIfEmpty(0).Sum();
        double before = Cancelled(await Http.GetStringAsync("/metrics"));
        // A client of its own that does not drain an unread response to reuse the connection: disposing it drops the connection.
        using (var client = new HttpClient(new SocketsHttpHandler { MaxResponseDrainSize = 0 }) { BaseAddress = _w.Server.Address })
        using (var req = new HttpRequestMessage(HttpMethod.Post, "/v1/completions") { Content = JsonContent.Create(new { model = "pre", prompt = "x", max_tokens = 1000, temperature = 0, stream = true, ignore_eos = true }) })
        using (var r = await client.SendAsync(req, HttpCompletionOption.ResponseHeadersRead))
        {
            using var reader = new StreamReader(await r.Content.ReadAsStreamAsync());
            Assert.StartsWith("data: ", await reader.ReadLineAsync());
        }   // the connection is dropped here, ~1000 tokens early
        var sw = Stopwatch.StartNew();
        while (Cancelled(await Http.GetStringAsync("/metrics")) <= before && sw.Elapsed < TimeSpan.FromSeconds(30)) await Task.Delay(50);
        Assert.True(Cancelled(await Http.GetStringAsync("/metrics")) > before);
    }
}

/// <summary>`softprompt serve` command-line errors: one clear line, exit 2 (in-process CLI runs redirect the console,
/// hence the Console collection).</summary>
[Collection("Console")]
public class ServeCliTests : IClassFixture<ServerWorld>
{
    readonly ServerWorld _w;
    public ServeCliTests(ServerWorld w) => _w = w;

    [Fact]
    public async Task ServeCommandLineErrorsAreClearAndExit2()
    {
        foreach (var (args, mentions) in new[]
        {
            (new[] { "serve", "--model", _w.Tmp["nowhere"] }, "does not exist"),
            (new[] { "serve", "--model", _w.ModelDir, "--adapter", "oops" }, "NAME=ADAPTER_DIR"),
            (new[] { "serve", "--model", _w.ModelDir, "--adapter", $"x={_w.Tmp["nowhere"]}" }, "does not exist"),
            (new[] { "serve", "--model", _w.ModelDir, "--host", "example.org" }, "not an IP address"),
            (new[] { "serve", "--model", _w.ModelDir, "--port", _w.Server.Address.Port.ToString() }, "cannot listen"),
            (new[] { "serve", "--model", _w.ModelDir, "--port", "0", "--adapter", $"f={_w.ForeignDir}" }, "another model"),
            (new[] { "serve", "--model", _w.ModelDir, "--host", "::" }, "--api-key-env"), // refused before listening
            (new[] { "serve", "--model", _w.ModelDir, "--allow-adapter-admin" }, "--adapters-dir"),
            (new[] { "serve", "--model", _w.ModelDir, "--cors-origin", "not an origin" }, "--cors-origin"),
            (new[] { "serve", "--model", _w.ModelDir, "--header-timeout", "0" }, "--header-timeout"),
        })
        {
            var (rc, _, err) = await Task.Run(() => Tests.Cli.CliRunner.Run(args));
            Assert.True(rc == 2, $"{string.Join(" ", args)}: rc {rc}, {err}");
            Assert.Contains(mentions, err);
            Assert.DoesNotContain("   at ", err);
        }
    }

}

/// <summary>`softprompt serve` as a child process (the test folder's softprompt.dll), for what only a process shows:
/// its exit code after SIGTERM, and its own resident memory.</summary>
sealed class ServeProcess
{
    public required Process Process { get; init; }
    public required Uri Address { get; init; }
    public required Task<string> Stderr { get; init; }

    public static async Task<ServeProcess> Start(params string[] args)
    {
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        psi.ArgumentList.Add(Path.Combine(AppContext.BaseDirectory, "softprompt.dll"));
        psi.ArgumentList.Add("serve");
        foreach (var a in args) psi.ArgumentList.Add(a);
        var p = Process.Start(psi)!;
        var stderr = p.StandardError.ReadToEndAsync();
        var line = await p.StandardOutput.ReadLineAsync().WaitAsync(TimeSpan.FromSeconds(120));
        if (line is null || !line.StartsWith("listening on http://127.0.0.1:"))
        {
            if (!p.HasExited) p.Kill(true);
            throw new InvalidOperationException($"serve did not start: {line} {await stderr}");
        }
        return new ServeProcess { Process = p, Address = new Uri(line["listening on ".Length..]), Stderr = stderr };
    }

    /// <summary>VmRSS of the process (Linux /proc).</summary>
    public long ResidentBytes()
    {
        var line = File.ReadLines($"/proc/{Process.Id}/status").First(l => l.StartsWith("VmRSS:"));
        return long.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1]) * 1024;
    }

    bool _terminated;

    public void Terminate()
    {
        if (_terminated) return;
        _terminated = true;
        Process.Start("kill", new[] { "-TERM", Process.Id.ToString() })!.WaitForExit();
    }

    /// <summary>SIGTERM, then the exit code (the process is killed if it does not exit within a minute).</summary>
    public async Task<int> StopAsync()
    {
        if (!Process.HasExited) Terminate();
        try { await Process.WaitForExitAsync().WaitAsync(TimeSpan.FromSeconds(60)); }
        catch (TimeoutException) { Process.Kill(true); return -1; }
        return Process.ExitCode;
    }
}

/// <summary>`softprompt serve` as a process: prints its address, answers, and on SIGTERM finishes the request in flight and exits 0.</summary>
[Collection("Server")]
public class ServeProcessTests
{
    [Fact]
    public async Task SigtermDrainsInFlightRequestsAndExitsZero()
    {
        if (!OperatingSystem.IsLinux()) return;   // SIGTERM and /proc
        var p = await ServeProcess.Start("--model", Tests.Models.ShippedModelTests.ModelDir, "--port", "0", "--threads", "1");
        try
        {
            using var http = new HttpClient { BaseAddress = p.Address, Timeout = TimeSpan.FromSeconds(60) };
            using var req = new HttpRequestMessage(HttpMethod.Post, "/v1/completions") { Content = JsonContent.Create(new { model = "base", prompt = "x", max_tokens = 400, temperature = 0, stream = true, ignore_eos = true }) };
            using var r = await http.SendAsync(req, HttpCompletionOption.ResponseHeadersRead);
            using var reader = new StreamReader(await r.Content.ReadAsStreamAsync());
            Assert.StartsWith("data: ", await reader.ReadLineAsync());
            p.Terminate();
            var rest = await reader.ReadToEndAsync().WaitAsync(TimeSpan.FromSeconds(60));
            Assert.Contains("\"finish_reason\":\"length\"", rest);   // the in-flight request ran to its end
            Assert.Contains("data: [DONE]", rest);
            int rc = await p.StopAsync();
            Assert.True(rc == 0, $"exit code {rc}: " + await p.Stderr);
        }
        finally { if (!p.Process.HasExited) p.Process.Kill(true); }
    }
}

/// <summary>The load test: 32 concurrent clients over 4 adapters (prompt and prefix tuning mixed) on the shipped model,
/// 2,000 requests over loopback to a `softprompt serve` process; every reply equals its single-request answer (text,
/// logprobs within 1e-4), none fails, and the server's resident memory stays flat after warm-up (the engine's
/// live-tensor count is checked exactly in BatchEngineTests).</summary>
[Collection("Server")]
public class ServeLoadTests(Xunit.Abstractions.ITestOutputHelper output)
{
    [Fact]
    public async Task ThirtyTwoClientsFourAdaptersTwoThousandRequests()
    {
        if (!OperatingSystem.IsLinux()) return;   // /proc for the server's memory
        var rows = await ServeBenchmark.RunAsync(new ServeBenchOptions
        {
            Model = Tests.Models.ShippedModelTests.ModelDir, Clients = 32, Requests = 2000, MaxTokens = 4, Adapters = 4, Modes = new[] { "batched" },
            Launch = async o =>
            {
                var args = new List<string> { "--model", o.ModelDir, "--port", "0", "--threads", "2", "--max-batch", o.MaxBatch.ToString(),
                    "--max-queue", o.MaxQueue.ToString(), "--max-tokens", o.MaxTokens.ToString() };
                foreach (var (name, dir) in o.Adapters) { args.Add("--adapter"); args.Add($"{name}={dir}"); }
                var p = await ServeProcess.Start(args.ToArray());
                return new BenchServer(p.Address, p.ResidentBytes, async () => Assert.Equal(0, await p.StopAsync()));
            },
        });
        var r = Assert.Single(rows);
        output.WriteLine(r.ToString());
        Assert.Equal(2000, r.Requests);
        Assert.Equal(0, r.Errors);
        Assert.Equal(0, r.Mismatches);
        Assert.InRange(r.RssEndBytes - r.RssWarmBytes, long.MinValue, 100_000_000);
    }
}
