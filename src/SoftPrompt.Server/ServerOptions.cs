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
    /// <summary>NaN/infinity check of the weights and of every adapter at load (off with the CLI's --no-check).</summary>
    public bool CheckFinite { get; init; } = true;
    /// <summary>Where log lines go (the CLI: stderr). Null = nowhere.</summary>
    public Action<string>? Log { get; init; }
}
