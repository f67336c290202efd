using System.CommandLine;
using System.Text;

namespace SoftPrompt.Tests.Demo;

/// <summary>
/// Every <c>softprompt ...</c> command in README.md's bash blocks parses with today's options (a renamed or removed
/// option breaks this test, not a reader). <c>scripts/check-readme.sh</c> runs the blocks marked
/// <c>&lt;!-- readme-check: run --&gt;</c> for real (tool install included).
/// </summary>
public class ReadmeCommandTests
{
    /// <summary>The bash code blocks of a markdown file, each with whether it is marked to run.</summary>
    public static List<(bool Run, List<string> Lines)> BashBlocks(string markdown)
    {
        var blocks = new List<(bool, List<string>)>();
        List<string>? current = null; bool marked = false, run = false;
        foreach (var line in markdown.Split('\n').Select(l => l.TrimEnd('\r')))
        {
            if (current is null)
            {
                if (line.StartsWith("```bash")) { current = new(); run = marked; }
                marked = line.Trim() == "<!-- readme-check: run -->";
            }
            else if (line.StartsWith("```")) { blocks.Add((run, current)); current = null; marked = false; }
            else current.Add(line);
        }
        return blocks;
    }

    /// <summary>Joins continuation lines and splits one bash command line into words ('...', "...", $'...' with \n).</summary>
    public static List<List<string>> Commands(IEnumerable<string> lines)
    {
        var joined = new List<string>(); var sb = new StringBuilder();
        foreach (var l in lines)
        {
            if (l.EndsWith('\\')) { sb.Append(l[..^1]).Append(' '); continue; }
            sb.Append(l); joined.Add(sb.ToString()); sb.Clear();
        }
        var result = new List<List<string>>();
        foreach (var cmd in joined)
        {
            var words = new List<string>(); var w = new StringBuilder(); bool any = false;
            for (int i = 0; i < cmd.Length; i++)
            {
                char c = cmd[i];
                if (c == '#' && !any && w.Length == 0) break; // comment
                if (char.IsWhiteSpace(c)) { if (any) { words.Add(w.ToString()); w.Clear(); any = false; } continue; }
                any = true;
                if (c == '$' && i + 1 < cmd.Length && cmd[i + 1] == '\'')
                {
                    int end = cmd.IndexOf('\'', i + 2);
                    w.Append(cmd[(i + 2)..end].Replace("\\n", "\n")); i = end;
                }
                else if (c is '\'' or '"') { int end = cmd.IndexOf(c, i + 1); w.Append(cmd[(i + 1)..end]); i = end; }
                else w.Append(c);
            }
            if (any) words.Add(w.ToString());
            if (words.Count > 0) result.Add(words);
        }
        return result;
    }

    [Fact]
    public void EveryReadmeSoftpromptCommandParses()
    {
        var blocks = BashBlocks(File.ReadAllText(Path.Combine(DemoPipelineTests.RepoRoot, "README.md")));
        Assert.Contains(blocks, b => b.Run && b.Lines.Any(l => l.StartsWith("softprompt train")));        // the training example runs
        Assert.Contains(blocks, b => b.Run && b.Lines.Any(l => l.StartsWith("dotnet tool install")));     // and so does the install
        int checkedCount = 0;
        foreach (var (_, lines) in blocks)
            foreach (var words in Commands(lines))
            {
                // The synopsis block shows optional parts as [...] and placeholders: not literal commands.
                if (words[0] != "softprompt" || words.Any(x => x.StartsWith('[') || x == "...")) continue;
                var parse = SoftPrompt.Cli.Cli.BuildRoot().Parse(words.Skip(1).ToArray());
                Assert.True(parse.Errors.Count == 0, string.Join(" ", words) + ": " + string.Join("; ", parse.Errors.Select(e => e.Message)));
                checkedCount++;
            }
        Assert.True(checkedCount >= 8, $"only {checkedCount} README commands found");
    }

    /// <summary>
    /// Runs scripts/check-readme.sh (pack, install the tool into a throwaway home, run the marked blocks as written).
    /// About two minutes, so only where SOFTPROMPT_README_CHECK=1 (CI sets it in .ci/run); elsewhere it returns at once.
    /// </summary>
    [Fact, Trait("Category", "Slow")]
    public void ReadmeBlocksMarkedToRunRunAsWritten()
    {
        if (Environment.GetEnvironmentVariable("SOFTPROMPT_README_CHECK") != "1" || !OperatingSystem.IsLinux()) return;
        var psi = new System.Diagnostics.ProcessStartInfo("bash") { RedirectStandardOutput = true, RedirectStandardError = true, WorkingDirectory = DemoPipelineTests.RepoRoot };
        psi.ArgumentList.Add("scripts/check-readme.sh");
        using var p = System.Diagnostics.Process.Start(psi)!;
        var err = p.StandardError.ReadToEndAsync();
        var output = p.StandardOutput.ReadToEnd();
        Assert.True(p.WaitForExit(TimeSpan.FromMinutes(20)), "check-readme.sh did not finish");
        Assert.True(p.ExitCode == 0, output + err.Result[^Math.Min(4000, err.Result.Length)..]);
        Assert.Matches(@"README: \d+ blocks ran", output);
    }

    [Fact]
    public void BlocksAndWordsAreExtractedAsBashWouldSplitThem()
    {
        var md = "text\n<!-- readme-check: run -->\n```bash\nsoftprompt a --x $'P: {input}\\nS:' \\\n  --y \"two words\" # note\n```\n```bash\nother\n```\n";
        var blocks = BashBlocks(md);
        Assert.Equal(2, blocks.Count);
        Assert.True(blocks[0].Run);
        Assert.False(blocks[1].Run);
        var words = Commands(blocks[0].Lines).Single();
        Assert.Equal(new[] { "softprompt", "a", "--x", "P: {input}\nS:", "--y", "two words" }, words);
    }
}
