using System.Globalization;
using System.Text.RegularExpressions;
using Microsoft.Extensions.AI;

namespace SoftPrompt.Llm;

/// <summary>One judged output: its rating (1-10) and whether the reply held a number (a reply without one counts as
/// the lowest rating, 1, and is counted as a failure).</summary>
public sealed record JudgeVerdict(int Rating, bool Parsed);

/// <summary>
/// An LLM judge for qualitative goals: each output is rated 1-10 against a rubric ("follows the style guide", "is easy
/// to follow"). Used by OPRO's <c>--objective judge</c> and by <c>eval</c>'s optional judge metric.
/// </summary>
public static class Judge
{
    public const string System = "You are a careful, strict evaluator. You rate a response against a rubric on a scale from 1 (worst) to 10 (best).";

    public static string Prompt(string rubric, string input, string output) =>
        $"Rubric:\n{rubric.Trim()}\n\nInput:\n{input.Trim()}\n\nResponse:\n{output.Trim()}\n\n" +
        "Rate the response against the rubric. Reply with one line of the form \"Score: N\" where N is an integer from 1 to 10.";

    static readonly Regex ScoreLine = new(@"score\s*[:=]\s*\**\s*(\d+(?:\.\d+)?)", RegexOptions.IgnoreCase);
    static readonly Regex AnyNumber = new(@"(?<![\d.])(\d+(?:\.\d+)?)(?![\d.])");

    /// <summary>The rating in a judge reply: "Score: N" if present, else the first number in 1..10 ("N/10" included);
    /// null when there is none. Fractions are rounded; values are clamped to 1..10 only when given as "Score:".</summary>
    public static int? ParseRating(string? reply)
    {
        if (string.IsNullOrWhiteSpace(reply)) return null;
        var m = ScoreLine.Match(reply);
        if (m.Success && double.TryParse(m.Groups[1].Value, NumberStyles.Float, CultureInfo.InvariantCulture, out var s))
            return (int)Math.Clamp(Math.Round(s, MidpointRounding.AwayFromZero), 1, 10);
        foreach (Match n in AnyNumber.Matches(reply))
            if (double.TryParse(n.Groups[1].Value, NumberStyles.Float, CultureInfo.InvariantCulture, out var v) && v >= 1 && v <= 10)
                return (int)Math.Round(v, MidpointRounding.AwayFromZero);
        return null;
    }

    /// <summary>Rates every (input, output) pair, at most <paramref name="parallel"/> at a time (the client may also
    /// limit), in input order.</summary>
    public static async Task<JudgeVerdict[]> RateAll(IChatClient judge, string rubric, IReadOnlyList<(string Input, string Output)> items, int parallel, CancellationToken cancel = default)
    {
        var result = new JudgeVerdict[items.Count];
        await Parallel.ForEachAsync(Enumerable.Range(0, items.Count), new ParallelOptions { MaxDegreeOfParallelism = parallel, CancellationToken = cancel }, async (i, ct) =>
        {
            var r = await judge.GetResponseAsync(new[]
            {
                new ChatMessage(ChatRole.System, System),
                new ChatMessage(ChatRole.User, Prompt(rubric, items[i].Input, items[i].Output)),
            }, new ChatOptions { Temperature = 0, MaxOutputTokens = 64 }, ct).ConfigureAwait(false);
            var rating = ParseRating(r.Text);
            result[i] = new JudgeVerdict(rating ?? 1, rating is not null);
        }).ConfigureAwait(false);
        return result;
    }

    /// <summary>Counts of each rating 1..10 (index 0 = rating 1).</summary>
    public static int[] Histogram(IEnumerable<JudgeVerdict> verdicts)
    {
        var h = new int[10];
        foreach (var v in verdicts) h[v.Rating - 1]++;
        return h;
    }

    public static string ReadRubric(string path)
    {
        if (!File.Exists(path)) throw new SoftPromptException($"--rubric {path}: file not found.");
        var text = File.ReadAllText(path).Trim();
        if (text.Length == 0) throw new SoftPromptException($"--rubric {path}: the file is empty.");
        return text;
    }
}
