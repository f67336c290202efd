using System.Text.Json;
using SoftPrompt.Inference;
using SoftPrompt.Models;
using SoftPrompt.Server;
using SoftPrompt.Tuning;

namespace SoftPrompt.Tests.Server;

/// <summary><c>/v1/completions</c> on an encoder-decoder model (the tiny T5 with the hand-made Unigram tokenizer):
/// the prompt is the encoder input, with or without a soft prompt on the encoder; the text is the decoder's output,
/// the same tokens as <see cref="Seq2SeqGenerator"/>; streaming; echo with logprobs refused. 127.0.0.1 only.</summary>
[Collection("Server")]
public class T5ServerTests
{
    [Fact]
    public async Task CompletionsDecodeTheEncoderInputWithAndWithoutASoftPrompt()
    {
        using var tmp = new Fixtures.TempDir();
        var dir = tmp["t5"];
        Directory.CreateDirectory(dir);
        foreach (var f in new[] { "config.json", "model.safetensors" })
            File.Copy(Path.Combine(Fixtures.Root, "hf-reference-more", "t5", f), Path.Combine(dir, f));
        foreach (var f in new[] { "tokenizer.json", "tokenizer_config.json" })
            File.Copy(Path.Combine(Fixtures.Root, "tokenizers", "t5-unigram", f), Path.Combine(dir, f));
        var golden = SoftPrompt.IO.SafeTensors.Load(Path.Combine(Fixtures.Root, "hf-reference-more", "t5", "golden.safetensors"));
        using (var m = T5Model.Load(dir))
        using (var p = new PromptTuning(golden["soft_prompt"].clone()))
            Adapter.Save(tmp["adapter"], p, m);

        var (server, http) = await ServerWorld.Start(new ServerOptions { ModelDir = dir, Host = "127.0.0.1", Port = 0, Adapters = new[] { ("sp", tmp["adapter"]) } });
        await using var _ = server;
        using var __ = http;
        var tok = SoftPrompt.Tokenization.HfTokenizer.Load(dir);
        var input = tok.Encode("good review");
        using var model = T5Model.Load(dir);
        using var adapter = Adapter.Load(tmp["adapter"], model);
        foreach (var (name, prompt) in new[] { ("t5", (IPromptMethod?)null), ("sp", adapter) })
        {
            var r = Seq2SeqGenerator.Generate(model, input, new GenerationOptions { MaxNewTokens = 5 }, prompt?.Inject(1), keepScores: true);
            var expected = r.NewIds;
            // Log-probability of each chosen token under the library's own decoding (ids beyond the tiny tokenizer's
            // vocabulary decode to little text, so the numbers are what tie the server's tokens to the library's).
            var expectedLp = r.Scores!.Select((s, t) =>
            {
                double max = s.Max(), z = s.Sum(x => Math.Exp(x - max));
                return s[expected[t]] - max - Math.Log(z);
            }).ToArray();
            var (status, body) = await ServerWorld.Post(http, "/v1/completions", new { model = name == "t5" ? "base" : name, prompt = input, max_tokens = 5, temperature = 0, logprobs = 1, ignore_eos = true });
            Assert.True(status == 200, body.ToString());
            var c = body.GetProperty("choices")[0];
            Assert.Equal(tok.Decode(expected, skipSpecialTokens: true), c.GetProperty("text").GetString());
            Assert.Equal(5, body.GetProperty("usage").GetProperty("completion_tokens").GetInt32());
            var lps = c.GetProperty("logprobs").GetProperty("token_logprobs").EnumerateArray().Select(x => x.GetDouble()).ToArray();
            Assert.Equal(5, lps.Length);
            for (int t = 0; t < 5; t++) Assert.InRange(Math.Abs(lps[t] - expectedLp[t]), 0, 1e-4);
            Assert.Equal(input.Length, body.GetProperty("usage").GetProperty("prompt_tokens").GetInt32());
        }
        var (events, done) = await ServerWorld.Stream(http, "/v1/completions", new { model = "sp", prompt = "good review", max_tokens = 4, temperature = 0, stream = true, ignore_eos = true });
        Assert.True(done);
        Assert.NotEmpty(events);
        var (st2, b2) = await ServerWorld.Post(http, "/v1/completions", new { model = "sp", prompt = "good", max_tokens = 2, echo = true, logprobs = 1 });
        Assert.Equal(400, st2);
        Assert.Contains("encoder-decoder", b2.ToString());
    }
}
