using System.Diagnostics;
using System.Net.Http.Json;
using System.Text.Json;
using SoftPrompt.IO;
using SoftPrompt.Models;
using SoftPrompt.Tuning;
using static TorchSharp.torch;

namespace SoftPrompt.Server;

public sealed record ServeBenchOptions
{
    /// <summary>A model folder, or null with <see cref="Shape"/> (random weights of a named shape, token-id prompts).</summary>
    public string? Model { get; init; }
    public string? Shape { get; init; }
    public int Clients { get; init; } = 32;
    /// <summary>Requests of the batched run (and the load test).</summary>
    public int Requests { get; init; } = 2000;
    /// <summary>Requests of the unbatched runs (one at a time; one server per adapter).</summary>
    public int UnbatchedRequests { get; init; } = 200;
    public int MaxTokens { get; init; } = 8;
    /// <summary>Adapters made for the run, alternating prompt tuning and prefix tuning.</summary>
    public int Adapters { get; init; } = 4;
    /// <summary>Distinct (adapter, prompt) pairs the requests draw from; each has a reference answer made alone.</summary>
    public int Pool { get; init; } = 64;
    /// <summary>"batched", "sequential", "per-adapter" (one server per adapter, each decoding one request at a time),
    /// "generate" (generation speed with the KV cache at batch 1 and batch <see cref="Clients"/>, no HTTP).</summary>
    public IReadOnlyList<string> Modes { get; init; } = new[] { "batched", "sequential", "per-adapter" };
    /// <summary>KV-cache entries per sequence (null: the model's positions; keep it small for wide models: the cache is preallocated for every row).</summary>
    public int? MaxContext { get; init; }
    public int Seed { get; init; } = 1;
    public Action<string>? Log { get; init; }
    /// <summary>Starts a server for a run (default: in this process). The load test starts `softprompt serve` processes,
    /// so that the memory measured is the server's alone.</summary>
    public Func<ServerOptions, Task<BenchServer>>? Launch { get; init; }
}

/// <summary>A server the benchmark drives: its address, its resident memory in bytes, and how to stop it.</summary>
public sealed record BenchServer(Uri Address, Func<long> ResidentBytes, Func<Task> Stop);

/// <summary>Throughput (generated tokens per second), latency percentiles, correctness against the single-request
/// answers, and the process's resident memory after warm-up and at the end, of one mode.</summary>
public sealed record ServeBenchRow(string Mode, int Clients, int Requests, int Errors, int Mismatches, double Seconds, double TokensPerS,
    double RequestsPerS, double P50Ms, double P99Ms, long RssWarmBytes, long RssEndBytes);

/// <summary>
/// Load test and benchmark of the server over loopback: adapters for the model (half prompt tuning, half prefix
/// tuning), a pool of (adapter, prompt) pairs each answered alone first (greedy, <c>ignore_eos</c>, token logprobs),
/// then the modes: <c>batched</c> (one server, <see cref="ServeBenchOptions.Clients"/> concurrent clients),
/// <c>sequential</c> (the same server, one request at a time), <c>per-adapter</c> (one server per adapter, each
/// without cross-request batching: the one-process-per-prompt deployment, run in this process). Every reply is
/// compared with its pair's reference (same text, logprobs within 1e-4).
/// </summary>
public static class ServeBenchmark
{
    sealed record Pair(string Adapter, int[] Ids);
    sealed record Answer(string Text, float[] LogProbs);

