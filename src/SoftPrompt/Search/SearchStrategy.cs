namespace SoftPrompt.Search;

/// <summary>How a hard prompt is searched: <see cref="Gradient"/> (token swaps proposed by the gradient, AutoPrompt /
/// HotFlip) or <see cref="Opro"/> (an LLM proposes whole instructions; Yang et al. 2023).</summary>
public enum SearchStrategy { Gradient, Opro }
