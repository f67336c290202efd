using SoftPrompt.Models;
using SoftPrompt.Tuning;
using TorchSharp;
using static TorchSharp.torch;

namespace SoftPrompt.Scoring;

/// <summary>Per-label scores of one example: the summed log-probability of each label's tokens after the prompt,
/// and the number of tokens (for length normalisation).</summary>
public sealed record LabelScores(double[] LogProbs, int[] TokenCounts)
{
    public double Score(int label, bool lengthNormalize) => lengthNormalize ? LogProbs[label] / Math.Max(1, TokenCounts[label]) : LogProbs[label];
    public int Best(bool lengthNormalize)
    {
        int best = 0;
        for (int i = 1; i < LogProbs.Length; i++) if (Score(i, lengthNormalize) > Score(best, lengthNormalize)) best = i;
        return best;
    }
}

/// <summary>
/// Rank classification: score every allowed label by the model's log-probability of its tokens after the input, and
/// predict the best. The input (and any soft prompt / prefix) is run once; its keys/values are then shared by all
/// labels, which are scored together in one batched forward over the cache. Labels of a single token need no
/// second forward at all: the input's last position already predicts them.
/// </summary>
public static class RankClassifier
{
    /// <summary>Rank classification on either kind of model: after the prompt for a decoder-only model; as decoder
    /// continuations of the encoder input for an encoder-decoder one.</summary>
    public static LabelScores Score(IPromptableModel model, IPromptMethod? method, IReadOnlyList<int> promptIds, IReadOnlyList<int[]> labelIds) => model switch
    {
        CausalLM lm => Score(lm, method, promptIds, labelIds),
        T5Model t5 => ScoreSeq2Seq(t5, method, promptIds, labelIds),
        _ => throw new NotSupportedException($"no rank classification for {model.GetType().Name}"),
    };

    /// <summary>
    /// Encoder-decoder rank classification: the encoder (with any soft prompt before its input) runs once; every
    /// label is then scored as the decoder's continuation from the start token, all labels as one right-padded
    /// decoder batch over the shared encoder output (causal decoder attention: real positions never see the pads).
    /// </summary>
    public static LabelScores ScoreSeq2Seq(T5Model model, IPromptMethod? method, IReadOnlyList<int> promptIds, IReadOnlyList<int[]> labelIds)
    {
        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        var inj = method?.Inject(1) ?? PromptInjection.None;
        if (inj.PastKeyValues is not null) throw new SoftPromptException($"{model.Config.ModelType}: {PrefixTuning.EncoderDecoderRefusal}");
        if (promptIds.Count == 0 && inj.PrefixEmbeds is null) throw new SoftPromptException("rank classification needs a non-empty prompt (the template rendered to no tokens).");
        for (int l = 0; l < labelIds.Count; l++)
            if (labelIds[l].Length == 0) throw new SoftPromptException($"label #{l} tokenizes to no tokens.");
        var ids = torch.tensor(promptIds.Select(i => (long)i).ToArray(), ScalarType.Int64, model.Device).unsqueeze(0);
        var enc = model.Encode(ids, prefixEmbeds: inj.PrefixEmbeds);
        int R = labelIds.Count, tmax = labelIds.Max(l => l.Length);
        var dec = new long[R * tmax];
        var tgt = new long[R * tmax];
        for (int r = 0; r < R; r++)
            for (int t = 0; t < tmax; t++)
            {
                var lab = labelIds[r];
                dec[r * tmax + t] = t == 0 ? model.T5.DecoderStartTokenId : t - 1 < lab.Length ? lab[t - 1] : 0;
                tgt[r * tmax + t] = t < lab.Length ? lab[t] : 0;
            }
        var shared = new T5EncoderOutput(enc.Hidden.expand(R, -1, -1), null);
        var hidden = model.Decode(torch.tensor(dec, ScalarType.Int64, model.Device).view(R, tmax), shared).Hidden;
        var lp = model.Logits(hidden).log_softmax(-1);
        var picked = lp.gather(2, torch.tensor(tgt, ScalarType.Int64, model.Device).view(R, tmax, 1)).squeeze(2).to(ScalarType.Float64).cpu().data<double>().ToArray();
        var scores = new double[R];
        var counts = new int[R];
        for (int r = 0; r < R; r++)
        {
            for (int t = 0; t < labelIds[r].Length; t++) scores[r] += picked[r * tmax + t];
            counts[r] = labelIds[r].Length;
        }
        return new LabelScores(scores, counts);
    }

