using System.Text.Json.Serialization;

namespace SoftPrompt.Tuning;

/// <summary>PEFT's adapter_config.json for prompt learning (PROMPT_TUNING / PREFIX_TUNING, task CAUSAL_LM).</summary>
public sealed record AdapterConfig
{
    [JsonPropertyName("peft_type")] public required string PeftType { get; init; }
    [JsonPropertyName("task_type")] public string TaskType { get; init; } = "CAUSAL_LM";
    [JsonPropertyName("num_virtual_tokens")] public required int NumVirtualTokens { get; init; }
    [JsonPropertyName("token_dim")] public int TokenDim { get; init; }
    [JsonPropertyName("num_layers")] public int NumLayers { get; init; }
    [JsonPropertyName("num_attention_heads")] public int NumAttentionHeads { get; init; }
    [JsonPropertyName("num_transformer_submodules")] public int NumTransformerSubmodules { get; init; } = 1;
    [JsonPropertyName("inference_mode")] public bool InferenceMode { get; init; } = true;
    [JsonPropertyName("base_model_name_or_path")] public string? BaseModelNameOrPath { get; init; }
    [JsonPropertyName("revision")] public string? Revision { get; init; }
    [JsonPropertyName("prompt_tuning_init"), JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] public string? PromptTuningInit { get; init; }
    [JsonPropertyName("prompt_tuning_init_text"), JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] public string? PromptTuningInitText { get; init; }
    [JsonPropertyName("tokenizer_name_or_path"), JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] public string? TokenizerNameOrPath { get; init; }
    [JsonPropertyName("prefix_projection"), JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] public bool? PrefixProjection { get; init; }
    [JsonPropertyName("encoder_hidden_size"), JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] public int? EncoderHiddenSize { get; init; }
}
