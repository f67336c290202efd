using System.CommandLine;
using System.Globalization;
using SoftPrompt.Evaluation;
using SoftPrompt.Inference;

namespace SoftPrompt.Cli.Commands;

/// <summary><c>softprompt inspect-prompt --prompt ADAPTER_DIR --model DIR</c>: nearest vocabulary tokens (cosine) of every
/// virtual token of a prompt-tuning adapter and its projected hard prompt; for prefix tuning, per-layer norms.</summary>
public static class InspectPromptCommand
{
    public static Command Create()
    {
        // --prompt as on every other command; the positional ADAPTER_DIR is the older spelling, still accepted.
        var adapterArg = new Argument<string?>("ADAPTER_DIR") { Description = "Same as --prompt (older spelling).", Arity = ArgumentArity.ZeroOrOne };
        var adapter = Cli.PromptOption();
        var model = Cli.ModelOption();
        var topK = new Option<int>("--top-k", "-k") { Description = "Nearest tokens listed per virtual token.", DefaultValueFactory = _ => 5 };
        var format = Cli.FormatOption();
        var device = Cli.DeviceOption();
        var dtype = Cli.DTypeOption();
        var cmd = new Command("inspect-prompt", "List the nearest vocabulary tokens (cosine) of each virtual token of a soft prompt, and its projected hard prompt.")
            { adapterArg, adapter, model, topK, format, device, dtype };
        cmd.SetAction(pr =>
        {
            var dir = (pr.GetValue(adapter), pr.GetValue(adapterArg)) switch
            {
                (null, null) => throw new SoftPromptException("give the adapter with --prompt ADAPTER_DIR (or a run folder)."),
                ({ } a, { } b) when a != b => throw new SoftPromptException($"two adapters given (--prompt {a} and {b}); give one."),
                var (a, b) => a ?? b!,
            };
            using var lm = LanguageModel.Load(pr.GetValue(model)!, pr.GetValue(device)!, pr.GetValue(dtype)!, Cli.CheckFinite(pr));
            var r = PromptInspection.Inspect(lm, dir, pr.GetValue(topK));
            if (pr.GetValue(format) == "json")
            {
                Cli.WriteJson(new
                {
                    adapter = r.Adapter, peft_type = r.PeftType, num_virtual_tokens = r.NumVirtualTokens,
                    tokens = r.Tokens?.Select(t => new { index = t.Index, norm = t.Norm, nearest = t.Nearest.Select(x => new { id = x.Id, text = x.Text, cosine = x.Cosine }) }),
                    projected_ids = r.ProjectedIds, projected_text = r.ProjectedText,
                    layer_norms = r.LayerNorms?.Select(l => new { layer = l.Layer, key_norm = l.KeyNorm, value_norm = l.ValueNorm }),
                    note = r.Note,
                });
                return 0;
            }
            Console.WriteLine($"adapter   {r.Adapter}");
            Console.WriteLine($"method    {r.PeftType}, {r.NumVirtualTokens} virtual tokens");
            if (r.Tokens is not null)
            {
                foreach (var t in r.Tokens)
                    Console.WriteLine(string.Format(CultureInfo.InvariantCulture, "  [{0,3}] |v| {1,7:F3}  {2}", t.Index, t.Norm,
                        string.Join("  ", t.Nearest.Select(x => string.Format(CultureInfo.InvariantCulture, "{0} ({1}) {2:F3}", Quote(x.Text), x.Id, x.Cosine)))));
                Console.WriteLine($"projected {Quote(r.ProjectedText ?? "")} [{string.Join(",", r.ProjectedIds!)}]");
            }
            else
            {
                Console.WriteLine(r.Note);
                foreach (var l in r.LayerNorms!)
                    Console.WriteLine(string.Format(CultureInfo.InvariantCulture, "  layer {0,3}  key norm {1,8:F3}  value norm {2,8:F3}", l.Layer, l.KeyNorm, l.ValueNorm));
            }
            return 0;
        });
        return cmd;
    }

    static string Quote(string s) => "\"" + s.Replace("\\", "\\\\").Replace("\n", "\\n").Replace("\"", "\\\"") + "\"";
}
