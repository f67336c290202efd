using SoftPrompt.Tuning;

namespace SoftPrompt.Server;

/// <summary>
/// Where `POST /v1/adapters` may load from: only folders inside <c>--adapters-dir</c>. A client names a folder by its
/// path relative to that root ("demo/prompt/adapter", or a run folder standing for its adapter/); the path is refused
/// if it is absolute, has a "..", "." or empty segment, a backslash or a control character, and after every symbolic
/// link on the way (and the adapter's two files) is followed to its final target, the result must still lie inside
/// the root's own real path. Messages name the relative path only, never where the root is on the server's disk.
/// </summary>
public static class AdapterPaths
{
    /// <summary>The real path of the adapter folder <paramref name="relative"/> under <paramref name="root"/>;
    /// <see cref="SoftPromptException"/> with a client-safe message when it is not allowed or not an adapter folder.</summary>
    public static string Resolve(string root, string relative)
    {
        if (string.IsNullOrEmpty(relative)) throw new SoftPromptException("'path' is empty: give an adapter folder relative to the server's adapters folder.");
        if (relative.Length > 1024) throw new SoftPromptException("'path' is longer than 1024 characters.");
        if (relative.Any(c => char.IsControl(c) || c == '\\'))
            throw new SoftPromptException("'path' has a control character or a backslash.");
        if (relative.StartsWith('/') || Path.IsPathRooted(relative))
            throw new SoftPromptException("'path' is absolute: give a folder relative to the server's adapters folder.");
        var parts = relative.Split('/');
        if (parts.Any(p => p is "" or "." or ".."))
            throw new SoftPromptException($"'path' '{relative}' has an empty, '.' or '..' segment.");
        var realRoot = RealPath(Path.GetFullPath(root));
        var dir = RealPath(Path.Combine(realRoot, Path.Combine(parts)));
        if (!Inside(realRoot, dir)) throw new SoftPromptException($"'path' '{relative}' leads outside the server's adapters folder (a symbolic link).");
        if (!Directory.Exists(dir)) throw new SoftPromptException($"'path' '{relative}' is not a folder in the server's adapters folder.");
        dir = Adapter.ResolveDir(dir);   // a run folder stands for its adapter/
        dir = RealPath(dir);
        foreach (var f in new[] { Adapter.ConfigFile, Adapter.WeightsFile })
        {
            var file = Path.Combine(dir, f);
            if (!File.Exists(file)) throw new SoftPromptException($"'path' '{relative}' is not an adapter folder (it has no {f}).");
            if (!Inside(realRoot, RealPath(file))) throw new SoftPromptException($"'path' '{relative}': {f} leads outside the server's adapters folder (a symbolic link).");
        }
        if (!Inside(realRoot, dir)) throw new SoftPromptException($"'path' '{relative}' leads outside the server's adapters folder (a symbolic link).");
        return dir;
    }

    static bool Inside(string root, string path)
    {
        var r = root.EndsWith(Path.DirectorySeparatorChar) ? root : root + Path.DirectorySeparatorChar;
        return path == root || path.StartsWith(r, StringComparison.Ordinal);
    }

    /// <summary>The path with every symbolic link among its existing components followed to its final target (what
    /// realpath(3) gives; .NET has no such call, and a P/Invoke would be Unix-only). Components that do not exist are
    /// kept as they are. Throws for a link loop (more than 40 links).</summary>
    public static string RealPath(string path)
    {
        int links = 0;
        return Walk(Path.GetFullPath(path), ref links);
    }

    static string Walk(string full, ref int links)
    {
        var root = Path.GetPathRoot(full)!;
        var current = root;
        var rest = full[root.Length..].Split(Path.DirectorySeparatorChar, StringSplitOptions.RemoveEmptyEntries);
        for (int i = 0; i < rest.Length; i++)
        {
            var next = Path.Combine(current, rest[i]);
            FileSystemInfo info = new FileInfo(next);
            if (!info.Exists && Directory.Exists(next)) info = new DirectoryInfo(next);
            if (info.LinkTarget is { } target)
            {
                if (++links > 40) throw new SoftPromptException("too many levels of symbolic links in 'path'.");
                var resolved = Path.IsPathRooted(target) ? target : Path.Combine(current, target);
                next = Walk(Path.GetFullPath(resolved), ref links);
            }
            current = next;
        }
        return current;
    }
}
