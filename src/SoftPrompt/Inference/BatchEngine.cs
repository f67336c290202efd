using System.Collections.Concurrent;
using System.Diagnostics;
using System.Threading.Channels;
using SoftPrompt.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace SoftPrompt.Inference;

/// <summary>One sequence to generate: its prompt ids, the saved prompt it runs under (null = the base model), decoding
/// options, and what to report besides the tokens.</summary>
public sealed record SequenceRequest
{
    public required IReadOnlyList<int> PromptIds { get; init; }
    public AttachedPrompt? Prompt { get; init; }
    public GenerationOptions Options { get; init; } = new();
    /// <summary>Most likely alternatives (id, log-probability) to report per generated token; 0 = none.</summary>
    public int TopLogprobs { get; init; }
    /// <summary>Also score the prompt's own tokens (as <see cref="Scorer"/> does).</summary>
    public bool PromptLogprobs { get; init; }
}

public readonly record struct TokenLogprob(int Id, float LogProb);

/// <summary>A generated token with its log-probability under the model (before temperature / top-p).</summary>
public sealed record GeneratedToken(int Id, float LogProb, TokenLogprob[]? Top);

/// <summary>Finish reasons: max_new_tokens, eos, cancelled (as <see cref="GenerationResult.StopReason"/>, plus cancelled).</summary>
public sealed record SequenceResult(int[] PromptIds, int[] NewIds, float[] LogProbs, TokenLogprob[][]? TopLogprobs,
    double?[]? PromptLogProbs, string FinishReason);

/// <summary>A submitted sequence: its tokens as they are made, its final result, and a way to stop it.</summary>
public sealed class SequenceHandle
{
    internal readonly Channel<GeneratedToken> Channel = System.Threading.Channels.Channel.CreateUnbounded<GeneratedToken>(new UnboundedChannelOptions { SingleReader = true, SingleWriter = true });
    internal readonly TaskCompletionSource<SequenceResult> Result = new(TaskCreationOptions.RunContinuationsAsynchronously);
    internal readonly CancellationTokenSource Cancellation = new();
    public ChannelReader<GeneratedToken> Tokens => Channel.Reader;
    public Task<SequenceResult> Completion => Result.Task;
    /// <summary>The prompt's token log-probabilities (with <see cref="SequenceRequest.PromptLogprobs"/>), set before the first token.</summary>
    public double?[]? PromptLogProbs { get; internal set; }
    /// <summary>Stops the sequence before its next step; its result has finish reason "cancelled".</summary>
    public void Cancel() { try { Cancellation.Cancel(); } catch (ObjectDisposedException) { } }
}

public sealed record BatchEngineOptions
{
    /// <summary>Sequences decoded together at most (rows of the KV cache).</summary>
    public int MaxBatch { get; init; } = 32;
    /// <summary>Sequences waiting for a row at most; beyond it <see cref="BatchEngine.Submit"/> throws <see cref="EngineBusyException"/>.</summary>
    public int MaxQueue { get; init; } = 256;
    /// <summary>Cache entries per sequence: virtual tokens + prompt + new tokens must fit (default: the model's positions).</summary>
    public int? Capacity { get; init; }
    /// <summary>Token budget of one prefill forward: joining sequences are prefilled together while rows x the longest
    /// row (the padded batch) stay within it, the rest in the next steps, so a burst of long prompts cannot take the
    /// memory of one huge forward. A sequence whose own footprint exceeds it is refused at <see cref="BatchEngine.Submit"/>.
    /// Default: the larger of the capacity and 4096.</summary>
    public int? MaxPrefillTokens { get; init; }
}

/// <summary>One sequence failed on its own (non-finite logits, a failed sampling draw, a prefill that fails even
/// alone, e.g. out of memory); the other sequences of the batch go on. A server answers 500 for that request.</summary>
public sealed class SequenceFailedException : SoftPromptException
{
    public SequenceFailedException(string message, Exception? inner = null) : base(message, inner) { }
}

