using SoftPrompt.Data;
using SoftPrompt.Models;
using SoftPrompt.Distributed;
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
    public static (Tensor NllSum, long Count) Compute(IPromptableModel model, IPromptMethod? method, Batch batch) => model switch
    {
        CausalLM lm => Loss(lm, batch, Hidden(lm, method, batch)),
        T5Model t5 => Seq2SeqLoss(t5, method, batch),
        _ => throw new NotSupportedException($"no loss for {model.GetType().Name}"),
    };

    /// <summary>The batch layout <see cref="Compute"/> expects for this model: decoder-only batches concatenate prompt and
    /// target; encoder-decoder ones give the prompt to the encoder and the target to the decoder.</summary>
    public static Batch Collate(IPromptableModel model, IReadOnlyList<TokenizedExample> examples, int padId, bool lossOnPrompt = false)
    {
        if (model.Config.T5 is not { } t5) return Collator.Collate(examples, padId, model.Device, lossOnPrompt);
        if (lossOnPrompt)
            throw new SoftPromptException("--loss-on-prompt does not apply to an encoder-decoder model: the prompt is the encoder's input, which the model does not predict.");
        return Collator.CollateSeq2Seq(examples, model.Config.PadTokenId ?? padId, t5.DecoderStartTokenId, model.Device);
    }

    /// <summary>Encoder-decoder loss: the prompt method's embeddings go before the encoder input (PEFT's SEQ_2_SEQ_LM
    /// prompt tuning: the encoder mask, which is also the cross-attention mask, gets ones for them); the decoder is
    /// teacher-forced on the shifted target and its output t predicts target token t.</summary>
    static (Tensor NllSum, long Count) Seq2SeqLoss(T5Model model, IPromptMethod? method, Batch batch)
    {
        if (batch.DecoderInputIds is null) throw new ArgumentException("an encoder-decoder model needs a batch from PromptLoss.Collate (Collator.CollateSeq2Seq).");
        var inj = method?.Inject((int)batch.InputIds.shape[0]) ?? PromptInjection.None;
        if (inj.PastKeyValues is not null)
            throw new SoftPromptException("prefix tuning is not supported for encoder-decoder (T5) models; use prompt tuning.");
        if (batch.LossCount == 0) return (torch.zeros(1, ScalarType.Float32, model.Device).sum(), 0);
        var enc = model.Encode(batch.InputIds, batch.AttentionMask, inj.PrefixEmbeds);
        var hidden = model.Decode(batch.DecoderInputIds, enc).Hidden;
        var rows = hidden.reshape(-1, hidden.shape[2]).index_select(0, batch.LossRows);
        var nll = F.cross_entropy(model.Logits(rows), batch.LossLabels, reduction: nn.Reduction.Sum);
        return (nll, batch.LossCount);
    }

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

    /// <summary>
    /// Mean target-token loss of a prompt on examples (no gradients). With several ranks (<paramref name="comm"/>) each
    /// rank runs every Size-th batch of the same batching, and the per-batch sums are gathered and added in batch
    /// order: the result is bit for bit the one-process result.
    /// </summary>
    public static double ValidationLoss(IPromptableModel model, IPromptMethod? method, IReadOnlyList<TokenizedExample> data, int batchSize, int padId,
        Action<int>? examplesDone = null, ICommunicator? comm = null)
    {
        comm ??= SingleProcess.Instance;
        using var noGrad = torch.no_grad();
        var order = Enumerable.Range(0, data.Count).OrderBy(i => data[i].PromptIds.Length + data[i].TargetIds.Length).ToArray();
        int batches = (order.Length + batchSize - 1) / batchSize;
        // Per batch: its fp32 loss sum (as a double) and its target count; zero where another rank ran the batch.
        var sums = new double[batches];
        var counts = new long[batches];
        for (int b = 0, s = 0; b < batches; b++, s += batchSize)
        {
            if (!comm.Owns(b)) continue;
            using var scope = torch.NewDisposeScope();
            using var batch = Collate(model, order.Skip(s).Take(batchSize).Select(i => data[i]).ToList(), padId);
            var (sum, c) = PromptLoss.Compute(model, method, batch);
            sums[b] = sum.item<float>(); counts[b] = c;
            examplesDone?.Invoke(Math.Min(order.Length, s + batchSize));
        }
        comm.AllReduceSum(sums);
        comm.AllReduceSum(counts);
        double nll = 0; long count = 0;
        for (int b = 0; b < batches; b++) { nll += sums[b]; count += counts[b]; }
        return count > 0 ? nll / count : double.NaN;
    }
}
