using System.Text;

namespace SoftPrompt.Data;

/// <summary>
/// A text template with <c>{field}</c> placeholders and <c>{{</c> / <c>}}</c> escapes, parsed once.
/// </summary>
public sealed class Template
{
    readonly List<(string? Literal, string? Field)> _parts = new();

    /// <summary>The template text as given.</summary>
    public string Text { get; }

    /// <summary>Field names referenced, in order of first use.</summary>
    public IReadOnlyList<string> Fields { get; }

    public Template(string text)
    {
        Text = text;
        var fields = new List<string>();
        var lit = new StringBuilder();
        for (int i = 0; i < text.Length; i++)
        {
            char c = text[i];
            if (c == '{')
            {
                if (i + 1 < text.Length && text[i + 1] == '{') { lit.Append('{'); i++; continue; }
                int close = text.IndexOf('}', i + 1);
                if (close < 0) throw new DatasetException($"template \"{text}\": '{{' at position {i} has no closing '}}' (write '{{{{' for a literal brace).");
                var name = text.Substring(i + 1, close - i - 1);
                if (name.Length == 0 || name.Contains('{'))
                    throw new DatasetException($"template \"{text}\": bad placeholder at position {i} (expected {{field}}; write '{{{{' for a literal brace).");
                if (lit.Length > 0) { _parts.Add((lit.ToString(), null)); lit.Clear(); }
                _parts.Add((null, name));
                if (!fields.Contains(name)) fields.Add(name);
                i = close;
            }
            else if (c == '}')
            {
                if (i + 1 < text.Length && text[i + 1] == '}') { lit.Append('}'); i++; continue; }
                throw new DatasetException($"template \"{text}\": lone '}}' at position {i} (write '}}}}' for a literal brace).");
            }
            else lit.Append(c);
        }
        if (lit.Length > 0) _parts.Add((lit.ToString(), null));
        Fields = fields;
    }

    /// <summary>Renders the template; returns null and names the first missing field if one is absent.</summary>
    public string? Render(IReadOnlyDictionary<string, string> values, out string? missing)
    {
        var sb = new StringBuilder();
        foreach (var (literal, field) in _parts)
        {
            if (literal != null) { sb.Append(literal); continue; }
            if (!values.TryGetValue(field!, out var v)) { missing = field; return null; }
            sb.Append(v);
        }
        missing = null;
        return sb.ToString();
    }
}
