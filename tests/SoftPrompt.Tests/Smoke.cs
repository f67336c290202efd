namespace SoftPrompt.Tests;
public class Smoke { [Fact] public void Loads() => Assert.Equal(4f, TorchSharp.torch.ones(2,2).sum().item<float>()); }
