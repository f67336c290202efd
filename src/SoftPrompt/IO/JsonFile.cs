using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.Json.Serialization;

namespace SoftPrompt.IO;

/// <summary>
/// Reading and writing the JSON files users hand us or read from us. Reading: regular files only
/// (<see cref="InputFile"/>), duplicate keys are an error (which of two values would win is a guess), and every parse
/// error names the file and line. Writing: JSON has no NaN or infinity, so every writer goes through
/// <see cref="Clean"/> or <see cref="SerializerOptions"/>, which write a non-finite number as <c>null</c> (one rule
/// for every file and every <c>--format json</c> output; see docs/reliability.md).
/// </summary>
public static class JsonFile
{
    /// <summary>Reads a file that must hold one JSON object.</summary>
    public static JsonObject ReadObject(string path, bool allowComments = false, string? what = null) =>
        ParseObject(InputFile.ReadAllText(path, what), path, allowComments);

    public static JsonObject ParseObject(string text, string path, bool allowComments = false)
    {
        JsonNode? n;
        try
        {
            n = JsonNode.Parse(text, documentOptions: new JsonDocumentOptions
            {
                AllowDuplicateProperties = false, MaxDepth = 256,
                CommentHandling = allowComments ? JsonCommentHandling.Skip : JsonCommentHandling.Disallow, AllowTrailingCommas = allowComments,
            });
        }
        catch (JsonException e) { throw Invalid(path, text, e); }
        return n as JsonObject ?? throw new SoftPromptException($"{path}: expected a JSON object{(n is null ? "" : $", found {Kind(n)}")}.");
    }

    /// <summary>"FILE:LINE: invalid JSON (why)" from a parse error; duplicate keys get the line of their second occurrence.</summary>
    public static SoftPromptException Invalid(string path, string text, JsonException e)
    {
        var why = e.Message;
        int cut = why.IndexOf(" LineNumber:", StringComparison.Ordinal);
        if (cut > 0) why = why[..cut];
        why = InputFile.OneLine(why).TrimEnd('.');
        long? line = e.LineNumber + 1;
        var dup = System.Text.RegularExpressions.Regex.Match(why, "Duplicate property '(.*)'");
        if (dup.Success) { why = $"key \"{dup.Groups[1].Value}\" appears twice"; line = DuplicateLine(text, dup.Groups[1].Value); }
        return new SoftPromptException($"{path}{(line is long l ? $":{l}" : "")}: invalid JSON ({why}).");
    }

    static long? DuplicateLine(string text, string key)
    {
        // Finds the second occurrence of the key as a property name at any depth (good enough to point at it).
        var bytes = Encoding.UTF8.GetBytes(text);
        var reader = new Utf8JsonReader(bytes, new JsonReaderOptions { CommentHandling = JsonCommentHandling.Skip, AllowTrailingCommas = true });
        int seen = 0;
        try
        {
            while (reader.Read())
                if (reader.TokenType == JsonTokenType.PropertyName && reader.ValueTextEquals(key) && ++seen == 2)
                    return LineAt(bytes, reader.TokenStartIndex);
        }
        catch (JsonException) { }
        return null;
    }

    /// <summary>The 1-based line of a top-level key in a JSON text (null when absent), for messages about its value.</summary>
    public static long? LineOf(string text, string key)
    {
        var bytes = Encoding.UTF8.GetBytes(text);
        var reader = new Utf8JsonReader(bytes, new JsonReaderOptions { CommentHandling = JsonCommentHandling.Skip, AllowTrailingCommas = true });
        try
        {
            while (reader.Read())
                if (reader.TokenType == JsonTokenType.PropertyName && reader.CurrentDepth == 1 && reader.ValueTextEquals(key))
                    return LineAt(bytes, reader.TokenStartIndex);
        }
        catch (JsonException) { }
        return null;
    }

    static long LineAt(byte[] bytes, long index)
    {
        long line = 1;
        for (long i = 0; i < index && i < bytes.Length; i++) if (bytes[i] == (byte)'\n') line++;
        return line;
    }

    public static string Kind(JsonNode? n) => n switch
    {
        null => "null", JsonObject => "an object", JsonArray => "an array",
        JsonValue v when v.TryGetValue<string>(out _) => "a string", JsonValue v when v.TryGetValue<bool>(out _) => "a boolean", _ => "a number",
    };

    /// <summary>A copy of <paramref name="node"/> with every non-finite number replaced by null (JSON cannot hold NaN or infinity).</summary>
    public static JsonNode? Clean(JsonNode? node)
    {
        switch (node)
        {
            case null: return null;
            case JsonObject o:
            {
                var r = new JsonObject();
                foreach (var (k, v) in o) r[k] = Clean(v);
                return r;
            }
            case JsonArray a: return new JsonArray(a.Select(Clean).ToArray());
            case JsonValue v:
                if (v.TryGetValue<double>(out var d) && !double.IsFinite(d)) return null;
                if (v.TryGetValue<float>(out var f) && !float.IsFinite(f)) return null;
                return v.DeepClone();
            default: return node.DeepClone();
        }
    }

    /// <summary>Serialises a node, non-finite numbers as null.</summary>
    public static string Write(JsonNode node, bool indented = false) => Write(node, indented ? Indented : null);

    public static string Write(JsonNode node, JsonSerializerOptions? options) => Clean(node) is { } c ? c.ToJsonString(options) : "null";

    static readonly JsonSerializerOptions Indented = new() { WriteIndented = true };

    /// <summary>Adds the non-finite-as-null converters to serializer options (for <c>JsonSerializer.Serialize</c> of objects).</summary>
    public static JsonSerializerOptions WithNonFiniteAsNull(JsonSerializerOptions o)
    {
        o.Converters.Add(new NonFiniteDouble());
        o.Converters.Add(new NonFiniteFloat());
        return o;
    }

    sealed class NonFiniteDouble : JsonConverter<double>
    {
        public override bool HandleNull => false;
        public override double Read(ref Utf8JsonReader reader, Type t, JsonSerializerOptions o) => reader.GetDouble();
        public override void Write(Utf8JsonWriter w, double v, JsonSerializerOptions o) { if (double.IsFinite(v)) w.WriteNumberValue(v); else w.WriteNullValue(); }
    }

    sealed class NonFiniteFloat : JsonConverter<float>
    {
        public override bool HandleNull => false;
        public override float Read(ref Utf8JsonReader reader, Type t, JsonSerializerOptions o) => reader.GetSingle();
        public override void Write(Utf8JsonWriter w, float v, JsonSerializerOptions o) { if (float.IsFinite(v)) w.WriteNumberValue(v); else w.WriteNullValue(); }
    }
}
