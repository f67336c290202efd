using System.Text.RegularExpressions;

namespace SoftPrompt.Tests.Device;

/// <summary>
/// Host syncs per training step, pinned. A host sync (<c>.item()</c>, <c>ToSingle()</c>, <c>.cpu()</c>, reading
/// <c>.data&lt;T&gt;()</c>) or a data-dependent shape (<c>nonzero</c>, <c>masked_select</c>, <c>unique</c>, ...) in the
/// step makes the CPU wait for the GPU's queue to drain every step; the README promises one <c>.item()</c> per step
/// (the loss, which the NaN guard needs).
/// <para>How it is counted: a scan of the source of every method the trainer's step runs (listed below: the trainer's
/// loop, the collator, the loss, the whole model forward, the KV cache, both prompt methods' injections, the
/// optimizers and clipping). Why a scan: libtorch offers no hook on <c>item()</c> that TorchSharp exposes, a counting
/// seam only counts the calls routed through it, and the one run-time check that catches any sync (the <c>meta</c>
/// device, where every sync throws) cannot run the transformer (see <see cref="MetaDeviceTests"/>, which proves at run
/// time that the injections, clipping and optimizers make none). The scan names the file and line of each sync it
/// finds, fails if a listed method is missing (renamed or moved: update the list, so coverage is not lost silently),
/// and is tested on a snippet so it can fail.</para>
/// <para>Not covered: methods a future change calls from the step without adding them to the list, and syncs inside
/// TorchSharp or libtorch themselves.</para>
/// </summary>
public class HostSyncDeviceTests
{
    /// <summary>Patterns of a device-to-host sync or a data-dependent output shape.</summary>
    static readonly Regex Sync = new(@"\.item<|\.To(Single|Double|Int32|Int64|Boolean|Scalar)\(\)|\.cpu\(\)|\.data<|\.bytes\b|\bnonzero\(|\bargwhere\(|\bmasked_select\(|\bunique(_consecutive)?\(|\.tolist\(|\.to\((torch\.)?CPU\)|\.numpy\(", RegexOptions.Compiled);

    /// <summary>(file, type, method) of everything a training step runs. Overloads are all scanned.</summary>
    static readonly (string File, string[] Methods)[] StepPath =
    {
        ("src/SoftPrompt/Training/Trainer.cs", new[] { "Run", "CreateOptimizer", "Next" }),
        ("src/SoftPrompt/Scoring/PromptLoss.cs", new[] { "Compute", "Hidden", "Loss" }),
        ("src/SoftPrompt/Optimization/LearningRateSchedule.cs", new[] { "At" }),
        ("src/SoftPrompt/Optimization/GradientClipping.cs", new[] { "ClipGradNorm" }),
        ("src/SoftPrompt/Optimization/IPromptOptimizer.cs", new[] { "Step", "ZeroGrad", "State" }),
        ("src/SoftPrompt/Optimization/AdamW.cs", new[] { "StepParam" }),
        ("src/SoftPrompt/Optimization/Adafactor.cs", new[] { "StepParam", "Rms" }),
        ("src/SoftPrompt/Data/Collator.cs", new[] { "Collate", "ToDevice" }),
        ("src/SoftPrompt/Data/BatchSampler.cs", new[] { "Batches" }),
        ("src/SoftPrompt/Models/CausalLM.cs", new[] { "Forward", "BuildMask", "Attend", "SoftcappedAttention", "Gpt2Block", "LlamaBlock", "NeoXBlock", "Norm", "RmsNorm", "Act", "RopeCosSin", "ApplyRope", "Logits", "HeadLogits", "Embed", "EmbedRows" }),
        ("src/SoftPrompt/Models/KvCache.cs", new[] { "Growing", "SetPrefix", "Update", "Commit" }),
        ("src/SoftPrompt/Tuning/PromptTuning.cs", new[] { "Inject", "Table" }),
        ("src/SoftPrompt/Tuning/PrefixTuning.cs", new[] { "Inject", "Table" }),
    };

    /// <summary>The syncs a step may make, by method: the one the README states.</summary>
    static readonly Dictionary<string, int> Allowed = new() { ["Trainer.Run"] = 1 };

    static string RepoRoot()
    {
        for (var d = new DirectoryInfo(AppContext.BaseDirectory); d is not null; d = d.Parent)
            if (File.Exists(Path.Combine(d.FullName, "SoftPrompt.sln"))) return d.FullName;
        throw new InvalidOperationException("repository root (SoftPrompt.sln) not found above the test binaries.");
    }

