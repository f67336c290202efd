using System.CommandLine;
using System.Diagnostics;
using System.Text.Json;
using SoftPrompt.Pretraining;
using TorchSharp;
using SoftPrompt.Tokenization;

namespace SoftPrompt.Cli.Commands;

/// <summary><c>softprompt pretrain ...</c>: the steps that make the project's own small causal LM (see docs/pretraining.md).</summary>
public static class PretrainCommand
{
    public static Command Create()
    {
        var cmd = new Command("pretrain", "Make the project's small causal LM from scratch: split tasks, train a tokenizer, prepare data, benchmark, train, export.");
        cmd.Subcommands.Add(SplitTasks());
        cmd.Subcommands.Add(SeenWords());
        cmd.Subcommands.Add(Tokenizer());
        cmd.Subcommands.Add(Prepare());
        cmd.Subcommands.Add(Bench());
        cmd.Subcommands.Add(Train());
        cmd.Subcommands.Add(Export());
        return cmd;
    }

    static Option<string> Req(string name, string desc) => new(name) { Description = desc, Required = true };

    static Command SplitTasks()
    {
        var source = Req("--source", "Folder with the task TSVs (../shared/data/tasks).");
        var output = Req("--out", "Where NAME.train.tsv / NAME.test.tsv go (data/tasks).");
        var c = new Command("split-tasks", "Deterministic train/test split of the task files (hash of the input; duplicates and words stay on one side).") { source, output };
        c.SetAction(pr =>
        {
            foreach (var (name, train, test) in TaskSplits.Split(pr.GetValue(source)!, pr.GetValue(output)!))
                Console.WriteLine($"{name}: {train} train, {test} test");
            return 0;
        });
        return c;
    }

    static Command SeenWords()
    {
        var corpus = Req("--corpus", "Folder of corpus *.txt files (the pretraining text).");
        var tasks = Req("--tasks", "Folder with the split task files (data/tasks); the new task is written there too.");
        var task = Req("--task", "Word task to filter, e.g. word_sentiment_bing_liu.");
        var name = Req("--name", "Name of the derived task, e.g. word_sentiment_seen.");
        var min = new Option<int>("--min-count") { Description = "Keep words that occur at least this often in the pretraining text.", DefaultValueFactory = _ => 30 };
        var c = new Command("seen-words", "Derive a word task holding only the words the pretraining text uses often enough (the split is kept).") { corpus, tasks, task, name, min };
        c.SetAction(pr =>
        {
            TaskSplits.WordTask(pr.GetValue(task)!); // a wrong --task fails before the corpus is read
            var counts = TaskSplits.CorpusWordCounts(PretrainCorpus.Build(pr.GetValue(corpus)!, pr.GetValue(tasks)!));
            var (train, test) = TaskSplits.WriteSeenWords(pr.GetValue(tasks)!, pr.GetValue(task)!, pr.GetValue(name)!, counts, pr.GetValue(min));
            Console.WriteLine($"{pr.GetValue(name)}: {train} train, {test} test (words with >= {pr.GetValue(min)} occurrences in the pretraining text)");
            return 0;
        });
        return c;
    }

    static Command Tokenizer()
    {
        var corpus = Req("--corpus", "Folder of corpus *.txt files.");
        var tasks = Req("--tasks", "Folder with the split task files (data/tasks).");
        var output = Req("--out", "Output folder; the tokenizer of each size goes to OUT/vocab-N/.");
        var sizes = new Option<string>("--vocab") { Description = "Vocabulary sizes to write (the largest is trained; smaller ones are its prefixes).", DefaultValueFactory = _ => "4096,8192" };
        var c = new Command("tokenizer", "Train a byte-level BPE on the training documents and report tokens/word on the validation documents.") { corpus, tasks, output, sizes };
        c.SetAction(pr =>
        {
            var docs = PretrainCorpus.Build(pr.GetValue(corpus)!, pr.GetValue(tasks)!);
            var vs = pr.GetValue(sizes)!.Split(',').Select(int.Parse).OrderBy(x => x).ToArray();
            var sw = Stopwatch.StartNew();
            var trainer = new BpeTrainer(new BpeTrainer.Options { VocabSize = vs[^1], ModelMaxLength = 1024 });
            var r = trainer.Train(docs.Where(d => !d.Validation).Select(d => d.Text));
            Console.WriteLine($"trained {r.Vocab.Count} tokens ({r.Merges.Count} merges) on {r.BytesRead / 1e6:F1} MB, {r.DistinctWords} distinct words, in {sw.Elapsed.TotalSeconds:F0} s");
            var val = docs.Where(d => d.Validation).Select(d => d.Text).ToList();
            long words = val.Sum(PretrainCorpus.CountWords), bytes = val.Sum(t => (long)System.Text.Encoding.UTF8.GetByteCount(t));
            foreach (var v in vs)
            {
                int n = Math.Min(v, r.Vocab.Count);
                var cut = new BpeTrainer.Result(r.Vocab.Take(n).ToList(), r.Merges.Take(n - 257).ToList(), r.BytesRead, r.DistinctWords);
                var dir = Path.Combine(pr.GetValue(output)!, $"vocab-{v}");
                trainer.Save(cut, dir);
                var tok = HfTokenizer.Load(dir);
                long tokens = val.Sum(t => (long)tok.Encode(t, false).Length);
                Console.WriteLine($"vocab {n}: {tokens} tokens on validation text = {(double)tokens / words:F3} tokens/word, {(double)bytes / tokens:F2} bytes/token -> {dir}");
            }
            return 0;
        });
        return c;
    }

