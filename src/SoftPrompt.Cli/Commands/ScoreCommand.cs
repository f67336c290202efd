using System.CommandLine;
using SoftPrompt.Inference;
using SoftPrompt.Runtime;

namespace SoftPrompt.Cli.Commands;

public static class ScoreCommand
{
    public static Command Create()
    {
        var model = Cli.ModelOption(); var device = Cli.DeviceOption(); var dtype = Cli.DTypeOption(); var format = Cli.FormatOption(); var threads = Cli.ThreadsOption(); var prompt = Cli.PromptOption(); var template = Cli.PromptTemplateOption(); var raw = Cli.NoTemplateOption();
        var text = new Option<string>("--text", "-t") { Description = "Text to score (tokenized with the model's tokenizer, special tokens as its files say)." };
        var ids = new Option<string>("--ids") { Description = "Comma-separated token ids to score (works without tokenizer files)." };
        var target = new Option<string>("--target") { Description = "Encoder-decoder models (T5): the target text scored as the decoder's output for the --text / --ids input." };
        var targetIds = new Option<string>("--target-ids") { Description = "Encoder-decoder models: comma-separated target token ids." };
        var cmd = new Command("score", "Teacher-forced log-probability (natural log) of each token given the ones before it (encoder-decoder models: of each --target token given the input and the target before it).")
            { model, prompt, template, raw, text, ids, target, targetIds, device, dtype, format, threads };
        cmd.SetAction(pr =>
        {
            TorchRuntime.SetThreads(pr.GetValue(threads));
            using var lm = LanguageModel.Load(pr.GetValue(model)!, pr.GetValue(device)!, pr.GetValue(dtype)!, Cli.CheckFinite(pr));
            var promptText = Cli.TemplatedText(pr.GetValue(text), pr.GetValue(prompt), pr.GetValue(template), pr.GetValue(raw), Cli.VerbosityOf(pr));
            var input = Cli.InputIds(lm, promptText, pr.GetValue(ids));
            bool hasTarget = pr.GetValue(target) is not null || pr.GetValue(targetIds) is not null;
            if (lm.IsEncoderDecoder != hasTarget)
                throw new SoftPromptException(lm.IsEncoderDecoder
                    ? $"{lm.Directory} is an encoder-decoder model: give the decoder's --target (or --target-ids) to score, given the --text / --ids input."
                    : "--target / --target-ids apply to encoder-decoder models; a decoder-only model scores the --text / --ids tokens themselves.");
            using var adapter = pr.GetValue(prompt) is { } pdir ? lm.LoadPrompt(pdir) : null;
            TokenScores s;
            if (hasTarget)
            {
                var targetTokens = Cli.InputIds(lm, pr.GetValue(target), pr.GetValue(targetIds), addSpecialTokens: true, option: "--target");
                s = lm.Score(input, targetTokens, adapter);
                input = targetTokens;
            }
            else s = lm.Score(input, adapter);
            if (pr.GetValue(format) == "json")
            {
                Cli.WriteJson(new
                {
                    tokens = input.Select((id, i) => new { id, text = lm.TokenText(id), logprob = s.LogProbs[i] }).ToArray(),
                    total_logprob = s.Total,
                    perplexity = s.Scored > 0 ? s.Perplexity : (double?)null,
                });
                return 0;
            }
            Console.WriteLine($"{"pos",4}  {"id",7}  {"logprob",9}  token");
            for (int i = 0; i < input.Length; i++)
                Console.WriteLine($"{i,4}  {input[i],7}  {(s.LogProbs[i] is double lp ? lp.ToString("F4") : "-"),9}  {Printable(lm.TokenText(input[i]))}");
            Console.WriteLine($"total logprob {s.Total:F4} over {s.Scored} tokens; perplexity {(s.Scored > 0 ? s.Perplexity.ToString("F3") : "-")}");
            return 0;
        });
        return cmd;
    }

    internal static string Printable(string s) => System.Text.Json.JsonSerializer.Serialize(s, Cli.Json);
}
