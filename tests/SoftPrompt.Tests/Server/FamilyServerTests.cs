using System.Text.Json.Nodes;
using SoftPrompt.Inference;
using SoftPrompt.Models;
using SoftPrompt.Server;
using SoftPrompt.Tuning;

namespace SoftPrompt.Tests.Server;

/// <summary><c>serve</c> on Gemma 2 (soft-capping, a sliding window on layer 0) and Phi-3, each with its own chat template
/// in tokenizer_config.json and a prefix adapter: a completion equals the library's generation with the same prompt,
/// and the chat endpoint renders the family's format (the same as a completion of the rendered text).</summary>
[Collection("Server")]
public class FamilyServerTests
{
    [Theory]
    [InlineData("gemma2", "{{ bos_token }}{% for message in messages %}{{ '<start_of_turn>' + message['role'] + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}{% endfor %}{{'<start_of_turn>model\\n'}}", "gemma")]
    [InlineData("phi3", "{% for message in messages %}{{'<|user|>\\n' + message['content'] + '<|end|>\\n'}}{% endfor %}{{ '<|assistant|>\\n' }}", "phi3")]
    public async Task CompletionsAndChatWithAPrefixAdapter(string family, string template, string chatFamily)
    {
        using var tmp = new Fixtures.TempDir();
        var model = tmp["model"];
        Directory.CreateDirectory(model);
        foreach (var f in Directory.GetFiles(Fixtures.TinyModelWithTokenizer(family))) File.Copy(f, Path.Combine(model, Path.GetFileName(f)));
        var tcPath = Path.Combine(model, "tokenizer_config.json");
        var tc = File.Exists(tcPath) ? JsonNode.Parse(File.ReadAllText(tcPath))!.AsObject() : new JsonObject();
        tc["chat_template"] = template;
        File.WriteAllText(tcPath, tc.ToJsonString());
        using (var m = ModelLoader.Load(model))
        using (var p = PrefixTuning.Create(m.Config, 3, false, 0, 2, m.Device, initScale: 0.5))
            Adapter.Save(tmp["prefix"], p, m);

        var (server, http) = await ServerWorld.Start(new ServerOptions { ModelDir = model, Port = 0, Adapters = new[] { ("pre", tmp["prefix"]) }, MaxTokens = 64 });
        await using var serverScope = server;
        using var httpScope = http;
        var (_, completion) = await ServerWorld.Post(http, "/v1/completions", new { model = "pre", prompt = "Word: joy\nSentiment:", max_tokens = 6, temperature = 0 });
        var served = completion.GetProperty("choices")[0].GetProperty("text").GetString();

        using var lm = LanguageModel.Load(model, "cpu");
        using var prompt = lm.LoadPrompt(tmp["prefix"]);
        var ids = lm.Encode("Word: joy\nSentiment:");
        var gen = lm.Generate(ids, new GenerationOptions { MaxNewTokens = 6 }, prompt);
        Assert.Equal(lm.Decode(gen.NewIds), served);

        var msgs = new object[] { new { role = "user", content = "Say a word." } };
        var (status, chat) = await ServerWorld.Post(http, "/v1/chat/completions", new { model = "pre", messages = msgs, max_tokens = 4, temperature = 0 });
        Assert.Equal(200, status);
        var tpl = ChatTemplate.Detect(model, out var why)!;
        Assert.Equal(chatFamily, tpl.Family);
        var rendered = lm.Tokenizer!.Encode(tpl.Render(new[] { new ChatTurn("user", "Say a word.") }), addSpecialTokens: false);
        var (_, comp) = await ServerWorld.Post(http, "/v1/completions", new { model = "pre", prompt = rendered, max_tokens = 4, temperature = 0 });
        Assert.Equal(comp.GetProperty("choices")[0].GetProperty("text").GetString(), chat.GetProperty("choices")[0].GetProperty("message").GetProperty("content").GetString());
    }
}