/// <summary>The queue is full: try again later (a server answers 429).</summary>
public sealed class EngineBusyException : SoftPromptException
{
    public EngineBusyException(string message) : base(message) { }
}

/// <summary>The engine is stopping and takes no new sequences (a server answers 503).</summary>
public sealed class EngineStoppedException : SoftPromptException
{
    public EngineStoppedException(string message) : base(message) { }
}

/// <summary>What one forward of the engine did (for metrics).</summary>
public readonly record struct EngineStep(string Kind, int Rows, int Tokens, double Seconds);

/// <summary>
/// Continuous batching across prompts on one frozen model. Sequences are submitted from any thread; one engine
/// thread runs the model. Each step: cancelled sequences leave, waiting ones join (one mixed prefill forward for all
/// joiners, whatever prompts they carry: <see cref="MixedBatch.Prefill"/>), then every live sequence advances one
/// token in one decode forward. Each sequence is one row of a ragged KV cache (<see cref="KvCache.Ragged"/>) with its
/// own length, positions and mask, so a row's tokens and log-probabilities do not depend on what else is in the batch
/// (up to float rounding): a greedy completion is the same alone, batched, or through <see cref="Generator"/>.
/// Sampling uses one generator per sequence (seeded from <see cref="GenerationOptions.Seed"/>), as the single path does.
/// </summary>
public sealed class BatchEngine : IGenerationEngine
{
    sealed class Seq
    {
        public required SequenceRequest Req;
        public required SequenceHandle Handle;
        public torch.Generator? Gen;
        public required int Footprint;
        public readonly List<int> NewIds = new();
        public readonly List<float> LogProbs = new();
        public List<TokenLogprob[]>? Tops;
        public int Last;
        public string? Finish;
        public bool PromptHeld;
    }

    readonly CausalLM _model;
    readonly BatchEngineOptions _opt;
    readonly KvCache _cache;
    readonly ConcurrentQueue<Seq> _pending = new();
    readonly List<Seq> _active = new();
    readonly SemaphoreSlim _signal = new(0);
    readonly Thread _thread;
    readonly TaskCompletionSource _stopped = new(TaskCreationOptions.RunContinuationsAsynchronously);
    readonly object _gate = new();   // Submit vs StopAsync: after _stopping is set under it, nothing more is queued
    int _queued;
    volatile bool _stopping, _abort;

    /// <summary>Test seam (fault injection): called for each row of a prefill forward; an exception it returns is
    /// thrown as that forward's failure (as an out-of-memory error would be).</summary>
    internal Func<SequenceRequest, Exception?>? PrefillFault;

    public int Capacity { get; }
    public int MaxBatch => _opt.MaxBatch;
    /// <summary>Padded tokens per prefill forward at most (<see cref="BatchEngineOptions.MaxPrefillTokens"/>).</summary>
    public int MaxPrefillTokens { get; }
    /// <summary>Sequences waiting for a row.</summary>
    public int QueueDepth => Volatile.Read(ref _queued);
    /// <summary>Sequences being decoded (read on the engine thread; approximate elsewhere).</summary>
    public int ActiveRows { get; private set; }
    /// <summary>Tensors alive on the engine thread after its last step (TorchSharp's count): flat when nothing leaks.</summary>
    public long LiveTensors { get; private set; }
    /// <summary>Raised on the engine thread after each forward.</summary>
    public event Action<EngineStep>? Stepped;
    /// <summary>Raised on the engine thread when a sequence ends, with its finish reason (max_new_tokens, eos, cancelled, error).</summary>
    public event Action<string>? SequenceFinished;

