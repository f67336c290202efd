using System.Runtime.InteropServices;
using System.Text.Json;
using SoftPrompt.Inference;
using SoftPrompt.Models;
using SoftPrompt.Tests.Cli;
using SoftPrompt.Tuning;
using TorchSharp;
using static TorchSharp.torch;

namespace SoftPrompt.Tests.Inference;

/// <summary>
/// Batches whose rows carry different prompts (prompt tuning of different lengths, prefix tuning, none) give each row
/// what it gets alone: the same greedy tokens and log-probabilities (1e-4) as <see cref="Generator"/> (the
/// `generate --prompt` path), with rows joining and leaving between steps.
/// </summary>
[Collection("Console")]
public class BatchEngineTests
{
    sealed class World : IDisposable
    {
        public readonly CausalLM Model;
        public readonly List<(IPromptMethod? Method, AttachedPrompt? Attached)> Prompts = new();
        public World(string arch)
        {
            Model = ModelLoader.Load(Fixtures.HfReference(arch));
            var pt3 = PromptTuning.Create(Model, 3, PromptInit.SampleVocab, 1);
            var pt7 = PromptTuning.Create(Model, 7, PromptInit.SampleVocab, 2);
            var pf5 = PrefixTuning.Create(Model.Config, 5, false, 0, 3, Model.Device);
            var pf2 = PrefixTuning.Create(Model.Config, 2, true, 16, 4, Model.Device);
            Prompts.Add((null, null));
            foreach (var m in new IPromptMethod[] { pt3, pt7, pf5, pf2 }) { m.SetTrainable(false); Prompts.Add((m, AttachedPrompt.From(m, Model, m.PeftType))); }
        }
        public void Dispose()
        {
            foreach (var (m, a) in Prompts) { m?.Dispose(); a?.Dispose(); }
            Model.Dispose();
        }
    }

    static int[] Ids(int seed, int len)
    {
        var rng = new Random(seed);
        return Enumerable.Range(0, len).Select(_ => rng.Next(3, 990)).ToArray();
    }

    /// <summary>Generator's result alone: new ids and the log-probability of each under the model.</summary>
    static (int[] Ids, float[] LogProbs) Alone(CausalLM model, IPromptMethod? m, int[] ids, GenerationOptions opt)
    {
        using var scope = torch.NewDisposeScope();
        var r = SoftPrompt.Inference.Generator.Generate(model, ids, opt, m?.Inject(1), keepScores: true);
        var lps = r.NewIds.Select((t, i) =>
        {
            using var s = torch.NewDisposeScope();
            return torch.tensor(r.Scores![i]).log_softmax(-1)[t].item<float>();
        }).ToArray();
        return (r.NewIds, lps);
    }

    [Theory]
    [InlineData("llama")]
    [InlineData("gpt2")]
    [InlineData("qwen2")]
    [InlineData("gemma")]
    [InlineData("gemma2")]     // soft-capping, and a window of 4 on layer 0 with global layer 1: two masks per step
    [InlineData("phi3")]
    [InlineData("gpt_neox")]   // parallel residual, partial rotary
    public void MixedPromptBatchMatchesEachRowAlone(string arch)
    {
        using var w = new World(arch);
        var reqs = new List<(int P, int[] Ids, GenerationOptions Opt)>();
        for (int i = 0; i < 14; i++)
            reqs.Add((i % w.Prompts.Count, Ids(100 + i, 2 + (i * 3) % 9), new GenerationOptions { MaxNewTokens = 2 + (i * 5) % 7, Temperature = i % 4 == 3 ? 0.9 : 0, Seed = 7 + i }));
        // Rows join and leave between steps: 14 sequences of different lengths through 4 rows.
        var batched = BatchEngine.GenerateAll(w.Model, reqs.Select(r => new SequenceRequest
        {
            PromptIds = r.Ids, Prompt = w.Prompts[r.P].Attached, Options = r.Opt, TopLogprobs = 3,
        }).ToList(), maxBatch: 4);
        for (int i = 0; i < reqs.Count; i++)
        {
            var (ids, lps) = Alone(w.Model, w.Prompts[reqs[i].P].Method, reqs[i].Ids, reqs[i].Opt);
            Assert.Equal(ids, batched[i].NewIds);
            for (int t = 0; t < ids.Length; t++) Assert.InRange(Math.Abs(lps[t] - batched[i].LogProbs[t]), 0, 1e-4);
            Assert.Equal("max_new_tokens", batched[i].FinishReason);
            Assert.All(batched[i].TopLogprobs!, top => Assert.True(top[0].LogProb >= top[1].LogProb && top[1].LogProb >= top[2].LogProb));
            if (reqs[i].Opt.Temperature == 0) Assert.Equal(ids[0], batched[i].TopLogprobs![0][0].Id);
        }
        // The batch is not trivially uniform: different prompts give different continuations of the same text.
        var same = Ids(5, 6);
        var per = BatchEngine.GenerateAll(w.Model, w.Prompts.Select(p => new SequenceRequest { PromptIds = same, Prompt = p.Attached, Options = new GenerationOptions { MaxNewTokens = 4 } }).ToList());
        Assert.True(per.Select(r => string.Join(",", r.LogProbs)).Distinct().Count() == per.Length);
    }

