using SoftPrompt.Inference;
using SoftPrompt.IO;
using SoftPrompt.Models;
using SoftPrompt.Tests.ReferenceModels;
using TorchSharp;
using static TorchSharp.torch;

namespace SoftPrompt.Tests.Models;

/// <summary>
/// Mistral's sliding-window attention, on the mistral fixture's weights with <c>sliding_window</c> set to 3 (the
/// fixture's own 4096 never masks). Expected values come from <see cref="LlamaReference"/> (float64, HF's rule: key
/// s is visible to query t iff t - 3 &lt; s ≤ t), which reproduces HF's golden mistral logits without a window.
/// </summary>
public class SlidingWindowTests
{
    const int Window = 3;
    static readonly LlamaReference.Spec Spec = new(4, 2, 16, 2, 1e-6, 10000, Window: Window);

    static string WindowedFolder(Fixtures.TempDir d)
    {
        ModelFolders.CopyFixture("mistral", d.Path);
        ModelFolders.EditConfig(d.Path, o => o["sliding_window"] = Window);
        return d.Path;
    }

    static Tensor Forward(CausalLM m, long[] ids)
    {
        using var _ = torch.no_grad();
        return m.Logits(m.Forward(new ForwardArgs { InputIds = torch.tensor(ids).unsqueeze(0) }).Hidden)[0];
    }

    [Fact]
    public void WindowedLogitsMatchTheReferenceAndDifferFromFullAttention()
    {
        using var d = new Fixtures.TempDir();
        using var windowed = ModelLoader.Load(WindowedFolder(d));
        Assert.Equal(Window, windowed.Config.SlidingWindow);
        using var full = ModelLoader.Load(Fixtures.HfReference("mistral"));
        var ids = ModelFolders.Seq2[..12];
        var w = SafeTensors.Load(Path.Combine(d.Path, "model.safetensors"));

        var ours = Forward(windowed, ids);
        Assert.InRange(Fixtures.MaxAbsDiff(ours, LlamaReference.Logits(w, Spec, ids)), 0, 1e-4);

        var noWindow = Forward(full, ids);
        // Positions inside the window (t < 3) see the same keys either way; later ones do not.
        Assert.InRange(Fixtures.MaxAbsDiff(ours.narrow(0, 0, Window), noWindow.narrow(0, 0, Window)), 0, 1e-5);
        Assert.True(Fixtures.MaxAbsDiff(ours.narrow(0, Window, 12 - Window), noWindow.narrow(0, Window, 12 - Window)) > 1e-3,
            "a window of 3 over 12 tokens must change the logits");
    }

    [Fact]
    public void SequenceNoLongerThanTheWindowIsUnaffected()
    {
        using var d = new Fixtures.TempDir();
        using var windowed = ModelLoader.Load(WindowedFolder(d));
        using var full = ModelLoader.Load(Fixtures.HfReference("mistral"));
        var ids = ModelFolders.Seq2[..Window];
        Assert.InRange(Fixtures.MaxAbsDiff(Forward(windowed, ids), Forward(full, ids)), 0, 1e-6);
    }

    [Fact]
    public void CachedGenerationEqualsTheFullForwardArgmaxLoop()
    {
        using var d = new Fixtures.TempDir();
        using var m = ModelLoader.Load(WindowedFolder(d));
        var prompt = ModelFolders.Seq2[..6];
        const int n = 8;
        var res = SoftPrompt.Inference.Generator.Generate(m, prompt.Select(x => (int)x).ToArray(), new GenerationOptions { MaxNewTokens = n }, keepScores: true);

        var seq = prompt.ToList();
        for (int i = 0; i < n; i++)
        {
            var l = Forward(m, seq.ToArray());
            var last = l[-1];
            Assert.InRange(Fixtures.MaxAbsDiff(last, torch.tensor(res.Scores![i])), 0, 1e-4);
            seq.Add(last.argmax().item<long>());
        }
        Assert.Equal(seq.Skip(prompt.Length).Select(x => (int)x).ToArray(), res.NewIds);
    }

    [Fact]
    public void CachedStepsMatchTheReferenceAtEveryPosition()
    {
        using var d = new Fixtures.TempDir();
        using var m = ModelLoader.Load(WindowedFolder(d));
        var w = SafeTensors.Load(Path.Combine(d.Path, "model.safetensors"));
        var ids = ModelFolders.Seq2[..10];
        var expected = LlamaReference.Logits(w, Spec, ids);
        using var _ = torch.no_grad();
        using var cache = KvCache.Preallocated(m.Config, 1, 16, m.DType, m.Device);
        var first = m.Logits(m.Forward(new ForwardArgs { InputIds = torch.tensor(ids[..2]).unsqueeze(0), Cache = cache }).Hidden)[0];
        var rows = new List<Tensor> { first };
        for (int t = 2; t < ids.Length; t++)
            rows.Add(m.Logits(m.Forward(new ForwardArgs { InputIds = torch.tensor(new[] { ids[t] }).unsqueeze(0), Cache = cache }).Hidden)[0]);
        Assert.InRange(Fixtures.MaxAbsDiff(torch.cat(rows.ToArray(), 0), expected), 0, 1e-4);
    }
}
