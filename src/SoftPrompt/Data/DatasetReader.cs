using System.Buffers;
using System.Text;
using System.Text.Json;
using System.Text.Unicode;

namespace SoftPrompt.Data;

/// <summary>
/// Reads JSONL, TSV and CSV dataset files into <see cref="Example"/>s (see <see cref="DataOptions"/> for templates,
/// headers and columns).
/// </summary>
/// <remarks>
/// <list type="bullet">
/// <item>UTF-8, with or without BOM; invalid UTF-8 is an error naming the line.</item>
/// <item>JSONL: one JSON object per line; blank lines are ignored. Strings are used as is, numbers and booleans as
/// their JSON text (<c>3.50</c> stays "3.50"); null, arrays and objects are errors when a template uses them.</item>
/// <item>TSV: one record per line, cells split on tabs, no quoting or escaping. Whitespace-only lines are ignored.</item>
/// <item>CSV: RFC 4180 (quoted fields may hold commas, doubled quotes and line breaks). A record's line number is the
/// physical line where it starts. Lenient where RFC 4180 forbids but intent is clear: a quote inside an unquoted field
/// is kept literally; CR, LF and CRLF all end a record.</item>
/// <item>Each bad record is reported as <c>file:line: reason</c>.</item>
/// </list>
/// </remarks>
public static class DatasetReader
{
    sealed record RawRecord(int Line, Dictionary<string, string>? Fields, Dictionary<string, string>? Invalid, string? Error);

    public static DatasetReadResult Read(string path, DataOptions o)
    {
        ArgumentNullException.ThrowIfNull(o);
        if (!File.Exists(path))
            throw new DatasetException(Directory.Exists(path) ? $"{path}: is a directory, expected a dataset file." : $"{path}: dataset file not found.");
        if (o.MaxBadLinesReported < 0) throw new DatasetException($"MaxBadLinesReported must be >= 0 (got {o.MaxBadLinesReported}).");

        var format = ResolveFormat(path, o.Format);
        var prompt = o.PromptTemplate != null ? new Template(o.PromptTemplate) : null;
        var target = o.TargetTemplate != null ? new Template(o.TargetTemplate) : null;
        var promptFields = prompt?.Fields ?? new[] { o.InputField };
        var targetFields = target?.Fields ?? new[] { o.OutputField };
        var referenced = promptFields.Concat(targetFields).Distinct().ToList();
        var labelField = o.LabelWords is null ? null : o.LabelField();

        var text = ReadUtf8(path);
        IEnumerable<RawRecord> records = format switch
        {
            "jsonl" => ReadJsonl(text),
            _ => ReadDelimited(path, text, format, o, referenced),
        };

        var examples = new List<Example>();
        var problems = new List<string>();
        foreach (var r in records)
        {
            string? error = r.Error;
            string? p = null, t = null;
            if (error == null)
            {
                foreach (var f in referenced)
                {
                    if (r.Invalid != null && r.Invalid.TryGetValue(f, out var why)) { error = $"field \"{f}\" {why} (expected a string, number or bool)"; break; }
                    if (!r.Fields!.ContainsKey(f)) { error = $"missing field \"{f}\"{(f == o.OutputField && target == null ? " (the output)" : "")}"; break; }
                }
            }
            if (error == null)
            {
                p = prompt != null ? prompt.Render(r.Fields!, out _) : r.Fields![o.InputField];
                var rendered = r.Fields!;
                if (labelField is not null)
                {
                    // Verbalizer: the target is rendered with the label word; the example keeps the data's label.
                    if (o.LabelWords!.TryGetValue(rendered[labelField], out var word))
                        rendered = new Dictionary<string, string>(rendered) { [labelField] = word };
                    else error = o.NoLabelWord(rendered[labelField]);
                }
                if (error == null)
                {
                    t = target != null ? target.Render(rendered, out _) : DefaultTarget(rendered[o.OutputField]);
                    if (string.IsNullOrWhiteSpace(t)) error = "empty target";
                }
            }
            if (error != null) { problems.Add($"{path}:{r.Line}: {error}"); continue; }
            examples.Add(new Example(p!, t!, path, r.Line, r.Fields!));
        }

        if (problems.Count > 0 && !o.SkipBadLines)
            throw new DatasetException(Summary(path, problems, o.MaxBadLinesReported,
                $"{problems.Count} bad record(s); fix them, or pass --skip-bad-lines (skip_bad_lines in a config file) to skip them"), problems);
        if (examples.Count == 0)
            throw new DatasetException(problems.Count > 0
                ? Summary(path, problems, o.MaxBadLinesReported, $"no usable examples: all {problems.Count} record(s) are bad")
                : $"{path}: no examples (the file has no data records).", problems);
        return new DatasetReadResult(examples, problems.Count, problems);
    }

