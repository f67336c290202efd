using SoftPrompt.Models;
using SoftPrompt.Runtime;
using SoftPrompt.Tokenization;
using SoftPrompt.Tuning;
using static TorchSharp.torch;

namespace SoftPrompt.Inference;

/// <summary>
/// A frozen model with its tokenizer (when the folder has one): what an application loads once, then scores or
/// generates with, optionally with a soft prompt or prefix attached.
/// </summary>
public sealed class LanguageModel : IDisposable
{
    public CausalLM Model { get; }
    public HfTokenizer? Tokenizer { get; }
    public string Directory { get; }
    /// <summary>Whether weights and adapters loaded through this model are checked for NaN/infinity.</summary>
    public bool CheckFinite { get; }

    LanguageModel(string dir, CausalLM model, HfTokenizer? tok, bool checkFinite) { Directory = dir; Model = model; Tokenizer = tok; CheckFinite = checkFinite; }

    public static LanguageModel Load(string modelDir, string device = "auto", string dtype = "fp32", bool checkFinite = true)
    {
        var cfg = ModelConfig.Load(modelDir);
        var dev = TorchRuntime.ResolveDevice(device);
        var dt = TorchRuntime.ResolveDType(dtype, cfg.TorchDtype);
        var tok = HfTokenizer.TryLoad(modelDir);
        return new LanguageModel(modelDir, ModelLoader.Load(modelDir, dev, dt, checkFinite), tok, checkFinite);
    }

    public HfTokenizer RequireTokenizer() => Tokenizer ?? throw new SoftPromptException(
        $"{Directory}: no tokenizer files (tokenizer.json, vocab.json + merges.txt, or tokenizer.model); pass token ids instead of text.");

    public int[] Encode(string text, bool addSpecialTokens = true) => RequireTokenizer().Encode(text, addSpecialTokens);

    public string Decode(IEnumerable<int> ids) => Tokenizer?.Decode(ids) ?? string.Join(" ", ids);

    /// <summary>Text of a single token for display; the id in angle brackets when there is no tokenizer.</summary>
    public string TokenText(int id) => Tokenizer?.TokenText(id) ?? $"<{id}>";

    /// <summary>Stop ids: the tokenizer's (including generation_config.json) or else config.json's eos_token_id.</summary>
    public IReadOnlyList<int> EosIds => Tokenizer is { EosIds.Count: > 0 } t ? t.EosIds : Model.Config.EosTokenIds;

    /// <summary>Loads a PEFT prompt adapter folder (prompt tuning or prefix tuning) made for this model.</summary>
    public IPromptMethod LoadPrompt(string adapterDir) => Adapter.Load(adapterDir, Model, checkFinite: CheckFinite);

    public TokenScores Score(IReadOnlyList<int> ids, IPromptMethod? prompt = null)
    {
        using var scope = TorchSharp.torch.NewDisposeScope();
        using var noGrad = TorchSharp.torch.no_grad();
        return Scorer.Score(Model, ids, prompt?.Inject(1));
    }

    public GenerationResult Generate(IReadOnlyList<int> ids, GenerationOptions options, IPromptMethod? prompt = null)
    {
        using var scope = TorchSharp.torch.NewDisposeScope();
        using var noGrad = TorchSharp.torch.no_grad();
        return Generator.Generate(Model, ids, options, prompt?.Inject(1));
    }

    public void Dispose() => Model.Dispose();
}