    public static async Task<List<ServeBenchRow>> RunAsync(ServeBenchOptions o)
    {
        if (o.Clients < 1 || o.Requests < 1 || o.MaxTokens < 1 || o.Adapters < 1 || o.Pool < 1) throw new SoftPromptException("serve-bench: counts must be >= 1.");
        if ((o.Model is null) == (o.Shape is null)) throw new SoftPromptException("give exactly one of --model DIR or --shape NAME.");
        var tmp = Path.Combine(Path.GetTempPath(), "softprompt-serve-bench-" + Guid.NewGuid().ToString("N")[..8]);
        Directory.CreateDirectory(tmp);
        try
        {
            var modelDir = o.Model ?? WriteRandomModel(o.Shape!, Path.Combine(tmp, "model"), o.Seed);
            var adapters = MakeAdapters(modelDir, tmp, o.Adapters, o.Seed);
            var rng = new Random(o.Seed);
            int vocab = ModelConfig.Load(modelDir).VocabSize;
            var pool = Enumerable.Range(0, o.Pool).Select(i => new Pair(adapters[i % adapters.Count].Name,
                Enumerable.Range(0, rng.Next(4, 17)).Select(_ => rng.Next(1, vocab)).ToArray())).ToList();
            var work = Enumerable.Range(0, o.Requests).Select(_ => rng.Next(pool.Count)).ToList();
            var rows = new List<ServeBenchRow>();
            if (!o.Modes.Any(m => m is "batched" or "sequential" or "per-adapter"))
            {
                if (o.Modes.Contains("generate")) rows.AddRange(GenerationSpeed(modelDir, vocab, o, rng));
                return rows;
            }

            var baseOptions = new ServerOptions { ModelDir = modelDir, Port = 0, MaxBatch = o.Clients, MaxQueue = 4 * o.Clients, Adapters = adapters.Select(a => (a.Name, a.Dir)).ToList(), MaxTokens = Math.Max(512, o.MaxTokens), MaxContext = o.MaxContext };
            var launch = o.Launch ?? InProcess;
            var (server, http) = await Start(launch, baseOptions);
            Dictionary<int, Answer> reference = new();
            try
            {
                o.Log?.Invoke($"reference answers for {pool.Count} (adapter, prompt) pairs, one at a time ...");
                for (int i = 0; i < pool.Count; i++) reference[i] = (await Ask(http, pool[i], o.MaxTokens)).Answer ?? throw new SoftPromptException("a reference request failed.");
                if (o.Modes.Contains("sequential"))
                {
                    o.Log?.Invoke($"sequential: {Math.Min(o.UnbatchedRequests, work.Count)} requests one at a time ...");
                    rows.Add(await Drive("sequential", 1, work.Take(o.UnbatchedRequests).ToList(), pool, reference, o.MaxTokens, _ => http, server.ResidentBytes));
                }
                if (o.Modes.Contains("batched"))
                {
                    o.Log?.Invoke($"batched: {work.Count} requests from {o.Clients} clients ...");
                    rows.Add(await Drive("batched", o.Clients, work, pool, reference, o.MaxTokens, _ => http, server.ResidentBytes));
                }
            }
            finally { http.Dispose(); await server.Stop(); }

            if (o.Modes.Contains("generate")) rows.AddRange(GenerationSpeed(modelDir, vocab, o, rng));
            if (o.Modes.Contains("per-adapter"))
            {
                o.Log?.Invoke($"per-adapter: {adapters.Count} servers without batching, {Math.Min(o.UnbatchedRequests, work.Count)} requests from {o.Clients} clients ...");
                var servers = new Dictionary<string, (BenchServer S, HttpClient H)>();
                try
                {
                    foreach (var a in adapters)
                        servers[a.Name] = await Start(launch, baseOptions with { MaxBatch = 1, MaxQueue = 4 * o.Clients, Adapters = new[] { (a.Name, a.Dir) } });
                    rows.Add(await Drive("per-adapter", o.Clients, work.Take(o.UnbatchedRequests).ToList(), pool, reference, o.MaxTokens, p => servers[p.Adapter].H,
                        () => servers.Values.Select(x => x.S.ResidentBytes()).Distinct().Sum()));
                }
                finally
                {
                    foreach (var (s, h) in servers.Values) { h.Dispose(); await s.Stop(); }
                }
            }
            return rows;
        }
        finally { try { Directory.Delete(tmp, true); } catch (IOException) { } }
    }

    /// <summary>Generation with the KV cache, no HTTP: tokens/s of <see cref="Generator"/> (batch 1) and of the engine at
    /// batch 1 and batch <see cref="ServeBenchOptions.Clients"/> (greedy, no early stop, 16-token prompts).</summary>
    static List<ServeBenchRow> GenerationSpeed(string modelDir, int vocab, ServeBenchOptions o, Random rng)
    {
        o.Log?.Invoke($"generation speed with the KV cache: batch 1 and {o.Clients}, {o.MaxTokens} tokens each ...");
        using var model = ModelLoader.Load(modelDir);
        int[] Prompt() => Enumerable.Range(0, 16).Select(_ => rng.Next(1, vocab)).ToArray();
        var opt = new Inference.GenerationOptions { MaxNewTokens = o.MaxTokens };
        var rows = new List<ServeBenchRow>();
        ServeBenchRow Row(string mode, int batch, Action run)
        {
            run();   // warm-up
            var sw = Stopwatch.StartNew();
            run();
            double secs = sw.Elapsed.TotalSeconds;
            return new ServeBenchRow(mode, batch, batch, 0, 0, secs, batch * o.MaxTokens / secs, batch / secs, secs * 1000, secs * 1000, 0, Rss());
        }
        rows.Add(Row("generate: Generator (batch 1)", 1, () => { using var sc = NewDisposeScope(); Inference.Generator.Generate(model, Prompt(), opt); }));
        foreach (int b in new[] { 1, o.Clients })
            rows.Add(Row($"generate: engine (batch {b})", b, () => Inference.BatchEngine.GenerateAll(model,
                Enumerable.Range(0, b).Select(_ => new Inference.SequenceRequest { PromptIds = Prompt(), Options = opt }).ToList(), maxBatch: b)));
        return rows;
    }

    static async Task<BenchServer> InProcess(ServerOptions o)
    {
        var s = await SoftPromptServer.StartAsync(o);
        await s.Ready;
        return new BenchServer(s.Address, Rss, async () => await s.DisposeAsync());
    }

    static async Task<(BenchServer, HttpClient)> Start(Func<ServerOptions, Task<BenchServer>> launch, ServerOptions o)
    {
        var s = await launch(o);
        return (s, new HttpClient { BaseAddress = s.Address, Timeout = TimeSpan.FromMinutes(10) });
    }