    [Fact]
    public void MixedBatchScoresEqualScorerPerRow()
    {
        using var w = new World("llama");
        var rows = w.Prompts.Select((p, i) => (p, ids: Ids(i, 3 + 2 * i))).ToList();
        var batched = MixedBatch.Score(w.Model, rows.Select(r => new PromptedIds(r.ids, r.p.Attached)).ToList());
        for (int i = 0; i < rows.Count; i++)
        {
            using var scope = torch.NewDisposeScope();
            var alone = Scorer.Score(w.Model, rows[i].ids, rows[i].p.Method?.Inject(1));
            Assert.Equal(alone.LogProbs.Select(x => x.HasValue), batched[i].LogProbs.Select(x => x.HasValue));
            for (int t = 0; t < alone.LogProbs.Length; t++)
                if (alone.LogProbs[t] is double a) Assert.InRange(Math.Abs(a - batched[i].LogProbs[t]!.Value), 0, 1e-4);
        }
    }

    [Fact]
    public void SlidingWindowRowsMatchAlone()
    {
        using var tmp = new Fixtures.TempDir();
        var src = Fixtures.HfReference("mistral");
        File.Copy(Path.Combine(src, "model.safetensors"), tmp["model.safetensors"]);
        File.WriteAllText(tmp["config.json"], File.ReadAllText(Path.Combine(src, "config.json")).Replace("\"sliding_window\": 4096", "\"sliding_window\": 5"));
        using var model = ModelLoader.Load(tmp.Path);
        Assert.Equal(5, model.Config.SlidingWindow);
        using var pt = PromptTuning.Create(model, 3, PromptInit.SampleVocab, 1);
        using var ap = AttachedPrompt.From(pt, model);
        var opt = new GenerationOptions { MaxNewTokens = 6 };
        var reqs = new[] { (pt as IPromptMethod, ap, Ids(1, 8)), (null, null, Ids(2, 3)), (pt, ap, Ids(3, 2)) };
        var batched = BatchEngine.GenerateAll(model, reqs.Select(r => new SequenceRequest { PromptIds = r.Item3, Prompt = r.Item2, Options = opt }).ToList());
        for (int i = 0; i < reqs.Length; i++)
        {
            var (ids, lps) = Alone(model, reqs[i].Item1, reqs[i].Item3, opt);
            Assert.Equal(ids, batched[i].NewIds);
            for (int t = 0; t < ids.Length; t++) Assert.InRange(Math.Abs(lps[t] - batched[i].LogProbs[t]), 0, 1e-4);
        }
    }

