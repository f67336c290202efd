using SoftPrompt.Tests.Cli;
using System.Text.Json.Nodes;
using SoftPrompt.Cli.Commands;
using SoftPrompt.Evaluation;
using SoftPrompt.Models;
using SoftPrompt.Tuning;

namespace SoftPrompt.Tests.Evaluation;

/// <summary><c>softprompt eval</c> end to end on the tiny model + trained tiny tokenizer of <see cref="EvalWorld"/>.</summary>
[Collection("Console")]
public class EvalCommandTests : IClassFixture<EvalWorld>
{
    readonly EvalWorld _w;
    public EvalCommandTests(EvalWorld w) => _w = w;

    static (int Rc, string Out, string Err) Run(params string[] args) => CliRunner.Run(args);

    string NewOut() => Path.Combine(_w.Root, "report-" + Guid.NewGuid().ToString("N")[..6]);

    string PrefixAdapter()
    {
        var dir = Path.Combine(_w.Root, "prefix-adapter");
        if (Directory.Exists(dir)) return dir;
        using var model = ModelLoader.Load(_w.ModelDir);
        using var m = PrefixTuning.Create(model.Config, 3, false, 0, 9, model.Device);
        Adapter.Save(dir, m, model);
        return dir;
    }

    string SearchedPrompt()
    {
        var path = Path.Combine(_w.Root, "searched.json");
        if (!File.Exists(path)) HardPrompt.FromText(_w.Tokenizer, " colour warm cold", "test") .Save(path);
        return path;
    }

    static string LastLine(string s) => s.TrimEnd('\n', '\r').Split('\n')[^1].TrimEnd('\r');

    [Fact]
    public void WritesEveryFileWithTheDocumentedShape()
    {
        var output = NewOut();
        var config = Path.Combine(_w.Root, "eval.json");
        // Config-file keys are the options in snake_case; explicit options override them (--few-shot 2 beats 5).
        File.WriteAllText(config, new JsonObject
        {
            ["model"] = _w.ModelDir, ["data"] = _w.TestFile,
            ["instruction"] = new JsonArray("Is the colour warm or cold?", "Answer warm or cold."),
            ["few_shot"] = 5, ["shots_from"] = _w.TrainFile, ["output"] = "ignored",
        }.ToJsonString());
        var (rc, stdout, stderr) = Run("eval", "--config", config, "--few-shot", "2", "--output", output,
            "--prompt", _w.AdapterDir, "--prompt", PrefixAdapter(), "--searched", SearchedPrompt(), "--run", _w.RunDir);
        Assert.True(rc == 0, stderr);
        Assert.Equal(Path.GetFullPath(output), LastLine(stdout));
        Assert.Contains("task: classification (auto:", stdout);
        foreach (var f in new[] { "metrics.json", "report.md", "predictions.jsonl", "metrics.png", "training.png", "training_metrics.jsonl" })
            Assert.True(File.Exists(Path.Combine(output, f)), f);
        Assert.Empty(Directory.GetDirectories(_w.Root, Path.GetFileName(output) + ".tmp-*"));   // no temp folder left

        var m = JsonNode.Parse(File.ReadAllText(Path.Combine(output, "metrics.json")))!.AsObject();
        Assert.Equal(new[] { "conditions", "task", "labels", "class_prior", "model", "data", "created" }, m.Select(kv => kv.Key).ToArray());
        Assert.Equal("classification", m["task"]!.GetValue<string>());
        Assert.Equal(new[] { "cold", "warm" }, m["labels"]!.AsArray().Select(x => x!.GetValue<string>()).ToArray());
        Assert.Equal(0.5, m["class_prior"]!.GetValue<double>(), 9);
        var conds = m["conditions"]!.AsArray().Select(x => x!.AsObject()).ToList();
        var expected = new (string Name, string Kind)[]
        {
            ("zero-shot", "zero-shot"), ("instruction 1", "instruction"), ("instruction 2", "instruction"), ("few-shot k=2", "few-shot"),
            ("soft-prompt run/adapter", "soft-prompt"), ("prefix prefix-adapter", "prefix"), ("projected run/adapter", "projected"), ("searched searched", "searched"),
        };
        Assert.Equal(expected, conds.Select(c => (c["name"]!.GetValue<string>(), c["kind"]!.GetValue<string>())).ToArray());
        foreach (var c in conds)
        {
            Assert.Equal(24, c["n"]!.GetValue<int>());
            var metrics = c["metrics"]!.AsObject();
            Assert.Equal(new[] { "accuracy", "macro_f1", "loss", "perplexity" }, metrics.Select(kv => kv.Key).ToArray());
            Assert.InRange(metrics["accuracy"]!.GetValue<double>(), 0, 1);
            Assert.Equal(Math.Exp(metrics["loss"]!.GetValue<double>()), metrics["perplexity"]!.GetValue<double>(), 6);
            bool hard = c["kind"]!.GetValue<string>() is not ("soft-prompt" or "prefix");
            Assert.Equal(hard, c.ContainsKey("prompt_text"));
            Assert.Equal(2, c["confusion"]!.AsArray().Count);
        }
        Assert.Equal("Is the colour warm or cold?\n", conds[1]["prompt_text"]!.GetValue<string>());
        Assert.EndsWith("\n\n", conds[3]["prompt_text"]!.GetValue<string>());
        // The projected prompt is the decoded nearest token of each of the adapter's 4 virtual tokens.
        using (var model = ModelLoader.Load(_w.ModelDir))
        using (var adapter = Adapter.Load(_w.AdapterDir, model))
        {
            var ids = PromptProjection.Project(model, adapter)!;
            Assert.Equal(4, ids.Length);
            Assert.Equal(_w.Tokenizer.Decode(ids), conds[6]["prompt_text"]!.GetValue<string>());
        }

        var lines = File.ReadAllLines(Path.Combine(output, "predictions.jsonl"));
        Assert.Equal(8 * 24, lines.Length);
        var p0 = JsonNode.Parse(lines[0])!.AsObject();
        Assert.Equal(new[] { "condition", "input", "gold", "prediction", "scores", "correct" }, p0.Select(kv => kv.Key).ToArray());
        Assert.Equal(new[] { "cold", "warm" }, p0["scores"]!.AsObject().Select(kv => kv.Key).ToArray());

        var report = File.ReadAllText(Path.Combine(output, "report.md"));
        Assert.Contains("margin", report);
        Assert.Contains("no projected hard prompt", report);
        Assert.Contains("| gold \\ predicted |", report);
    }

