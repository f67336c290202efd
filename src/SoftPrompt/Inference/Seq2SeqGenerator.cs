using SoftPrompt.Models;
using SoftPrompt.Tuning;
using TorchSharp;
using static TorchSharp.torch;

namespace SoftPrompt.Inference;

/// <summary>
/// Decoding and scoring with an encoder-decoder model (<see cref="T5Model"/>): the prompt is the encoder input
/// (after a soft prompt, when one is attached), the encoder runs once, and the decoder starts from
/// <see cref="T5Config.DecoderStartTokenId"/> and keeps a key/value cache of its own positions and of the encoder's
/// cross-attention projections.
/// </summary>
public static class Seq2SeqGenerator
{
    internal static void RefusePrefix(PromptInjection? prompt)
    {
        if (prompt?.PastKeyValues is not null)
            throw new SoftPromptException("prefix tuning is not supported for encoder-decoder (T5) models; use prompt tuning (the soft prompt goes before the encoder input, as in Lester et al. and PEFT).");
    }

    static Tensor Ids(IReadOnlyList<int> ids, Device device) => torch.tensor(ids.Select(i => (long)i).ToArray(), ScalarType.Int64, device).unsqueeze(0);

    public static GenerationResult Generate(T5Model model, IReadOnlyList<int> encoderIds, GenerationOptions opt, PromptInjection? prompt = null, bool keepScores = false)
    {
        if (encoderIds.Count == 0 && (prompt?.PrefixEmbeds is null)) throw new SoftPromptException("generate needs at least one prompt token.");
        opt.Validate();
        RefusePrefix(prompt);
        CheckIds(model, encoderIds);
        var gen = opt.Seed is long s ? new torch.Generator((ulong)s) : null;
        using var noGrad = torch.no_grad();
        using var cache = new T5Cache(model.T5.NumDecoderLayers);
        var newIds = new List<int>();
        var scores = keepScores ? new List<float[]>() : null;
        string reason = "max_new_tokens";
        using var outer = torch.NewDisposeScope();
        var enc = model.Encode(Ids(encoderIds, model.Device), prefixEmbeds: prompt?.PrefixEmbeds);
        long next = model.T5.DecoderStartTokenId;
        for (int step = 0; step < opt.MaxNewTokens; step++)
        {
            using var scope = torch.NewDisposeScope();
            var res = model.Decode(torch.tensor(new[] { next }, ScalarType.Int64, model.Device).unsqueeze(0), enc, cache);
            var logits = model.Logits(res.Hidden[0, -1]);
            if (scores != null) scores.Add(logits.cpu().data<float>().ToArray());
            int tok = Generator.Pick(logits, opt, gen);
            newIds.Add(tok);
            if (opt.EosIds.Contains(tok)) { reason = "eos"; break; }
            next = tok;
        }
        return new GenerationResult(encoderIds.ToArray(), newIds.ToArray(), reason, scores?.ToArray());
    }

    /// <summary>Log-probability of each target token given the encoder input and the target tokens before it
    /// (every target token is scored: the decoder start token predicts the first).</summary>
    public static TokenScores Score(T5Model model, IReadOnlyList<int> encoderIds, IReadOnlyList<int> targetIds, PromptInjection? prompt = null)
    {
        if (targetIds.Count == 0) throw new SoftPromptException("score needs at least one target token.");
        RefusePrefix(prompt);
        CheckIds(model, encoderIds); CheckIds(model, targetIds);
        using var noGrad = torch.no_grad();
        using var scope = torch.NewDisposeScope();
        var enc = model.Encode(Ids(encoderIds, model.Device), prefixEmbeds: prompt?.PrefixEmbeds);
        var labels = Ids(targetIds, model.Device);
        var res = model.Decode(model.ShiftRight(labels), enc);
        var logp = model.Logits(res.Hidden[0]).log_softmax(-1);
        var picked = logp.gather(1, labels[0].unsqueeze(1)).squeeze(1).to(ScalarType.Float64).cpu().data<double>().ToArray();
        return new TokenScores(targetIds.ToArray(), picked.Select(x => (double?)x).ToArray());
    }

    static void CheckIds(T5Model model, IReadOnlyList<int> ids)
    {
        foreach (var id in ids)
            if (id < 0 || id >= model.Config.VocabSize) throw new SoftPromptException($"token id {id} is outside the model's vocabulary (size {model.Config.VocabSize}).");
    }
}
