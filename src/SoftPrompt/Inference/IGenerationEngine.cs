namespace SoftPrompt.Inference;

/// <summary>
/// What a server needs of a generation engine: submit a sequence (tokens streamed through its handle), queue and
/// occupancy figures, step / finish events for metrics, and a stop that drains or cancels. <see cref="BatchEngine"/>
/// batches decoder-only sequences continuously; <see cref="Seq2SeqEngine"/> decodes encoder-decoder ones.
/// </summary>
public interface IGenerationEngine : IDisposable
{
    /// <summary>Tokens a sequence may occupy (virtual + prompt + new for decoder-only models; new tokens for encoder-decoder ones).</summary>
    int Capacity { get; }
    int QueueDepth { get; }
    int ActiveRows { get; }
    event Action<EngineStep>? Stepped;
    event Action<string>? SequenceFinished;
    SequenceHandle Submit(SequenceRequest req, CancellationToken cancel = default);
    Task StopAsync(bool drain = true);
}
