using System.Globalization;
using System.Text.RegularExpressions;
using System.Text;

namespace SoftPrompt.Search;

/// <summary>A scored instruction of the trajectory: with --demos, the indices of the training examples shown as
/// demonstrations after it; for generation objectives, the mean length (tokens) of the outputs it produced.</summary>
public sealed record ScoredInstruction(string Text, double Score, int Step, double? MeanOutputTokens = null, int[]? Demos = null)
{
    /// <summary>The candidate's identity: the normalised instruction and its demonstrations.</summary>
    public string Key => MetaPrompt.Normalize(Text) + (Demos is { Length: > 0 } d ? "|" + string.Join(",", d) : "");
}

/// <summary>
/// OPRO's meta-prompt (Yang et al. 2023, "Large Language Models as Optimizers", section 3 and appendix C), written
/// from the paper's description: an optional task description, the best previous instructions with their scores in
/// ascending order (best last), a few exemplars showing where the instruction goes (&lt;INS&gt;), and the request for a
/// new, different instruction with a higher score wrapped in &lt;INS&gt; and &lt;/INS&gt;. For a pre-trained (base)
/// optimizer without a chat template the paper's plain style is used: previous instructions with scores only, ending
/// in an open "text:" line for the model to continue.
/// </summary>
public static class MetaPrompt
{
    public const string Open = "<INS>", Close = "</INS>";

    /// <summary>The kept pairs: the best <paramref name="keep"/> distinct instructions scoring at least
    /// <paramref name="threshold"/> (the reference's old-instruction score threshold), in ascending score order (ties by
    /// step, newer last), as the paper orders them.</summary>
    public static List<ScoredInstruction> Kept(IEnumerable<ScoredInstruction> trajectory, int keep, double? threshold = null) =>
        trajectory.Where(t => threshold is not double th || t.Score >= th)
            .GroupBy(t => Normalize(t.Text)).Select(g => g.OrderByDescending(t => t.Score).First())
            .OrderByDescending(t => t.Score).ThenByDescending(t => t.Step).Take(keep)
            .OrderBy(t => t.Score).ThenBy(t => t.Step).ToList();

    /// <summary>A score as shown to the optimizer: 0-100 for rates, one decimal for judge means (1-10), and for minus a
    /// loss the loss itself with three decimals and its direction stated (lower is better): a 0-100 transform such as
    /// 100·exp(−loss) rounds every loss above ~5.3 to 0 and would hide the differences OPRO needs.</summary>
    public static string Display(double score, string metric) => metric switch
    {
        "neg_loss" => (-score).ToString("F3", CultureInfo.InvariantCulture),
        "judge" => score.ToString("F1", CultureInfo.InvariantCulture),
        _ => Math.Round(100 * score).ToString(CultureInfo.InvariantCulture),
    };

    static string ScoreName(string metric) => metric switch
    {
        "accuracy" => "accuracy (0-100)", "exact_match" => "exact-match rate (0-100)",
        "neg_loss" => "target loss (lower is better)", "judge" => "mean rating by a judge (1-10)", _ => "score",
    };

    /// <summary>An exemplar with the instruction slot marked where <paramref name="position"/> puts it.</summary>
    public static string Exemplar(string prompt, string target, string position) =>
        "input:\n" + position switch
        {
            "q_begin" => $"{Open} {prompt}", "q_end" => $"{prompt}\n{Open}", "a_begin" => $"{prompt} {Open}", _ => $"{Open}\n{prompt}",
        } + "\noutput:\n" + target.Trim();

    /// <summary>The rubric of a judge objective as the meta-prompt states it (what the outputs are rated against).</summary>
    static void AppendRubric(StringBuilder sb, string? rubric)
    {
        if (string.IsNullOrWhiteSpace(rubric)) return;
        sb.Append("The outputs produced with an instruction are rated from 1 to 10 by a judge against this rubric:\n").Append(rubric.Trim()).Append("\n\n");
    }

    public static string Chat(IReadOnlyList<ScoredInstruction> kept, IReadOnlyList<(string Prompt, string Target)> exemplars,
        string metric, string position, string? taskDescription, string? rubric = null)
    {
        var sb = new StringBuilder();
        if (!string.IsNullOrWhiteSpace(taskDescription)) sb.Append(taskDescription.Trim()).Append("\n\n");
        AppendRubric(sb, rubric);
        sb.Append("Your task is to generate the instruction ").Append(Open).Append(". Below are some previous instructions with their ")
          .Append(ScoreName(metric)).Append(". The instructions are arranged from the worst score to the best, the best last.\n\n");
        foreach (var k in kept)
            sb.Append("text:\n").Append(k.Text.Length == 0 ? "(empty instruction)" : k.Text).Append("\nscore:\n").Append(Display(k.Score, metric)).Append("\n\n");
        if (exemplars.Count > 0)
        {
            sb.Append("Below are some problems. The instruction replaces ").Append(Open).Append(" in each input; the output is the expected answer.\n\n");
            foreach (var (p, t) in exemplars) sb.Append(Exemplar(p, t, position)).Append("\n\n");
        }
        sb.Append("Generate an instruction that is different from all the instructions ").Append(Open)
          .Append(" above, and has a higher score than all the instructions above. The instruction should be concise, effective, ")
          .Append("and generally applicable to all problems above. Write only the new instruction, starting with ")
          .Append(Open).Append(" and ending with ").Append(Close).Append('.');
        return sb.ToString();
    }

