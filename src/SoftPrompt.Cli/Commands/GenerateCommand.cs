using System.CommandLine;
using SoftPrompt.Inference;
using SoftPrompt.Runtime;

namespace SoftPrompt.Cli.Commands;

public static class GenerateCommand
{
    public static Command Create()
    {
        var model = Cli.ModelOption(); var device = Cli.DeviceOption(); var dtype = Cli.DTypeOption(); var format = Cli.FormatOption(); var threads = Cli.ThreadsOption(); var prompt = Cli.PromptOption(); var template = Cli.PromptTemplateOption(); var raw = Cli.NoTemplateOption();
        var text = new Option<string>("--text", "-t") { Description = "Prompt text." };
        var ids = new Option<string>("--ids") { Description = "Comma-separated prompt token ids (works without tokenizer files)." };
        var maxNew = new Option<int>("--max-new-tokens", "-n") { Description = "Tokens to generate at most.", DefaultValueFactory = _ => 32 };
        var temperature = new Option<double>("--temperature") { Description = "0 = greedy (default); > 0 samples.", DefaultValueFactory = _ => 0 };
        var topP = new Option<double>("--top-p") { Description = "Nucleus sampling mass (with --temperature > 0).", DefaultValueFactory = _ => 1.0 };
        var topK = new Option<int>("--top-k") { Description = "Sample among the k most likely tokens (0 = all).", DefaultValueFactory = _ => 0 };
        var seed = new Option<long?>("--seed") { Description = "Random seed for sampling." };
        var noEos = new Option<bool>("--ignore-eos") { Description = "Do not stop at the end-of-sequence token." };
        var cmd = new Command("generate", "Generate a continuation (greedy by default) with a KV cache; stops at EOS. With an encoder-decoder model (T5) the prompt is the encoder input and the output the decoder's text.")
            { model, prompt, template, raw, text, ids, maxNew, temperature, topP, topK, seed, noEos, device, dtype, format, threads };
        cmd.SetAction(pr =>
        {
            int n = pr.GetValue(maxNew);
            double t = pr.GetValue(temperature), p = pr.GetValue(topP);
            // Every number is checked before the model is loaded.
            new GenerationOptions { MaxNewTokens = n, Temperature = t, TopP = p, TopK = pr.GetValue(topK) }.Validate();
            TorchRuntime.SetThreads(pr.GetValue(threads));
            using var lm = LanguageModel.Load(pr.GetValue(model)!, pr.GetValue(device)!, pr.GetValue(dtype)!, Cli.CheckFinite(pr));
            var promptText = Cli.TemplatedText(pr.GetValue(text), pr.GetValue(prompt), pr.GetValue(template), pr.GetValue(raw), Cli.VerbosityOf(pr));
            var input = Cli.InputIds(lm, promptText, pr.GetValue(ids));
            using var adapter = pr.GetValue(prompt) is { } pdir ? lm.LoadPrompt(pdir) : null;
            var opt = new GenerationOptions
            {
                MaxNewTokens = n, Temperature = t, TopP = p, TopK = pr.GetValue(topK), Seed = pr.GetValue(seed),
                EosIds = pr.GetValue(noEos) ? Array.Empty<int>() : lm.EosIds,
            };
            var r = lm.Generate(input, opt, adapter);
            var generated = lm.Tokenizer is null ? null : lm.Tokenizer.Decode(r.NewIds, skipSpecialTokens: true);
            if (pr.GetValue(format) == "json")
            {
                // An encoder-decoder model's output is the decoder's sequence alone, not a continuation of the prompt.
                Cli.WriteJson(new { prompt_ids = r.PromptIds, generated_ids = r.NewIds, ids = lm.IsEncoderDecoder ? r.NewIds : r.PromptIds.Concat(r.NewIds).ToArray(), text = generated, stop_reason = r.StopReason });
                return 0;
            }
            if (generated is not null) Console.WriteLine(lm.IsEncoderDecoder ? generated : (promptText ?? lm.Decode(r.PromptIds)) + generated);
            else Console.WriteLine(string.Join(",", r.NewIds));
            Console.Error.WriteLine($"[{r.NewIds.Length} tokens, stop: {r.StopReason}]");
            return 0;
        });
        return cmd;
    }
}
