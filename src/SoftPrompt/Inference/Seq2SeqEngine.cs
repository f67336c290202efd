using System.Collections.Concurrent;
using System.Diagnostics;
using SoftPrompt.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace SoftPrompt.Inference;

/// <summary>
/// The server's engine for an encoder-decoder model (T5): requests are decoded one at a time on one engine thread
/// (the encoder once per request, over the adapter's soft prompt and the prompt; then the decoder with its key/value
/// cache), tokens streamed through the same <see cref="SequenceHandle"/> as <see cref="BatchEngine"/>'s. It does not
/// batch requests together: continuous batching is built on the decoder-only ragged cache.
/// </summary>
public sealed class Seq2SeqEngine : IGenerationEngine
{
    sealed record Item(SequenceRequest Req, SequenceHandle Handle, bool PromptHeld);

    readonly T5Model _model;
    readonly int _maxQueue;
    readonly ConcurrentQueue<Item> _pending = new();
    readonly SemaphoreSlim _signal = new(0);
    readonly TaskCompletionSource _stopped = new(TaskCreationOptions.RunContinuationsAsynchronously);
    volatile bool _stopping, _abort;
    int _queued, _active;

    public int Capacity { get; }
    public int QueueDepth => Volatile.Read(ref _queued);
    public int ActiveRows => Volatile.Read(ref _active);
    public event Action<EngineStep>? Stepped;
    public event Action<string>? SequenceFinished;

    public Seq2SeqEngine(T5Model model, int capacity, int maxQueue = 256)
    {
        if (capacity < 1) throw new ArgumentOutOfRangeException(nameof(capacity));
        _model = model; Capacity = capacity; _maxQueue = maxQueue;
        new Thread(Loop) { IsBackground = true, Name = "softprompt-seq2seq-engine" }.Start();
    }

    public SequenceHandle Submit(SequenceRequest req, CancellationToken cancel = default)
    {
        var o = req.Options;
        if (req.PromptIds.Count == 0) throw new SoftPromptException("the prompt has no tokens.");
        foreach (var id in req.PromptIds)
            if (id < 0 || id >= _model.Config.VocabSize) throw new SoftPromptException($"token id {id} is outside the model's vocabulary (size {_model.Config.VocabSize}).");
        o.Validate(GenerationOptions.Naming.ApiFields);
        if (req.TopLogprobs < 0) throw new SoftPromptException("top logprobs must be >= 0.");
        if (req.PromptLogprobs)
            throw new SoftPromptException("prompt log-probabilities (echo with logprobs) do not apply to an encoder-decoder model: the prompt is the encoder's input, which it does not predict.");
        if (req.Prompt?.PastKeyValues is not null) throw new SoftPromptException($"{_model.Config.ModelType}: {Tuning.PrefixTuning.EncoderDecoderRefusal}");
        if (o.MaxNewTokens > Capacity)
            throw new ContextLengthException($"{o.MaxNewTokens} new tokens exceed the decoder length of {Capacity} tokens.");
        if (_stopping) throw new EngineStoppedException("the server is shutting down.");
        if (Interlocked.Increment(ref _queued) > _maxQueue + 1)
        {
            Interlocked.Decrement(ref _queued);
            throw new EngineBusyException($"the queue is full ({_maxQueue} waiting).");
        }
        if (req.Prompt is not null && !req.Prompt.TryAcquire())
        {
            Interlocked.Decrement(ref _queued);
            throw new SoftPromptException($"adapter '{req.Prompt.Name}' was removed.");
        }
        var h = new SequenceHandle();
        if (cancel.CanBeCanceled) cancel.Register(h.Cancel);
        _pending.Enqueue(new Item(req, h, req.Prompt is not null));
        _signal.Release();
        return h;
    }

    public Task StopAsync(bool drain = true)
    {
        _stopping = true;
        if (!drain) _abort = true;
        _signal.Release();
        return _stopped.Task;
    }

    void Loop()
    {
        try
        {
            while (true)
            {
                if (_pending.IsEmpty && _stopping) break;
                _signal.Wait();
                while (_pending.TryDequeue(out var item))
                {
                    Interlocked.Decrement(ref _queued);
                    Interlocked.Exchange(ref _active, 1);
                    try { Run(item); }
                    catch (Exception e) { Fail(item, e); }
                    finally
                    {
                        if (item.PromptHeld) item.Req.Prompt!.Release();
                        Interlocked.Exchange(ref _active, 0);
                    }
                }
            }
        }
        finally { _stopped.TrySetResult(); }
    }

    void Run(Item it)
    {
        using var noGrad = torch.no_grad();
        using var scope = torch.NewDisposeScope();
        var o = it.Req.Options;
        var gen = o.Temperature > 0 && o.Seed is long seed ? new torch.Generator((ulong)seed) : null;
        var ids = new List<int>(); var lps = new List<float>(); var tops = it.Req.TopLogprobs > 0 ? new List<TokenLogprob[]>() : null;
        string finish = "max_new_tokens";
        var clock = Stopwatch.StartNew();
        var input = torch.tensor(it.Req.PromptIds.Select(i => (long)i).ToArray(), ScalarType.Int64, _model.Device).unsqueeze(0);
        var enc = _model.Encode(input, prefixEmbeds: it.Req.Prompt?.Embeddings?.unsqueeze(0));
        using var cache = new T5Cache(_model.T5.NumDecoderLayers);
        long next = _model.T5.DecoderStartTokenId;
        Stepped?.Invoke(new EngineStep("prefill", 1, it.Req.PromptIds.Count, clock.Elapsed.TotalSeconds));
        while (true)
        {
            if (_abort || it.Handle.Cancellation.IsCancellationRequested) { finish = "cancelled"; break; }
            clock.Restart();
            using var step = torch.NewDisposeScope();
            var logits = _model.Logits(_model.Decode(torch.tensor(new[] { next }, ScalarType.Int64, _model.Device).unsqueeze(0), enc, cache).Hidden[0, -1]);
            var logp = logits.log_softmax(-1);
            int tok = Generator.Pick(logits, o, gen);
            float lp = logp[tok].item<float>();
            TokenLogprob[]? top = null;
            if (tops is not null)
            {
                var (v, i) = logp.topk(Math.Min(it.Req.TopLogprobs, (int)logp.shape[0]));
                var vs = v.data<float>().ToArray(); var iz = i.data<long>().ToArray();
                top = vs.Select((x, k) => new TokenLogprob((int)iz[k], x)).ToArray();
                tops.Add(top);
            }
            ids.Add(tok); lps.Add(lp);
            it.Handle.Channel.Writer.TryWrite(new GeneratedToken(tok, lp, top));
            Stepped?.Invoke(new EngineStep("decode", 1, 1, clock.Elapsed.TotalSeconds));
            if (o.EosIds.Contains(tok)) { finish = "eos"; break; }
            if (ids.Count >= o.MaxNewTokens) break;
            next = tok;
        }
        SequenceFinished?.Invoke(finish);
        it.Handle.Channel.Writer.TryComplete();
        it.Handle.Result.TrySetResult(new SequenceResult(it.Req.PromptIds.ToArray(), ids.ToArray(), lps.ToArray(), tops?.ToArray(), null, finish));
    }

    void Fail(Item it, Exception e)
    {
        SequenceFinished?.Invoke("error");
        it.Handle.Channel.Writer.TryComplete(e);
        it.Handle.Result.TrySetException(e);
    }

    public void Dispose()
    {
        StopAsync(drain: false).Wait(TimeSpan.FromSeconds(30));
        _signal.Dispose();
    }
}
