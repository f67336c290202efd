using SoftPrompt.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace SoftPrompt.Tests.Models;

/// <summary>
/// Incremental decoding and padding must not change the math: a cached forward equals the full forward, and a
/// left-padded batch row (with an attention mask and explicit position ids, as HF's generate builds them) equals
/// the same tokens run alone. Checked on every reference fixture.
/// </summary>
public class KvCacheConsistencyTests
{
    const double Tol = 1e-4;
    public static IEnumerable<object[]> Models => Fixtures.ReferenceModels.Concat(Fixtures.MoreReferenceModels).Select(m => new object[] { m });
    /// <summary>Not Gemma 2: its sliding window counts cache indices, pads included (as Hugging Face's does), so a
    /// left-padded row legitimately differs from the row alone once the window matters.</summary>
    public static IEnumerable<object[]> PaddingModels => Fixtures.ReferenceModels.Concat(Fixtures.MoreReferenceModels).Where(m => m != "gemma2").Select(m => new object[] { m });

    static Tensor Full(CausalLM m, long[] ids) =>
        m.Logits(m.Forward(new ForwardArgs { InputIds = torch.tensor(ids).unsqueeze(0) }).Hidden)[0];

    [Theory, MemberData(nameof(Models))]
    public void PrefillThenSingleStepsEqualsFullForward(string name)
    {
        using var m = ModelLoader.Load(Fixtures.HfReference(name));
        using var _ = torch.no_grad();
        var ids = ModelFolders.Seq2[..12];
        var full = Full(m, ids);

        using var cache = KvCache.Preallocated(m.Config, 1, 12, m.DType, m.Device);
        var rows = new List<Tensor> { m.Logits(m.Forward(new ForwardArgs { InputIds = torch.tensor(ids[..5]).unsqueeze(0), Cache = cache }).Hidden)[0] };
        Assert.Equal(5, cache.Length);
        for (int t = 5; t < 12; t++)
            rows.Add(m.Logits(m.Forward(new ForwardArgs { InputIds = torch.tensor(new[] { ids[t] }).unsqueeze(0), Cache = cache }).Hidden)[0]);
        Assert.Equal(12, cache.Length);
        Assert.InRange(Fixtures.MaxAbsDiff(torch.cat(rows.ToArray(), 0), full), 0, Tol);

        // A chunk of several tokens on a non-empty cache (the masked, non-causal-flag path) too.
        cache.Truncate(5);
        var chunk = m.Logits(m.Forward(new ForwardArgs { InputIds = torch.tensor(ids[5..]).unsqueeze(0), Cache = cache }).Hidden)[0];
        Assert.InRange(Fixtures.MaxAbsDiff(chunk, full.narrow(0, 5, 7)), 0, Tol);
    }

    [Theory, MemberData(nameof(Models))]
    public void GrowingCacheEqualsFullForward(string name)
    {
        using var m = ModelLoader.Load(Fixtures.HfReference(name));
        using var _ = torch.no_grad();
        var ids = ModelFolders.Seq2[..12];
        var cache = KvCache.Growing(m.Config.NumLayers);
        var a = m.Logits(m.Forward(new ForwardArgs { InputIds = torch.tensor(ids[..5]).unsqueeze(0), Cache = cache }).Hidden)[0];
        var b = m.Logits(m.Forward(new ForwardArgs { InputIds = torch.tensor(ids[5..]).unsqueeze(0), Cache = cache }).Hidden)[0];
        Assert.InRange(Fixtures.MaxAbsDiff(torch.cat(new[] { a, b }, 0), Full(m, ids)), 0, Tol);
    }

    [Theory, MemberData(nameof(PaddingModels))]
    public void LeftPaddedBatchEqualsUnpaddedRows(string name)
    {
        using var m = ModelLoader.Load(Fixtures.HfReference(name));
        using var _ = torch.no_grad();
        const int pad = 3, len = 12;
        var rowA = ModelFolders.Seq2[..len];
        var rowB = ModelFolders.Seq2[20..29];                  // 9 real tokens, left-padded with 3
        var ids = torch.tensor(rowA.Concat(new long[] { 0, 0, 0 }).Concat(rowB).ToArray()).view(2, len);
        var mask = torch.tensor(Enumerable.Repeat(1L, len).Concat(new long[] { 0, 0, 0 }).Concat(Enumerable.Repeat(1L, 9)).ToArray()).view(2, len);
        // HF generate: position_ids = cumsum(mask) - 1, pads filled with 1.
        var pos = torch.tensor(Enumerable.Range(0, len).Select(i => (long)i).Concat(new long[] { 1, 1, 1 }).Concat(Enumerable.Range(0, 9).Select(i => (long)i)).ToArray()).view(2, len);

        var logits = m.Logits(m.Forward(new ForwardArgs { InputIds = ids, AttentionMask = mask, PositionIds = pos }).Hidden);
        Assert.InRange(Fixtures.MaxAbsDiff(logits[0], Full(m, rowA)), 0, Tol);
        Assert.InRange(Fixtures.MaxAbsDiff(logits[1].narrow(0, pad, 9), Full(m, rowB)), 0, Tol);
        Assert.False(logits.isnan().any().item<bool>(), "padding rows must not produce NaN");

        // Then decode 3 more tokens for both rows with a preallocated cache: mask and positions keep growing.
        using var cache = KvCache.Preallocated(m.Config, 2, len + 3, m.DType, m.Device);
        m.Forward(new ForwardArgs { InputIds = ids, AttentionMask = mask, PositionIds = pos, Cache = cache });
        var nextA = rowA.ToList(); var nextB = rowB.ToList();
        var extra = new long[] { 5, 600, 77 };
        for (int s = 0; s < extra.Length; s++)
        {
            nextA.Add(extra[s]); nextB.Add(extra[s]);
            var step = torch.tensor(new[] { extra[s], extra[s] }).view(2, 1);
            mask = torch.cat(new[] { mask, torch.ones(2, 1, ScalarType.Int64) }, 1);
            var stepPos = torch.tensor(new long[] { len + s, 9 + s }).view(2, 1);
            var l = m.Logits(m.Forward(new ForwardArgs { InputIds = step, AttentionMask = mask, PositionIds = stepPos, Cache = cache }).Hidden);
            Assert.InRange(Fixtures.MaxAbsDiff(l[0, -1], Full(m, nextA.ToArray())[-1]), 0, Tol);
            Assert.InRange(Fixtures.MaxAbsDiff(l[1, -1], Full(m, nextB.ToArray())[-1]), 0, Tol);
        }
    }
}
