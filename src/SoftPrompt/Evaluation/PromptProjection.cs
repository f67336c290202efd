using SoftPrompt.Models;
using SoftPrompt.Tuning;
using TorchSharp;
using static TorchSharp.torch;

namespace SoftPrompt.Evaluation;

/// <summary>
/// Nearest vocabulary tokens of soft-prompt vectors by cosine similarity with the input embedding matrix
/// (Lester et al.'s interpretability analysis). Replacing every virtual token by its nearest token gives the
/// "projected" hard prompt, a baseline that tells how much of a soft prompt's effect survives discretisation.
/// </summary>
public static class PromptProjection
{
    /// <summary>For each row of <paramref name="vectors"/> [n, hidden], the <paramref name="k"/> nearest token ids and their cosines.
    /// <paramref name="allowed"/> (per model vocabulary id) restricts the answer to real tokens: a model's embedding
    /// matrix often has rows beyond the tokenizer's vocabulary (padding to a multiple of 64/128) and rows of special
    /// tokens, which are no part of a readable prompt (see <see cref="TokenSets.AllowedTokens"/>).</summary>
    public static (int[][] Ids, float[][] Cosines) NearestTokens(IPromptableModel model, Tensor vectors, int k = 5, IReadOnlyList<bool>? allowed = null)
    {
        if (vectors.dim() != 2 || vectors.shape[1] != model.Config.HiddenSize)
            throw new SoftPromptException($"nearest tokens need vectors of width {model.Config.HiddenSize} (the input embedding width).");
        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        var e = model.EmbeddingMatrix.to(ScalarType.Float32);
        var en = e / e.norm(1, true).clamp_min(1e-12);
        var v = vectors.to(ScalarType.Float32).to(e.device);
        var vn = v / v.norm(1, true).clamp_min(1e-12);
        var sim = vn.matmul(en.t());                                        // [n, vocab]
        int candidates = (int)sim.shape[1];
        if (allowed is not null)
        {
            if (allowed.Count != sim.shape[1]) throw new SoftPromptException($"the token filter covers {allowed.Count} ids, the model's vocabulary has {sim.shape[1]}.");
            candidates = allowed.Count(a => a);
            if (candidates == 0) throw new SoftPromptException("no vocabulary token is allowed for the projection.");
            sim = sim + torch.tensor(allowed.Select(a => a ? 0f : float.NegativeInfinity).ToArray(), device: sim.device);
        }
        var (vals, idx) = sim.topk(Math.Min(k, candidates), dim: 1);
        var ids = idx.cpu().data<long>().ToArray();
        var cos = vals.cpu().data<float>().ToArray();
        int kk = (int)idx.shape[1], n = (int)idx.shape[0];
        return (Enumerable.Range(0, n).Select(i => ids.Skip(i * kk).Take(kk).Select(x => (int)x).ToArray()).ToArray(),
                Enumerable.Range(0, n).Select(i => cos.Skip(i * kk).Take(kk).ToArray()).ToArray());
    }

    /// <summary>The projected hard prompt of a prompt-tuning adapter: each virtual token's nearest token id.
    /// Prefix tuning has no input-embedding vectors to project: this returns null for it.</summary>
    public static int[]? Project(IPromptableModel model, IPromptMethod method, IReadOnlyList<bool>? allowed = null)
    {
        if (method is not PromptTuning) return null;
        using var emb = method.ExportEmbeddings();
        return NearestTokens(model, emb, 1, allowed).Ids.Select(r => r[0]).ToArray();
    }
}
