using SoftPrompt.Data;
using SoftPrompt.Models;
using SoftPrompt.Tuning;
using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace SoftPrompt.Scoring;

/// <summary>
/// The one place that runs a frozen model with an attached prompt over a batch and computes the loss on target
/// tokens. Method-agnostic: the prompt method's <see cref="PromptInjection"/> says whether it adds input
/// embeddings or past keys/values. The LM head runs only at positions that carry a label (for short targets that is
/// a few positions out of hundreds, and the head dominates the cost of small models).
/// </summary>
public static class PromptLoss
{
    /// <summary>Sum of target-token negative log-likelihoods (fp32 scalar) and the number of target tokens.</summary>
    public static (Tensor NllSum, long Count) Compute(CausalLM model, IPromptMethod? method, Batch batch)
        => Loss(model, batch, Hidden(model, method, batch));

    /// <summary>The transformer part: final hidden states [B, T, hidden] of the batch's real tokens (virtual rows dropped).</summary>
    public static Tensor Hidden(CausalLM model, IPromptMethod? method, Batch batch)
    {
        var ids = batch.InputIds;
        long B = ids.shape[0], T = ids.shape[1];
        var inj = method?.Inject((int)B) ?? PromptInjection.None;
        KvCache? cache = null;
        if (inj.PastKeyValues is not null) { cache = KvCache.Growing(model.Config.NumLayers); cache.SetPrefix(inj.PastKeyValues); }
        // No attention mask: batches are right-padded, so with causal attention no real token ever sees a pad (pads
        // only follow it), and positions are those of an unpadded row. The pads' own outputs carry no label. This
        // keeps the fused causal attention path and builds no [B, 1, T, S] mask per step.
        var res = model.Forward(new ForwardArgs { InputIds = ids, PrefixEmbeds = inj.PrefixEmbeds, Cache = cache });
        return inj.HiddenOffset == 0 ? res.Hidden : res.Hidden.narrow(1, inj.HiddenOffset, T);
    }

    /// <summary>Rows of the head per chunk without autograd: at least the 128 rows from which the CPU head runs transposed
    /// (<see cref="CausalLM.Logits"/>), few enough that a chunk's logits stay small (256 x 50257 fp32 = 51 MB).</summary>
    public const long ForwardOnlyChunkRows = 256;

    /// <summary>The head and the loss: the LM head runs only on rows that carry a label. The rows were found on the
    /// host by the collator, so nothing here waits on the device.</summary>
    public static (Tensor NllSum, long Count) Loss(CausalLM model, Batch batch, Tensor hidden)
    {
        long T = batch.InputIds.shape[1];
        long count = batch.LossCount;
        if (count == 0) return (torch.zeros(1, ScalarType.Float32, hidden.device).sum(), 0);
        // Row t predicts the token at t+1 (labels are aligned with inputs; the shift happens here).
        var rows = hidden.narrow(1, 0, T - 1).reshape(-1, hidden.shape[2]);
        var selected = rows.index_select(0, batch.LossRows);
        long n = selected.shape[0];
        if (torch.is_grad_enabled() || n <= ForwardOnlyChunkRows)
            return (F.cross_entropy(model.Logits(selected), batch.LossLabels, reduction: nn.Reduction.Sum), count);
        // Without autograd (evaluation, validation), the head and the loss run over chunks of rows, each chunk's logits
        // and log-softmax freed before the next: the peak is two [chunk, vocab] fp32 tensors instead of two [rows, vocab]
        // ones (batch 8 x 128 at GPT-2's vocabulary: 2 x 200 MB became 2 x 51 MB). Same sum, in chunk order.
        var nll = torch.zeros(Array.Empty<long>(), ScalarType.Float32, hidden.device);
        for (long start = 0; start < n; start += ForwardOnlyChunkRows)
        {
            long len = Math.Min(ForwardOnlyChunkRows, n - start);
            using var scope = torch.NewDisposeScope();
            nll.add_(F.cross_entropy(model.Logits(selected.narrow(0, start, len)), batch.LossLabels.narrow(0, start, len), reduction: nn.Reduction.Sum));
        }
        return (nll, count);
    }

    /// <summary>Mean target-token loss of a prompt on examples (no gradients).</summary>
    public static double ValidationLoss(CausalLM model, IPromptMethod? method, IReadOnlyList<TokenizedExample> data, int batchSize, int padId,
        Action<int>? examplesDone = null)
    {
        using var noGrad = torch.no_grad();
        double nll = 0; long count = 0;
        var order = Enumerable.Range(0, data.Count).OrderBy(i => data[i].PromptIds.Length + data[i].TargetIds.Length).ToArray();
        for (int s = 0; s < order.Length; s += batchSize)
        {
            using var scope = torch.NewDisposeScope();
            using var batch = Collator.Collate(order.Skip(s).Take(batchSize).Select(i => data[i]).ToList(), padId, model.Device, false);
            var (sum, c) = PromptLoss.Compute(model, method, batch);
            nll += sum.item<float>(); count += c;
            examplesDone?.Invoke(Math.Min(order.Length, s + batchSize));
        }
        return count > 0 ? nll / count : double.NaN;
    }
}
