using SoftPrompt.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace SoftPrompt.Tests.Models;

/// <summary>
/// <see cref="CausalLM.Logits"/> computes the head as W @ h^T without autograd on the CPU (a faster BLAS layout) and
/// as F.linear with autograd or few rows: both give the same logits and the same shape for 1-, 2- and 3-d hidden states.
/// </summary>
public class LogitsLayoutTests
{
    [Theory, MemberData(nameof(GoldenReferenceTests.Models), MemberType = typeof(GoldenReferenceTests))]
    public void ForwardOnlyHeadMatchesTheAutogradHead(string name)
    {
        using var model = ModelLoader.Load(Fixtures.HfReference(name));
        using var scope = torch.NewDisposeScope();
        var gen = new Generator().manual_seed(7);
        foreach (var shape in new[] { new long[] { model.Config.HiddenSize }, new long[] { 5, model.Config.HiddenSize }, new long[] { 200, model.Config.HiddenSize }, new long[] { 3, 50, model.Config.HiddenSize } })
        {
            var h = torch.randn(shape, generator: gen);
            var withGrad = model.Logits(h).detach();
            Tensor noGrad;
            using (torch.no_grad()) noGrad = model.Logits(h);
            Assert.Equal(withGrad.shape, noGrad.shape);
            Assert.Equal(shape[..^1].Append(model.Config.VocabSize).ToArray(), noGrad.shape);
            Assert.Equal(ScalarType.Float32, noGrad.dtype);
            Assert.InRange(Fixtures.MaxAbsDiff(noGrad, withGrad), 0, 1e-5);
            // Callers may reshape the (possibly non-contiguous) result and run log_softmax over the vocabulary.
            Assert.InRange(Fixtures.MaxAbsDiff(noGrad.log_softmax(-1).reshape(-1), withGrad.log_softmax(-1).reshape(-1)), 0, 1e-5);
        }
    }
}
