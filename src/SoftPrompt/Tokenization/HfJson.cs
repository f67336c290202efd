using System.Text.Json;

namespace SoftPrompt.Tokenization;

/// <summary>Small JSON helpers that turn every malformed input into a <see cref="TokenizerLoadException"/> naming file and key.</summary>
internal static class HfJson
{
    public static JsonDocument Read(string path)
    {
        try
        {
            IO.InputFile.RequireRegular(path);
            using var s = File.OpenRead(path);
            return JsonDocument.Parse(s, new JsonDocumentOptions { AllowTrailingCommas = true, CommentHandling = JsonCommentHandling.Skip, MaxDepth = 256 });
        }
        catch (JsonException e) { throw new TokenizerLoadException($"{path}: not valid JSON ({IO.InputFile.OneLine(e.Message)})", path, e); }
        catch (SoftPromptException e) { throw new TokenizerLoadException(e.Message, path, e); }
        catch (IOException e) { throw new TokenizerLoadException($"{path}: cannot be read ({e.Message})", path, e); }
        catch (UnauthorizedAccessException e) { throw new TokenizerLoadException($"{path}: cannot be read ({e.Message})", path, e); }
    }

    public static bool Has(JsonElement obj, string key, out JsonElement value)
    {
        value = default;
        return obj.ValueKind == JsonValueKind.Object && obj.TryGetProperty(key, out value) && value.ValueKind != JsonValueKind.Null;
    }

    public static JsonElement RequireObject(JsonElement obj, string key, string file, string keyPath)
    {
        if (!Has(obj, key, out var v) || v.ValueKind != JsonValueKind.Object)
            throw new TokenizerLoadException($"{file}: key '{keyPath}' is missing or is not an object", file);
        return v;
    }

    public static string? String(JsonElement obj, string key, string file, string keyPath)
    {
        if (!Has(obj, key, out var v)) return null;
        if (v.ValueKind != JsonValueKind.String) throw new TokenizerLoadException($"{file}: key '{keyPath}' must be a string", file);
        return v.GetString();
    }

    public static bool? Bool(JsonElement obj, string key, string file, string keyPath)
    {
        if (!Has(obj, key, out var v)) return null;
        return v.ValueKind switch
        {
            JsonValueKind.True => true,
            JsonValueKind.False => false,
            _ => throw new TokenizerLoadException($"{file}: key '{keyPath}' must be true or false", file),
        };
    }

    public static int Int(JsonElement v, string file, string keyPath)
    {
        if (v.ValueKind != JsonValueKind.Number || !v.TryGetInt32(out var i) || i < 0)
            throw new TokenizerLoadException($"{file}: key '{keyPath}' must be a non-negative integer", file);
        return i;
    }

    /// <summary>A token given as a plain string or as an AddedToken object {"content": ...}; null when absent or null.</summary>
    public static string? TokenContent(JsonElement obj, string key, string file)
    {
        if (!Has(obj, key, out var v)) return null;
        if (v.ValueKind == JsonValueKind.String) return v.GetString();
        if (v.ValueKind == JsonValueKind.Object && v.TryGetProperty("content", out var c) && c.ValueKind == JsonValueKind.String) return c.GetString();
        throw new TokenizerLoadException($"{file}: key '{key}' must be a string or an object with a string 'content'", file);
    }
}
