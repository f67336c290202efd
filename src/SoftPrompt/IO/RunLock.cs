using System.Globalization;

namespace SoftPrompt.IO;

/// <summary>
/// One writer per output folder (a training or search run, an eval report, a pretraining run), held for the whole run.
/// The lock is the operating system's: <c>FOLDER/LOCK</c> is opened with <see cref="FileShare.None"/>, which .NET
/// maps to <c>flock(LOCK_EX | LOCK_NB)</c> on Unix and to a sharing lock on Windows, so it is released when the process
/// ends, kill -9 included, and a stale file never blocks anyone. Beside it, <c>LOCK.info</c> names the holder (pid,
/// host, start time, command) for the message a second writer gets at once (.NET takes a shared lock to read a file,
/// which the exclusive one refuses, so the lock file itself cannot carry it). The lock file stays behind (deleting it
/// would race with a writer that has just opened it); its presence means nothing.
/// </summary>
public sealed class RunLock : IDisposable
{
    public const string FileName = "LOCK";
    readonly FileStream _stream;
    readonly bool _deleteOnDispose;
    public string Path { get; }
    /// <summary>True when <see cref="Acquire"/> created the folder (a failed run then removes it).</summary>
    public bool CreatedFolder { get; private init; }
    /// <summary>The folder, and what was in it before the lock was taken (to remove only what a failed run added).</summary>
    public string Folder { get; private init; } = "";
    HashSet<string> _before = new();

    RunLock(FileStream stream, string path, bool deleteOnDispose) { _stream = stream; Path = path; _deleteOnDispose = deleteOnDispose; }

    /// <summary>Takes the lock on <paramref name="folder"/> (created if missing) or throws naming the holder.
    /// <paramref name="option"/> names the option that chose the folder, for the message.</summary>
    public static RunLock Acquire(string folder, string option = "--output")
    {
        bool existed = Directory.Exists(folder);
        var before = existed ? Directory.GetFileSystemEntries(folder).Select(System.IO.Path.GetFileName).ToHashSet()! : new HashSet<string?>();
        try { Directory.CreateDirectory(folder); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new SoftPromptException($"{option} {folder}: cannot create the folder ({InputFile.OneLine(e.Message)}).");
        }
        var l = AcquireFile(System.IO.Path.Combine(folder, FileName), folder, option, deleteOnDispose: false);
        return new RunLock(l._stream, l.Path, false) { CreatedFolder = !existed, Folder = folder, _before = before.Where(n => n is not null).Select(n => n!).ToHashSet() };
    }

    /// <summary>
    /// Locks a folder that is replaced as a whole when its writer succeeds (an eval report): the lock file is a hidden
    /// sibling, <c>.NAME.lock</c>, which a folder swap does not move; it is removed again on release.
    /// </summary>
    public static RunLock AcquireSibling(string folder, string option = "--output")
    {
        var full = System.IO.Path.GetFullPath(folder).TrimEnd(System.IO.Path.DirectorySeparatorChar);
        var parent = System.IO.Path.GetDirectoryName(full)!;
        try { Directory.CreateDirectory(parent); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new SoftPromptException($"{option} {folder}: cannot create its parent folder ({InputFile.OneLine(e.Message)}).");
        }
        return AcquireFile(System.IO.Path.Combine(parent, $".{System.IO.Path.GetFileName(full)}.lock"), folder, option, deleteOnDispose: true);
    }

    static RunLock AcquireFile(string path, string folder, string option, bool deleteOnDispose)
    {
        FileStream fs;
        try { fs = new FileStream(path, FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None); }
        catch (UnauthorizedAccessException) { throw new SoftPromptException($"{option} {folder}: not writable (permission denied)."); }
        catch (IOException e) when (File.Exists(path))
        {
            string holder;
            try { holder = File.ReadAllText(path + ".info").Trim(); }
            catch (Exception ex) when (ex is IOException or UnauthorizedAccessException) { holder = ""; }
            throw new SoftPromptException($"{option} {folder} is in use by another run ({(holder.Length > 0 ? holder.Replace('\n', ' ') : InputFile.OneLine(e.Message))}); " +
                "wait for it to finish or choose another folder.");
        }
        catch (IOException e) { throw new SoftPromptException($"{option} {folder}: cannot write there ({InputFile.OneLine(e.Message)})."); }
        try
        {
            var text = string.Create(CultureInfo.InvariantCulture,
                $"pid {Environment.ProcessId} on {Environment.MachineName} since {DateTimeOffset.Now:yyyy-MM-dd HH:mm:ss zzz}: {Command()}\n");
            AtomicFile.WriteAllText(path + ".info", text);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            fs.Dispose();
            throw new SoftPromptException($"{option} {folder}: cannot write there ({InputFile.OneLine(e.Message)}).");
        }
        return new RunLock(fs, path, deleteOnDispose);
    }

    /// <summary>
    /// After a run failed: removes the folder when this lock created it, else the entries added since the lock was
    /// taken (what was there before is left alone). Best effort; call after <see cref="Dispose"/>.
    /// </summary>
    public void RemoveWhatThisRunAdded()
    {
        try
        {
            if (CreatedFolder) { Directory.Delete(Folder, recursive: true); return; }
            foreach (var entry in Directory.GetFileSystemEntries(Folder))
            {
                if (_before.Contains(System.IO.Path.GetFileName(entry))) continue;
                if (Directory.Exists(entry)) Directory.Delete(entry, recursive: true); else File.Delete(entry);
            }
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { /* the error being reported matters more */ }
    }

    static string Command()
    {
        var args = Environment.GetCommandLineArgs();
        var cmd = string.Join(" ", args.Skip(1).Take(6));
        return cmd.Length > 200 ? cmd[..200] + "..." : cmd;
    }

    public void Dispose()
    {
        try
        {
            File.Delete(Path + ".info");
            if (_deleteOnDispose) File.Delete(Path);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { }
        _stream.Dispose();
    }
}