    [Fact]
    public void GenerateCommandWithPromptEqualsTheEngine()
    {
        using var tmp = new Fixtures.TempDir();
        var dir = Fixtures.TinyModelWithTokenizer();
        using var model = ModelLoader.Load(dir);
        foreach (var (name, m) in new (string, IPromptMethod)[] { ("prompt", PromptTuning.Create(model, 4, PromptInit.SampleVocab, 9)), ("prefix", PrefixTuning.Create(model.Config, 3, false, 0, 9, model.Device)) })
        {
            Adapter.Save(tmp[name], m, model);
            m.Dispose();
        }
        var ids = new[] { 5, 17, 42, 8 };
        using var p1 = AttachedPrompt.Load(tmp["prompt"], model);
        using var p2 = AttachedPrompt.Load(tmp["prefix"], model);
        var engine = BatchEngine.GenerateAll(model, new[] { p1, p2, null }.Select(p => new SequenceRequest
        {
            PromptIds = ids, Prompt = p, Options = new GenerationOptions { MaxNewTokens = 6 },
        }).ToList());
        string?[] dirs = { tmp["prompt"], tmp["prefix"], null };
        for (int i = 0; i < 3; i++)
        {
            var args = new List<string> { "generate", "--model", dir, "--ids", string.Join(",", ids), "--max-new-tokens", "6", "--ignore-eos", "--format", "json", "--threads", "1" };
            if (dirs[i] is { } d) { args.Add("--prompt"); args.Add(d); }
            var (rc, stdout, err) = CliRunner.Run(args.ToArray());
            Assert.True(rc == 0, err);
            var gen = JsonDocument.Parse(stdout).RootElement.GetProperty("generated_ids").EnumerateArray().Select(e => e.GetInt32()).ToArray();
            Assert.Equal(gen, engine[i].NewIds);
        }
    }

    [Fact]
    public void TheEngineLeaksNoTensors()
    {
        using var w = new World("llama");
        using var engine = new BatchEngine(w.Model, new BatchEngineOptions { MaxBatch = 4, MaxQueue = 64, Capacity = 64 });
        long Run(int seed)
        {
            var hs = Enumerable.Range(0, 24).Select(i => engine.Submit(new SequenceRequest
            {
                PromptIds = Ids(seed + i, 2 + i % 7), Prompt = w.Prompts[i % w.Prompts.Count].Attached, TopLogprobs = i % 2, PromptLogprobs = i % 3 == 0,
                Options = new GenerationOptions { MaxNewTokens = 1 + i % 5, Temperature = i % 4 == 1 ? 0.7 : 0, TopP = 0.9, Seed = i },
            })).ToList();
            foreach (var h in hs) h.Completion.GetAwaiter().GetResult();
            return engine.LiveTensors;
        }
        long first = Run(0);
        Assert.Equal(first, Run(100));
        Assert.Equal(first, Run(200));
    }

    [Fact]
    public void QueueBoundsCancellationAndRemovedPrompts()
    {
        using var w = new World("llama");
        using var engine = new BatchEngine(w.Model, new BatchEngineOptions { MaxBatch = 1, MaxQueue = 2, Capacity = 40 });
        var opt = new GenerationOptions { MaxNewTokens = 30 };
        Assert.Throws<ContextLengthException>(() => engine.Submit(new SequenceRequest { PromptIds = Ids(1, 20), Prompt = w.Prompts[2].Attached, Options = opt }));
        Assert.Throws<SoftPromptException>(() => engine.Submit(new SequenceRequest { PromptIds = new[] { 5000 }, Options = opt }));
        using var cts = new CancellationTokenSource();
        var first = engine.Submit(new SequenceRequest { PromptIds = Ids(2, 3), Options = opt }, cts.Token);
        var handles = new List<SequenceHandle>();
        bool busy = false;
        for (int i = 0; i < 10 && !busy; i++)
        {
            try { handles.Add(engine.Submit(new SequenceRequest { PromptIds = Ids(3 + i, 3), Options = new GenerationOptions { MaxNewTokens = 2 } })); }
            catch (EngineBusyException) { busy = true; }
        }
        Assert.True(busy);
        cts.Cancel();
        var r = first.Completion.Wait(TimeSpan.FromSeconds(60)) ? first.Completion.Result : throw new TimeoutException();
        Assert.True(r.FinishReason == "cancelled" || r.NewIds.Length == 30);
        Assert.All(handles, h => Assert.Equal(2, h.Completion.GetAwaiter().GetResult().NewIds.Length));

        // A prompt removed while its request waits stays usable for that request; new requests are refused.
        var tmpPrompt = AttachedPrompt.From(w.Prompts[3].Method!, w.Model, "tmp");
        var held = engine.Submit(new SequenceRequest { PromptIds = Ids(9, 3), Prompt = tmpPrompt, Options = new GenerationOptions { MaxNewTokens = 3 } });
        tmpPrompt.Dispose();
        Assert.Equal(3, held.Completion.GetAwaiter().GetResult().NewIds.Length);
        Assert.Throws<SoftPromptException>(() => engine.Submit(new SequenceRequest { PromptIds = Ids(9, 3), Prompt = tmpPrompt, Options = opt }));
        engine.StopAsync().Wait(TimeSpan.FromSeconds(30));
        Assert.Throws<EngineStoppedException>(() => engine.Submit(new SequenceRequest { PromptIds = Ids(9, 3), Options = opt }));
    }