    static Command Prepare()
    {
        var corpus = Req("--corpus", "Folder of corpus *.txt files.");
        var tasks = Req("--tasks", "Folder with the split task files (data/tasks).");
        var tokenizer = Req("--tokenizer", "Folder with tokenizer.json.");
        var output = Req("--out", "Output folder: train.bin, val.bin (uint16 ids), corpus.json.");
        var c = new Command("prepare", "Tokenize the training and validation documents once into uint16 id files.") { corpus, tasks, tokenizer, output };
        c.SetAction(pr =>
        {
            var sw = Stopwatch.StartNew();
            var docs = PretrainCorpus.Build(pr.GetValue(corpus)!, pr.GetValue(tasks)!);
            var tok = HfTokenizer.Load(pr.GetValue(tokenizer)!);
            int eos = tok.EosId ?? throw new SoftPromptException("the tokenizer has no eos token.");
            var outDir = pr.GetValue(output)!;
            Directory.CreateDirectory(outDir);
            foreach (var (name, val) in new[] { ("train", false), ("val", true) })
            {
                var ids = PretrainCorpus.Tokenize(pr.GetValue(tokenizer)!, docs.Where(d => d.Validation == val).ToList(), eos);
                PretrainCorpus.WriteIds(Path.Combine(outDir, name + ".bin"), ids);
                Console.WriteLine($"{name}: {ids.Length} tokens");
            }
            File.WriteAllText(Path.Combine(outDir, "corpus.json"), PretrainCorpus.Summary(docs));
            File.Copy(Path.Combine(pr.GetValue(tokenizer)!, HfTokenizer.TokenizerJson), Path.Combine(outDir, HfTokenizer.TokenizerJson), true);
            Console.WriteLine($"done in {sw.Elapsed.TotalSeconds:F0} s -> {outDir}");
            return 0;
        });
        return c;
    }

    // ------------------------------------------------------------------ shape / optimisation options shared by bench and train

    sealed class ShapeOptions
    {
        public Option<int> Hidden = new("--hidden") { DefaultValueFactory = _ => 256, Description = "Model width." };
        public Option<int> Layers = new("--layers") { DefaultValueFactory = _ => 6 };
        public Option<int> Heads = new("--heads") { DefaultValueFactory = _ => 4 };
        public Option<int> Intermediate = new("--intermediate") { DefaultValueFactory = _ => 0, Description = "SwiGLU width (0 = 3 x hidden)." };
        public Option<int> SeqLen = new("--seq-len") { DefaultValueFactory = _ => 256 };
        public Option<int> MicroBatch = new("--micro-batch") { DefaultValueFactory = _ => 16 };
        public Option<int> Accum = new("--accum") { DefaultValueFactory = _ => 2 };
        public Option<string> Compute = new Option<string>("--compute") { DefaultValueFactory = _ => "bf16" }.AcceptOnlyFromAmong("bf16", "fp32");
        public Option<int> Threads = new("--threads") { DefaultValueFactory = _ => 2 };
        public void AddTo(Command c) { foreach (var o in new Option[] { Hidden, Layers, Heads, Intermediate, SeqLen, MicroBatch, Accum, Compute, Threads }) c.Options.Add(o); }

        public PretrainOptions Build(ParseResult pr, int vocab) => new()
        {
            Shape = new LlamaShape
            {
                VocabSize = vocab, Hidden = pr.GetValue(Hidden), Layers = pr.GetValue(Layers), Heads = pr.GetValue(Heads), KvHeads = pr.GetValue(Heads),
                Intermediate = pr.GetValue(Intermediate) is > 0 and var i ? i : 3 * pr.GetValue(Hidden),
            },
            SeqLen = pr.GetValue(SeqLen), MicroBatch = pr.GetValue(MicroBatch), Accum = pr.GetValue(Accum), Compute = pr.GetValue(Compute)!,
        };
    }

