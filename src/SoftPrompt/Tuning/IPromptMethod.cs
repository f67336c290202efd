using SoftPrompt.Models;
using static TorchSharp.torch;

namespace SoftPrompt.Tuning;

/// <summary>
/// A prompt-learning method (as PEFT's tuners): it owns its trainable parameters (fp32), knows how to attach
/// to a frozen model's forward (<see cref="Inject"/>), and what it exports. The trainer only sees this interface.
/// </summary>
public interface IPromptMethod : IDisposable
{
    /// <summary>Which method this is (PEFT's peft_type PROMPT_TUNING or PREFIX_TUNING).</summary>
    TuningMethod Method { get; }
    /// <summary>PEFT's peft_type string of <see cref="Method"/>.</summary>
    string PeftType => Method.PeftType();
    int NumVirtualTokens { get; }
    /// <summary>Trainable tensors (fp32, requires_grad), by name. Optimizers and checkpoints use these names.</summary>
    IReadOnlyList<(string Name, Tensor Param)> Parameters { get; }
    /// <summary>What to add to a forward pass for a batch of <paramref name="batchSize"/> rows (tensors in the caller's dispose scope).</summary>
    PromptInjection Inject(int batchSize);
    /// <summary>The tensor PEFT saves as <c>prompt_embeddings</c> (fp32, CPU): [n, hidden] or [n, 2 * layers * kv_dim].</summary>
    Tensor ExportEmbeddings();
    /// <summary>The PEFT adapter_config.json fields of this method.</summary>
    AdapterConfig AdapterConfig(ModelConfig model);
    /// <summary>Sets requires_grad on the trainable tensors (false for inference).</summary>
    void SetTrainable(bool trainable);
}
