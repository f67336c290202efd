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
        var cmd = new Command("score", "Teacher-forced log-probability (natural log) of each token given the ones before it.") { model, prompt, template, raw, text, ids, device, dtype, format, threads };
        cmd.SetAction(pr =>
        {
            TorchRuntime.SetThreads(pr.GetValue(threads));
            using var lm = LanguageModel.Load(pr.GetValue(model)!, pr.GetValue(device)!, pr.GetValue(dtype)!, Cli.CheckFinite(pr));
            var promptText = Cli.TemplatedText(pr.GetValue(text), pr.GetValue(prompt), pr.GetValue(template), pr.GetValue(raw), Cli.VerbosityOf(pr));
            var input = Cli.InputIds(lm, promptText, pr.GetValue(ids));
            using var adapter = pr.GetValue(prompt) is { } pdir ? lm.LoadPrompt(pdir) : null;
            var s = lm.Score(input, adapter);
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
