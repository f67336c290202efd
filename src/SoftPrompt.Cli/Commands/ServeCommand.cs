using System.CommandLine;
using SoftPrompt.Runtime;
using SoftPrompt.Server;

namespace SoftPrompt.Cli.Commands;

/// <summary>`softprompt serve`: many saved prompts on one frozen model behind an OpenAI-compatible HTTP API
/// (the server itself is the SoftPrompt.Server project).</summary>
public static class ServeCommand
{
    public static Command Create()
    {
        var model = Cli.ModelOption(); var device = Cli.DeviceOption(); var dtype = Cli.DTypeOption(); var threads = Cli.ThreadsOption();
        var adapter = new Option<string[]>("--adapter", "-a") { Description = "NAME=ADAPTER_DIR to serve under model name NAME (repeatable).", AllowMultipleArgumentsPerToken = false };
        var adaptersDir = new Option<string>("--adapters-dir") { Description = "Serve every adapter folder found under this folder, named by its relative path (e.g. demo/prompt/adapter)." };
        var host = new Option<string>("--host") { Description = "Address to bind (127.0.0.1 by default; 0.0.0.0 for all interfaces).", DefaultValueFactory = _ => "127.0.0.1" };
        var port = new Option<int>("--port") { Description = "Port (0 = any free port; the address is printed).", DefaultValueFactory = _ => 8000 };
        var apiKeyEnv = new Option<string>("--api-key-env") { Description = "Require 'Authorization: Bearer KEY' where KEY is this environment variable's value." };
        var maxBatch = new Option<int>("--max-batch") { Description = "Sequences decoded together.", DefaultValueFactory = _ => 32 };
        var maxQueue = new Option<int>("--max-queue") { Description = "Sequences waiting for a batch row; beyond it requests get 429.", DefaultValueFactory = _ => 256 };
        var maxContext = new Option<int?>("--max-context") { Description = "Tokens per sequence (virtual + prompt + completion); default the model's positions." };
        var maxTokens = new Option<int>("--max-tokens") { Description = "Cap on a request's max_tokens.", DefaultValueFactory = _ => 512 };
        var maxBody = new Option<long>("--max-body-bytes") { Description = "Cap on a request body (413 beyond).", DefaultValueFactory = _ => 1 << 20 };
        var maxResident = new Option<int>("--max-resident-adapters") { Description = "Adapters kept in memory (least recently used are reloaded on demand).", DefaultValueFactory = _ => 64 };
        var maxAdapters = new Option<int>("--max-adapters") { Description = "Adapters registered at most (start-up and POST /v1/adapters).", DefaultValueFactory = _ => 4096 };
        var allowAdmin = new Option<bool>("--allow-adapter-admin") { Description = "Enable POST/DELETE /v1/adapters (off by default); loads are confined to --adapters-dir." };
        var adminKeyEnv = new Option<string>("--admin-key-env") { Description = "Require 'Authorization: Bearer KEY' for POST/DELETE /v1/adapters, KEY being this environment variable's value (required beyond loopback)." };
        var insecure = new Option<bool>("--insecure") { Description = "Allow a non-loopback --host without --api-key-env." };
        var cors = new Option<string[]>("--cors-origin") { Description = "A browser origin allowed to call the API (repeatable; * = any). Other cross-origin requests get 403.", AllowMultipleArgumentsPerToken = false };
        var maxConnections = new Option<int>("--max-connections") { Description = "Open connections at most.", DefaultValueFactory = _ => 1024 };
        var headerTimeout = new Option<int>("--header-timeout") { Description = "Seconds to send the request headers; also the grace before a body slower than 240 bytes/s is cut (408).", DefaultValueFactory = _ => 10 };
        var requestTimeout = new Option<int>("--request-timeout") { Description = "Seconds a completion request may take (408 beyond; 0 = no limit).", DefaultValueFactory = _ => 600 };
        var maxClientSeqs = new Option<int?>("--max-client-sequences") { Description = "Sequences one client (remote address) may hold queued or running; default half of --max-batch + --max-queue." };
        var maxPrefill = new Option<int?>("--max-prefill-tokens") { Description = "Padded tokens per prefill forward (default: the larger of the context and 4096); a longer prompt gets 400." };
        var cmd = new Command("serve", "Serve the model and saved prompts over an OpenAI-compatible HTTP API (/v1/completions, /v1/chat/completions, /v1/models), batching requests across prompts.")
            { model, adapter, adaptersDir, host, port, apiKeyEnv, maxBatch, maxQueue, maxContext, maxTokens, maxBody, maxResident, maxAdapters, allowAdmin, adminKeyEnv, insecure, cors,
              maxConnections, headerTimeout, requestTimeout, maxClientSeqs, maxPrefill, device, dtype, threads };
        cmd.SetAction(pr =>
        {
            TorchRuntime.SetThreads(pr.GetValue(threads));
            var adapters = (pr.GetValue(adapter) ?? Array.Empty<string>()).Select(a =>
            {
                int eq = a.IndexOf('=');
                if (eq <= 0 || eq == a.Length - 1) throw new SoftPromptException($"--adapter '{a}': expected NAME=ADAPTER_DIR.");
                return (a[..eq], a[(eq + 1)..]);
            }).ToList();
            var o = new ServerOptions
            {
                ModelDir = pr.GetValue(model)!, Adapters = adapters, AdaptersDir = pr.GetValue(adaptersDir), Host = pr.GetValue(host)!, Port = pr.GetValue(port),
                ApiKeyEnv = pr.GetValue(apiKeyEnv), Device = pr.GetValue(device)!, DType = pr.GetValue(dtype)!, MaxBatch = pr.GetValue(maxBatch),
                MaxQueue = pr.GetValue(maxQueue), MaxContext = pr.GetValue(maxContext), MaxTokens = pr.GetValue(maxTokens), MaxBodyBytes = pr.GetValue(maxBody),
                MaxResidentAdapters = pr.GetValue(maxResident), MaxAdapters = pr.GetValue(maxAdapters), AllowAdapterAdmin = pr.GetValue(allowAdmin),
                AdminKeyEnv = pr.GetValue(adminKeyEnv), Insecure = pr.GetValue(insecure), CorsOrigins = pr.GetValue(cors) ?? Array.Empty<string>(),
                MaxConnections = pr.GetValue(maxConnections), HeaderTimeoutSeconds = pr.GetValue(headerTimeout), RequestTimeoutSeconds = pr.GetValue(requestTimeout),
                MaxClientSequences = pr.GetValue(maxClientSeqs), MaxPrefillTokens = pr.GetValue(maxPrefill),
                CheckFinite = Cli.CheckFinite(pr), Log = line => Console.Error.WriteLine($"[serve] {line}"),
            };
            return Run(o).GetAwaiter().GetResult();
        });
        return cmd;
    }