    /// <summary>Issue 21: one bad sequence in a running burst fails alone. NaN logits (an adapter whose embeddings
    /// are NaN), a prefill that fails (injected, as an out-of-memory error would) and a temperature of 1e-300 (greedy
    /// by the shared rule) go in while 12 good sequences are being decoded: every good reply equals its answer alone
    /// (ids exactly, log-probabilities to 1e-4), the two broken ones fail with their own error, the engine goes on.</summary>
    [Fact]
    public void OneBadSequenceInARunningBurstFailsAloneAndChangesNoOtherReply()
    {
        using var w = new World("llama");
        using var nanMethod = new PromptTuning(torch.full(new long[] { 4, w.Model.Config.HiddenSize }, double.NaN));
        using var nanPrompt = AttachedPrompt.From(nanMethod, w.Model, "nan-adapter");
        var good = Enumerable.Range(0, 12).Select(i => new SequenceRequest
        {
            PromptIds = Ids(300 + i, 3 + i % 5), Prompt = w.Prompts[i % w.Prompts.Count].Attached, TopLogprobs = i % 3,
            Options = new GenerationOptions { MaxNewTokens = 8 + i % 4, Temperature = i % 4 == 3 ? 0.8 : 0, Seed = i },
        }).ToList();
        var alone = good.Select(r => BatchEngine.GenerateAll(w.Model, new[] { r })[0]).ToList();
        var oom = new SequenceRequest { PromptIds = Ids(400, 6), Options = new GenerationOptions { MaxNewTokens = 5 } };
        var nan = new SequenceRequest { PromptIds = Ids(401, 4), Prompt = nanPrompt, Options = new GenerationOptions { MaxNewTokens = 5 } };
        var tiny = new SequenceRequest { PromptIds = Ids(402, 5), Options = new GenerationOptions { MaxNewTokens = 5, Temperature = 1e-300, Seed = 1 } };
        var tinyGreedy = BatchEngine.GenerateAll(w.Model, new[] { tiny with { Options = tiny.Options with { Temperature = 0 } } })[0];

        using var engine = new BatchEngine(w.Model, new BatchEngineOptions { MaxBatch = 6, MaxQueue = 64, Capacity = 64 });
        engine.PrefillFault = r => ReferenceEquals(r, oom) ? new ExternalException("CUDA out of memory (injected)") : null;
        var handles = good.Take(6).Select(r => engine.Submit(r)).ToList();
        // The burst is running (its first tokens are out) when the bad ones arrive, between good ones.
        Assert.True(handles[0].Tokens.WaitToReadAsync().AsTask().Wait(TimeSpan.FromSeconds(60)));
        var hOom = engine.Submit(oom);
        handles.Add(engine.Submit(good[6]));
        var hNan = engine.Submit(nan);
        handles.Add(engine.Submit(good[7]));
        var hTiny = engine.Submit(tiny);
        handles.AddRange(good.Skip(8).Select(r => engine.Submit(r)));

        for (int i = 0; i < good.Count; i++)
        {
            var r = handles[i].Completion.GetAwaiter().GetResult();
            Assert.Equal(alone[i].NewIds, r.NewIds);
            for (int t = 0; t < r.LogProbs.Length; t++) Assert.True(Math.Abs(alone[i].LogProbs[t] - r.LogProbs[t]) < 1e-4, $"row {i} token {t}");
        }
        var eOom = Assert.Throws<SequenceFailedException>(() => hOom.Completion.GetAwaiter().GetResult());
        Assert.Contains("out of memory", eOom.Message);
        var eNan = Assert.Throws<SequenceFailedException>(() => hNan.Completion.GetAwaiter().GetResult());
        Assert.Contains("not finite", eNan.Message);
        Assert.Equal(tinyGreedy.NewIds, hTiny.Completion.GetAwaiter().GetResult().NewIds);
        // The engine goes on.
        engine.PrefillFault = null;
        Assert.Equal(alone[0].NewIds, engine.Submit(good[0]).Completion.GetAwaiter().GetResult().NewIds);
    }