    /// <summary>The bodies (block or expression) of every method named <paramref name="name"/> in C# source, with the
    /// line each starts on. Comments and string literals are blanked first, so neither can hide or fake a call.</summary>
    internal static List<(int Line, string Body)> MethodBodies(string source, string name)
    {
        var code = Regex.Replace(source, @"//[^\n]*|/\*.*?\*/|@""(?:[^""]|"""")*""|\$?""(?:[^""\\\n]|\\.)*""",
            m => new string(m.Value.Select(c => c == '\n' ? '\n' : ' ').ToArray()), RegexOptions.Singleline);
        var found = new List<(int, string)>();
        // A declaration: a return type (or a constructor's modifiers) then the name, then a parameter list, then { or =>.
        var decl = new Regex(@"(?<=[\s>\]\)])" + Regex.Escape(name) + @"\s*(<[^>]*>)?\s*\((?>[^()]+|\((?<d>)|\)(?<-d>))*(?(d)(?!))\)\s*(where[^{;]*)?(?<open>\{|=>)");
        foreach (Match m in decl.Matches(code))
        {
            // Skip calls: a declaration's name follows its return type (a word, generic or array type), a call's follows
            // '.', '=', '(', '{', ';', an operator or a keyword.
            int lineStart = code.LastIndexOf('\n', m.Index) + 1;
            var before = code[lineStart..m.Index].TrimEnd();
            if (!Regex.IsMatch(before, @"[\w>\]?)]$") || Regex.IsMatch(before, @"\b(return|new|await|var|else|in|is|as|throw|yield|case|when|using)$")) continue;
            int start = m.Groups["open"].Index, end;
            if (m.Groups["open"].Value == "{")
            {
                int depth = 0; end = start;
                for (; end < code.Length; end++)
                {
                    if (code[end] == '{') depth++;
                    else if (code[end] == '}' && --depth == 0) break;
                }
            }
            else
            {
                int depth = 0; end = start + 2;
                for (; end < code.Length; end++)
                {
                    char c = code[end];
                    if (c is '(' or '{' or '[') depth++;
                    else if (c is ')' or '}' or ']') depth--;
                    else if (c == ';' && depth == 0) break;
                }
            }
            found.Add((code[..start].Count(c => c == '\n') + 1, code[start..Math.Min(code.Length, end + 1)]));
        }
        return found;
    }

    internal static List<(int Line, string Text)> Syncs(int firstLine, string body) =>
        body.Split('\n').Select((l, i) => (firstLine + i, l)).Where(x => Sync.IsMatch(x.l)).Select(x => (x.Item1, x.l.Trim())).ToList();

    [Fact]
    public void TheScanFindsSyncsAndIgnoresCommentsStringsAndCalls()
    {
        const string src = """
            class A
            {
                // x.item<float>() in a comment
                public static double Run(Tensor t)
                {
                    var s = "t.cpu() in a string";
                    double v = t.sum().item<float>();
                    if (v > 0) { var n = t.nonzero(); }
                    return Helper(t);
                }
                static int Helper(Tensor t) => (int)t.ToSingle();
                void Other() { Run(x); var y = t.data<float>(); }
            }
            """;
        var run = MethodBodies(src, "Run");
        Assert.Single(run);
        Assert.Equal(new[] { 7, 8 }, Syncs(run[0].Line, run[0].Body).Select(s => s.Line));
        var helper = MethodBodies(src, "Helper");
        Assert.Single(helper);
        Assert.Single(Syncs(helper[0].Line, helper[0].Body));
        Assert.Empty(MethodBodies(src, "Missing"));
    }

    [Fact]
    public void ATrainingStepMakesExactlyOneHostSync()
    {
        var root = RepoRoot();
        var counts = new Dictionary<string, List<string>>();
        foreach (var (file, methods) in StepPath)
        {
            var path = Path.Combine(root, file);
            Assert.True(File.Exists(path), $"{file} is gone: update {nameof(HostSyncDeviceTests)}.{nameof(StepPath)}");
            var src = File.ReadAllText(path);
            var type = Path.GetFileNameWithoutExtension(file);
            foreach (var name in methods)
            {
                var bodies = MethodBodies(src, name);
                Assert.True(bodies.Count > 0, $"{file}: no method '{name}' (renamed or moved? update {nameof(StepPath)} so the step stays covered)");
                foreach (var (line, body) in bodies)
                    foreach (var (l, text) in Syncs(line, body))
                        (counts.TryGetValue($"{type}.{name}", out var list) ? list : counts[$"{type}.{name}"] = new()).Add($"{file}:{l}: {text}");
            }
        }
        var unexpected = counts.Where(kv => kv.Value.Count > Allowed.GetValueOrDefault(kv.Key)).SelectMany(kv => kv.Value).ToList();
        Assert.True(unexpected.Count == 0, "host syncs in the training step beyond the one .item() per step:\n" + string.Join("\n", unexpected));
        // The one there is: the step's loss, read once (the NaN guard and the log need it).
        var run = Assert.Single(counts["Trainer.Run"]);
        Assert.Contains(".item<float>()", run);
        Assert.Equal(1, counts.Values.Sum(v => v.Count));
    }
}
