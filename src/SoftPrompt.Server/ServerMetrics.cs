using System.Diagnostics.Metrics;
using SoftPrompt.Inference;

namespace SoftPrompt.Server;

/// <summary>The server's instruments (System.Diagnostics.Metrics), exported in Prometheus text format at /metrics by
/// OpenTelemetry's exporter: requests, tokens, queue depth, live sequences, resident adapters, batch sizes, latencies.</summary>
public sealed class ServerMetrics : IDisposable
{
    public const string MeterName = "SoftPrompt.Server";
    static int _instances;
    readonly Meter _meter;
    /// <summary>This server's meter: "SoftPrompt.Server", with a suffix for the second and later servers of one process
    /// (tests, serve-bench), because an OpenTelemetry exporter listens to meters by name and would mix the servers.</summary>
    public string Name { get; }
    public Counter<long> Requests { get; }
    public Counter<long> PromptTokens { get; }
    public Counter<long> CompletionTokens { get; }
    public Counter<long> Sequences { get; }
    public Histogram<double> RequestSeconds { get; }
    public Histogram<double> FirstTokenSeconds { get; }
    public Histogram<int> BatchRows { get; }
    public Histogram<double> StepSeconds { get; }

    static readonly double[] SecondsBuckets = { 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60 };
    static readonly int[] RowBuckets = { 1, 2, 4, 8, 16, 32, 64, 128 };

    public ServerMetrics(Func<int> queueDepth, Func<int> activeRows, Func<int> residentAdapters)
    {
        int n = Interlocked.Increment(ref _instances) - 1;
        Name = n == 0 ? MeterName : $"{MeterName}.{n}";
        _meter = new Meter(Name);
        Requests = _meter.CreateCounter<long>("softprompt_requests", description: "HTTP requests by endpoint and status.");
        PromptTokens = _meter.CreateCounter<long>("softprompt_prompt_tokens", description: "Prompt tokens of completion requests.");
        CompletionTokens = _meter.CreateCounter<long>("softprompt_completion_tokens", description: "Generated tokens.");
        Sequences = _meter.CreateCounter<long>("softprompt_sequences", description: "Finished sequences by finish reason (max_new_tokens, eos, cancelled: a stop string or a client that left, error).");
        RequestSeconds = _meter.CreateHistogram("softprompt_request_duration", "s", "Time from request to last byte.",
            advice: new InstrumentAdvice<double> { HistogramBucketBoundaries = SecondsBuckets });
        FirstTokenSeconds = _meter.CreateHistogram("softprompt_time_to_first_token", "s", "Time from request to the first generated token.",
            advice: new InstrumentAdvice<double> { HistogramBucketBoundaries = SecondsBuckets });
        BatchRows = _meter.CreateHistogram("softprompt_batch_rows", description: "Sequences per engine forward (prefill or decode).",
            advice: new InstrumentAdvice<int> { HistogramBucketBoundaries = RowBuckets });
        StepSeconds = _meter.CreateHistogram("softprompt_step_duration", "s", "Seconds per engine forward.",
            advice: new InstrumentAdvice<double> { HistogramBucketBoundaries = SecondsBuckets });
        _meter.CreateObservableGauge("softprompt_queue_depth", queueDepth, description: "Sequences waiting for a batch row.");
        _meter.CreateObservableGauge("softprompt_active_sequences", activeRows, description: "Sequences being decoded.");
        _meter.CreateObservableGauge("softprompt_resident_adapters", residentAdapters, description: "Adapters held in memory.");
    }

    public void OnStep(EngineStep s)
    {
        var kind = new KeyValuePair<string, object?>("kind", s.Kind);
        BatchRows.Record(s.Rows, kind);
        StepSeconds.Record(s.Seconds, kind);
    }

    public void Dispose() => _meter.Dispose();
}
