namespace SoftPrompt.Server;

/// <summary>Everything `softprompt serve` takes (the CLI maps its options onto this record).</summary>
public sealed record ServerOptions
{
    public required string ModelDir { get; init; }
    /// <summary>name → adapter folder, loaded (and checked against the model) at start.</summary>
    public IReadOnlyList<(string Name, string Path)> Adapters { get; init; } = Array.Empty<(string, string)>();
    /// <summary>A folder searched for adapter folders (adapter_config.json); each is served under its relative path.</summary>
    public string? AdaptersDir { get; init; }
    public string Host { get; init; } = "127.0.0.1";
    /// <summary>0 = any free port (the address is printed and in <see cref="SoftPromptServer.Address"/>).</summary>
    public int Port { get; init; } = 8000;
    /// <summary>Name of an environment variable holding the API key; when set, requests need "Authorization: Bearer KEY".</summary>
    public string? ApiKeyEnv { get; init; }
    public string Device { get; init; } = "auto";
    public string DType { get; init; } = "fp32";
    /// <summary>Sequences decoded together.</summary>
    public int MaxBatch { get; init; } = 32;
    /// <summary>Sequences waiting for a row; beyond it, 429.</summary>
    public int MaxQueue { get; init; } = 256;
    /// <summary>Tokens per sequence in the KV cache (virtual + prompt + completion); default and cap: the model's positions.</summary>
    public int? MaxContext { get; init; }
    /// <summary>Cap on max_tokens of one request.</summary>
    public int MaxTokens { get; init; } = 512;
    /// <summary>Cap on n (choices per prompt) and on prompts per request.</summary>
    public int MaxChoices { get; init; } = 16;
    public long MaxBodyBytes { get; init; } = 1 << 20;
    /// <summary>Adapters kept in memory at most; others are reloaded from their folder when asked for (least recently used leaves first).</summary>
    public int MaxResidentAdapters { get; init; } = 64;
    /// <summary>Seconds to wait for in-flight requests on shutdown (SIGTERM).</summary>
    public int DrainSeconds { get; init; } = 30;
    /// <summary>Enables POST/DELETE /v1/adapters (off: 403). Loads are confined to <see cref="AdaptersDir"/>, which is
    /// then required; beyond loopback <see cref="AdminKeyEnv"/> is required too.</summary>
    public bool AllowAdapterAdmin { get; init; }
    /// <summary>Name of an environment variable holding the key that POST/DELETE /v1/adapters need ("Authorization:
    /// Bearer KEY"); the API key does not grant them.</summary>
    public string? AdminKeyEnv { get; init; }
    /// <summary>Allows binding a non-loopback host without an API key.</summary>
    public bool Insecure { get; init; }
    /// <summary>Browser origins allowed to call the API cross-origin ("https://app.example", or "*"); others get 403.</summary>
    public IReadOnlyList<string> CorsOrigins { get; init; } = Array.Empty<string>();
    /// <summary>Open connections at most (Kestrel); beyond it new connections are refused.</summary>
    public int MaxConnections { get; init; } = 1024;
    /// <summary>Seconds a client has to send its request headers, and the grace period of the minimum body rate
    /// (240 bytes/s) before the connection is answered 408 and closed (slowloris).</summary>
    public int HeaderTimeoutSeconds { get; init; } = 10;
    /// <summary>Seconds a completion request may take from its arrival to its last token (408 beyond); 0 = no limit.</summary>
    public int RequestTimeoutSeconds { get; init; } = 600;
    /// <summary>Adapters registered at most (start-up and POST /v1/adapters).</summary>
    public int MaxAdapters { get; init; } = 4096;
    /// <summary>Sequences (queued or decoding) one client may hold at once: its fair share of the queue. A client is
    /// its remote address. Default: half of max batch + max queue (at least 1).</summary>
    public int? MaxClientSequences { get; init; }
    /// <summary>Padded tokens per prefill forward (<see cref="Inference.BatchEngineOptions.MaxPrefillTokens"/>); default max(context, 4096).</summary>
    public int? MaxPrefillTokens { get; init; }
    /// <summary>NaN/infinity check of the weights and of every adapter at load (off with the CLI's --no-check).</summary>
    public bool CheckFinite { get; init; } = true;
    /// <summary>Where log lines go (the CLI: stderr). Null = nowhere.</summary>
    public Action<string>? Log { get; init; }
}
