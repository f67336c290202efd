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
    /// <summary>The frozen model, decoder-only or encoder-decoder: what training, adapters and the loss take.</summary>
    public IPromptableModel Base { get; }
    /// <summary>The decoder-only model; an encoder-decoder one is refused by name here, so code written for decoder-only
    /// models (search, OPRO's local model, inspection, the batch engine) says so instead of failing later.</summary>
    public CausalLM Model => Base as CausalLM ?? throw new SoftPromptException(
        $"{Directory}: {Base.Config.ModelType} is an encoder-decoder model; this command supports decoder-only models only (with T5: train, eval, generate, score, serve).");
    /// <summary>The encoder-decoder model (T5), else null.</summary>
    public T5Model? Seq2Seq => Base as T5Model;
    public bool IsEncoderDecoder => Base.Config.IsEncoderDecoder;
    public HfTokenizer? Tokenizer { get; }
    public string Directory { get; }
    /// <summary>Whether weights and adapters loaded through this model are checked for NaN/infinity.</summary>
    public bool CheckFinite { get; }

    LanguageModel(string dir, IPromptableModel model, HfTokenizer? tok, bool checkFinite) { Directory = dir; Base = model; Tokenizer = tok; CheckFinite = checkFinite; }

    public static LanguageModel Load(string modelDir, string device = "auto", string dtype = "fp32", bool checkFinite = true)
    {
        var cfg = ModelConfig.Load(modelDir);
        var dev = TorchRuntime.ResolveDevice(device);
        var dt = TorchRuntime.ResolveDType(dtype, cfg.TorchDtype);
        var tok = HfTokenizer.TryLoad(modelDir);
        IPromptableModel model = cfg.IsEncoderDecoder ? T5Model.Load(modelDir, dev, dt, checkFinite) : ModelLoader.Load(modelDir, dev, dt, checkFinite);
        return new LanguageModel(modelDir, model, tok, checkFinite);
    }

    public HfTokenizer RequireTokenizer() => Tokenizer ?? throw new SoftPromptException(
        $"{Directory}: no tokenizer files (tokenizer.json, vocab.json + merges.txt, or tokenizer.model); pass token ids instead of text.");

    public int[] Encode(string text, bool addSpecialTokens = true) => RequireTokenizer().Encode(text, addSpecialTokens);

    public string Decode(IEnumerable<int> ids) => Tokenizer?.Decode(ids) ?? string.Join(" ", ids);

    /// <summary>Text of a single token for display; the id in angle brackets when there is no tokenizer.</summary>
    public string TokenText(int id) => Tokenizer?.TokenText(id) ?? $"<{id}>";

    /// <summary>Stop ids: the tokenizer's (including generation_config.json) or else config.json's eos_token_id.</summary>
    public IReadOnlyList<int> EosIds => Tokenizer is { EosIds.Count: > 0 } t ? t.EosIds : Base.Config.EosTokenIds;

    /// <summary>Loads a PEFT prompt adapter folder (prompt tuning or prefix tuning) made for this model.</summary>
    public IPromptMethod LoadPrompt(string adapterDir) => Adapter.Load(adapterDir, Base, checkFinite: CheckFinite);

    /// <summary>Encoder-decoder scoring: log-probabilities of <paramref name="targetIds"/> as the decoder's continuation
    /// of the encoder input <paramref name="inputIds"/>.</summary>
    public TokenScores Score(IReadOnlyList<int> inputIds, IReadOnlyList<int> targetIds, IPromptMethod? prompt = null)
    {
        var t5 = Seq2Seq ?? throw new SoftPromptException($"{Directory}: scoring an input and a target separately needs an encoder-decoder model.");
        using var scope = TorchSharp.torch.NewDisposeScope();
        using var noGrad = TorchSharp.torch.no_grad();
        return Seq2SeqGenerator.Score(t5, inputIds, targetIds, prompt?.Inject(1));
    }

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
        return Seq2Seq is { } t5 ? Seq2SeqGenerator.Generate(t5, ids, options, prompt?.Inject(1)) : Generator.Generate(Model, ids, options, prompt?.Inject(1));
    }

    public void Dispose() => Base.Dispose();
}
