using SoftPrompt.Inference;

namespace SoftPrompt.Tests.Inference;

/// <summary>The Gemma and Phi-3 chat formats: recognised from the templates those models ship (abridged here to the
/// parts that identify them), and rendered as their Jinja templates render with add_generation_prompt.</summary>
public class ChatTemplateFamiliesTests
{
    // The shape of google/gemma-2-2b-it's chat_template and of microsoft/Phi-3.5-mini-instruct's.
    const string GemmaTemplate = "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}" +
        "{% for message in messages %}{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}" +
        "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}";
    const string Phi3Template = "{% for message in messages %}{% if message['role'] == 'system' and message['content'] %}{{'<|system|>\n' + message['content'] + '<|end|>\n'}}" +
        "{% elif message['role'] == 'user' %}{{'<|user|>\n' + message['content'] + '<|end|>\n'}}{% elif message['role'] == 'assistant' %}{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}" +
        "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}";
    // TinyLlama-Chat (Zephyr): <|user|> too, but turns end with the EOS token: not Phi-3's format.
    const string ZephyrTemplate = "{% for message in messages %}{% if message['role'] == 'user' %}{{ '<|user|>\n' + message['content'] + eos_token }}" +
        "{% elif message['role'] == 'assistant' %}{{ '<|assistant|>\n'  + message['content'] + eos_token }}{% endif %}{% endfor %}";

    [Fact]
    public void GemmaIsRecognisedAndRendered()
    {
        Assert.Same(ChatTemplate.Gemma, ChatTemplate.FromTemplate(GemmaTemplate, out _));
        var text = ChatTemplate.Gemma.Render(new[] { new ChatTurn("user", " Hi "), new ChatTurn("assistant", "Hello."), new ChatTurn("user", "A word?") });
        Assert.Equal("<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\nHello.<end_of_turn>\n<start_of_turn>user\nA word?<end_of_turn>\n<start_of_turn>model\n", text);
        Assert.Equal(new[] { "<end_of_turn>" }, ChatTemplate.Gemma.EndOfTurn);
        // A system turn (which Gemma's own template refuses) goes before the first user turn.
        Assert.Equal("<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\n",
            ChatTemplate.Gemma.Render(new[] { new ChatTurn("system", "Be brief."), new ChatTurn("user", "Hi") }));
    }

    [Fact]
    public void Phi3IsRecognisedAndRendered()
    {
        Assert.Same(ChatTemplate.Phi3, ChatTemplate.FromTemplate(Phi3Template, out _));
        var text = ChatTemplate.Phi3.Render(new[] { new ChatTurn("system", "Be brief."), new ChatTurn("user", "Hi"), new ChatTurn("assistant", "Hello."), new ChatTurn("user", "A word?") });
        Assert.Equal("<|system|>\nBe brief.<|end|>\n<|user|>\nHi<|end|>\n<|assistant|>\nHello.<|end|>\n<|user|>\nA word?<|end|>\n<|assistant|>\n", text);
        Assert.Equal("<|user|>\nHi<|end|>\n<|assistant|>\n", ChatTemplate.Phi3.Render(new[] { new ChatTurn("system", ""), new ChatTurn("user", "Hi") }));
        Assert.Contains("<|end|>", ChatTemplate.Phi3.EndOfTurn);
    }

    [Fact]
    public void AZephyrTemplateIsNotTakenForPhi3()
    {
        Assert.Null(ChatTemplate.FromTemplate(ZephyrTemplate, out var why));
        Assert.Contains("Phi-3", why);
    }

    [Fact]
    public void DetectReadsTheTemplateFromTokenizerConfig()
    {
        using var tmp = new Fixtures.TempDir();
        File.WriteAllText(tmp["tokenizer_config.json"], new System.Text.Json.Nodes.JsonObject { ["chat_template"] = GemmaTemplate }.ToJsonString());
        Assert.Same(ChatTemplate.Gemma, ChatTemplate.Detect(tmp.Path, out _));
        File.WriteAllText(tmp["tokenizer_config.json"], new System.Text.Json.Nodes.JsonObject { ["chat_template"] = Phi3Template }.ToJsonString());
        Assert.Same(ChatTemplate.Phi3, ChatTemplate.Detect(tmp.Path, out _));
    }
}