    /// <summary>A long prompt burst is prefilled within the token budget (several forwards), with the same answers.</summary>
    [Fact]
    public void PrefillStaysWithinItsTokenBudget()
    {
        using var w = new World("llama");
        using var engine = new BatchEngine(w.Model, new BatchEngineOptions { MaxBatch = 8, MaxQueue = 64, Capacity = 64, MaxPrefillTokens = 40 });
        var steps = new List<EngineStep>();
        engine.Stepped += s => { if (s.Kind == "prefill") lock (steps) steps.Add(s); };
        var reqs = Enumerable.Range(0, 8).Select(i => new SequenceRequest { PromptIds = Ids(500 + i, 12 + i), PromptLogprobs = true, Options = new GenerationOptions { MaxNewTokens = 3 } }).ToList();
        var results = reqs.Select(r => engine.Submit(r)).Select(h => h.Completion.GetAwaiter().GetResult()).ToList();
        for (int i = 0; i < reqs.Count; i++) Assert.Equal(BatchEngine.GenerateAll(w.Model, new[] { reqs[i] })[0].NewIds, results[i].NewIds);
        lock (steps) Assert.All(steps, s => Assert.True(s.Rows * 19 <= 40 || s.Rows == 1, $"{s.Rows} rows"));
        // A prompt longer than the budget on its own is refused up front.
        Assert.Throws<ContextLengthException>(() => engine.Submit(new SequenceRequest { PromptIds = Ids(9, 41), Options = new GenerationOptions { MaxNewTokens = 1 } }));
    }

    /// <summary>Sequences submitted while the engine stops either run or get <see cref="EngineStoppedException"/>: none waits forever.</summary>
    [Fact]
    public void SubmissionsDuringShutdownNeverHang()
    {
        using var w = new World("llama");
        for (int round = 0; round < 3; round++)
        {
            using var engine = new BatchEngine(w.Model, new BatchEngineOptions { MaxBatch = 2, MaxQueue = 1000, Capacity = 64 });
            var handles = new System.Collections.Concurrent.ConcurrentBag<SequenceHandle>();
            var submitter = Task.Run(() =>
            {
                for (int i = 0; i < 200; i++)
                {
                    try { handles.Add(engine.Submit(new SequenceRequest { PromptIds = Ids(i, 3), Options = new GenerationOptions { MaxNewTokens = 2 } })); }
                    catch (EngineStoppedException) { }
                }
            });
            Thread.Sleep(round * 5);
            var stop = engine.StopAsync(drain: round != 1);
            submitter.Wait(TimeSpan.FromSeconds(60));
            Assert.True(stop.Wait(TimeSpan.FromSeconds(60)));
            foreach (var h in handles)
            {
                Assert.True(((Task)h.Completion).ContinueWith(_ => { }).Wait(TimeSpan.FromSeconds(60)), "a sequence was left waiting");
                if (h.Completion.IsFaulted) Assert.IsType<EngineStoppedException>(h.Completion.Exception!.InnerException);
            }
        }
    }
}
