using System.Text.Json.Nodes;
using SoftPrompt.Evaluation;
using SoftPrompt.Models;
using SoftPrompt.Tests.Cli;
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
        Assert.Equal(new[] { "conditions", "task", "labels", "class_prior", "model", "data", "created", "softprompt_version", "seed", "eval_config" }, m.Select(kv => kv.Key).ToArray());
        Assert.Equal(42, m["seed"]!.GetValue<int>());
        Assert.Equal(2, m["eval_config"]!["few_shot"]!.GetValue<int>());      // the config as resolved (the option won)
        Assert.False(string.IsNullOrEmpty(m["softprompt_version"]!.GetValue<string>()));
        Assert.Equal("classification", m["task"]!.GetValue<string>());
        Assert.Equal(new[] { "cold", "warm" }, m["labels"]!.AsArray().Select(x => x!.GetValue<string>()).ToArray());
        Assert.Equal(0.5, m["class_prior"]!.GetValue<double>(), 9);
        var conds = m["conditions"]!.AsArray().Select(x => x!.AsObject()).ToList();
        // Soft conditions are named by what the adapter says of itself (the trainer records the exported step).
        var step = JsonNode.Parse(File.ReadAllText(Path.Combine(_w.RunDir, "summary.json")))!["steps"]!.GetValue<int>();
        var softName = conds[4]["name"]!.GetValue<string>();
        Assert.Matches(@"^soft prompt, 4 tokens, step \d+$", softName);
        var expected = new (string Name, string Kind)[]
        {
            ("zero-shot", "zero-shot"), ("instruction 1", "instruction"), ("instruction 2", "instruction"), ("few-shot k=2", "few-shot"),
            (softName, "soft-prompt"), ("prefix, 3 tokens", "prefix"), (softName + " projected onto tokens", "projected"), ("searched searched", "searched"),
        };
        Assert.InRange(int.Parse(softName.Split(' ')[^1]), 1, step);
        Assert.Equal(Path.GetFullPath(_w.AdapterDir), conds[4]["adapter"]!.GetValue<string>());
        Assert.Equal(4, conds[4]["adapter_settings"]!["adapter_config"]!["num_virtual_tokens"]!.GetValue<int>());
        Assert.Equal("prompt", conds[4]["adapter_settings"]!["recorded"]!["method"]!.GetValue<string>());
        Assert.Equal(Path.GetFullPath(_w.AdapterDir), conds[6]["adapter"]!.GetValue<string>());
        Assert.Null(conds[0]["adapter"]);
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
    public void OneTrainingPlotDrawsEveryRunAndKnowsEachSelectedCheckpoint()
    {
        var output = NewOut();
        var second = Path.Combine(_w.Root, "run-copy");
        if (!Directory.Exists(second))
        {
            Directory.CreateDirectory(second);
            File.Copy(Path.Combine(_w.RunDir, "metrics.jsonl"), Path.Combine(second, "metrics.jsonl"));
        }
        var (rc, _, stderr) = Run("eval", "--model", _w.ModelDir, "--data", _w.TestFile, "--output", output, "--max-examples", "4", "--run", _w.RunDir, "--run", second);
        Assert.True(rc == 0, stderr);
        Assert.True(File.Exists(Path.Combine(output, "training.png")));
        Assert.False(File.Exists(Path.Combine(output, "training-2.png")));
        Assert.True(File.Exists(Path.Combine(output, "training-1_metrics.jsonl")) && File.Exists(Path.Combine(output, "training-2_metrics.jsonl")));
        Assert.Contains("](training.png)", File.ReadAllText(Path.Combine(output, "report.md")));
        // The marked step is the one the exported adapter records; a folder without an adapter has none.
        var recorded = int.Parse(SoftPrompt.IO.SafeTensors.ReadHeader(Path.Combine(_w.AdapterDir, Adapter.WeightsFile)).Metadata["softprompt.step"]);
        Assert.Equal(recorded, SoftPrompt.Runs.TrainingPlot.SelectedStep(_w.RunDir, preferExported: true));
        Assert.Null(SoftPrompt.Runs.TrainingPlot.SelectedStep(second, preferExported: true));
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
