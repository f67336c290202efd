using TorchSharp;
using static TorchSharp.torch;

namespace SoftPrompt.Data;

/// <summary>
/// A padded batch. All tensors are int64 [B, T], right-padded. <see cref="Labels"/> follow the Hugging Face convention:
/// aligned with the input positions (position t's label is the token at t, or -100 to ignore it); the shift by one
/// happens in the loss. The batch owns its tensors (they are detached from any dispose scope): dispose it.
/// </summary>
public sealed class Batch : IDisposable
{
    public const long IgnoreIndex = -100;

    public required Tensor InputIds { get; init; }
    public required Tensor AttentionMask { get; init; }
    public required Tensor Labels { get; init; }
    /// <summary>Non-pad tokens in the batch.</summary>
    public required int RealTokens { get; init; }
    /// <summary>Tokens that carry a label (target tokens, plus prompt tokens with lossOnPrompt).</summary>
    public required int TargetTokens { get; init; }
    /// <summary>Per row: real length (prompt + target).</summary>
    public required int[] Lengths { get; init; }
    /// <summary>Per row: prompt length (the target starts at this position).</summary>
    public required int[] PromptLengths { get; init; }
    /// <summary>[N] int64: which rows of the shifted, flattened [B * (T - 1)] predictions carry a loss (row
    /// b * (T - 1) + t predicts the token at t + 1 of row b), found on the host at collate time so the loss
    /// needs no device-to-host sync to find them.</summary>
    public required Tensor LossRows { get; init; }
    /// <summary>[N] int64: the token each of <see cref="LossRows"/> must predict.</summary>
    public required Tensor LossLabels { get; init; }
    /// <summary>N, the length of <see cref="LossRows"/> (labelled positions after the shift).</summary>
    public required int LossCount { get; init; }
    /// <summary>Encoder-decoder batches only (<see cref="Collator.CollateSeq2Seq"/>): [B, M] the decoder input, the
    /// targets shifted right behind the decoder start token; then <see cref="InputIds"/> / <see cref="AttentionMask"/>
    /// are the encoder's, <see cref="Labels"/> [B, M] the targets, and <see cref="LossRows"/> index the unshifted,
    /// flattened [B * M] decoder outputs. Null for decoder-only batches.</summary>
    public Tensor? DecoderInputIds { get; init; }
    public int Size => Lengths.Length;
    public int SeqLen => (int)InputIds.shape[1];

    public void Dispose()
    {
        InputIds.Dispose();
        AttentionMask.Dispose();
        Labels.Dispose();
        LossRows.Dispose();
        LossLabels.Dispose();
        DecoderInputIds?.Dispose();
    }
}

public static class Collator
{
    /// <summary>
    /// Builds a right-padded <see cref="Batch"/>: each field is filled in a flat long[] on the CPU, turned into one
    /// tensor, then moved to <paramref name="device"/> (no per-element tensor ops). Labels are -100 on prompt tokens
    /// (unless <paramref name="lossOnPrompt"/>) and on pads.
    /// </summary>
    public static Batch Collate(IReadOnlyList<TokenizedExample> examples, int padId, Device device, bool lossOnPrompt = false)
    {
        ArgumentNullException.ThrowIfNull(examples);
        if (examples.Count == 0) throw new SoftPromptException("cannot collate an empty batch.");
        int b = examples.Count, t = examples.Max(x => x.Length);
        if (t == 0) throw new SoftPromptException("cannot collate a batch whose examples are all empty.");
        var ids = new long[b * t];
        var mask = new long[b * t];
        var labels = new long[b * t];
        Array.Fill(ids, padId);
        Array.Fill(labels, Batch.IgnoreIndex);
        var lengths = new int[b];
        var promptLengths = new int[b];
        int real = 0, labelled = 0;
        for (int i = 0; i < b; i++)
        {
            var x = examples[i];
            int row = i * t, pl = x.PromptIds.Length;
            for (int j = 0; j < pl; j++)
            {
                ids[row + j] = x.PromptIds[j];
                mask[row + j] = 1;
                if (lossOnPrompt) labels[row + j] = x.PromptIds[j];
            }
            for (int j = 0; j < x.TargetIds.Length; j++)
            {
                ids[row + pl + j] = x.TargetIds[j];
                mask[row + pl + j] = 1;
                labels[row + pl + j] = x.TargetIds[j];
            }
            lengths[i] = x.Length;
            promptLengths[i] = pl;
            real += x.Length;
            labelled += x.TargetIds.Length + (lossOnPrompt ? pl : 0);
        }
        // The loss's rows: position j >= 1 of row i carries label labels[i, j], predicted by output j - 1.
        var lossRows = new List<long>(labelled);
        var lossLabels = new List<long>(labelled);
        for (int i = 0; i < b; i++)
            for (int j = 1; j < t; j++)
                if (labels[i * t + j] != Batch.IgnoreIndex) { lossRows.Add((long)i * (t - 1) + j - 1); lossLabels.Add(labels[i * t + j]); }
        var shape = new long[] { b, t };
        return new Batch
        {
            InputIds = ToDevice(ids, shape, device),
            AttentionMask = ToDevice(mask, shape, device),
            Labels = ToDevice(labels, shape, device),
            LossRows = ToDevice(lossRows.ToArray(), new long[] { lossRows.Count }, device),
            LossLabels = ToDevice(lossLabels.ToArray(), new long[] { lossLabels.Count }, device),
            LossCount = lossRows.Count,
            RealTokens = real,
            TargetTokens = labelled,
            Lengths = lengths,
            PromptLengths = promptLengths,
        };
    }

