using TorchSharp;
using static TorchSharp.torch;

namespace SoftPrompt.Tuning;

/// <summary>What the tuning methods' trainable tensors share: how one is made, and nn.Linear's default initialisation.</summary>
internal static class TrainableTensors
{
    /// <summary>An fp32 leaf copy that requires grad and outlives the caller's dispose scope.</summary>
    public static Tensor Parameter(Tensor t) => t.detach().to(ScalarType.Float32).clone().requires_grad_(true).DetachFromDisposeScope();

    /// <summary>U(-bound, bound), as nn.Linear initialises weights and biases (bound = 1/sqrt(fan_in)).</summary>
    public static Tensor Uniform(long[] shape, double bound, torch.Generator gen, Device device) =>
        ((torch.rand(shape, generator: gen, device: torch.CPU) * 2 - 1) * bound).to(device);
}
