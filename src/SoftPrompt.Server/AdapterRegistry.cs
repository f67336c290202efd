using System.Text.Json.Nodes;
using SoftPrompt.Inference;
using SoftPrompt.IO;
using SoftPrompt.Models;
using SoftPrompt.Tuning;

namespace SoftPrompt.Server;

/// <summary>What /v1/models shows of an adapter: how it attaches and the data settings it was trained with.</summary>
public sealed record AdapterInfo(string Name, string Path, string Method, int VirtualTokens, string? PromptTemplate, string? TargetTemplate,
    IReadOnlyDictionary<string, string>? LabelWords);

/// <summary>
/// The adapters a server knows, by name. Each is loaded and checked against the base model's fingerprint when it is
/// added; at most <c>maxResident</c> stay in memory, the least recently used are dropped and reloaded from their
/// folder on their next request (an adapter is a few KB to a few MB, so a reload costs a file read).
/// Thread-safe; a dropped adapter's tensors live until the requests that hold it have read them.
/// </summary>
public sealed class AdapterRegistry : IDisposable
{
    sealed class Entry
    {
        public required AdapterInfo Info;
        public AttachedPrompt? Resident;
        public long LastUse;
    }

    readonly IPromptableModel _model;
    readonly int _maxResident, _maxRegistered;
    readonly Dictionary<string, Entry> _entries = new(StringComparer.Ordinal);
    readonly object _lock = new();
    long _clock;

    readonly bool _checkFinite;

    public AdapterRegistry(IPromptableModel model, int maxResident, bool checkFinite = true, int maxRegistered = int.MaxValue)
    {
        if (maxResident < 1) throw new SoftPromptException("--max-resident-adapters must be at least 1.");
        if (maxRegistered < 1) throw new SoftPromptException("--max-adapters must be at least 1.");
        _model = model; _maxResident = maxResident; _checkFinite = checkFinite; _maxRegistered = maxRegistered;
    }

    public int Count { get { lock (_lock) return _entries.Count; } }

    public const string BaseName = "base";

    public static void CheckName(string name)
    {
        if (string.IsNullOrWhiteSpace(name) || name.Length > 200 || name == BaseName || name.Any(c => char.IsControl(c) || char.IsWhiteSpace(c)))
            throw new SoftPromptException($"adapter name '{name}' is not allowed (non-empty, no spaces, at most 200 characters, not '{BaseName}').");
    }

    /// <summary>Loads (fingerprint check) and registers an adapter; throws <see cref="SoftPromptException"/> for a bad
    /// folder or model mismatch, <see cref="InvalidOperationException"/> when the name is taken (unless
    /// <paramref name="replace"/>: requests already holding the old adapter finish with it), and
    /// <see cref="AdapterLimitException"/> when the registry holds its maximum.</summary>
    public AdapterInfo Add(string name, string path, bool replace = false)
    {
        CheckName(name);
        lock (_lock) CheckRoomLocked(name, replace);
        var full = System.IO.Path.GetFullPath(SoftPrompt.Tuning.Adapter.ResolveDir(path)); // a run folder stands for its adapter/
        var prompt = AttachedPrompt.Load(full, _model, name, _checkFinite);
        var info = ReadInfo(name, full, prompt);
        lock (_lock)
        {
            try { CheckRoomLocked(name, replace); }
            catch { prompt.Dispose(); throw; }
            if (_entries.Remove(name, out var old)) old.Resident?.Dispose();
            _entries[name] = new Entry { Info = info, Resident = prompt, LastUse = ++_clock };
            EvictLocked();
        }
        return info;
    }

    void CheckRoomLocked(string name, bool replace)
    {
        bool exists = _entries.ContainsKey(name);
        if (exists && !replace) throw new InvalidOperationException($"an adapter named '{name}' is already served (send \"replace\": true to re-point it).");
        if (!exists && _entries.Count >= _maxRegistered) throw new AdapterLimitException($"the server serves its maximum of {_maxRegistered} adapters (--max-adapters); remove one first.");
    }

