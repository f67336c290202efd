using System.Globalization;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using Microsoft.Extensions.AI;
using SoftPrompt.IO;

namespace SoftPrompt.Llm;

/// <summary>One output to be judged: the input it answers, the output, and the reference answer when the data has one.</summary>
public sealed record JudgeItem(string Input, string Output, string? Reference = null);

/// <summary>One judged output: its rating (1-10), or why there is none. A <see cref="Failure"/> (a reply without a
/// well-formed verdict after the reminder, or a per-call HTTP error such as a content-filter 400) is not a rating: it
/// is left out of the mean and counted. <see cref="NotCalled"/>: the call budget was used up before this output.</summary>
public sealed record JudgeVerdict(int? Rating, string? Failure = null, bool NotCalled = false, bool Cached = false)
{
    public bool Parsed => Rating is not null;
}

/// <summary>
/// An LLM judge for qualitative goals: each output is rated 1-10 against a rubric ("follows the style guide", "is easy
/// to follow"), with the reference answer when there is one. The judge is asked for its reasoning first and a last line
/// <c>Score: N</c>; the verdict is parsed strictly (that line, or a JSON object with an integer "score"), a reply that
/// has neither gets one reminder, and a reply still without a verdict is a failure, never a rating. Used by OPRO's
/// <c>--objective judge</c> and by <c>eval</c>'s judge metric.
/// </summary>
public static class Judge
{
    public const string System = "You are a careful, strict evaluator. You rate a response against a rubric on a scale from 1 (worst) to 10 (best).";
    public const string Reminder = "Your reply did not end with a verdict. Reply with one line only, of the form \"Score: N\", where N is an integer from 1 to 10.";
    /// <summary>Tokens of one judge reply (reasoning, then the score line).</summary>
    public const int MaxReplyTokens = 256;

    public static string Prompt(string rubric, string input, string output, string? reference = null) =>
        $"Rubric:\n{rubric.Trim()}\n\nInput:\n{input.Trim()}\n\n" +
        (string.IsNullOrWhiteSpace(reference) ? "" : $"Reference answer (for comparison; the response need not match it word for word):\n{reference.Trim()}\n\n") +
        $"Response:\n{output.Trim()}\n\n" +
        "Rate the response against the rubric. First explain your reasoning in a few sentences. Then end your reply with a last line of exactly the form \"Score: N\", where N is an integer from 1 to 10.";

    // "Score: 7", "**Score:** 7", "Score (1-10): 7", "Score = 7/10", "Final score: 7." — one line, nothing else on it.
    static readonly Regex ScoreLine = new(@"^[\s*_#>-]*(?:final\s+)?score\s*(?:\([^)\n]*\))?\s*\**\s*[:=]\s*\**\s*(\d+)\s*(?:/\s*10)?\s*\**\s*\.?\s*$",
        RegexOptions.IgnoreCase | RegexOptions.Multiline);
    static readonly Regex JsonObject = new(@"\{[^{}]*\}", RegexOptions.Singleline);

    /// <summary>The rating of a judge reply, or null when it holds no well-formed verdict: the last <c>Score: N</c> line
    /// (N an integer 1..10; "Score: 0" or "Score: 11" are no verdict), else a JSON object whose "score" is such an
    /// integer. Free text with numbers in it ("0/10", "on a scale of 1 to 10 ... 8") is no verdict.</summary>
    public static int? ParseRating(string? reply)
    {
        if (string.IsNullOrWhiteSpace(reply)) return null;
        var lines = ScoreLine.Matches(reply);
        if (lines.Count > 0)
            return int.TryParse(lines[^1].Groups[1].Value, NumberStyles.None, CultureInfo.InvariantCulture, out var n) && n is >= 1 and <= 10 ? n : null;
        foreach (Match m in JsonObject.Matches(reply))
        {
            try
            {
                if (JsonNode.Parse(m.Value) is JsonObject o && o["score"] is JsonValue v && v.TryGetValue<int>(out var s))
                    return s is >= 1 and <= 10 ? s : null;
            }
            catch (JsonException) { }
        }
        return null;
    }

    /// <summary>
    /// Rates every item, at most <paramref name="parallel"/> at a time (the client may also limit), in item order.
    /// A verdict in <paramref name="cache"/> is used without a call; a new one is added to it. A reply without a verdict
    /// is asked once more with <see cref="Reminder"/>; a per-call service error (HTTP 4xx other than 401/403, 5xx after
    /// the retries, a malformed reply) is a failed verdict; a refused key or an unreachable server ends the rating (they
    /// would fail every call). When the budget is used up the remaining items are <see cref="JudgeVerdict.NotCalled"/>.
    /// </summary>
    public static async Task<JudgeVerdict[]> RateAll(IChatClient judge, string rubric, IReadOnlyList<JudgeItem> items, int parallel,
        VerdictCache? cache = null, CancellationToken cancel = default)
    {
        var result = new JudgeVerdict[items.Count];
        await Parallel.ForEachAsync(Enumerable.Range(0, items.Count), new ParallelOptions { MaxDegreeOfParallelism = parallel, CancellationToken = cancel }, async (i, ct) =>
        {
            var it = items[i];
            if (cache?.TryGet(rubric, it) is int hit) { result[i] = new JudgeVerdict(hit, Cached: true); return; }
            var messages = new List<ChatMessage>
            {
                new(ChatRole.System, System),
                new(ChatRole.User, Prompt(rubric, it.Input, it.Output, it.Reference)),
            };
            var options = new ChatOptions { Temperature = 0, MaxOutputTokens = MaxReplyTokens };
            try
            {
                var r = await judge.GetResponseAsync(messages, options, ct).ConfigureAwait(false);
                var rating = ParseRating(r.Text);
                if (rating is null)
                {
                    messages.Add(new ChatMessage(ChatRole.Assistant, r.Text ?? ""));
                    messages.Add(new ChatMessage(ChatRole.User, Reminder));
                    var again = await judge.GetResponseAsync(messages, options, ct).ConfigureAwait(false);
                    rating = ParseRating(again.Text);
                    if (rating is null) { result[i] = new JudgeVerdict(null, "no verdict: " + Shorten(again.Text)); return; }
                }
                cache?.Add(rubric, it, rating.Value);
                result[i] = new JudgeVerdict(rating);
            }
            catch (BudgetExhaustedException) { result[i] = new JudgeVerdict(null, NotCalled: true); }
            catch (RemoteServiceException e) when (e.ExitCode is 5 or 6) { result[i] = new JudgeVerdict(null, "error: " + e.Message); }
        }).ConfigureAwait(false);
        return result;
    }