    /// <summary>The default target: the output value with one leading space unless it already starts with whitespace.</summary>
    public static string DefaultTarget(string output) => output.Length > 0 && char.IsWhiteSpace(output[0]) ? output : " " + output;

    static string Summary(string path, List<string> problems, int max, string head)
    {
        var sb = new StringBuilder($"{path}: {head}:");
        foreach (var p in problems.Take(max)) sb.Append("\n  ").Append(p);
        if (problems.Count > max) sb.Append($"\n  ... and {problems.Count - max} more");
        return sb.ToString();
    }

    static string ResolveFormat(string path, string format)
    {
        var f = (format ?? "auto").Trim().ToLowerInvariant();
        if (f is "jsonl" or "ndjson") return "jsonl";
        if (f is "tsv" or "csv") return f;
        if (f != "auto") throw new DatasetException($"{path}: unknown dataset format \"{format}\" (expected auto, jsonl, tsv or csv).");
        var ext = Path.GetExtension(path).ToLowerInvariant();
        return ext switch
        {
            ".jsonl" or ".ndjson" => "jsonl",
            ".tsv" => "tsv",
            ".csv" => "csv",
            ".json" => throw new DatasetException($"{path}: .json files are not supported; write one JSON object per line (.jsonl)."),
            _ => throw new DatasetException($"{path}: cannot tell the dataset format from the extension \"{ext}\" (expected .jsonl, .ndjson, .tsv or .csv, or set the format)."),
        };
    }

    static string ReadUtf8(string path)
    {
        var bytes = IO.InputFile.ReadAllBytes(path);
        int start = bytes.Length >= 3 && bytes[0] == 0xEF && bytes[1] == 0xBB && bytes[2] == 0xBF ? 3 : 0;
        var span = bytes.AsSpan(start);
        var chars = new char[span.Length];
        var status = Utf8.ToUtf16(span, chars, out int read, out int written, replaceInvalidSequences: false);
        if (status != OperationStatus.Done)
        {
            int line = 1 + span[..read].Count((byte)'\n');
            throw new DatasetException($"{path}:{line}: not valid UTF-8 (byte offset {start + read}); save the file as UTF-8.");
        }
        return new string(chars, 0, written);
    }

    static IEnumerable<(int Line, string Text)> Lines(string text)
    {
        int line = 1, pos = 0;
        while (pos <= text.Length)
        {
            int nl = text.IndexOf('\n', pos);
            int end = nl < 0 ? text.Length : nl;
            var s = text.Substring(pos, end - pos);
            if (s.EndsWith('\r')) s = s[..^1];
            if (nl < 0) { if (s.Length > 0) yield return (line, s); yield break; }
            yield return (line, s);
            pos = nl + 1; line++;
        }
    }

    static IEnumerable<RawRecord> ReadJsonl(string text)
    {
        foreach (var (line, s) in Lines(text))
        {
            if (string.IsNullOrWhiteSpace(s)) continue;
            JsonDocument? doc = null;
            string? parseError = null;
            try { doc = JsonDocument.Parse(s); }
            catch (JsonException e) { parseError = $"invalid JSON ({FirstSentence(e.Message)})"; }
            if (doc == null) { yield return new RawRecord(line, null, null, parseError); continue; }
            using (doc)
            {
                if (doc.RootElement.ValueKind != JsonValueKind.Object)
                {
                    yield return new RawRecord(line, null, null, $"expected a JSON object, found {Kind(doc.RootElement.ValueKind)}");
                    continue;
                }
                var fields = new Dictionary<string, string>();
                Dictionary<string, string>? invalid = null;
                foreach (var prop in doc.RootElement.EnumerateObject())
                {
                    var v = prop.Value;
                    switch (v.ValueKind)
                    {
                        case JsonValueKind.String: fields[prop.Name] = v.GetString()!; invalid?.Remove(prop.Name); break;
                        case JsonValueKind.Number or JsonValueKind.True or JsonValueKind.False: fields[prop.Name] = v.GetRawText(); invalid?.Remove(prop.Name); break;
                        default: (invalid ??= new())[prop.Name] = "is " + Kind(v.ValueKind); fields.Remove(prop.Name); break;
                    }
                }
                yield return new RawRecord(line, fields, invalid, null);
            }
        }
    }

    static string FirstSentence(string m) { int i = m.IndexOf(". ", StringComparison.Ordinal); return i > 0 ? m[..i] : m.TrimEnd('.'); }

    static string Kind(JsonValueKind k) => k switch
    {
        JsonValueKind.Array => "an array", JsonValueKind.Object => "an object", JsonValueKind.Null => "null",
        JsonValueKind.String => "a string", JsonValueKind.Number => "a number", _ => "a boolean",
    };

