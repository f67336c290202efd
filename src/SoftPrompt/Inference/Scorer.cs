using SoftPrompt.Models;
using SoftPrompt.Tuning;
using TorchSharp;
using static TorchSharp.torch;

namespace SoftPrompt.Inference;

/// <summary>Log-probability of each token given the ones before it (teacher forcing). Index i scores ids[i];
/// without a prompt the first token has no context (null); with a soft prompt or prefix, the last virtual
/// position predicts it.</summary>
public sealed record TokenScores(int[] Ids, double?[] LogProbs)
{
    public double Total => LogProbs.Where(x => x.HasValue).Sum(x => x!.Value);
    public int Scored => LogProbs.Count(x => x.HasValue);
    public double Perplexity => Scored == 0 ? double.NaN : Math.Exp(-Total / Scored);
}

public static class Scorer
{
    public static TokenScores Score(CausalLM model, IReadOnlyList<int> ids, PromptInjection? prompt = null)
    {
        if (ids.Count == 0) throw new SoftPromptException("score needs at least one token.");
        prompt ??= PromptInjection.None;
        using var noGrad = torch.no_grad();
        using var scope = torch.NewDisposeScope();
        var input = torch.tensor(ids.Select(i => (long)i).ToArray(), ScalarType.Int64, model.Device).unsqueeze(0);
        using var cache = prompt.PastKeyValues is null ? null : KvCache.Growing(model.Config.NumLayers);
        cache?.SetPrefix(prompt.PastKeyValues!);
        var res = model.Forward(new ForwardArgs { InputIds = input, PrefixEmbeds = prompt.PrefixEmbeds, Cache = cache });
        // Hidden row r predicts the token after it. Rows of real tokens start at HiddenOffset.
        int off = prompt.HiddenOffset;
        bool firstScored = prompt.VirtualTokens > 0 && prompt.PrefixEmbeds is not null;
        // With a prefix (past keys/values) there is no hidden row before the first real token: it stays unscored.
        int start = firstScored ? off - 1 : off;
        int count = ids.Count - 1 + (firstScored ? 1 : 0);
        var lp = new double?[ids.Count];
        if (count > 0)
        {
            var logits = model.Logits(res.Hidden[0].narrow(0, start, count));
            var logp = logits.log_softmax(-1);
            var targets = input[0].narrow(0, firstScored ? 0 : 1, count);
            var picked = logp.gather(1, targets.unsqueeze(1)).squeeze(1).to(ScalarType.Float64).cpu().data<double>().ToArray();
            for (int j = 0; j < count; j++) lp[j + (firstScored ? 0 : 1)] = picked[j];
        }
        return new TokenScores(ids.ToArray(), lp);
    }
}