    [Fact]
    public void APromptTrainedOnTheTaskBeatsZeroShot()
    {
        var output = NewOut();
        var (rc, stdout, stderr) = Run("eval", "--model", _w.ModelDir, "--data", _w.TestFile, "--prompt", _w.AdapterDir, "--output", output, "--format", "json");
        Assert.True(rc == 0, stderr);
        var m = JsonNode.Parse(File.ReadAllText(Path.Combine(output, "metrics.json")))!.AsObject();
        double Acc(string kind) => m["conditions"]!.AsArray().Single(c => c!["kind"]!.GetValue<string>() == kind)!["metrics"]!["accuracy"]!.GetValue<double>();
        Assert.True(Acc("soft-prompt") > Acc("zero-shot"), $"soft prompt {Acc("soft-prompt")} vs zero-shot {Acc("zero-shot")}; training: {File.ReadAllText(Path.Combine(_w.RunDir, "metrics.jsonl"))}");
        // --format json: metrics.json on one line, then the folder.
        var outLines = stdout.TrimEnd().Split('\n');
        Assert.Equal(Path.GetFullPath(output), outLines[^1]);
        Assert.Equal("classification", JsonNode.Parse(outLines[^2])!["task"]!.GetValue<string>());

        // The training run's periodic validation used the same rank classification: accuracy (then macro-F1) per eval.
        var evals = File.ReadAllLines(Path.Combine(_w.RunDir, "metrics.jsonl")).Select(l => JsonNode.Parse(l)!.AsObject())
            .Where(o => o["kind"]!.GetValue<string>() == "eval").ToList();
        Assert.NotEmpty(evals);
        Assert.All(evals, e => { Assert.InRange(e["accuracy"]!.GetValue<double>(), 0, 1); Assert.True(e.ContainsKey("macro_f1")); });
    }