    static (ushort[] Train, ushort[] Val, int Vocab) LoadData(string dataDir)
    {
        var tok = HfTokenizer.Load(dataDir);
        return (PretrainCorpus.ReadIds(Path.Combine(dataDir, "train.bin")), PretrainCorpus.ReadIds(Path.Combine(dataDir, "val.bin")), tok.VocabSize);
    }

    static Command Bench()
    {
        var so = new ShapeOptions();
        var data = Req("--data", "Prepared data folder (train.bin, val.bin, tokenizer.json).");
        var seconds = new Option<double>("--seconds") { DefaultValueFactory = _ => 60, Description = "Measure for this long after 2 warm-up steps." };
        var output = new Option<string?>("--out") { Description = "Append the result as a JSON line to this file." };
        var c = new Command("bench", "Measure training throughput (tokens/s) of one configuration on the real data.") { data, seconds, output };
        so.AddTo(c);
        c.SetAction(pr =>
        {
            SoftPrompt.Runtime.TorchRuntime.SetThreads(pr.GetValue(so.Threads), Console.Error.WriteLine); // capped at the cores, oversubscription said
            var (train, val, vocab) = LoadData(pr.GetValue(data)!);
            var o = so.Build(pr, vocab);
            using var t = new Pretrainer(o, train, val);
            for (int i = 0; i < 2; i++) t.TrainStep();
            var proc = Process.GetCurrentProcess(); var cpu0 = proc.TotalProcessorTime;
            var sw = Stopwatch.StartNew(); long tokens = 0; int steps = 0; double loss = 0;
            while (sw.Elapsed.TotalSeconds < pr.GetValue(seconds)) { loss = t.TrainStep().Loss; tokens += o.TokensPerStep; steps++; }
            double tps = tokens / sw.Elapsed.TotalSeconds, flops = o.Shape.TrainFlopsPerToken(o.SeqLen);
            proc.Refresh(); double cpuSec = (proc.TotalProcessorTime - cpu0).TotalSeconds;
            var r = new
            {
                vocab, hidden = o.Shape.Hidden, layers = o.Shape.Layers, heads = o.Shape.Heads, intermediate = o.Shape.Intermediate, seq_len = o.SeqLen,
                micro_batch = o.MicroBatch, accum = o.Accum, compute = o.Compute, threads = pr.GetValue(so.Threads), parameters = o.Shape.Parameters,
                steps, seconds = Math.Round(sw.Elapsed.TotalSeconds, 1), tokens_per_s = Math.Round(tps), gflops = Math.Round(tps * flops / 1e9, 1),
                tokens_per_cpu_s = Math.Round(tokens / cpuSec), cpu_share = Math.Round(cpuSec / sw.Elapsed.TotalSeconds, 2), last_loss = Math.Round(loss, 3),
                load_avg = File.Exists("/proc/loadavg") ? File.ReadAllText("/proc/loadavg").Split(' ')[0] : "",
                malloc = Environment.GetEnvironmentVariable("GLIBC_TUNABLES") ?? "",
            };
            var line = JsonSerializer.Serialize(r);
            Console.WriteLine(line);
            if (pr.GetValue(output) is { } f) File.AppendAllText(f, line + "\n");
            return 0;
        });
        return c;
    }

