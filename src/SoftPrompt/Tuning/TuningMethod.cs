namespace SoftPrompt.Tuning;

/// <summary>The prompt-learning methods: PEFT's PROMPT_TUNING (virtual-token input embeddings) and PREFIX_TUNING
/// (per-layer key/value prefixes).</summary>
public enum TuningMethod { Prompt, Prefix }

public static class TuningMethods
{
    /// <summary>PEFT's <c>peft_type</c>: PROMPT_TUNING or PREFIX_TUNING.</summary>
    public static string PeftType(this TuningMethod m) => m switch
    {
        TuningMethod.Prompt => "PROMPT_TUNING",
        TuningMethod.Prefix => "PREFIX_TUNING",
        _ => throw new ArgumentOutOfRangeException(nameof(m)),
    };

    /// <summary>The method from PEFT's <c>peft_type</c>; null for a type SoftPrompt does not implement.</summary>
    public static TuningMethod? FromPeftType(string? peftType) => peftType switch
    {
        "PROMPT_TUNING" => TuningMethod.Prompt,
        "PREFIX_TUNING" => TuningMethod.Prefix,
        _ => null,
    };

    /// <summary>How reports name the method: "soft prompt" or "prefix".</summary>
    public static string Label(this TuningMethod m) => m == TuningMethod.Prefix ? "prefix" : "soft prompt";
}
