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
        var cmd = new Command("serve", "Serve the model and saved prompts over an OpenAI-compatible HTTP API (/v1/completions, /v1/chat/completions, /v1/models), batching requests across prompts.")
            { model, adapter, adaptersDir, host, port, apiKeyEnv, maxBatch, maxQueue, maxContext, maxTokens, maxBody, maxResident, device, dtype, threads };
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
                MaxResidentAdapters = pr.GetValue(maxResident), Log = line => Console.Error.WriteLine($"[serve] {line}"),
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
