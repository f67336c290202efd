using SoftPrompt.Inference;
using SoftPrompt.Tokenization;
using SoftPrompt.Tuning;
using TorchSharp;
using static TorchSharp.torch;

namespace SoftPrompt.Evaluation;

public sealed record NeighbourToken(int Id, string Text, double Cosine);
public sealed record VirtualTokenNeighbours(int Index, double Norm, IReadOnlyList<NeighbourToken> Nearest);
public sealed record PrefixLayerNorms(int Layer, double KeyNorm, double ValueNorm);

/// <summary>What <c>softprompt inspect-prompt</c> reports about an adapter: for prompt tuning, each virtual
/// token's nearest vocabulary tokens by cosine and the projected hard prompt; for prefix tuning, which lives in
/// key/value space and has no token projection, the mean L2 norm of the prefix keys and values per layer.
/// With a tokenizer, neighbours are restricted to real, non-special tokens.</summary>
public sealed record PromptInspectionResult
{
    public required string Adapter { get; init; }
    public required string PeftType { get; init; }
    public required int NumVirtualTokens { get; init; }
    public IReadOnlyList<VirtualTokenNeighbours>? Tokens { get; init; }
    public int[]? ProjectedIds { get; init; }
    public string? ProjectedText { get; init; }
    public IReadOnlyList<PrefixLayerNorms>? LayerNorms { get; init; }
    public string? Note { get; init; }
}

public static class PromptInspection
{
    public static PromptInspectionResult Inspect(LanguageModel lm, string adapterDir, int topK = 5)
    {
        if (topK < 1) throw new SoftPromptException($"--top-k must be at least 1 (got {topK}).");
        using var method = lm.LoadPrompt(adapterDir);
        using var scope = torch.NewDisposeScope();
        using var emb = method.ExportEmbeddings();
        if (method is PromptTuning)
        {
            // With a tokenizer, only real, non-special tokens are candidates (padded embedding rows are not tokens).
            var allowed = lm.Tokenizer is { } tok ? TokenSets.AllowedTokens(tok, lm.Model.Config.VocabSize, readableOnly: false) : null;
            var (ids, cos) = PromptProjection.NearestTokens(lm.Model, emb, topK, allowed);
            var norms = emb.norm(1).data<float>().ToArray();
            var tokens = ids.Select((row, i) => new VirtualTokenNeighbours(i, norms[i],
                row.Select((id, j) => new NeighbourToken(id, lm.TokenText(id), cos[i][j])).ToList())).ToList();
            var projected = ids.Select(r => r[0]).ToArray();
            return new PromptInspectionResult
            {
                Adapter = Path.GetFullPath(adapterDir), PeftType = method.PeftType, NumVirtualTokens = method.NumVirtualTokens,
                Tokens = tokens, ProjectedIds = projected, ProjectedText = lm.Decode(projected),
            };
        }
        var cfg = lm.Model.Config;
        int n = method.NumVirtualTokens, L = cfg.NumLayers;
        // [n, 2L·kv_dim] -> [n, 2L, kv_dim]: block 2l is layer l's key, 2l+1 its value (PEFT's layout).
        var blocks = emb.view(n, 2 * L, cfg.KvDim).norm(2).mean(new long[] { 0 }).data<float>().ToArray();
        return new PromptInspectionResult
        {
            Adapter = Path.GetFullPath(adapterDir), PeftType = method.PeftType, NumVirtualTokens = n,
            LayerNorms = Enumerable.Range(0, L).Select(l => new PrefixLayerNorms(l, blocks[2 * l], blocks[2 * l + 1])).ToList(),
            Note = "prefix tuning: the prefix lives in each layer's key/value space, not in the input embedding space, so it has no nearest-token projection; per-layer mean key/value norms are listed instead.",
        };
    }
}