    public BatchEngine(CausalLM model, BatchEngineOptions? options = null)
    {
        _model = model;
        _opt = options ?? new BatchEngineOptions();
        if (_opt.MaxBatch < 1 || _opt.MaxQueue < 0) throw new SoftPromptException("max batch must be >= 1 and max queue >= 0.");
        Capacity = _opt.Capacity ?? model.Config.MaxPositions;
        if (Capacity < 2) throw new SoftPromptException("the context capacity must be at least 2.");
        MaxPrefillTokens = _opt.MaxPrefillTokens ?? Math.Max(Capacity, 4096);
        if (MaxPrefillTokens < 1) throw new SoftPromptException("the prefill token budget must be at least 1.");
        if (model.Config.Family == ArchFamily.Gpt2 && Capacity > model.Config.MaxPositions)
            throw new SoftPromptException($"a context of {Capacity} exceeds the model's {model.Config.MaxPositions} learned positions.");
        _cache = KvCache.Ragged(model.Config, _opt.MaxBatch, Capacity, model.DType, model.Device);
        _thread = new Thread(Loop) { IsBackground = true, Name = "softprompt-batch-engine" };
        _thread.Start();
    }

    /// <summary>Queues a sequence. Throws <see cref="SoftPromptException"/> for bad input (too long, unknown token),
    /// <see cref="EngineBusyException"/> when the queue is full, <see cref="EngineStoppedException"/> when stopping.</summary>
    public SequenceHandle Submit(SequenceRequest req, CancellationToken cancel = default)
    {
        var o = req.Options;
        if (req.PromptIds.Count == 0) throw new SoftPromptException("the prompt has no tokens.");
        foreach (var id in req.PromptIds)
            if (id < 0 || id >= _model.Config.VocabSize) throw new SoftPromptException($"token id {id} is outside the model's vocabulary (size {_model.Config.VocabSize}).");
        o.Validate(GenerationOptions.Naming.ApiFields);   // the one set of option rules, shared with the CLI's generate
        if (req.TopLogprobs < 0) throw new SoftPromptException("top logprobs must be >= 0.");
        int footprint = MixedBatch.Footprint(new PromptedIds(req.PromptIds, req.Prompt));
        long need = (long)footprint + o.MaxNewTokens;
        if (need > Capacity)
            throw new ContextLengthException($"{req.Prompt?.VirtualTokens ?? 0} virtual + {req.PromptIds.Count} prompt + {o.MaxNewTokens} new tokens = {need} exceed the context of {Capacity} tokens.");
        if (footprint > MaxPrefillTokens)
            throw new ContextLengthException($"{footprint} prompt tokens (virtual tokens included) exceed the prefill budget of {MaxPrefillTokens} tokens.");
        lock (_gate)
        {
            if (_stopping) throw new EngineStoppedException("the server is shutting down.");
            if (Interlocked.Increment(ref _queued) > _opt.MaxQueue + Math.Max(0, _opt.MaxBatch - ActiveRows))
            {
                Interlocked.Decrement(ref _queued);
                throw new EngineBusyException($"the queue is full ({_opt.MaxQueue} waiting).");
            }
            if (req.Prompt is not null && !req.Prompt.TryAcquire())
            {
                Interlocked.Decrement(ref _queued);
                throw new SoftPromptException($"adapter '{req.Prompt.Name}' was removed.");
            }
            var h = new SequenceHandle();
            var s = new Seq
            {
                Req = req, Handle = h, PromptHeld = req.Prompt is not null, Footprint = footprint,
                Gen = !o.IsGreedy && o.Seed is long seed ? Generator.NewRandom(seed, _model.Device) : null,
                Tops = req.TopLogprobs > 0 ? new List<TokenLogprob[]>() : null,
            };
            if (cancel.CanBeCanceled) cancel.Register(h.Cancel);
            _pending.Enqueue(s);
            _signal.Release();
            return h;
        }
    }

    /// <summary>Generates every request as one continuously batched run (the library's one call for a batch whose
    /// rows carry different prompts); results in request order.</summary>
    public static SequenceResult[] GenerateAll(CausalLM model, IReadOnlyList<SequenceRequest> requests, int maxBatch = 32)
    {
        if (requests.Count == 0) return Array.Empty<SequenceResult>();
        int capacity = requests.Max(r => MixedBatch.Footprint(new PromptedIds(r.PromptIds, r.Prompt)) + r.Options.MaxNewTokens);
        using var engine = new BatchEngine(model, new BatchEngineOptions { MaxBatch = Math.Min(maxBatch, requests.Count), MaxQueue = requests.Count, Capacity = capacity });
        var handles = requests.Select(r => engine.Submit(r)).ToList();
        return handles.Select(h => h.Completion.GetAwaiter().GetResult()).ToArray();
    }

