using System.Runtime.InteropServices;

namespace SoftPrompt.IO;

/// <summary>
/// The checks every input file gets before it is opened, so that a careless or hostile path is a one-line error
/// naming the file instead of a hang or an exception type: a missing file, a folder, a dangling symbolic link, a FIFO,
/// socket or device (opening a FIFO for reading blocks until someone writes to it), or a file we may not read.
/// </summary>
public static class InputFile
{
    /// <summary>Throws unless <paramref name="path"/> is (a symbolic link to) a regular file.</summary>
    public static void RequireRegular(string path, string? what = null)
    {
        var label = what is null ? path : $"{what} {path}";
        if (Directory.Exists(path)) throw new SoftPromptException($"{label}: is a folder, expected a file.");
        // File.Exists is true for a dangling symbolic link (.NET falls back to lstat), so links are resolved first.
        if (new FileInfo(path).LinkTarget is { } target)
        {
            FileSystemInfo? final;
            try { final = new FileInfo(path).ResolveLinkTarget(returnFinalTarget: true); }
            catch (IOException) { throw new SoftPromptException($"{label}: is a symbolic link that loops (or chains too deep)."); }
            if (final is null || !final.Exists)
                throw new SoftPromptException($"{label}: is a dangling symbolic link (to '{final?.FullName ?? target}', which does not exist).");
        }
        if (!File.Exists(path)) throw new SoftPromptException($"{label}: file not found.");
        if (FileType(path) is { } type && type != RegularType)
            throw new SoftPromptException($"{label}: is a {TypeName(type)}, not a regular file; only regular files are read.");
    }

    /// <summary>Opens a regular file for reading; permission and I/O problems become errors naming the file.</summary>
    public static FileStream OpenRead(string path, string? what = null)
    {
        RequireRegular(path, what);
        try { return new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read); }
        catch (UnauthorizedAccessException) { throw new SoftPromptException($"{(what is null ? path : $"{what} {path}")}: permission denied (cannot read it)."); }
        catch (IOException e) { throw new SoftPromptException($"{(what is null ? path : $"{what} {path}")}: cannot be read ({OneLine(e.Message)})."); }
    }

    public static string ReadAllText(string path, string? what = null)
    {
        using var fs = OpenRead(path, what);
        using var r = new StreamReader(fs, detectEncodingFromByteOrderMarks: true);
        try { return r.ReadToEnd(); }
        catch (IOException e) { throw new SoftPromptException($"{path}: cannot be read ({OneLine(e.Message)})."); }
    }

    /// <summary>
    /// Reads a file that must be text (instructions, rubrics: files whose lines become prompts): UTF-8 (a BOM allowed)
    /// or UTF-16/32 with a BOM, with no NUL or other control characters than tab, line and page breaks. A binary file
    /// (an image, an archive, a model's weights given by mistake) is an error naming the file and where it stopped being
    /// text, instead of becoming garbage prompts.
    /// </summary>
    public static string ReadText(string path, string? what = null)
    {
        var bytes = ReadAllBytes(path, what);
        var label = what is null ? path : $"{what} {path}";
        string text;
        System.Text.Encoding enc = new System.Text.UTF8Encoding(false, throwOnInvalidBytes: true);
        int skip = 0;
        if (bytes.Length >= 4 && bytes[0] == 0xFF && bytes[1] == 0xFE && bytes[2] == 0 && bytes[3] == 0) { enc = new System.Text.UTF32Encoding(false, true, true); skip = 4; }
        else if (bytes.Length >= 4 && bytes[0] == 0 && bytes[1] == 0 && bytes[2] == 0xFE && bytes[3] == 0xFF) { enc = new System.Text.UTF32Encoding(true, true, true); skip = 4; }
        else if (bytes.Length >= 3 && bytes[0] == 0xEF && bytes[1] == 0xBB && bytes[2] == 0xBF) skip = 3;
        else if (bytes.Length >= 2 && bytes[0] == 0xFF && bytes[1] == 0xFE) { enc = new System.Text.UnicodeEncoding(false, true, true); skip = 2; }
        else if (bytes.Length >= 2 && bytes[0] == 0xFE && bytes[1] == 0xFF) { enc = new System.Text.UnicodeEncoding(true, true, true); skip = 2; }
        try { text = enc.GetString(bytes, skip, bytes.Length - skip); }
        catch (System.Text.DecoderFallbackException e)
        {
            throw new SoftPromptException($"{label}: is not a text file (not valid {(enc is System.Text.UTF8Encoding ? "UTF-8" : enc.WebName)}{(e.Index >= 0 ? $" at byte {e.Index + skip}" : "")}); expected a UTF-8 text file.");
        }
        int line = 1;
        foreach (var c in text)
        {
            if (c == '\n') { line++; continue; }
            if (char.IsControl(c) && c is not ('\t' or '\r' or '\f' or '\v'))
                throw new SoftPromptException($"{label}: is not a text file (control character U+{(int)c:X4} on line {line}); expected a UTF-8 text file.");
        }
        return text;
    }

    public static byte[] ReadAllBytes(string path, string? what = null)
    {
        using var fs = OpenRead(path, what);
        var ms = new MemoryStream();
        try { fs.CopyTo(ms); }
        catch (IOException e) { throw new SoftPromptException($"{path}: cannot be read ({OneLine(e.Message)})."); }
        return ms.ToArray();
    }

    internal static string OneLine(string s) => string.Join(" ", s.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries));

    const int RegularType = 0x8000;

    static string TypeName(int type) => type switch
    {
        0x1000 => "FIFO (named pipe)", 0x2000 => "character device", 0x6000 => "block device", 0xC000 => "socket", 0x4000 => "folder", _ => "special file",
    };

    /// <summary>
    /// The file type bits (S_IFMT) of what <paramref name="path"/> resolves to, on Linux; null elsewhere or when unknown.
    /// .NET exposes no file type beyond file/folder (FileAttributes has no FIFO), so this asks statx(2) directly:
    /// its struct has one layout on every Linux architecture (stx_mode is the u16 at byte 28), unlike struct stat.
    /// </summary>
    static int? FileType(string path)
    {
        if (!OperatingSystem.IsLinux()) return null;
        try
        {
            var buf = new byte[256];
            if (statx(-100 /* AT_FDCWD */, path, 0, 0x1 /* STATX_TYPE */, buf) != 0) return null;
            return BitConverter.ToUInt16(buf, 28) & 0xF000;
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException) { return null; }
    }

    [DllImport("libc", SetLastError = true)]
    static extern int statx(int dirfd, [MarshalAs(UnmanagedType.LPUTF8Str)] string path, int flags, uint mask, byte[] buf);
}
