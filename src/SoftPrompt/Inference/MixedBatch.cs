using SoftPrompt.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace SoftPrompt.Inference;

/// <summary>One row of a mixed batch: token ids and the prompt (or none) the row carries.</summary>
public sealed record PromptedIds(IReadOnlyList<int> Ids, AttachedPrompt? Prompt = null);

/// <summary>
/// Forward passes over batches whose rows carry DIFFERENT prompts: prompt-tuning rows with any number of virtual
/// tokens, prefix rows (their own past keys/values), and rows with no prompt, in one forward. The model sees only
/// per-row input embeddings, per-row positions, a per-row (ragged) KV cache and the mask it yields: each row's
/// virtual tokens take positions 0..n-1 and its real tokens follow, as PEFT does, whatever the other rows hold.
/// </summary>
public static class MixedBatch
{
    /// <summary>Logits scored at once by <see cref="TokenLogProbs"/>: positions x vocabulary elements per chunk
    /// (16M: 64 MB of float32 logits plus their log-softmax), whatever the prompt's length.</summary>
    public const long LogProbChunkElements = 1L << 24;

    /// <summary>Entries a row needs in the cache: prefix + virtual-token embeddings + tokens.</summary>
    public static int Footprint(PromptedIds r) => (r.Prompt?.VirtualTokens ?? 0) + r.Ids.Count;

    /// <summary>
    /// The first forward of rows [first, first + rows.Count) of a ragged cache (their earlier content is discarded):
    /// a prefix is copied into the row's cache, prompt embeddings are placed before the token embeddings, and the
    /// inputs are right-padded to the longest row. Returns the hidden states [rows, T, hidden] (row b's input entry t
    /// at index t: its virtual tokens first) and, per row, the number of virtual-token entries in its input.
    /// </summary>
    public static (Tensor Hidden, int[] EmbedOffsets) Prefill(CausalLM model, KvCache cache, int first, IReadOnlyList<PromptedIds> rows)
    {
        int n = rows.Count;
        var counts = new int[n];
        var offsets = new int[n];
        for (int b = 0; b < n; b++)
        {
            var r = rows[b];
            if (r.Ids.Count == 0) throw new SoftPromptException("every row needs at least one token.");
            cache.ResetRow(first + b);
            if (r.Prompt?.PastKeyValues is { } pkv) cache.SetRowPrefix(first + b, pkv);
            offsets[b] = r.Prompt?.Embeddings is { } e ? (int)e.shape[0] : 0;
            counts[b] = offsets[b] + r.Ids.Count;
        }
        int T = counts.Max();
        var pos = new long[n * T];
        var embeds = new Tensor[n];
        for (int b = 0; b < n; b++)
        {
            int len = cache.RowLength(first + b);
            for (int t = 0; t < counts[b]; t++) pos[b * T + t] = len + t;   // padding keeps position 0
            var ids = torch.tensor(rows[b].Ids.Select(i => (long)i).ToArray(), ScalarType.Int64, model.Device);
            var parts = new List<Tensor>(3);
            if (rows[b].Prompt?.Embeddings is { } pe) parts.Add(pe.to(model.DType));
            parts.Add(model.Embed(ids).to(model.DType));
            if (counts[b] < T) parts.Add(torch.zeros(new long[] { T - counts[b], model.Config.HiddenSize }, model.DType, model.Device));
            embeds[b] = parts.Count == 1 ? parts[0] : torch.cat(parts.ToArray(), 0);
        }
        var mask = cache.BeginRaggedStep(first, counts);
        var res = model.Forward(new ForwardArgs
        {
            InputsEmbeds = torch.stack(embeds, 0),
            PositionIds = torch.tensor(pos, ScalarType.Int64, model.Device).view(n, T),
            AttentionMask = mask, Cache = cache,
        });
        return (res.Hidden, offsets);
    }

    /// <summary>
    /// Log-probability of each of a row's tokens given the ones before it, from that row's prefill hidden states
    /// [T, hidden]: the same convention as <see cref="Scorer"/> (the first token is scored only when virtual-token
    /// embeddings precede it; a prefix has no hidden row of its own).
    /// </summary>
    public static double?[] TokenLogProbs(CausalLM model, Tensor rowHidden, IReadOnlyList<int> ids, int embedOffset)
    {
        bool firstScored = embedOffset > 0;
        int start = firstScored ? embedOffset - 1 : 0;
        int count = ids.Count - 1 + (firstScored ? 1 : 0);
        var lp = new double?[ids.Count];
        if (count <= 0) return lp;
        using var scope = torch.NewDisposeScope();
        var targets = torch.tensor(ids.Skip(firstScored ? 0 : 1).Select(i => (long)i).ToArray(), ScalarType.Int64, model.Device);
        // [positions, vocab] logits in chunks of LogProbChunkElements: a long prompt's working memory stays bounded.
        int chunk = (int)Math.Max(1, LogProbChunkElements / Math.Max(1, model.Config.VocabSize));
        for (int c0 = 0; c0 < count; c0 += chunk)
        {
            using var inner = torch.NewDisposeScope();
            int len = Math.Min(chunk, count - c0);
            var logp = model.Logits(rowHidden.narrow(0, start + c0, len)).log_softmax(-1);
            var picked = logp.gather(1, targets.narrow(0, c0, len).unsqueeze(1)).squeeze(1).to(ScalarType.Float64).cpu().data<double>().ToArray();
            for (int j = 0; j < len; j++) lp[c0 + j + (firstScored ? 0 : 1)] = picked[j];
        }
        return lp;
    }

    /// <summary>Scores every row (teacher forcing) in one forward, each under its own prompt; row i's result equals
    /// <see cref="Scorer.Score"/> of that row alone.</summary>
    public static TokenScores[] Score(CausalLM model, IReadOnlyList<PromptedIds> rows)
    {
        if (rows.Count == 0) return Array.Empty<TokenScores>();
        using var noGrad = torch.no_grad();
        using var scope = torch.NewDisposeScope();
        using var cache = KvCache.Ragged(model.Config, rows.Count, rows.Max(Footprint), model.DType, model.Device);
        var (hidden, offsets) = Prefill(model, cache, 0, rows);
        var result = new TokenScores[rows.Count];
        for (int b = 0; b < rows.Count; b++)
            result[b] = new TokenScores(rows[b].Ids.ToArray(), TokenLogProbs(model, hidden[b], rows[b].Ids, offsets[b]));
        return result;
    }
}