    static IEnumerable<RawRecord> ReadDelimited(string path, string text, string format, DataOptions o, List<string> referenced)
    {
        var rows = format == "tsv" ? TsvRows(text) : CsvRows(text);
        using var e = rows.GetEnumerator();
        if (!e.MoveNext()) yield break;
        var first = e.Current;

        bool header = o.HasHeader ?? (first.Error == null && (o.Columns != null
            ? first.Cells.Select(c => c.Trim()).SequenceEqual(o.Columns)
            : referenced.All(f => first.Cells.Any(c => c.Trim() == f))));

        IReadOnlyList<string> names;
        bool pending;
        if (header)
        {
            if (first.Error != null) throw new DatasetException($"{path}:{first.Line}: header row: {first.Error}");
            names = o.Columns ?? first.Cells.Select(c => c.Trim()).ToList();
            var dup = names.GroupBy(n => n).FirstOrDefault(g => g.Key.Length > 0 && g.Count() > 1);
            if (dup != null) throw new DatasetException($"{path}:{first.Line}: header names column \"{dup.Key}\" more than once.");
            pending = false;
        }
        else
        {
            names = o.Columns ?? new[] { o.InputField, o.OutputField };
            pending = true;
        }
        var missing = referenced.Where(f => !names.Contains(f)).ToList();
        if (missing.Count > 0)
            throw new DatasetException(header
                ? $"{path}:{first.Line}: the header has columns [{string.Join(", ", names)}] but the templates use {string.Join(", ", missing.Select(m => $"\"{m}\""))}."
                : $"{path}: no header row, so the columns are named [{string.Join(", ", names)}]{(o.Columns == null ? " (InputField, OutputField)" : "")}, " +
                  $"but the templates use {string.Join(", ", missing.Select(m => $"\"{m}\""))}; set Columns or add a header row.");

        while (true)
        {
            var row = pending ? first : (e.MoveNext() ? e.Current : default);
            if (!pending && row.Cells == null) yield break;
            pending = false;
            if (row.Error != null) { yield return new RawRecord(row.Line, null, null, row.Error); continue; }
            if (row.Cells.Count != names.Count)
            {
                yield return new RawRecord(row.Line, null, null,
                    $"expected {names.Count} {(format == "tsv" ? "tab-separated" : "comma-separated")} columns ({string.Join(", ", names)}), found {row.Cells.Count}");
                continue;
            }
            var fields = new Dictionary<string, string>();
            for (int i = 0; i < names.Count; i++) if (names[i].Length > 0) fields[names[i]] = row.Cells[i];
            yield return new RawRecord(row.Line, fields, null, null);
        }
    }

    static IEnumerable<(int Line, List<string> Cells, string? Error)> TsvRows(string text)
    {
        foreach (var (line, s) in Lines(text))
        {
            if (string.IsNullOrWhiteSpace(s)) continue;
            yield return (line, s.Split('\t').ToList(), null);
        }
    }

    /// <summary>RFC 4180 records with the physical line each starts on.</summary>
    internal static IEnumerable<(int Line, List<string> Cells, string? Error)> CsvRows(string text)
    {
        int n = text.Length, pos = 0, line = 1;
        var sb = new StringBuilder();
        while (pos < n)
        {
            int startLine = line;
            var cells = new List<string>();
            string? error = null;
            while (true)
            {
                sb.Clear();
                if (pos < n && text[pos] == '"')
                {
                    pos++;
                    bool closed = false;
                    while (pos < n)
                    {
                        char c = text[pos];
                        if (c == '"')
                        {
                            if (pos + 1 < n && text[pos + 1] == '"') { sb.Append('"'); pos += 2; continue; }
                            pos++; closed = true; break;
                        }
                        if (c == '\n') line++;
                        sb.Append(c); pos++;
                    }
                    if (!closed) { error = "unterminated quoted field (no closing '\"' before the end of the file)"; cells.Add(sb.ToString()); break; }
                    if (pos < n && text[pos] is not (',' or '\n' or '\r'))
                    {
                        error ??= $"unexpected text after a closing quote in column {cells.Count + 1} (a quote inside a field must be doubled: \"\")";
                        while (pos < n && text[pos] is not (',' or '\n')) pos++;
                    }
                }
                else
                {
                    while (pos < n && text[pos] is not (',' or '\n' or '\r')) sb.Append(text[pos++]);
                }
                cells.Add(sb.ToString());
                if (pos >= n) break;
                if (text[pos] == ',') { pos++; continue; }
                if (text[pos] == '\r') pos++;
                if (pos < n && text[pos] == '\n') pos++;
                line++;
                break;
            }
            if (error == null && cells.Count == 1 && cells[0].Length == 0) continue; // blank line
            yield return (startLine, cells, error);
        }
    }
}
