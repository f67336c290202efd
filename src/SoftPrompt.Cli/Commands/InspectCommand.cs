using System.CommandLine;
using SoftPrompt.Models;
using SoftPrompt.Tokenization;

namespace SoftPrompt.Cli.Commands;

public static class InspectCommand
{
    public static Command Create()
    {
        var model = Cli.ModelOption();
        var format = Cli.FormatOption();
        var cmd = new Command("inspect", "Describe a model folder: architecture, shapes, parameters, dtype, tokenizer and special tokens.") { model, format };
        cmd.SetAction(pr =>
        {
            var dir = pr.GetValue(model)!;
            var cfg = ModelConfig.Load(dir);
            var files = ModelLoader.WeightFiles(dir);
            long parameters = 0;
            var dtypes = new SortedSet<string>();
            foreach (var f in files)
            {
                var h = SoftPrompt.IO.SafeTensors.ReadHeader(f);
                foreach (var t in h.Tensors.Values)
                {
                    if (t.Name.EndsWith(".attn.bias") || t.Name.EndsWith(".attn.masked_bias") || t.Name.EndsWith("inv_freq")) continue;
                    parameters += t.Shape.Aggregate(1L, (a, b) => a * b);
                    dtypes.Add(t.DType);
                }
            }
            var tok = HfTokenizer.TryLoad(dir);
            var info = new
            {
                model = Path.GetFullPath(dir),
                model_type = cfg.ModelType,
                family = cfg.Family.ToString().ToLowerInvariant(),
                layers = cfg.NumLayers,
                hidden_size = cfg.HiddenSize,
                attention_heads = cfg.NumHeads,
                kv_heads = cfg.NumKvHeads,
                head_dim = cfg.HeadDim,
                intermediate_size = cfg.IntermediateSize,
                vocab_size = cfg.VocabSize,
                max_positions = cfg.MaxPositions,
                tied_embeddings = cfg.TieWordEmbeddings,
                rope_theta = cfg.Family != ArchFamily.Gpt2 ? cfg.RopeTheta : (double?)null,
                rope_scaling = cfg.RopeScaling?.Type,
                sliding_window = cfg.SlidingWindow,
                parameters,
                dtype = string.Join(",", dtypes),
                torch_dtype = cfg.TorchDtype,
                weight_files = files.Select(Path.GetFileName).ToArray(),
                tokenizer = tok?.Kind,
                tokenizer_vocab = tok?.VocabSize,
                bos = tok?.BosToken is { } b ? $"{b} ({tok.BosId})" : cfg.BosTokenId?.ToString(),
                eos = tok?.EosToken is { } e ? $"{e} ({tok.EosId})" : (cfg.EosTokenIds.Count > 0 ? string.Join(",", cfg.EosTokenIds) : null),
                eos_ids = tok?.EosIds.Count > 0 ? tok.EosIds.ToArray() : cfg.EosTokenIds.ToArray(),
                special_tokens = tok?.SpecialTokens.Count ?? 0,
            };
            if (pr.GetValue(format) == "json") { Cli.WriteJson(info); return 0; }
            Console.WriteLine($"model          {info.model}");
            Console.WriteLine($"architecture   {cfg.ModelType} ({info.family} family)");
            Console.WriteLine($"layers         {cfg.NumLayers}{(cfg.T5 is { } t5l ? $" encoder / {t5l.NumDecoderLayers} decoder (encoder-decoder; decoder start token {t5l.DecoderStartTokenId})" : "")}");
            Console.WriteLine($"hidden size    {cfg.HiddenSize}");
            Console.WriteLine($"heads          {cfg.NumHeads} query / {cfg.NumKvHeads} key-value (head_dim {cfg.HeadDim}{(cfg.NumKvHeads < cfg.NumHeads ? ", grouped-query" : "")})");
            Console.WriteLine($"mlp            {cfg.IntermediateSize} ({(cfg.T5 is { GatedAct: true } ? "gated " : "")}{cfg.Activation})");
            Console.WriteLine($"vocab          {cfg.VocabSize}");
            if (cfg.T5 is { } t5p) Console.WriteLine($"positions      relative buckets {t5p.NumBuckets} (max distance {t5p.MaxDistance}; no length limit)");
            else Console.WriteLine($"positions      {cfg.MaxPositions}{(cfg.Family != ArchFamily.Gpt2 ? $" (RoPE theta {cfg.RopeTheta}{(cfg.RopeScaling is { } rs ? $", {rs.Type} scaling x{rs.Factor}" : "")})" : " (learned)")}");
            if (cfg.SlidingWindow is int w) Console.WriteLine($"sliding window {w}");
            Console.WriteLine($"embeddings     {(cfg.TieWordEmbeddings ? "tied to the LM head" : "separate LM head")}");
            Console.WriteLine($"parameters     {parameters:N0} ({parameters / 1e6:F1} M)");
            Console.WriteLine($"dtype          {info.dtype} in {string.Join(", ", info.weight_files)}{(cfg.TorchDtype is { } td ? $" (torch_dtype {td})" : "")}");
            Console.WriteLine($"tokenizer      {tok?.Kind ?? "none (use --ids)"}{(tok is null ? "" : $", {tok.VocabSize} tokens")}");
            Console.WriteLine($"bos / eos      {info.bos ?? "-"} / {info.eos ?? "-"}");
            if (tok is { SpecialTokens.Count: > 0 })
                Console.WriteLine($"special tokens {string.Join(" ", tok.SpecialTokens.OrderBy(kv => kv.Value).Take(12).Select(kv => $"{kv.Key}={kv.Value}"))}{(tok.SpecialTokens.Count > 12 ? $" ... ({tok.SpecialTokens.Count} in all)" : "")}");
            return 0;
        });
        return cmd;
    }
}
