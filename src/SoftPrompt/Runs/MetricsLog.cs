using System.Text.Json.Nodes;
using System.Text.Json;

namespace SoftPrompt.Runs;

/// <summary>Append-only JSONL log of training rows (kind "train") and evaluation rows (kind "eval").</summary>
public sealed class MetricsLog
{
    public string Path { get; }
    public List<JsonObject> Rows { get; } = new();

    readonly bool _write;

    /// <summary>Reads the log at <paramref name="path"/> (on resume, rows after <paramref name="truncateAfterStep"/> are
    /// dropped). With <paramref name="write"/> false (a rank other than the writer) rows are kept in memory only.</summary>
    public MetricsLog(string path, int? truncateAfterStep = null, bool write = true)
    {
        Path = path;
        _write = write;
        if (File.Exists(path))
        {
            // On resume, keep the rows up to the checkpoint's step and drop what a killed run wrote after it.
            foreach (var line in File.ReadAllLines(path))
            {
                if (string.IsNullOrWhiteSpace(line)) continue;
                JsonObject? o;
                try { o = JsonNode.Parse(line) as JsonObject; } catch (JsonException) { continue; } // a torn last line
                // A row without an integer step and a string kind is not one we wrote (a torn or edited line): skipped.
                if (o is null || o["step"] is not JsonValue sv || !sv.TryGetValue<int>(out var step) || o["kind"] is not JsonValue kv || !kv.TryGetValue<string>(out _)) continue;
                if (truncateAfterStep is int s && step > s) continue;
                Rows.Add(o);
            }
            if (write) IO.AtomicFile.WriteAllText(path, string.Concat(Rows.Select(r => IO.JsonFile.Write(r) + "\n")));
        }
    }

    public void Append(JsonObject row)
    {
        Rows.Add(row);
        if (_write) File.AppendAllText(Path, IO.JsonFile.Write(row) + "\n"); // a NaN loss is written as null
    }

    public IEnumerable<(double Step, double Value)> Series(string kind, string key) =>
        Rows.Where(r => r["kind"]?.GetValue<string>() == kind && r[key] is JsonValue v && v.TryGetValue<double>(out _))
            .Select(r => ((double)r["step"]!.GetValue<int>(), r[key]!.GetValue<double>()));
}
