using System.Text.RegularExpressions;
using Microsoft.Extensions.AI;
using SoftPrompt.Llm;
using SoftPrompt.Search;

namespace SoftPrompt.Tests.Opro;

/// <summary>OPRO's meta-prompt, reply parsing, dedup keys, chat formats and judge-reply parsing, without a model.</summary>
public class MetaPromptTests
{
    static readonly List<ScoredInstruction> Trajectory = new()
    {
        new("", 0.40, 0), new("Think step by step.", 0.55, 1), new("Answer yes or no.", 0.70, 1),
        new("answer  YES or no.", 0.65, 2), new("Read the review, then answer.", 0.50, 2), new("Be brief.", 0.30, 3),
    };

    [Fact]
    public void KeptPairsAreTheBestDistinctOnesInAscendingOrder()
    {
        var kept = MetaPrompt.Kept(Trajectory, keep: 3);
        // The best three distinct instructions (0.70, 0.65 is a duplicate of 0.70's, 0.55, 0.50), ascending: best last.
        Assert.Equal(new[] { "Read the review, then answer.", "Think step by step.", "Answer yes or no." }, kept.Select(k => k.Text).ToArray());
        Assert.Equal(new[] { 0.50, 0.55, 0.70 }, kept.Select(k => k.Score).ToArray());
        Assert.Equal("Answer yes or no.", kept[^1].Text);
        // "answer  YES or no." is the same instruction normalised: only its better-scored spelling is kept.
        Assert.DoesNotContain(MetaPrompt.Kept(Trajectory, 20), k => k.Text == "answer  YES or no.");
        Assert.Equal(5, MetaPrompt.Kept(Trajectory, 20).Count);
    }

    [Fact]
    public void ChatMetaPromptListsPairsAscendingThenExemplarsWithTheInstructionSlotThenTheRequest()
    {
        var kept = MetaPrompt.Kept(Trajectory, 20);
        var ex = new List<(string, string)> { ("the film was good. answer:", " yes"), ("the plot was dull. answer:", " no") };
        var meta = MetaPrompt.Chat(kept, ex, "accuracy", "before_q", "Classify reviews.");
        Assert.StartsWith("Classify reviews.", meta);
        var scores = Regex.Matches(meta, @"text:\n(.*)\nscore:\n(\d+)").Select(m => int.Parse(m.Groups[2].Value)).ToList();
        Assert.Equal(new[] { 30, 40, 50, 55, 70 }, scores);
        Assert.Contains("text:\n(empty instruction)\nscore:\n40", meta);
        int lastPair = meta.LastIndexOf("score:", StringComparison.Ordinal), firstExemplar = meta.IndexOf("input:\n<INS>\nthe film was good. answer:\noutput:\nyes", StringComparison.Ordinal);
        Assert.True(firstExemplar > lastPair, "exemplars follow the pairs");
        Assert.Contains("input:\n<INS>\nthe plot was dull. answer:\noutput:\nno", meta);
        Assert.EndsWith("starting with <INS> and ending with </INS>.", meta);
        Assert.Contains("input:\n<INS> the film", MetaPrompt.Chat(kept, ex, "accuracy", "q_begin", null));
        // A loss is shown as the loss (lower is better) with three decimals: 5.3 and 8 stay apart (100·exp(−loss) made both 0).
        Assert.Equal("1.000", MetaPrompt.Display(-1.0, "neg_loss"));
        Assert.NotEqual(MetaPrompt.Display(-5.3, "neg_loss"), MetaPrompt.Display(-8.0, "neg_loss"));
        Assert.Contains("target loss (lower is better)", MetaPrompt.Chat(kept, ex, "neg_loss", "before_q", null));
        Assert.Equal("7.5", MetaPrompt.Display(7.5, "judge"));

        var plain = MetaPrompt.Plain(kept, "accuracy", null);
        Assert.EndsWith("text:", plain);
        Assert.DoesNotContain("input:", plain);
        Assert.True(plain.IndexOf("Be brief.", StringComparison.Ordinal) < plain.IndexOf("Answer yes or no.", StringComparison.Ordinal));
    }

