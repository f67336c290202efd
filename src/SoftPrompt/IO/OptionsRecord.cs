using System.ComponentModel;
using System.Globalization;
using System.Reflection;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace SoftPrompt.IO;

/// <summary>
/// Config-file binding for an options record whose public settable properties carry <see cref="DescriptionAttribute"/>s:
/// each property is a JSON key in snake_case (<c>prompt_length</c>) and a CLI option in kebab-case
/// (<c>--prompt-length</c>). The same scheme as <c>TrainOptions</c>, written once generically so that other commands
/// (<c>search-hard-prompt</c>) do not copy it; <c>TrainOptions</c> could move onto it later.
/// </summary>
/// <summary>Marks a property of an options record that is no config key and no generated CLI option: a run-time
/// setting the application passes in (e.g. the global <c>--no-check</c>), not written to the run folder's config.</summary>
[AttributeUsage(AttributeTargets.Property)]
public sealed class NotAnOptionAttribute : Attribute { }

public static class OptionsRecord
{
    public static string Key(PropertyInfo p) => Snake(p.Name);
    public static string OptionName(PropertyInfo p) => "--" + Key(p).Replace('_', '-');
    public static IEnumerable<PropertyInfo> Properties<T>() => typeof(T).GetProperties(BindingFlags.Public | BindingFlags.Instance).Where(p => p.CanWrite && p.GetCustomAttribute<NotAnOptionAttribute>() is null);
    public static string Description(PropertyInfo p) => p.GetCustomAttribute<DescriptionAttribute>()?.Description ?? "";

    /// <summary>An enum value as configs and options spell it: snake_case of its name (<c>ExactMatch</c> -> <c>exact_match</c>).</summary>
    public static string EnumName(Enum v) => Snake(v.ToString());

    /// <summary>The spellings of an enum type's values, in declaration order.</summary>
    public static string[] EnumNames(Type t) => Enum.GetValues(t).Cast<Enum>().Select(EnumName).ToArray();

    /// <summary>The enum value spelled <paramref name="text"/>; an error naming <paramref name="where"/> and the choices otherwise.</summary>
    public static object ParseEnum(Type t, string text, string where)
    {
        foreach (Enum v in Enum.GetValues(t))
            if (EnumName(v) == text) return v;
        throw new SoftPromptException($"{where} '{text}': expected {Choices(EnumNames(t))}.");
    }

    public static T ParseEnum<T>(string text, string where) where T : struct, Enum => (T)ParseEnum(typeof(T), text, where);

    static string Choices(string[] names) => names.Length <= 1 ? string.Concat(names) : string.Join(", ", names[..^1]) + " or " + names[^1];

    static string Snake(string name) => string.Concat(name.Select((c, i) => char.IsUpper(c) && i > 0 ? "_" + char.ToLowerInvariant(c) : char.ToLowerInvariant(c).ToString()));

    /// <summary>Reads a JSON config file over <paramref name="baseOptions"/>; unknown keys and wrong types are errors naming the key and file.</summary>
    public static T FromFile<T>(string path, T baseOptions) where T : class
    {
        if (!File.Exists(path) && new FileInfo(path).LinkTarget is null) throw new SoftPromptException($"{path}: config file not found.");
        var text = InputFile.ReadAllText(path, "--config");
        var o = JsonFile.ParseObject(text, path, allowComments: true);
        var byKey = Properties<T>().ToDictionary(Key);
        var values = new Dictionary<string, object?>();
        foreach (var (rawKey, node) in o)
        {
            if (rawKey.StartsWith("//") || rawKey.StartsWith("$") || rawKey == "_comment") continue;
            var key = rawKey.Replace('-', '_');
            var at = JsonFile.LineOf(text, rawKey) is long line ? $"{path}:{line}" : path;
            if (!byKey.TryGetValue(key, out var p))
                throw new SoftPromptException($"{at}: unknown key '{rawKey}' (known: {string.Join(", ", byKey.Keys)}).");
            values[p.Name] = Convert(node, p.PropertyType, $"{at}: key '{rawKey}'");
        }
        return With(baseOptions, values);
    }

    /// <summary>A copy of <paramref name="options"/> with the given properties (by C# name) set.</summary>
    public static T With<T>(T options, IReadOnlyDictionary<string, object?> values) where T : class
    {
        // Records have a protected copy constructor; MemberwiseClone gives the same shallow copy.
        var copy = (T)typeof(object).GetMethod("MemberwiseClone", BindingFlags.Instance | BindingFlags.NonPublic)!.Invoke(options, null)!;
        foreach (var (name, v) in values) typeof(T).GetProperty(name)!.SetValue(copy, v);
        return copy;
    }

    public static string ToJson<T>(T options)
    {
        var o = new JsonObject();
        foreach (var p in Properties<T>())
            o[Key(p)] = p.GetValue(options) switch
            {
                null => null, string s => JsonValue.Create(s), int i => JsonValue.Create(i), double d => JsonValue.Create(d), bool b => JsonValue.Create(b),
                string[] a => new JsonArray(a.Select(x => (JsonNode?)JsonValue.Create(x)).ToArray()),
                Enum e => JsonValue.Create(EnumName(e)),
                var v => throw new InvalidOperationException($"unsupported option type {v.GetType()}"),
            };
        return JsonFile.Write(o, indented: true) + "\n";
    }

    public static string FormatValue(object? v) => v switch
    {
        null => "null",
        double d => d.ToString("G", CultureInfo.InvariantCulture),
        string[] a => string.Join(",", a),
        Enum e => EnumName(e),
        _ => v.ToString()!,
    };

    static string Excerpt(JsonNode n) { var s = n.ToJsonString(); return s.Length <= 60 ? s : s[..57] + "..."; }

    static object? Convert(JsonNode? n, Type t, string where)
    {
        var u = Nullable.GetUnderlyingType(t) ?? t;
        if (n is null) return u == t && t.IsValueType ? throw new SoftPromptException($"{where} must not be null.") : null;
        try
        {
            // A text value must be a JSON string: "output": 12345 is almost certainly a mistake, not a folder named 12345.
            if (u == typeof(string)) return n is JsonValue v && v.TryGetValue<string>(out var s) ? s : throw new InvalidOperationException();
            if (u == typeof(int)) return n is JsonValue iv && iv.TryGetValue<int>(out var i) ? i : throw new InvalidOperationException();
            if (u == typeof(double)) return n is JsonValue dv && dv.TryGetValue<double>(out var d) && double.IsFinite(d) ? d : throw new InvalidOperationException();
            if (u == typeof(bool)) return n.GetValue<bool>();
            if (u.IsEnum)
            {
                var text = n is JsonValue ev && ev.TryGetValue<string>(out var es) ? es : throw new InvalidOperationException();
                return ParseEnum(u, text, where);
            }
            if (u == typeof(string[]))
            {
                if (n is JsonValue one) return new[] { one.GetValue<string>() };
                if (n is not JsonArray arr) throw new InvalidOperationException();
                return arr.Select(x => x is JsonValue xv && xv.TryGetValue<string>(out var xs) ? xs : throw new InvalidOperationException()).ToArray();
            }
        }
        catch (Exception e) when (e is InvalidOperationException or FormatException)
        {
            throw new SoftPromptException($"{where} must be {(u == typeof(int) ? "an integer (32-bit)" : u == typeof(double) ? "a finite number" : u == typeof(bool) ? "true or false" : u == typeof(string[]) ? "a string or an array of strings" : u.IsEnum ? Choices(EnumNames(u)) : "a string")}, got {Excerpt(n)}.");
        }
        throw new InvalidOperationException($"unsupported option type {t}");
    }
}