    /// <summary>
    /// An encoder-decoder batch (T5): the prompts right-padded as the encoder input with their mask; the targets
    /// right-padded as labels (-100 on pads) and, shifted right behind <paramref name="decoderStartId"/>, as the
    /// decoder input (pads there are <paramref name="padId"/>, as transformers' shift_right writes them). Every
    /// target token carries a loss; the decoder's output t predicts label t (no shift in the loss).
    /// </summary>
    public static Batch CollateSeq2Seq(IReadOnlyList<TokenizedExample> examples, int padId, int decoderStartId, Device device)
    {
        ArgumentNullException.ThrowIfNull(examples);
        if (examples.Count == 0) throw new SoftPromptException("cannot collate an empty batch.");
        int b = examples.Count, te = Math.Max(1, examples.Max(x => x.PromptIds.Length)), tm = examples.Max(x => x.TargetIds.Length);
        if (tm == 0) throw new SoftPromptException("cannot collate an encoder-decoder batch whose targets are all empty.");
        var ids = new long[b * te];
        var mask = new long[b * te];
        var labels = new long[b * tm];
        var dec = new long[b * tm];
        Array.Fill(ids, padId);
        Array.Fill(labels, Batch.IgnoreIndex);
        Array.Fill(dec, padId);
        var lengths = new int[b];
        var promptLengths = new int[b];
        var lossRows = new List<long>();
        var lossLabels = new List<long>();
        int real = 0;
        for (int i = 0; i < b; i++)
        {
            var x = examples[i];
            for (int j = 0; j < x.PromptIds.Length; j++) { ids[i * te + j] = x.PromptIds[j]; mask[i * te + j] = 1; }
            for (int j = 0; j < x.TargetIds.Length; j++)
            {
                labels[i * tm + j] = x.TargetIds[j];
                lossRows.Add((long)i * tm + j);
                lossLabels.Add(x.TargetIds[j]);
            }
            // shift_right of the padded labels: position j holds label j-1 (the pads' outputs carry no loss).
            dec[i * tm] = decoderStartId;
            for (int j = 1; j <= x.TargetIds.Length && j < tm; j++) dec[i * tm + j] = x.TargetIds[j - 1];
            lengths[i] = x.Length;
            promptLengths[i] = x.PromptIds.Length;
            real += x.Length;
        }
        return new Batch
        {
            InputIds = ToDevice(ids, new long[] { b, te }, device),
            AttentionMask = ToDevice(mask, new long[] { b, te }, device),
            Labels = ToDevice(labels, new long[] { b, tm }, device),
            DecoderInputIds = ToDevice(dec, new long[] { b, tm }, device),
            LossRows = ToDevice(lossRows.ToArray(), new long[] { lossRows.Count }, device),
            LossLabels = ToDevice(lossLabels.ToArray(), new long[] { lossLabels.Count }, device),
            LossCount = lossRows.Count,
            RealTokens = real,
            TargetTokens = lossRows.Count,
            Lengths = lengths,
            PromptLengths = promptLengths,
        };
    }

    static Tensor ToDevice(long[] data, long[] shape, Device device)
    {
        var cpu = torch.tensor(data, shape, dtype: ScalarType.Int64, device: torch.CPU);
        if (device.type == DeviceType.CPU) return cpu.DetachFromDisposeScope();
        var moved = cpu.to(device).DetachFromDisposeScope();
        cpu.Dispose();
        return moved;
    }
}