    /// <summary>The plain meta-prompt for a base model: previous instructions with scores, ascending, then an open "text:".</summary>
    public static string Plain(IReadOnlyList<ScoredInstruction> kept, string metric, string? taskDescription, string? rubric = null)
    {
        var sb = new StringBuilder();
        if (!string.IsNullOrWhiteSpace(taskDescription)) sb.Append(taskDescription.Trim()).Append("\n\n");
        AppendRubric(sb, rubric);
        sb.Append(metric == "neg_loss" ? "Instructions with their target loss (lower is better), from worst to best:\n\n" : "Instructions with their scores, from lowest to highest score:\n\n");
        foreach (var k in kept.Where(k => k.Text.Length > 0))
            sb.Append("text: ").Append(k.Text.Replace('\n', ' ')).Append("\nscore: ").Append(Display(k.Score, metric)).Append("\n\n");
        sb.Append("text:");
        return sb.ToString();
    }

    /// <summary>APE-style instruction induction (Zhou et al. 2022, "Large Language Models Are Human-Level Prompt
    /// Engineers"): input-output pairs, then a request for the instruction that produced them, between the markers.</summary>
    public static string Induce(IReadOnlyList<(string Prompt, string Target)> examples, string? taskDescription, string? rubric = null)
    {
        var sb = new StringBuilder();
        if (!string.IsNullOrWhiteSpace(taskDescription)) sb.Append(taskDescription.Trim()).Append("\n\n");
        AppendRubric(sb, rubric);
        sb.Append("I gave a friend an instruction and some inputs. The friend read the instruction and wrote an output for every one of the inputs. Here are the input-output pairs:\n\n");
        foreach (var (p, t) in examples) sb.Append("input:\n").Append(p.Trim()).Append("\noutput:\n").Append(t.Trim()).Append("\n\n");
        sb.Append("What was the instruction? Write only the instruction, starting with ").Append(Open).Append(" and ending with ").Append(Close).Append('.');
        return sb.ToString();
    }

    static readonly Regex Marker = new(@"</?\s*INS\s*>", RegexOptions.IgnoreCase);
    static readonly Regex Tagged = new(@"<INS>(.*?)</INS>", RegexOptions.Singleline | RegexOptions.IgnoreCase);
    static readonly Regex Bracketed = new(@"^\s*\[(.+)\]\s*$", RegexOptions.Singleline);

    /// <summary>The instruction in a reply, or null when none can be found. Chat style: the text between the first
    /// &lt;INS&gt; and &lt;/INS&gt; (an unclosed &lt;INS&gt; takes the rest of its paragraph; a reply that is one bracketed
    /// text is accepted as OPRO's code does). Plain style: the first non-empty line. \"\" when the markers hold nothing.</summary>
    public static string? Parse(string? reply, bool plain)
    {
        if (string.IsNullOrWhiteSpace(reply)) return null;
        string? text;
        if (plain)
        {
            text = reply.Split('\n').Select(l => l.Trim()).FirstOrDefault(l => l.Length > 0);
            if (text is not null && text.StartsWith("score:", StringComparison.OrdinalIgnoreCase)) text = null;
        }
        else
        {
            var m = Tagged.Match(reply);
            if (m.Success) text = m.Groups[1].Value;
            else
            {
                int at = reply.IndexOf(Open, StringComparison.OrdinalIgnoreCase);
                if (at >= 0)
                {
                    var rest = reply[(at + Open.Length)..].TrimStart();
                    int para = rest.IndexOf("\n\n", StringComparison.Ordinal);
                    text = para >= 0 ? rest[..para] : rest;
                }
                else text = Bracketed.Match(reply) is { Success: true } b ? b.Groups[1].Value : null;
            }
        }
        text = text?.Trim().Trim('"').Trim(); // "" = an empty instruction (a failed candidate of its own kind)
        // A reply such as "the <INS> above: <INS>X</INS>" leaves a marker inside: not an instruction (the reference drops these too).
        return text is not null && Marker.IsMatch(text) ? null : text;
    }

    /// <summary>The dedup key: case folded, whitespace runs collapsed, ends trimmed.</summary>
    public static string Normalize(string s) =>
        string.Join(" ", s.ToLowerInvariant().Split((char[]?)null, StringSplitOptions.RemoveEmptyEntries));
}