    public bool Remove(string name)
    {
        lock (_lock)
        {
            if (!_entries.Remove(name, out var e)) return false;
            e.Resident?.Dispose();
            return true;
        }
    }

    public IReadOnlyList<AdapterInfo> List()
    {
        lock (_lock) return _entries.Values.Select(e => e.Info).OrderBy(i => i.Name, StringComparer.Ordinal).ToList();
    }

    public int ResidentCount { get { lock (_lock) return _entries.Values.Count(e => e.Resident is not null); } }

    public bool Contains(string name) { lock (_lock) return _entries.ContainsKey(name); }

    /// <summary>The adapter's prompt, acquired (the caller calls <see cref="AttachedPrompt.Release"/>), reloading it if
    /// it was dropped; null when no adapter has that name.</summary>
    public AttachedPrompt? Acquire(string name)
    {
        Entry? e;
        lock (_lock)
        {
            if (!_entries.TryGetValue(name, out e)) return null;
            e.LastUse = ++_clock;
            if (e.Resident is not null && e.Resident.TryAcquire()) return e.Resident;
        }
        var loaded = AttachedPrompt.Load(e.Info.Path, _model, name, _checkFinite);   // outside the lock: a file read
        lock (_lock)
        {
            if (!_entries.TryGetValue(name, out var now) || now != e) { loaded.Dispose(); return null; }
            if (e.Resident is not null && e.Resident.TryAcquire()) { loaded.Dispose(); return e.Resident; }
            e.Resident = loaded;
            loaded.TryAcquire();
            EvictLocked(keep: e);
            return loaded;
        }
    }

    void EvictLocked(Entry? keep = null)
    {
        while (_entries.Values.Count(e => e.Resident is not null) > _maxResident)
        {
            var lru = _entries.Values.Where(e => e.Resident is not null && e != keep).MinBy(e => e.LastUse);
            if (lru is null) break;
            lru.Resident!.Dispose();
            lru.Resident = null;
        }
    }

    /// <summary>Adapter folders under <paramref name="root"/> (those holding adapter_config.json), named by their path
    /// relative to it with '/' separators ("demo/prompt/adapter"). Checkpoint copies (checkpoint/, best/) are skipped.</summary>
    public static List<(string Name, string Path)> Discover(string root)
    {
        if (!Directory.Exists(root)) throw new SoftPromptException($"--adapters-dir '{root}' does not exist.");
        var found = new List<(string, string)>();
        foreach (var cfg in Directory.EnumerateFiles(root, Adapter.ConfigFile, new EnumerationOptions { RecurseSubdirectories = true, MaxRecursionDepth = 6, IgnoreInaccessible = true }))
        {
            var dir = System.IO.Path.GetDirectoryName(cfg)!;
            var rel = System.IO.Path.GetRelativePath(root, dir).Replace('\\', '/');
            if (rel.Split('/').Any(p => p is "checkpoint" or "best")) continue;
            if (!File.Exists(System.IO.Path.Combine(dir, Adapter.WeightsFile))) continue;
            found.Add((rel == "." ? System.IO.Path.GetFileName(System.IO.Path.GetFullPath(root)) : rel, dir));
        }
        return found.OrderBy(f => f.Item1, StringComparer.Ordinal).ToList();
    }

    static AdapterInfo ReadInfo(string name, string dir, AttachedPrompt p)
    {
        var meta = AdapterMetadata.Read(dir);
        string method = p.Method == TuningMethod.Prefix ? "prefix_tuning" : "prompt_tuning";
        return new AdapterInfo(name, dir, method, p.VirtualTokens, meta.PromptTemplate, meta.TargetTemplate, meta.LabelWords?.ToDictionary(kv => kv.Key, kv => kv.Value));
    }

    public void Dispose()
    {
        lock (_lock)
        {
            foreach (var e in _entries.Values) e.Resident?.Dispose();
            _entries.Clear();
        }
    }
}

/// <summary>The registry holds its maximum number of adapters.</summary>
public sealed class AdapterLimitException : SoftPromptException
{
    public AdapterLimitException(string message) : base(message) { }
}
