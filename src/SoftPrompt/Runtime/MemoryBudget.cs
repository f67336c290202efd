namespace SoftPrompt.Runtime;

/// <summary>
/// A size check before a large allocation: a request for more memory than the machine (or the container / ulimit the
/// process runs in, as .NET reports it) can give is a clear error naming what asked for it, instead of the kernel's OOM
/// killer, a native crash or minutes of swapping.
/// </summary>
public static class MemoryBudget
{
    /// <summary>The memory this process may use, in bytes (.NET's view: physical memory or the cgroup limit).</summary>
    public static long Available => Math.Max(1L << 30, GC.GetGCMemoryInfo().TotalAvailableMemoryBytes);

    /// <summary>Throws when <paramref name="bytes"/> exceeds the memory there is; <paramref name="what"/> starts the message.</summary>
    public static void Check(long bytes, string what)
    {
        if (bytes < 0 || bytes > Available)
            throw new SoftPromptException($"{what} would need {Format(bytes)}, more than the {Format(Available)} of memory available.");
    }

    /// <summary>checked(a * b * ...) as a byte count, or long.MaxValue on overflow (which <see cref="Check"/> then refuses).</summary>
    public static long Product(params long[] factors)
    {
        try { long r = 1; foreach (var f in factors) r = checked(r * Math.Max(0, f)); return r; }
        catch (OverflowException) { return long.MaxValue; }
    }

    public static string Format(long bytes) => bytes == long.MaxValue ? "more than 8 EiB" : bytes >= 1L << 30 ? $"{bytes / (double)(1L << 30):F1} GiB" : $"{bytes / (double)(1L << 20):F1} MiB";
}