    [Theory]
    [InlineData("Sure! <INS>Answer with yes or no.</INS> Hope it helps.", false, "Answer with yes or no.")]
    [InlineData("<ins>\n  Say it.\n</ins>", false, "Say it.")]
    [InlineData("<INS> Decide the sentiment.\n\nThis instruction is better because...", false, "Decide the sentiment.")]
    [InlineData("[Read carefully, then answer.]", false, "Read carefully, then answer.")]
    [InlineData("I think a good instruction would be clear.", false, null)]
    [InlineData("", false, null)]
    [InlineData("<INS>  </INS>", false, "")]
    [InlineData(" Answer the question.\nscore: 50", true, "Answer the question.")]
    [InlineData("\n\n", true, null)]
    public void RepliesAreParsedBetweenTheMarkers(string reply, bool plain, string? expected) =>
        Assert.Equal(expected, MetaPrompt.Parse(reply, plain));

    [Fact]
    public void DedupKeyFoldsCaseAndWhitespace()
    {
        Assert.Equal(MetaPrompt.Normalize("Answer  yes\n or NO. "), MetaPrompt.Normalize("answer yes or no."));
        Assert.NotEqual(MetaPrompt.Normalize("Answer yes or no."), MetaPrompt.Normalize("Answer yes or no"));
    }

    [Fact]
    public void ChatFormatsAreDetectedFromTheTemplateAndRendered()
    {
        var msgs = new[] { new ChatMessage(ChatRole.System, "Be strict."), new ChatMessage(ChatRole.User, "Hi") };
        var chatml = ChatFormat.FromTemplate("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>{% endfor %}");
        Assert.Equal("chatml", chatml.Kind);
        Assert.Equal(("<|im_start|>system\nBe strict.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n", false), chatml.Render(msgs));
        var llama3 = ChatFormat.FromTemplate("{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>' }}");
        Assert.Equal("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe strict.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n", llama3.Render(msgs).Text);
        var mistral = ChatFormat.FromTemplate("{{ '[INST] ' + message['content'] + ' [/INST]' }}");
        Assert.Equal(("<s>[INST] Be strict.\n\nHi [/INST]", false), mistral.Render(msgs));
        Assert.True(ChatFormat.FromTemplate(null).IsBase);
        Assert.True(ChatFormat.FromTemplate("{{ messages }}").IsBase);
        Assert.Equal(("Be strict.\n\nHi", true), ChatFormat.None.Render(msgs));
    }

    [Fact]
    public void ChatFormatIsReadFromTokenizerConfig()
    {
        using var tmp = new Fixtures.TempDir();
        File.WriteAllText(tmp["tokenizer_config.json"], "{\"chat_template\": [{\"name\": \"tool_use\", \"template\": \"x\"}, {\"name\": \"default\", \"template\": \"<|im_start|>\"}]}");
        Assert.Equal("chatml", ChatFormat.Detect(tmp.Path).Kind);
        File.WriteAllText(tmp["tokenizer_config.json"], "{\"model_max_length\": 1024}");
        Assert.True(ChatFormat.Detect(tmp.Path).IsBase);
        File.WriteAllText(tmp["tokenizer_config.json"], "{not json");
        Assert.Contains("tokenizer_config.json: invalid JSON", Assert.Throws<SoftPromptException>(() => ChatFormat.Detect(tmp.Path)).Message);
    }

    [Theory]
    [InlineData("Score: 7", 7)]
    [InlineData("The response is clear.\n**Score:** 9/10", 9)]
    [InlineData("Reasoning: it has 12 steps, too many.\nScore: 4", 4)]
    [InlineData("Score (1-10): 7", 7)]                       // was read as 1
    [InlineData("0/10", null)]                               // was read as 10
    [InlineData("On a scale of 1 to 10 this deserves an 8", null)] // was read as 1
    [InlineData("It has 12 steps; rating 4", null)]          // junk with a number is no verdict
    [InlineData("I would give it 6 out of 10.", null)]
    [InlineData("Score: 0", null)]
    [InlineData("Score: 15", null)]
    [InlineData("score = 8.6", null)]
    [InlineData("First: Score: 2 was my first thought.\nScore: 8", 8)]
    [InlineData("{\"reasoning\": \"fine\", \"score\": 6}", 6)]
    [InlineData("{\"score\": 11}", null)]
    [InlineData("I cannot rate this.", null)]
    [InlineData("", null)]
    public void JudgeRatingsAreParsed(string reply, int? expected) => Assert.Equal(expected, Judge.ParseRating(reply));
}