    /// <summary>Stops taking sequences; with <paramref name="drain"/> finishes the queued and running ones, else
    /// cancels them. Completes when the engine thread has ended.</summary>
    public Task StopAsync(bool drain = true)
    {
        lock (_gate) _stopping = true;
        if (!drain) _abort = true;
        _signal.Release();
        return _stopped.Task;
    }

    void Loop()
    {
        using var noGrad = torch.no_grad();
        try
        {
            while (true)
            {
                if (_active.Count == 0 && _pending.IsEmpty)
                {
                    // Once _stopping is read as set nothing more is queued (Submit checks it under _gate), so a
                    // queue still empty after that read is final; a sequence queued just before is still run.
                    if (_stopping) { if (_pending.IsEmpty) break; continue; }
                    _signal.Wait(200);
                    continue;
                }
                try { Step(); }
                catch (Exception e) { FailAll(e); }
            }
        }
        finally
        {
            // Whatever ended the loop, nothing waits forever: queued sequences get "stopping" (a server's 503).
            lock (_gate) _stopping = true;
            try { FailAll(new EngineStoppedException("the server is shutting down.")); } catch (Exception) { }
            while (_pending.TryDequeue(out var s))
            {
                Interlocked.Decrement(ref _queued);
                Fail(s, new EngineStoppedException("the server is shutting down."));
            }
            _stopped.TrySetResult();
        }
    }

    void Step()
    {
        for (int i = _active.Count - 1; i >= 0; i--)
            if (_abort || _active[i].Handle.Cancellation.IsCancellationRequested) Finish(_active[i], "cancelled");
        RemoveFinished();
        var joins = new List<Seq>();
        int longest = 0;
        while (_active.Count + joins.Count < _opt.MaxBatch && _pending.TryPeek(out var next))
        {
            // The prefill budget: rows x longest row of the padded batch; the first joiner always fits (Submit checked it).
            int l = Math.Max(longest, next.Footprint);
            if (joins.Count > 0 && (long)l * (joins.Count + 1) > MaxPrefillTokens) break;
            if (!_pending.TryDequeue(out var s)) break;
            Interlocked.Decrement(ref _queued);
            if (_abort || s.Handle.Cancellation.IsCancellationRequested) { Finish(s, "cancelled"); continue; }
            joins.Add(s);
            longest = l;
        }
        if (joins.Count > 0) Prefill(joins);
        RemoveFinished();
        if (_active.Count > 0) Decode();
        RemoveFinished();
        ActiveRows = _active.Count;
        LiveTensors = DisposeScopeManager.Statistics.ThreadTotalLiveCount;
    }

    /// <summary>Prefills the joining sequences in one forward; if it fails (out of memory, a bad row), the rows that
    /// joined are taken back and prefilled one by one, so only a row that fails alone fails, with its own error.</summary>
    void Prefill(List<Seq> joins)
    {
        try { PrefillGroup(joins); return; }
        catch (Exception e)
        {
            TakeBack(joins);
            if (joins.Count == 1) { FailSequence(joins[0], $"its prefill failed ({e.Message})", e); return; }
        }
        foreach (var s in joins)
        {
            if (s.Finish is not null) continue;
            try { PrefillGroup(new List<Seq> { s }); }
            catch (Exception e) { TakeBack(new List<Seq> { s }); FailSequence(s, $"its prefill failed ({e.Message})", e); }
        }
    }

    /// <summary>Undoes a failed prefill: the joiners leave the active rows and their cache rows are cleared.</summary>
    void TakeBack(List<Seq> joins)
    {
        int first = _active.Count;
        while (first > 0 && joins.Contains(_active[first - 1])) first--;
        for (int i = first; i < _active.Count; i++) _cache.ClearRow(i);
        _active.RemoveRange(first, _active.Count - first);
    }