    static string Shorten(string? s)
    {
        s = string.Join(" ", (s ?? "").Split((char[]?)null, StringSplitOptions.RemoveEmptyEntries));
        return s.Length <= 120 ? s : s[..120] + "...";
    }

    /// <summary>The mean rating of the verdicts that have one (NaN when none has).</summary>
    public static double Mean(IEnumerable<JudgeVerdict> verdicts)
    {
        var r = verdicts.Where(v => v.Rating is not null).Select(v => (double)v.Rating!.Value).ToList();
        return r.Count == 0 ? double.NaN : r.Average();
    }

    /// <summary>Counts of each rating 1..10 (index 0 = rating 1); failures are not ratings and are not counted here.</summary>
    public static int[] Histogram(IEnumerable<JudgeVerdict> verdicts)
    {
        var h = new int[10];
        foreach (var v in verdicts) if (v.Rating is int r) h[r - 1]++;
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

/// <summary>
/// Verdicts already paid for, keyed by (judge model, rubric, input, reference, output) — a SHA-256 of those texts, so
/// the file holds no data text — kept in a JSON file (<see cref="FileName"/> in a run folder) that is rewritten
/// atomically by <see cref="Save"/>. The same output is never judged twice across OPRO steps, a resumed run and an
/// eval that is given the file. Only ratings are kept: a failure is tried again next time.
/// </summary>
public sealed class VerdictCache
{
    public const string FileName = "judge_cache.json";
    readonly object _lock = new();
    readonly Dictionary<string, int> _ratings = new(StringComparer.Ordinal);
    readonly string _judgeId;
    public string? Path { get; }
    public int Hits { get; private set; }
    public int Count { get { lock (_lock) return _ratings.Count; } }

    public VerdictCache(string judgeId, string? path = null)
    {
        _judgeId = judgeId; Path = path;
        if (path is null || !File.Exists(path)) return;
        try
        {
            var root = JsonNode.Parse(File.ReadAllText(path)) as JsonObject ?? throw new SoftPromptException($"{path}: expected a JSON object.");
            if (root["version"]?.GetValue<int>() != 1) throw new SoftPromptException($"{path}: unsupported judge cache version (expected 1).");
            foreach (var (k, v) in root["ratings"] as JsonObject ?? new JsonObject())
            {
                int r = v?.GetValue<int>() ?? 0;
                if (r is < 1 or > 10) throw new SoftPromptException($"{path}: rating {r} of entry {k} is not in 1..10.");
                _ratings[k] = r;
            }
        }
        catch (Exception e) when (e is JsonException or InvalidOperationException or FormatException)
        {
            throw new SoftPromptException($"{path}: not a judge cache ({e.Message}); delete it to start afresh.");
        }
    }

    string Key(string rubric, JudgeItem it)
    {
        var text = new JsonArray(_judgeId, rubric.Trim(), it.Input.Trim(), (it.Reference ?? "").Trim(), it.Output.Trim()).ToJsonString();
        return Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(text)));
    }

    public int? TryGet(string rubric, JudgeItem it)
    {
        var k = Key(rubric, it);
        lock (_lock)
        {
            if (!_ratings.TryGetValue(k, out var r)) return null;
            Hits++;
            return r;
        }
    }

    public void Add(string rubric, JudgeItem it, int rating)
    {
        var k = Key(rubric, it);
        lock (_lock) _ratings[k] = rating;
    }

    /// <summary>Writes the file (atomically) when the cache has one.</summary>
    public void Save()
    {
        if (Path is null) return;
        JsonObject ratings;
        lock (_lock) ratings = new JsonObject(_ratings.OrderBy(kv => kv.Key, StringComparer.Ordinal).Select(kv => KeyValuePair.Create(kv.Key, (JsonNode?)kv.Value)));
        var dir = System.IO.Path.GetDirectoryName(System.IO.Path.GetFullPath(Path));
        if (dir is not null) Directory.CreateDirectory(dir);
        AtomicFile.WriteAllText(Path, new JsonObject { ["version"] = 1, ["ratings"] = ratings }.ToJsonString() + "\n");
    }
}