    static async Task<int> Run(ServerOptions o)
    {
        await using var server = await SoftPromptServer.StartAsync(o);
        Console.Error.WriteLine($"[serve] loading {o.ModelDir} ...");
        try { await server.Ready; }
        catch (Exception e)
        {
            await server.StopAsync();
            throw e is SoftPromptException ? e : new SoftPromptException($"could not load the model: {e.Message}", e);
        }
        Console.WriteLine($"listening on {server.Address.ToString().TrimEnd('/')}");
        Console.Out.Flush();
        await server.WaitForShutdownAsync();
        Console.Error.WriteLine("[serve] stopped.");
        return 0;
    }
}

/// <summary>`softprompt serve-bench`: the server's load test and benchmark (batched vs one at a time vs one server per adapter).</summary>
public static class ServeBenchCommand
{
    public static Command Create()
    {
        var model = new Option<string>("--model", "-m") { Description = "Model folder (or --shape)." };
        var shape = new Option<string>("--shape") { Description = "Random weights of a named shape (e.g. gpt2-small); prompts are token ids." };
        var clients = new Option<int>("--clients") { Description = "Concurrent clients.", DefaultValueFactory = _ => 32 };
        var requests = new Option<int>("--requests") { Description = "Requests of the batched run.", DefaultValueFactory = _ => 2000 };
        var unbatched = new Option<int>("--unbatched-requests") { Description = "Requests of the unbatched runs.", DefaultValueFactory = _ => 200 };
        var maxTokens = new Option<int>("--max-tokens") { Description = "Tokens generated per request (greedy, ignore_eos).", DefaultValueFactory = _ => 8 };
        var adapters = new Option<int>("--adapters") { Description = "Adapters (alternating prompt / prefix tuning).", DefaultValueFactory = _ => 4 };
        var modes = new Option<string>("--modes") { Description = "Comma-separated: batched, sequential, per-adapter.", DefaultValueFactory = _ => "batched,sequential,per-adapter" };
        var maxContext = new Option<int?>("--max-context") { Description = "KV-cache entries per sequence (default: the model's positions)." };
        var threads = Cli.ThreadsOption(); var format = Cli.FormatOption();
        var cmd = new Command("serve-bench", "Load-test the server over loopback: throughput and latency of batched serving vs one request at a time vs one server per adapter; every reply checked against its single-request answer.")
            { model, shape, clients, requests, unbatched, maxTokens, adapters, modes, maxContext, threads, format };
        cmd.SetAction(pr =>
        {
            TorchRuntime.SetThreads(pr.GetValue(threads));
            var rows = ServeBenchmark.RunAsync(new ServeBenchOptions
            {
                Model = pr.GetValue(model), Shape = pr.GetValue(shape), Clients = pr.GetValue(clients), Requests = pr.GetValue(requests),
                UnbatchedRequests = pr.GetValue(unbatched), MaxTokens = pr.GetValue(maxTokens), Adapters = pr.GetValue(adapters), MaxContext = pr.GetValue(maxContext),
                Modes = pr.GetValue(modes)!.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries),
                Log = l => Console.Error.WriteLine($"[serve-bench] {l}"),
            }).GetAwaiter().GetResult();
            if (pr.GetValue(format) == "json") { Cli.WriteJson(rows); return rows.Any(r => r.Errors + r.Mismatches > 0) ? 1 : 0; }
            Console.WriteLine("| mode | clients | requests | errors | mismatches | tokens/s | requests/s | p50 ms | p99 ms | RSS after warm-up -> end (MB) |");
            Console.WriteLine("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
            foreach (var r in rows)
                Console.WriteLine($"| {r.Mode} | {r.Clients} | {r.Requests} | {r.Errors} | {r.Mismatches} | {r.TokensPerS:F0} | {r.RequestsPerS:F1} | {r.P50Ms:F0} | {r.P99Ms:F0} | {r.RssWarmBytes / 1e6:F0} -> {r.RssEndBytes / 1e6:F0} |");
            return rows.Any(r => r.Errors + r.Mismatches > 0) ? 1 : 0;
        });
        return cmd;
    }
}