    void PrefillGroup(List<Seq> joins)
    {
        var sw = Stopwatch.StartNew();
        using var scope = torch.NewDisposeScope();
        int first = _active.Count, n = joins.Count;
        _active.AddRange(joins);
        if (PrefillFault is { } fault)
            foreach (var s in joins) if (fault(s.Req) is { } e) throw e;
        var rows = joins.Select(s => new PromptedIds(s.Req.PromptIds, s.Req.Prompt)).ToList();
        var (hidden, offsets) = MixedBatch.Prefill(_model, _cache, first, rows);
        var lastIdx = new long[n];
        for (int b = 0; b < n; b++) lastIdx[b] = offsets[b] + rows[b].Ids.Count - 1;
        long H = hidden.shape[2];
        var idx = torch.tensor(lastIdx, ScalarType.Int64, _model.Device).view(n, 1, 1).expand(n, 1, H);
        var logits = _model.Logits(hidden.gather(1, idx).squeeze(1));
        for (int b = 0; b < n; b++)
            if (joins[b].Req.PromptLogprobs)
                joins[b].Handle.PromptLogProbs = MixedBatch.TokenLogProbs(_model, hidden[b], rows[b].Ids, offsets[b]);
        Choose(joins, logits);
        foreach (var s in joins) ReleasePrompt(s);
        Stepped?.Invoke(new EngineStep("prefill", n, rows.Sum(MixedBatch.Footprint), sw.Elapsed.TotalSeconds));
    }

    void Decode()
    {
        var sw = Stopwatch.StartNew();
        using var scope = torch.NewDisposeScope();
        int n = _active.Count;
        var ids = torch.tensor(_active.Select(s => (long)s.Last).ToArray(), ScalarType.Int64, _model.Device).view(n, 1);
        var pos = torch.tensor(Enumerable.Range(0, n).Select(b => (long)_cache.RowLength(b)).ToArray(), ScalarType.Int64, _model.Device).view(n, 1);
        var mask = _cache.BeginRaggedStep(0, Enumerable.Repeat(1, n).ToArray());
        var res = _model.Forward(new ForwardArgs { InputIds = ids, PositionIds = pos, AttentionMask = mask, Cache = _cache });
        Choose(_active, _model.Logits(res.Hidden.select(1, 0)));
        Stepped?.Invoke(new EngineStep("decode", n, n, sw.Elapsed.TotalSeconds));
    }

    /// <summary>Picks each row's next token from its logits [rows, vocab], records it, and finishes rows that are done.
    /// A row whose logits are not finite (NaN, +inf, or all -inf), or whose sampling draw fails, fails alone: the
    /// other rows' tokens do not depend on it.</summary>
    void Choose(IReadOnlyList<Seq> seqs, Tensor logits)
    {
        int n = seqs.Count;
        // One host read: each row's argmax and whether its logits are unusable.
        var bad = (logits.isnan().any(-1) | logits.isposinf().any(-1) | logits.isneginf().all(-1)).to(ScalarType.Int64);
        var host = torch.stack(new[] { logits.argmax(-1), bad }).cpu().data<long>().ToArray();
        var picks = new long[n];
        for (int b = 0; b < n; b++)
        {
            var s = seqs[b];
            if (host[n + b] != 0)
            {
                FailSequence(s, "the model's logits for it are not finite (NaN or infinity): the adapter or the model's numerics failed on this input", null);
                continue;
            }
            var o = s.Req.Options;
            if (o.IsGreedy) { picks[b] = host[b]; continue; }
            try { picks[b] = Generator.Pick(logits[b], o, s.Gen); }
            catch (Exception e) { FailSequence(s, $"sampling failed ({e.Message})", e); }
        }
        var logp = logits.log_softmax(-1);
        var chosen = logp.gather(1, torch.tensor(picks, ScalarType.Int64, _model.Device).view(n, 1)).cpu().data<float>().ToArray();
        int k = seqs.Max(s => s.Req.TopLogprobs);
        float[]? topV = null; long[]? topI = null;
        if (k > 0)
        {
            k = (int)Math.Min(k, logp.shape[1]);
            var (v, i) = logp.topk(k, -1);
            topV = v.cpu().data<float>().ToArray(); topI = i.cpu().data<long>().ToArray();
        }
        for (int b = 0; b < n; b++)
        {
            var s = seqs[b];
            if (s.Finish is not null) continue;   // failed above, or cancelled meanwhile
            TokenLogprob[]? top = null;
            if (s.Tops is not null)
            {
                top = new TokenLogprob[Math.Min(s.Req.TopLogprobs, k)];
                for (int j = 0; j < top.Length; j++) top[j] = new TokenLogprob((int)topI![b * k + j], topV![b * k + j]);
                s.Tops.Add(top);
            }
            int tok = (int)picks[b];
            s.NewIds.Add(tok); s.LogProbs.Add(chosen[b]); s.Last = tok;
            s.Handle.Channel.Writer.TryWrite(new GeneratedToken(tok, chosen[b], top));
            if (s.Req.Options.EosIds.Contains(tok)) Finish(s, "eos");
            else if (s.NewIds.Count >= s.Req.Options.MaxNewTokens) Finish(s, "max_new_tokens");
        }
    }