    [Fact]
    public void LabelWordsAreScoredInPlaceOfTheLabelsAndReportsKeepTheLabels()
    {
        string[] Scores(string output) => File.ReadAllLines(Path.Combine(output, "predictions.jsonl"))
            .Select(l => JsonNode.Parse(l)!["scores"]!.ToJsonString()).ToArray();
        var plain = NewOut();
        var (rc0, _, err0) = Run("eval", "--model", _w.ModelDir, "--data", _w.TestFile, "--output", plain);
        Assert.True(rc0 == 0, err0);
        var worded = NewOut();
        var (rc, stdout, stderr) = Run("eval", "--model", _w.ModelDir, "--data", _w.TestFile, "--output", worded,
            "--label-words", "warm=hot", "--label-words", "cold=icy");
        Assert.True(rc == 0, stderr);
        var m = JsonNode.Parse(File.ReadAllText(Path.Combine(worded, "metrics.json")))!.AsObject();
        Assert.Equal(new[] { "cold", "warm" }, m["labels"]!.AsArray().Select(x => x!.GetValue<string>()).ToArray());
        var p0 = JsonNode.Parse(File.ReadAllLines(Path.Combine(worded, "predictions.jsonl"))[0])!.AsObject();
        Assert.Contains(p0["gold"]!.GetValue<string>(), new[] { "cold", "warm" });
        Assert.Contains(p0["prediction"]!.GetValue<string>(), new[] { "cold", "warm" });
        Assert.Contains("label words: cold → \"icy\", warm → \"hot\"", File.ReadAllText(Path.Combine(worded, "report.md")));
        // The model scored other tokens: the label scores differ from the plain run's.
        Assert.NotEqual(Scores(plain), Scores(worded));

        // A label the words do not cover is an error naming the file and line; no report is written.
        var bad = NewOut();
        var (rc2, _, err2) = Run("eval", "--model", _w.ModelDir, "--data", _w.TestFile, "--output", bad, "--label-words", "warm=hot");
        Assert.Equal(2, rc2);
        Assert.Contains("test.jsonl:", err2);
        Assert.Contains("has no label word", err2);
        Assert.False(Directory.Exists(bad));
    }

    [Fact]
    public void ABackslashNTemplateFromTheShellGetsAWarningAndIsKeptAsGiven()
    {
        var output = NewOut();
        var (rc, _, stderr) = Run("eval", "--model", _w.ModelDir, "--data", _w.TestFile, "--output", output, "--prompt-template", "Q: {input}\\nA:");
        Assert.True(rc == 0, stderr);
        Assert.Contains("warning: --prompt-template", stderr);
        Assert.Contains("Q: ", File.ReadAllLines(Path.Combine(output, "predictions.jsonl"))[0]);
        Assert.Contains("\\\\nA:", File.ReadAllLines(Path.Combine(output, "predictions.jsonl"))[0]); // JSON of the two characters
        var (rc2, _, stderr2) = Run("eval", "--model", _w.ModelDir, "--data", _w.TestFile, "--output", NewOut(), "--prompt-template", "Q: {input}\nA:");
        Assert.True(rc2 == 0, stderr2);
        Assert.DoesNotContain("warning:", stderr2);
    }

    [Fact]
    public void EvaluatingAPromptUnderOtherDataSettingsThanItWasTrainedWithIsReported()
    {
        var same = NewOut();
        var (rc, stdout, stderr) = Run("eval", "--model", _w.ModelDir, "--data", _w.TestFile, "--output", same, "--prompt", _w.AdapterDir);
        Assert.True(rc == 0, stderr);
        Assert.DoesNotContain("warning:", stdout + stderr);
        Assert.DoesNotContain("trained with", File.ReadAllText(Path.Combine(same, "report.md")));

        var other = NewOut();
        (rc, stdout, stderr) = Run("eval", "--model", _w.ModelDir, "--data", _w.TestFile, "--output", other, "--prompt", _w.AdapterDir,
            "--prompt-template", "Colour of {input}:", "--label-words", "warm=hot", "--label-words", "cold=icy");
        Assert.True(rc == 0, stderr);
        var report = File.ReadAllText(Path.Combine(other, "report.md"));
        Assert.Contains("trained with prompt template (none), evaluated with \"Colour of {input}:\"", report);
        Assert.Contains("trained with label words (none), evaluated with \"cold=icy\\nwarm=hot\"", report);
        Assert.Contains("warning:", stdout + stderr);
    }