    static Command Train()
    {
        var so = new ShapeOptions();
        var data = Req("--data", "Prepared data folder (train.bin, val.bin, tokenizer.json).");
        var run = Req("--run", "Run folder: options.json, checkpoint.safetensors, log.jsonl. An existing run is resumed with its stored options.");
        var total = new Option<long>("--total-tokens") { DefaultValueFactory = _ => 50_000_000, Description = "Planned token budget (end of the cosine schedule)." };
        var warmup = new Option<long>("--warmup-tokens") { DefaultValueFactory = _ => 1_000_000 };
        var lr = new Option<double>("--lr") { DefaultValueFactory = _ => 2e-3 };
        var minLr = new Option<double>("--min-lr") { DefaultValueFactory = _ => 2e-4 };
        var evalEvery = new Option<int>("--eval-every") { DefaultValueFactory = _ => 100, Description = "Steps between held-out evaluations." };
        var ckpt = new Option<double>("--checkpoint-minutes") { DefaultValueFactory = _ => 5 };
        var initFrom = new Option<string?>("--init-from") { Description = "Without a checkpoint in --run: start from this exported model folder (its weights, step and token count; fresh AdamW moments), e.g. models/sp-llama-6m." };
        var rewarm = new Option<long>("--rewarm-tokens") { DefaultValueFactory = _ => 500_000, Description = "With --init-from: ramp the learning rate up again over this many tokens (fresh optimizer moments)." };
        var maxMin = new Option<double>("--max-minutes") { DefaultValueFactory = _ => 0, Description = "Stop (with a checkpoint) after this many minutes; 0 = run to the budget." };
        var c = new Command("train", "Pretrain (or resume) a Llama-shaped model. Stops cleanly on Ctrl-C / SIGTERM, on a file RUN/STOP, or after --max-minutes.")
            { data, run, total, warmup, lr, minLr, evalEvery, ckpt, maxMin, initFrom, rewarm };
        so.AddTo(c);
        c.SetAction(pr =>
        {
            SoftPrompt.Runtime.TorchRuntime.SetThreads(pr.GetValue(so.Threads), Console.Error.WriteLine); // capped at the cores, oversubscription said
            var (train, val, vocab) = LoadData(pr.GetValue(data)!);
            var runDir = pr.GetValue(run)!;
            Directory.CreateDirectory(runDir);
            using var runLock = IO.RunLock.Acquire(runDir, "--run"); // the OS lock shared with train/search/eval: released even by kill -9
            var optPath = Path.Combine(runDir, Pretrainer.OptionsFile);
            PretrainOptions o;
            if (File.Exists(optPath))
            {
                o = JsonSerializer.Deserialize<PretrainOptions>(File.ReadAllText(optPath), PretrainOptions.Json)!;
                Console.WriteLine($"resuming with {optPath} (shape and schedule options on the command line are ignored)");
            }
            else
            {
                o = so.Build(pr, vocab) with
                {
                    TotalTokens = pr.GetValue(total), WarmupTokens = pr.GetValue(warmup), LrMax = pr.GetValue(lr), LrMin = pr.GetValue(minLr),
                    EvalEverySteps = pr.GetValue(evalEvery), CheckpointMinutes = pr.GetValue(ckpt),
                };
                IO.AtomicFile.WriteAllText(optPath, JsonSerializer.Serialize(o, PretrainOptions.Json));
            }
            if (o.Shape.VocabSize != vocab) throw new SoftPromptException($"the run's vocabulary ({o.Shape.VocabSize}) differs from the data's tokenizer ({vocab}).");
            using var interruption = new Interruption(); // Ctrl-C / SIGTERM: checkpoint and stop (as train does)
            using var t = new Pretrainer(o, train, val);
            if (t.TryLoadCheckpoint(runDir)) Console.WriteLine($"resumed at step {t.State.Step}, {t.State.TokensSeen / 1e6:F2} M tokens, epoch {t.State.Epoch} window {t.State.Cursor}");
            else if (pr.GetValue(initFrom) is { } from)
            {
                t.InitFrom(from, pr.GetValue(rewarm) / o.TokensPerStep);
                Console.WriteLine($"initialised from {from} at step {t.State.Step}, {t.State.TokensSeen / 1e6:F2} M tokens (fresh AdamW moments, learning rate re-warmed)");
            }
            t.Run(runDir, pr.GetValue(maxMin), interruption.Token);
            return 0;
        });
        return c;
    }

    static Command Export()
    {
        var run = Req("--run", "Run folder with checkpoint.safetensors and log.jsonl.");
        var data = Req("--data", "Prepared data folder (val.bin, tokenizer.json, corpus.json).");
        var tokenizer = Req("--tokenizer", "Folder with tokenizer.json and tokenizer_config.json.");
        var output = Req("--out", "Model folder to write (models/NAME).");
        var slice = Req("--slice", "Held-out text slice for the shipped-model test (created from validation documents if missing).");
        var plot = new Option<string?>("--plot") { Description = "PNG of the held-out perplexity curve." };
        var notes = new Option<string?>("--notes") { Description = "JSON file with extra card facts (throughput table, compute)." };
        var c = new Command("export", "Write a Hugging Face model folder (config, safetensors, tokenizer, card) from a run's checkpoint, evaluated in fp32.") { run, data, tokenizer, output, slice, plot, notes };
        c.SetAction(pr =>
        {
            torch.set_num_threads(2);
            var r = ModelExport.Export(pr.GetValue(run)!, pr.GetValue(data)!, pr.GetValue(tokenizer)!, pr.GetValue(output)!, pr.GetValue(slice)!, pr.GetValue(plot), pr.GetValue(notes));
            Console.WriteLine(JsonSerializer.Serialize(r));
            return 0;
        });
        return c;
    }
}
