using System.Text.Json;

namespace SoftPrompt.Server;

/// <summary>Typed reads of a request's JSON fields; a wrong type or range is a 400 naming the field.</summary>
sealed class RequestFields
{
    readonly JsonElement _root;
    public RequestFields(JsonElement root)
    {
        if (root.ValueKind != JsonValueKind.Object) throw new ApiError(400, "the request body must be a JSON object.");
        _root = root;
    }

    public bool Has(string name) => _root.TryGetProperty(name, out var v) && v.ValueKind != JsonValueKind.Null;

    public JsonElement? Get(string name) => _root.TryGetProperty(name, out var v) && v.ValueKind != JsonValueKind.Null ? v : null;

    public string? String(string name, bool required = false)
    {
        var v = Get(name);
        if (v is null) return required ? throw ApiError.BadField(name, $"'{name}' is required.") : null;
        return v.Value.ValueKind == JsonValueKind.String ? v.Value.GetString() : throw ApiError.BadField(name, $"'{name}' must be a string.");
    }

    public bool Bool(string name, bool fallback)
    {
        var v = Get(name);
        if (v is null) return fallback;
        return v.Value.ValueKind switch
        {
            JsonValueKind.True => true,
            JsonValueKind.False => false,
            _ => throw ApiError.BadField(name, $"'{name}' must be true or false."),
        };
    }

    public int? Int(string name, int min, int max)
    {
        var v = Get(name);
        if (v is null) return null;
        if (v.Value.ValueKind != JsonValueKind.Number || !v.Value.TryGetInt64(out var x)) throw ApiError.BadField(name, $"'{name}' must be an integer.");
        if (x < min || x > max) throw ApiError.BadField(name, $"'{name}' must be between {min} and {max} (got {x}).");
        return (int)x;
    }

    public long? Long(string name)
    {
        var v = Get(name);
        if (v is null) return null;
        if (v.Value.ValueKind != JsonValueKind.Number || !v.Value.TryGetInt64(out var x)) throw ApiError.BadField(name, $"'{name}' must be an integer.");
        return x;
    }

    public double? Double(string name, double min, double max, bool minExclusive = false)
    {
        var v = Get(name);
        if (v is null) return null;
        if (v.Value.ValueKind != JsonValueKind.Number || !v.Value.TryGetDouble(out var x) || !double.IsFinite(x)) throw ApiError.BadField(name, $"'{name}' must be a finite number.");
        if (double.IsNaN(x) || x > max || (minExclusive ? x <= min : x < min))
            throw ApiError.BadField(name, $"'{name}' must be {(minExclusive ? "above" : "at least")} {min} and at most {max} (got {x}).");
        return x;
    }

    /// <summary>Characters of one stop sequence at most (the stream holds back that much text while it matches).</summary>
    public const int MaxStopLength = 256;

    /// <summary>A field that would change what is generated but is not implemented: absent, null or its neutral
    /// value pass (the client asked for nothing different); anything else is a 400 naming it, never silently ignored.</summary>
    public void Unsupported(string name, Func<JsonElement, bool> neutral, string what)
    {
        var v = Get(name);
        if (v is not null && !neutral(v.Value)) throw ApiError.BadField(name, $"'{name}' is not supported by this server ({what}).");
    }

    /// <summary>"stop": a string or an array of up to 4 non-empty strings.</summary>
    public string[] Stop()
    {
        var v = Get("stop");
        if (v is null) return Array.Empty<string>();
        string[] stops = v.Value.ValueKind switch
        {
            JsonValueKind.String => new[] { v.Value.GetString()! },
            JsonValueKind.Array when v.Value.EnumerateArray().All(e => e.ValueKind == JsonValueKind.String) => v.Value.EnumerateArray().Select(e => e.GetString()!).ToArray(),
            _ => throw ApiError.BadField("stop", "'stop' must be a string or an array of strings."),
        };
        if (stops.Length > 4) throw ApiError.BadField("stop", "'stop' takes at most 4 sequences.");
        if (stops.Any(s => s.Length == 0)) throw ApiError.BadField("stop", "'stop' sequences must not be empty.");
        if (stops.Any(s => s.Length > MaxStopLength)) throw ApiError.BadField("stop", $"'stop' sequences are at most {MaxStopLength} characters.");
        return stops;
    }
}
