using System.Net.Http.Json;
using System.Text.Json;
using System.Text.Json.Nodes;
using SoftPrompt.Data;
using SoftPrompt.Models;
using SoftPrompt.Server;
using SoftPrompt.Tests.Models;
using SoftPrompt.Tuning;

namespace SoftPrompt.Tests.Server;

/// <summary>
/// A served model for the server tests: a copy of the shipped model (models/sp-llama-6m) with a ChatML chat template
/// added, two saved prompts for it (prompt tuning, 5 virtual tokens, with recorded data settings; prefix tuning, 3),
/// one prompt for another model (fingerprint mismatch), and helpers to start servers on random loopback ports.
/// </summary>
public sealed class ServerWorld : IAsyncLifetime
{
    public readonly Fixtures.TempDir Tmp = new();
    public string ModelDir => Tmp["model"];
    public string PromptDir => Tmp["prompt"];
    public string PrefixDir => Tmp["prefix"];
    public string ForeignDir => Tmp["foreign"];
    public SoftPromptServer Server = null!;
    public HttpClient Http = null!;

    public async Task InitializeAsync()
    {
        TorchSharp.torch.set_num_threads(2);
        Directory.CreateDirectory(ModelDir);
        foreach (var f in Directory.GetFiles(ShippedModelTests.ModelDir)) File.Copy(f, Path.Combine(ModelDir, Path.GetFileName(f)));
        var tc = JsonNode.Parse(File.ReadAllText(Path.Combine(ModelDir, "tokenizer_config.json")))!.AsObject();
        tc["chat_template"] = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}<|im_start|>assistant\n";
        File.WriteAllText(Path.Combine(ModelDir, "tokenizer_config.json"), tc.ToJsonString());
        using (var model = ModelLoader.Load(ModelDir))
        {
            using (var p = PromptTuning.Create(model, 5, PromptInit.SampleVocab, 1))
                Adapter.Save(PromptDir, p, model, new AdapterMetadata().WithData(new DataOptions { PromptTemplate = "Word: {input}\nSentiment:", LabelWords = new Dictionary<string, string> { ["positive"] = "good", ["negative"] = "bad" } }));
            using (var p = PrefixTuning.Create(model.Config, 3, false, 0, 2, model.Device, initScale: 0.5))
                Adapter.Save(PrefixDir, p, model);
        }
        using (var other = ModelLoader.Load(Fixtures.HfReference("llama")))
        using (var p = PromptTuning.Create(other, 4, PromptInit.SampleVocab, 1))
            Adapter.Save(ForeignDir, p, other);
        (Server, Http) = await Start(new ServerOptions { ModelDir = ModelDir, Port = 0, Adapters = new[] { ("sent", PromptDir), ("pre", PrefixDir) }, MaxTokens = 2000, MaxBodyBytes = 64 * 1024 });
    }

    public static async Task<(SoftPromptServer, HttpClient)> Start(ServerOptions o)
    {
        var s = await SoftPromptServer.StartAsync(o);
        await s.Ready.WaitAsync(TimeSpan.FromSeconds(120));
        return (s, new HttpClient { BaseAddress = s.Address, Timeout = TimeSpan.FromSeconds(120) });
    }

    public async Task DisposeAsync()
    {
        Http.Dispose();
        await Server.DisposeAsync();
        Tmp.Dispose();
    }

    public static async Task<(int Status, JsonElement Body)> Post(HttpClient http, string path, object body)
    {
        using var r = await http.PostAsJsonAsync(path, body);
        var text = await r.Content.ReadAsStringAsync();
        return ((int)r.StatusCode, JsonDocument.Parse(text).RootElement.Clone());
    }

    public static async Task<(int Status, JsonElement Body)> Send(HttpClient http, HttpMethod method, string path, string? raw = null, string contentType = "application/json")
    {
        using var req = new HttpRequestMessage(method, path);
        if (raw is not null) req.Content = new StringContent(raw, System.Text.Encoding.UTF8, contentType);
        using var r = await http.SendAsync(req);
        var text = await r.Content.ReadAsStringAsync();
        return ((int)r.StatusCode, text.Length == 0 ? default : JsonDocument.Parse(text).RootElement.Clone());
    }

    /// <summary>The data: payloads of a server-sent event stream (without the final [DONE]), and whether [DONE] came.</summary>
    public static async Task<(List<JsonElement> Events, bool Done)> Stream(HttpClient http, string path, object body)
    {
        using var req = new HttpRequestMessage(HttpMethod.Post, path) { Content = JsonContent.Create(body) };
        using var r = await http.SendAsync(req, HttpCompletionOption.ResponseHeadersRead);
        Assert.Equal("text/event-stream", r.Content.Headers.ContentType?.MediaType);
        using var reader = new StreamReader(await r.Content.ReadAsStreamAsync());
        var events = new List<JsonElement>();
        bool done = false;
        while (await reader.ReadLineAsync() is { } line)
        {
            if (!line.StartsWith("data: ")) { Assert.Equal("", line); continue; }
            var data = line[6..];
            if (data == "[DONE]") { done = true; continue; }
            events.Add(JsonDocument.Parse(data).RootElement.Clone());
        }
        return (events, done);
    }
}
