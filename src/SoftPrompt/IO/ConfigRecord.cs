using System.ComponentModel;
using System.Globalization;
using System.Reflection;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace SoftPrompt.IO;

/// <summary>
/// An options record whose properties are both config-file keys (snake_case) and CLI options (kebab-case), the
/// pattern of <c>TrainOptions</c> made generic so that other commands (<c>eval</c>) get it without a copy. Supported
/// property types: string, int, double, bool and string[] (a repeatable option; a JSON array in a config file).
/// </summary>
public static class ConfigRecord
{
    public static string Key(PropertyInfo p) => string.Concat(p.Name.Select((c, i) => char.IsUpper(c) && i > 0 ? "_" + char.ToLowerInvariant(c) : char.ToLowerInvariant(c).ToString()));
    public static string OptionName(PropertyInfo p) => "--" + Key(p).Replace('_', '-');
    public static IEnumerable<PropertyInfo> Properties<T>() => typeof(T).GetProperties(BindingFlags.Public | BindingFlags.Instance).Where(p => p.CanWrite);
    public static string Description(PropertyInfo p) => p.GetCustomAttribute<DescriptionAttribute>()?.Description ?? "";

    /// <summary>Reads a JSON config file onto <paramref name="baseOptions"/>; unknown keys and wrong types are errors naming the key and file.</summary>
    public static T FromFile<T>(string path, T baseOptions) where T : class
    {
        if (!File.Exists(path)) throw new SoftPromptException($"{path}: config file not found.");
        JsonObject o;
        try { o = JsonNode.Parse(File.ReadAllText(path), documentOptions: new JsonDocumentOptions { CommentHandling = JsonCommentHandling.Skip, AllowTrailingCommas = true }) as JsonObject ?? throw new SoftPromptException($"{path}: expected a JSON object."); }
        catch (JsonException e) { throw new SoftPromptException($"{path}: invalid JSON ({e.Message})."); }
        var values = new Dictionary<string, object?>();
        var byKey = Properties<T>().ToDictionary(Key);
        foreach (var (rawKey, node) in o)
        {
            if (rawKey.StartsWith("//") || rawKey.StartsWith("$") || rawKey == "_comment") continue;
            var key = rawKey.Replace('-', '_');
            if (!byKey.TryGetValue(key, out var p))
                throw new SoftPromptException($"{path}: unknown key '{rawKey}' (known: {string.Join(", ", byKey.Keys)}).");
            values[p.Name] = Convert(node, p.PropertyType, $"{path}: key '{rawKey}'");
        }
        return With(baseOptions, values);
    }

    /// <summary>A copy of <paramref name="options"/> with the given properties (by C# name) replaced.</summary>
    public static T With<T>(T options, IReadOnlyDictionary<string, object?> values) where T : class
    {
        // Records have a protected copy constructor; "with" is not available on a generic T.
        var clone = (T)typeof(T).GetMethod("<Clone>$")!.Invoke(options, null)!;
        foreach (var (name, v) in values) typeof(T).GetProperty(name)!.SetValue(clone, v);
        return clone;
    }

    static object? Convert(JsonNode? n, Type t, string where)
    {
        var u = Nullable.GetUnderlyingType(t) ?? t;
        if (n is null) return u == t && t.IsValueType ? throw new SoftPromptException($"{where} must not be null.") : null;
        try
        {
            if (u == typeof(string)) return n is JsonValue v && v.TryGetValue<string>(out var s) ? s : n.ToJsonString();
            if (u == typeof(int)) return n.GetValue<int>();
            if (u == typeof(double)) return n.GetValue<double>();
            if (u == typeof(bool)) return n.GetValue<bool>();
            if (u == typeof(string[]))
            {
                if (n is JsonValue one) return new[] { one.GetValue<string>() };
                return n.AsArray().Select(x => x?.GetValue<string>() ?? throw new InvalidOperationException()).ToArray();
            }
        }
        catch (Exception e) when (e is InvalidOperationException or FormatException)
        {
            string want = u == typeof(int) ? "an integer" : u == typeof(double) ? "a number" : u == typeof(bool) ? "true or false" : u == typeof(string[]) ? "a string or an array of strings" : "a string";
            throw new SoftPromptException($"{where} must be {want}, got {n.ToJsonString()}.");
        }
        throw new InvalidOperationException($"unsupported option type {t}");
    }

    /// <summary>The resolved options as a JSON object with snake_case keys.</summary>
    public static JsonObject ToJson<T>(T options)
    {
        var o = new JsonObject();
        foreach (var p in Properties<T>())
            o[Key(p)] = ToNode(p.GetValue(options));
        return o;
    }

    /// <summary>A typed JSON node for an option value (JsonValue.Create(object) fails to serialise without reflection type info).</summary>
    public static JsonNode? ToNode(object? v) => v switch
    {
        null => null,
        string s => JsonValue.Create(s),
        int i => JsonValue.Create(i),
        double d => JsonValue.Create(d),
        bool b => JsonValue.Create(b),
        string[] a => new JsonArray(a.Select(x => (JsonNode?)JsonValue.Create(x)).ToArray()),
        _ => JsonValue.Create(v.ToString()),
    };

    public static string FormatValue(object? v) => v switch
    {
        null => "null",
        double d => d.ToString("G", CultureInfo.InvariantCulture),
        string[] a => string.Join(",", a),
        _ => v.ToString()!,
    };
}