    static async Task<(Answer? Answer, int Tokens)> Ask(HttpClient http, Pair p, int maxTokens)
    {
        using var r = await http.PostAsJsonAsync("/v1/completions", new { model = p.Adapter, prompt = p.Ids, max_tokens = maxTokens, temperature = 0, logprobs = 0, ignore_eos = true });
        if (!r.IsSuccessStatusCode) return (null, 0);
        using var doc = JsonDocument.Parse(await r.Content.ReadAsStringAsync());
        var c = doc.RootElement.GetProperty("choices")[0];
        var lps = c.GetProperty("logprobs").GetProperty("token_logprobs").EnumerateArray().Select(e => e.GetSingle()).ToArray();
        return (new Answer(c.GetProperty("text").GetString()!, lps), doc.RootElement.GetProperty("usage").GetProperty("completion_tokens").GetInt32());
    }

    static async Task<ServeBenchRow> Drive(string mode, int clients, List<int> work, List<Pair> pool, Dictionary<int, Answer> reference, int maxTokens,
        Func<Pair, HttpClient> route, Func<long> rss)
    {
        int next = -1, errors = 0, mismatches = 0, done = 0;
        long tokens = 0, rssWarm = 0;
        var latencies = new double[work.Count];
        // Resident memory is read after half the requests and at the end: allocator pools, the managed heap and the KV
        // cache settle during the first half, so growth over the second half is what a leak would show.
        int warmAt = Math.Max(1, work.Count / 2);
        var sw = Stopwatch.StartNew();
        await Task.WhenAll(Enumerable.Range(0, clients).Select(_ => Task.Run(async () =>
        {
            while (true)
            {
                int i = Interlocked.Increment(ref next);
                if (i >= work.Count) return;
                var p = pool[work[i]];
                var t0 = Stopwatch.GetTimestamp();
                (Answer? a, int n) = (null, 0);
                try { (a, n) = await Ask(route(p), p, maxTokens); } catch (HttpRequestException) { }
                latencies[i] = Stopwatch.GetElapsedTime(t0).TotalMilliseconds;
                if (a is null) Interlocked.Increment(ref errors);
                else
                {
                    Interlocked.Add(ref tokens, n);
                    var want = reference[work[i]];
                    if (a.Text != want.Text || a.LogProbs.Length != want.LogProbs.Length || a.LogProbs.Zip(want.LogProbs).Any(x => Math.Abs(x.First - x.Second) > 1e-4))
                        Interlocked.Increment(ref mismatches);
                }
                if (Interlocked.Increment(ref done) == warmAt) Interlocked.Exchange(ref rssWarm, rss());
            }
        })));
        double secs = sw.Elapsed.TotalSeconds;
        var sorted = latencies.OrderBy(x => x).ToArray();
        double Pct(double q) => sorted[(int)Math.Round(q * (sorted.Length - 1))];
        return new ServeBenchRow(mode, clients, work.Count, errors, mismatches, secs, tokens / secs, work.Count / secs, Pct(0.5), Pct(0.99), rssWarm, rss());
    }

    static long Rss()
    {
        GC.Collect();
        using var p = Process.GetCurrentProcess();
        p.Refresh();
        return p.WorkingSet64;
    }

    /// <summary>A model folder of a named shape with random weights (config.json + model.safetensors; no tokenizer).</summary>
    static string WriteRandomModel(string shape, string dir, int seed)
    {
        if (!ModelFactory.Shapes.TryGetValue(shape, out var cfgFactory)) throw new SoftPromptException($"unknown shape '{shape}' (known: {string.Join(", ", ModelFactory.Shapes.Keys)}).");
        Directory.CreateDirectory(dir);
        var cfgJson = cfgFactory();
        File.WriteAllText(Path.Combine(dir, "config.json"), cfgJson.ToJsonString());
        var cfg = ModelConfig.Load(dir);
        using var scope = NewDisposeScope();
        var w = ModelFactory.RandomWeights(ModelLoader.ExpectedShapes(cfg).Select(kv => (kv.Key, kv.Value)), seed);
        SafeTensors.Save(Path.Combine(dir, "model.safetensors"), w, new Dictionary<string, string> { ["format"] = "pt" });
        return dir;
    }

    static List<(string Name, string Dir)> MakeAdapters(string modelDir, string tmp, int count, int seed)
    {
        using var model = ModelLoader.Load(modelDir);
        var list = new List<(string, string)>();
        for (int i = 0; i < count; i++)
        {
            bool prefix = i % 2 == 1;
            int n = 4 + 4 * (i / 2);   // prompt 4, prefix 4, prompt 8, prefix 8, ...
            var name = (prefix ? "prefix" : "prompt") + i;
            var dir = Path.Combine(tmp, name);
            using IPromptMethod m = prefix ? PrefixTuning.Create(model.Config, n, false, 0, seed + i, model.Device, initScale: 0.5)
                : PromptTuning.Create(model, n, PromptInit.SampleVocab, seed + i);
            Adapter.Save(dir, m, model);
            list.Add((name, dir));
        }
        return list;
    }
}
