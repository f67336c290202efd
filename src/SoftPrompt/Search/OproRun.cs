using Microsoft.Extensions.AI;
using SoftPrompt.Inference;
using SoftPrompt.Llm;

namespace SoftPrompt.Search;

/// <summary>
/// The pieces of an OPRO run built from the options: the optimizer client (an OpenAI-compatible endpoint, or a local
/// model in-process), the judge client for <c>--objective judge</c>, the shared call/token meter, the objective and the
/// <see cref="OproSearch"/>. What <see cref="HardPromptSearchJob"/> uses for <c>--strategy opro</c>. Under MPI (the
/// objective's communicator) rank 0 alone holds the clients and calls them (<see cref="RootCalls"/>).
/// </summary>
public sealed class OproRun : IDisposable
{
    readonly List<IDisposable> _owned = new();
    public required CallMeter Meter { get; init; }
    public required IChatClient Optimizer { get; init; }
    public required IInstructionObjective Objective { get; init; }
    public required OproSearch Search { get; init; }
    public required string OptimizerName { get; init; }

    public static OproRun Create(HardPromptSearchOptions o, LanguageModel target, TargetLossObjective objective, string? trajectoryPath, bool resume, Action<string>? message = null)
    {
        var meter = new CallMeter { MaxCalls = o.MaxCalls, MaxTokens = o.MaxTokensBudget };
        var calls = new RootCalls(objective.Communicator, meter);
        var owned = new List<IDisposable>();
        var timeout = TimeSpan.FromSeconds(o.RequestTimeout);
        // The clients exist on rank 0 alone (the one rank that calls them, see RootCalls); the other ranks get what
        // the search needs to know of them (names, the meta-prompt kind, the rubric) and stand-ins that are never called.
        IChatClient? optimizer = null, judge = null;
        LocalChatClient? local = null;
        VerdictCache? cache = null;
        Clients Make()
        {
            bool plain; string name;
            if (o.OptimizerModelDir is null)
            {
                var (client, info) = ChatProviders.Create(new ChatEndpoint(o.OptimizerProvider, o.OptimizerEndpoint, o.OptimizerModel!, o.ApiKeyEnv, o.MaxRetries, timeout, "optimizer"));
                optimizer = new MeteredChatClient(client, meter, judge: false, o.Parallel, info);
                plain = false; name = o.OptimizerProvider == "openai" ? $"{o.OptimizerModel} at {o.OptimizerEndpoint}" : $"{o.OptimizerModel} ({o.OptimizerProvider})";
                message?.Invoke($"optimizer: {name} (chat meta-prompt)");
            }
            else
            {
                var dir = o.OptimizerModelDir!;
                bool same = Path.GetFullPath(dir).TrimEnd(Path.DirectorySeparatorChar) == Path.GetFullPath(target.Directory).TrimEnd(Path.DirectorySeparatorChar);
                local = same ? new LocalChatClient(target, ChatFormat.Detect(dir)) : LocalChatClient.Load(dir, o.Device, o.Dtype);
                owned.Add(local);
                optimizer = new MeteredChatClient(local, meter, judge: false, 1, new EndpointInfo(dir, Path.GetFileName(Path.GetFullPath(dir).TrimEnd(Path.DirectorySeparatorChar)), null, "optimizer", 0));
                plain = local.Format.IsBase;
                name = $"local {Path.GetFileName(Path.GetFullPath(dir).TrimEnd(Path.DirectorySeparatorChar))}";
                message?.Invoke($"optimizer: {name}{(same ? " (the target model itself)" : "")}, chat format {local.Format.Kind}" +
                                (plain ? " (a base model: OPRO's plain meta-prompt, previous instructions and scores only)" : ""));
            }
            owned.Add(optimizer);
            if (objective.Metric != "judge") return new Clients(name, plain, null);

            var rubric = Judge.ReadRubric(o.Rubric!);
            string judgeId;
            var provider = o.JudgeProvider ?? (o.OptimizerModelDir is null ? o.OptimizerProvider : "openai");
            // The judge's endpoint defaults to the optimizer's only on the same provider.
            var endpoint = o.JudgeEndpoint ?? (provider == o.OptimizerProvider ? o.OptimizerEndpoint : null);
            if (endpoint is not null || provider != "openai")
            {
                var model = o.JudgeModel ?? o.OptimizerModel ?? throw new SoftPromptException("--judge-model is required with --judge-endpoint.");
                var (client, info) = ChatProviders.Create(new ChatEndpoint(provider, endpoint, model, o.JudgeApiKeyEnv ?? (provider == o.OptimizerProvider ? o.ApiKeyEnv : null), o.MaxRetries, timeout, "judge"));
                judge = new MeteredChatClient(client, meter, judge: true, o.Parallel, info);
                judgeId = $"{provider}:{model}";
                message?.Invoke($"judge: {model} ({provider}{(endpoint is null ? "" : " at " + endpoint)})");
            }
            else
            {
                judge = new MeteredChatClient(local!, meter, judge: true, 1, new EndpointInfo(o.OptimizerModelDir!, "local", null, "judge", 0));
                judgeId = "local:" + Path.GetFullPath(o.OptimizerModelDir!);
                message?.Invoke("judge: the local optimizer model");
            }
            owned.Add(judge);
            var cachePath = trajectoryPath is null ? null : Path.Combine(Path.GetDirectoryName(Path.GetFullPath(trajectoryPath))!, VerdictCache.FileName);
            cache = new VerdictCache(judgeId, cachePath);
            return new Clients(name, plain, rubric);
        }
        Clients made;
        try { made = calls.Run(Make); }
        catch
        {
            for (int i = owned.Count - 1; i >= 0; i--) owned[i].Dispose();
            throw;
        }
        int rank = objective.Communicator.Rank;
        optimizer ??= new RootOnlyChatClient("optimizer", rank);
        IInstructionObjective scored = objective;
        if (made.Rubric is string rubricText)
            scored = new JudgeObjective(objective, judge ?? new RootOnlyChatClient("judge", rank), rubricText, o.Parallel, cache ?? new VerdictCache("", null), calls);
        var run = new OproRun
        {
            Meter = meter, Optimizer = optimizer, Objective = scored, OptimizerName = made.Name,
            Search = new OproSearch(optimizer, meter, made.Plain, trajectoryPath, resume, calls),
        };
        run._owned.AddRange(owned);
        return run;
    }

    /// <summary>What every rank needs to know of the clients rank 0 made.</summary>
    sealed record Clients(string Name, bool Plain, string? Rubric);

    public void Dispose()
    {
        for (int i = _owned.Count - 1; i >= 0; i--) _owned[i].Dispose();
    }
}