    [Fact]
    public void GenerationTaskScoresAnswersAgainstEveryGoldAnswer()
    {
        var output = NewOut();
        var (rc, stdout, stderr) = Run("eval", "--model", _w.ModelDir, "--data", _w.GenFile, "--output", output,
            "--answer-separator", "|", "--max-new-tokens", "3", "--instruction", "Say warm or cold.");
        Assert.True(rc == 0, stderr);
        Assert.Contains("task: generation (auto:", stdout);
        var m = JsonNode.Parse(File.ReadAllText(Path.Combine(output, "metrics.json")))!.AsObject();
        Assert.Equal("generation", m["task"]!.GetValue<string>());
        Assert.Null(m["labels"]);
        var c = m["conditions"]!.AsArray()[0]!.AsObject();
        Assert.Equal(new[] { "exact_match", "any_gold_match", "token_f1", "loss", "perplexity" }, c["metrics"]!.AsObject().Select(kv => kv.Key).ToArray());
        var preds = File.ReadAllLines(Path.Combine(output, "predictions.jsonl")).Select(l => JsonNode.Parse(l)!.AsObject()).ToList();
        Assert.Equal(2 * 4, preds.Count);
        Assert.All(preds, p => Assert.True(p.ContainsKey("generated")));
        // Rows with the same input get the same (greedy) generation.
        Assert.Equal(preds[0]["generated"]!.GetValue<string>(), preds[1]["generated"]!.GetValue<string>());
    }

    public static IEnumerable<object[]> BadInputs() => new[]
    {
        new object[] { "label", new[] { "--labels", "warm,tepid" }, "tepid" },
        new object[] { "empty", new[] { "--data", "EMPTY" }, "no examples" },
        new object[] { "other-model", new[] { "--prompt", "OTHER" }, "another model" },
        new object[] { "template", new[] { "--prompt-template", "Q: {question}" }, "missing field \"question\"" },
        new object[] { "searched", new[] { "--searched", "/nonexistent/hard_prompt.json" }, "/nonexistent/hard_prompt.json" },
        new object[] { "instructions", new[] { "--instructions-file", "/nonexistent/instr.txt" }, "/nonexistent/instr.txt" },
        new object[] { "shots", new[] { "--few-shot", "2", "--shots-from", "/nonexistent/train.jsonl" }, "/nonexistent/train.jsonl" },
        new object[] { "few-shot", new[] { "--few-shot", "2" }, "--shots-from" },
    };

    [Theory]
    [MemberData(nameof(BadInputs))]
    public void BadInputIsAClearErrorAndLeavesNoReport(string _, string[] extra, string mentions)
    {
        var output = NewOut();
        var args = new List<string> { "eval", "--model", _w.ModelDir, "--output", output };
        if (!extra.Contains("--data")) args.AddRange(new[] { "--data", _w.TestFile });
        foreach (var a in extra) args.Add(a switch { "EMPTY" => EmptyFile(), "OTHER" => OtherModelAdapter(), _ => a });
        var (rc, stdout, stderr) = Run(args.ToArray());
        Assert.Equal(2, rc);
        Assert.StartsWith("error: ", stderr);
        Assert.Contains(mentions, stderr);
        Assert.False(Directory.Exists(output));
        Assert.Empty(Directory.GetDirectories(_w.Root, Path.GetFileName(output) + ".tmp-*"));
    }

    string EmptyFile()
    {
        var p = Path.Combine(_w.Root, "empty.jsonl");
        File.WriteAllText(p, "");
        return p;
    }

    string OtherModelAdapter()
    {
        var dir = Path.Combine(_w.Root, "qwen2-adapter");
        if (Directory.Exists(dir)) return dir;
        using var model = ModelLoader.Load(Fixtures.HfReference("qwen2"));
        using var m = PromptTuning.Create(model, 4, PromptInit.SampleVocab, 1);
        Adapter.Save(dir, m, model);
        return dir;
    }

    [Fact]
    public void AnExistingReportIsReplacedOnlyAfterSuccess()
    {
        var output = NewOut();
        Directory.CreateDirectory(output);
        File.WriteAllText(Path.Combine(output, "old.txt"), "old");
        var (rc, _, _) = Run("eval", "--model", _w.ModelDir, "--data", _w.TestFile, "--output", output, "--labels", "nope");
        Assert.Equal(2, rc);
        Assert.True(File.Exists(Path.Combine(output, "old.txt")));
        (rc, _, var err) = Run("eval", "--model", _w.ModelDir, "--data", _w.TestFile, "--output", output, "--max-examples", "4");
        Assert.True(rc == 0, err);
        Assert.False(File.Exists(Path.Combine(output, "old.txt")));
        Assert.True(File.Exists(Path.Combine(output, "metrics.json")));
    }
}
