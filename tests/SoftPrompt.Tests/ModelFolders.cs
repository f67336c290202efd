using System.Text.Json.Nodes;
using SoftPrompt.IO;
using static TorchSharp.torch;

namespace SoftPrompt.Tests;

/// <summary>Builds model folders in temp directories from the reference fixtures (copied, then edited).</summary>
public static class ModelFolders
{
    /// <summary>Copies config.json and model.safetensors of a reference fixture into <paramref name="dir"/>.</summary>
    public static string CopyFixture(string model, string dir)
    {
        Directory.CreateDirectory(dir);
        foreach (var f in new[] { "config.json", "model.safetensors" })
            File.Copy(Path.Combine(Fixtures.HfReference(model), f), Path.Combine(dir, f), overwrite: true);
        return dir;
    }

    public static void EditConfig(string dir, Action<JsonObject> edit)
    {
        var path = Path.Combine(dir, "config.json");
        var o = JsonNode.Parse(File.ReadAllText(path))!.AsObject();
        edit(o);
        File.WriteAllText(path, o.ToJsonString(new System.Text.Json.JsonSerializerOptions { WriteIndented = true }));
    }

    public static void EditWeights(string dir, Action<Dictionary<string, Tensor>> edit)
    {
        var path = Path.Combine(dir, "model.safetensors");
        var w = SafeTensors.Load(path);
        edit(w);
        SafeTensors.Save(path, w, new Dictionary<string, string> { ["format"] = "pt" });
        foreach (var t in w.Values) t.Dispose();
    }

    /// <summary>Token ids of the golden seq2 (33 tokens, all models share them).</summary>
    public static long[] Seq2 => new long[] { 42, 171, 785, 367, 214, 606, 449, 23, 159, 260, 368, 275, 917, 333, 345, 239, 250, 113, 116, 371, 730, 875, 207, 672, 996, 972, 419, 353, 761, 439, 828, 832, 237 };
}