    void Finish(Seq s, string reason)
    {
        if (s.Finish is not null) return;
        s.Finish = reason;
        ReleasePrompt(s);
        s.Gen?.Dispose();
        SequenceFinished?.Invoke(reason);
        s.Handle.Channel.Writer.TryComplete();
        s.Handle.Result.TrySetResult(new SequenceResult(s.Req.PromptIds.ToArray(), s.NewIds.ToArray(), s.LogProbs.ToArray(),
            s.Tops?.ToArray(), s.Handle.PromptLogProbs, reason));
    }

    static void ReleasePrompt(Seq s)
    {
        if (!s.PromptHeld) return;
        s.PromptHeld = false;
        s.Req.Prompt!.Release();
    }

    /// <summary>Drops finished rows, moving the last live row into each hole so live rows stay 0..n-1.</summary>
    void RemoveFinished()
    {
        for (int i = _active.Count - 1; i >= 0; i--)
        {
            if (_active[i].Finish is null) continue;
            if (_active[i].Finish == "error") _cache.ClearRow(i);   // it may hold NaN keys/values
            int last = _active.Count - 1;
            if (i != last) { _cache.MoveRow(last, i); _active[i] = _active[last]; }
            else _cache.ResetRow(i);
            _active.RemoveAt(last);
        }
    }

    /// <summary>One sequence fails; it leaves the batch at the next <see cref="RemoveFinished"/>.</summary>
    void FailSequence(Seq s, string why, Exception? inner) =>
        Fail(s, new SequenceFailedException($"this sequence failed: {why}.", inner));

    void Fail(Seq s, Exception e)
    {
        if (s.Finish is not null) return;
        s.Finish = "error";
        ReleasePrompt(s);
        s.Gen?.Dispose();
        SequenceFinished?.Invoke("error");
        s.Handle.Channel.Writer.TryComplete(e);
        s.Handle.Result.TrySetException(e);
    }

    /// <summary>A failed decode forward (a fault no row can be blamed for) fails the sequences it held, not the engine.</summary>
    void FailAll(Exception e)
    {
        foreach (var s in _active) Fail(s, e);
        for (int i = 0; i < _active.Count; i++) _cache.ClearRow(i);
        _active.Clear();
        ActiveRows = 0;
    }

    public void Dispose()
    {
        StopAsync(drain: false).Wait(TimeSpan.FromSeconds(30));
        _cache.Dispose();
        _signal.Dispose();
    }
}

/// <summary>The request does not fit the context (a server answers 400).</summary>
public sealed class ContextLengthException : SoftPromptException
{
    public ContextLengthException(string message) : base(message) { }
}
