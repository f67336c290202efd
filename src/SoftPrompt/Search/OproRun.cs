using Microsoft.Extensions.AI;
using SoftPrompt.Inference;
using SoftPrompt.Llm;

namespace SoftPrompt.Search;

/// <summary>
/// The pieces of an OPRO run built from the options: the optimizer client (an OpenAI-compatible endpoint, or a local
/// model in-process), the judge client for <c>--objective judge</c>, the shared call/token meter, the objective and the
/// <see cref="OproSearch"/>. What <see cref="HardPromptSearchJob"/> uses for <c>--strategy opro</c>.
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
        var owned = new List<IDisposable>();
        var timeout = TimeSpan.FromSeconds(o.RequestTimeout);
        IChatClient optimizer; bool plain; string name;
        LocalChatClient? local = null;
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

        IInstructionObjective scored = objective;
        if (objective.Metric == "judge")
        {
            var rubric = Judge.ReadRubric(o.Rubric!);
            IChatClient judge;
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
            scored = new JudgeObjective(objective, judge, rubric, o.Parallel, new VerdictCache(judgeId, cachePath));
        }
        var run = new OproRun
        {
            Meter = meter, Optimizer = optimizer, Objective = scored, OptimizerName = name,
            Search = new OproSearch(optimizer, meter, plain, trajectoryPath, resume),
        };
        run._owned.AddRange(owned);
        return run;
    }

    public void Dispose()
    {
        for (int i = _owned.Count - 1; i >= 0; i--) _owned[i].Dispose();
    }
}