    public static LabelScores Score(CausalLM model, IPromptMethod? method, IReadOnlyList<int> promptIds, IReadOnlyList<int[]> labelIds)
    {
        if (promptIds.Count == 0) throw new SoftPromptException("rank classification needs a non-empty prompt (the template rendered to no tokens).");
        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        var inj = method?.Inject(1) ?? PromptInjection.None;
        var cache = KvCache.Growing(model.Config.NumLayers);
        if (inj.PastKeyValues is not null) cache.SetPrefix(inj.PastKeyValues);
        var ids = torch.tensor(promptIds.Select(i => (long)i).ToArray(), ScalarType.Int64, model.Device).unsqueeze(0);
        var res = model.Forward(new ForwardArgs { InputIds = ids, PrefixEmbeds = inj.PrefixEmbeds, Cache = cache });
        var first = model.Logits(res.Hidden[0, -1]).log_softmax(-1);                 // predicts each label's first token
        var firstLp = first.cpu().data<float>().ToArray();

        var scores = new double[labelIds.Count];
        var counts = new int[labelIds.Count];
        for (int l = 0; l < labelIds.Count; l++)
        {
            if (labelIds[l].Length == 0) throw new SoftPromptException($"label #{l} tokenizes to no tokens.");
            scores[l] = firstLp[labelIds[l][0]];
            counts[l] = labelIds[l].Length;
        }
        var multi = Enumerable.Range(0, labelIds.Count).Where(l => labelIds[l].Length > 1).ToArray();
        if (multi.Length > 0)
        {
            // Feed label[0..^1] for every multi-token label as one right-padded batch over the shared cache.
            // Right padding needs no mask: with causal attention, real positions never see the pads after them.
            int tmax = multi.Max(l => labelIds[l].Length) - 1;
            var flat = new long[multi.Length * tmax];
            for (int r = 0; r < multi.Length; r++)
                for (int t = 0; t < tmax; t++)
                {
                    var lab = labelIds[multi[r]];
                    flat[r * tmax + t] = t < lab.Length - 1 ? lab[t] : lab[^1];
                }
            var batch = torch.tensor(flat, ScalarType.Int64, model.Device).view(multi.Length, tmax);
            var r2 = model.Forward(new ForwardArgs { InputIds = batch, Cache = cache });
            var lp = model.Logits(r2.Hidden).log_softmax(-1);                          // [R, tmax, V]
            var targets = new long[multi.Length * tmax];
            for (int r = 0; r < multi.Length; r++)
                for (int t = 0; t < tmax; t++)
                {
                    var lab = labelIds[multi[r]];
                    targets[r * tmax + t] = t + 1 < lab.Length ? lab[t + 1] : 0;
                }
            var picked = lp.gather(2, torch.tensor(targets, ScalarType.Int64, model.Device).view(multi.Length, tmax, 1)).squeeze(2).to(ScalarType.Float64).cpu().data<double>().ToArray();
            for (int r = 0; r < multi.Length; r++)
            {
                var lab = labelIds[multi[r]];
                for (int t = 0; t < lab.Length - 1; t++) scores[multi[r]] += picked[r * tmax + t];
            }
        }
        return new LabelScores(scores, counts);
    }

    /// <summary>The reference computation without cache sharing: one full forward per label (used to check and to
    /// measure the speed-up of <see cref="Score"/>).</summary>
    public static LabelScores ScoreNaive(CausalLM model, IPromptMethod? method, IReadOnlyList<int> promptIds, IReadOnlyList<int[]> labelIds)
    {
        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        var scores = new double[labelIds.Count];
        var counts = new int[labelIds.Count];
        for (int l = 0; l < labelIds.Count; l++)
        {
            var inj = method?.Inject(1) ?? PromptInjection.None;
            KvCache? cache = null;
            if (inj.PastKeyValues is not null) { cache = KvCache.Growing(model.Config.NumLayers); cache.SetPrefix(inj.PastKeyValues); }
            var all = promptIds.Concat(labelIds[l]).Select(i => (long)i).ToArray();
            var ids = torch.tensor(all, ScalarType.Int64, model.Device).unsqueeze(0);
            var res = model.Forward(new ForwardArgs { InputIds = ids, PrefixEmbeds = inj.PrefixEmbeds, Cache = cache });
            int off = inj.HiddenOffset, p = promptIds.Count, k = labelIds[l].Length;
            var lp = model.Logits(res.Hidden[0].narrow(0, off + p - 1, k)).log_softmax(-1);
            var tgt = torch.tensor(labelIds[l].Select(i => (long)i).ToArray(), ScalarType.Int64, model.Device).unsqueeze(1);
            scores[l] = lp.gather(1, tgt).to(ScalarType.Float64).sum().item<double>();
            counts[l] = k;
        }
        return new LabelScores(scores, counts);
    }
}
