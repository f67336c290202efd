using System.Runtime.InteropServices;

namespace SoftPrompt.Distributed;

/// <summary>
/// The MPI world (MPI_COMM_WORLD) through a thin P/Invoke layer over the system's libmpi — Open MPI, or MPICH and the
/// MPIs built on its ABI (Intel MPI, MVAPICH, Cray MPICH): init/finalize, rank/size, allreduce, broadcast, barrier,
/// abort — the calls the jobs use and nothing else.
/// <para>Why not the MPI.NET package (1.4.0): it was built for Microsoft MPI; on Linux it looks for <c>msmpi.dll</c>
/// and fails in its first call (tried 2026-12-06 with Open MPI 4.1.4), and its handles are MS-MPI's integer constants,
/// whereas Open MPI's handles are the addresses of exported objects (<c>ompi_mpi_comm_world</c>,
/// <c>ompi_mpi_float</c>, <c>ompi_mpi_op_sum</c>, ...), which this layer reads with <see cref="NativeLibrary.GetExport"/>.</para>
/// <para>MPICH's ABI (kept by its derivatives) has integer handles instead, fixed in its mpi.h: MPI_COMM_WORLD
/// 0x44000000, MPI_FLOAT 0x4c00040a, MPI_DOUBLE 0x4c00080b, MPI_LONG_LONG_INT 0x4c000809, MPI_BYTE 0x4c00010d, MPI_SUM
/// 0x58000003, MPI_MAX 0x58000001, MPI_IN_PLACE (void*)-1 (read from MPICH 4.0.2's mpi.h). Which ABI a library has is
/// told by its exports (Open MPI's objects) or else by MPI_Get_library_version, callable before MPI_Init. An integer
/// handle is passed in a 64-bit argument register, whose low 32 bits are what the C function reads.</para>
/// <para>The library is loaded only when a job is launched under MPI, so a machine without MPI runs every command as
/// before.</para>
/// </summary>
public sealed unsafe class MpiCommunicator : ICommunicator
{
    readonly nint _lib, _world, _float, _double, _long, _byte, _sum, _max;
    readonly delegate* unmanaged<nint, nint, int, nint, nint, nint, int> _allreduce;
    readonly delegate* unmanaged<nint, int, nint, int, nint, int> _bcast;
    readonly delegate* unmanaged<nint, int> _barrier;
    readonly delegate* unmanaged<nint, int, int> _abort;
    readonly delegate* unmanaged<int> _finalize;
    bool _disposed;
    /// <summary>MPI_IN_PLACE: 1 in Open MPI, -1 in MPICH.</summary>
    readonly nint _inPlace;

    /// <summary>"Open MPI" or "MPICH" (the ABI family), with the library's own version line.</summary>
    public string Flavor { get; }

    /// <summary>Collective calls made, bytes they carried (this rank's buffer) and the time spent in them, waiting for
    /// slower ranks included: what docs/distributed.md reports per step.</summary>
    public long Calls { get; private set; }
    public long Bytes { get; private set; }
    public TimeSpan Time => TimeSpan.FromTicks(_ticks * TimeSpan.TicksPerSecond / System.Diagnostics.Stopwatch.Frequency);
    long _ticks;

    public int Rank { get; }
    public int Size { get; }
    public int LocalRank { get; }
    public int LocalSize { get; }

    [DllImport("libc", EntryPoint = "dlopen")] static extern nint DlOpen(string file, int mode);
    [DllImport("libc", EntryPoint = "dlerror")] static extern nint DlError();
    [DllImport("libc", EntryPoint = "setenv")] static extern int SetEnv(string name, string value, int overwrite);
    const int RTLD_NOW = 2, RTLD_GLOBAL = 0x100;

    /// <summary>Candidate library names, the launcher's own MPI first: Open MPI's under its mpirun (OMPI_* variables),
    /// MPICH's under Hydra (PMI_* variables without OMPI_*); SOFTPROMPT_LIBMPI names another.</summary>
    static IEnumerable<string> LibraryNames()
    {
        if (Environment.GetEnvironmentVariable("SOFTPROMPT_LIBMPI") is { Length: > 0 } env) yield return env;
        string[] openMpi = { "libmpi.so.40", "libmpi.so" }, mpich = { "libmpich.so.12", "libmpi.so.12", "libmpich.so" };
        bool hydra = Environment.GetEnvironmentVariable("OMPI_COMM_WORLD_SIZE") is null && Environment.GetEnvironmentVariable("PMI_RANK") is not null;
        foreach (var n in hydra ? mpich.Concat(openMpi) : openMpi.Concat(mpich)) yield return n;
        yield return "libmpi.dylib";
    }

    MpiCommunicator()
    {
        if (!OperatingSystem.IsLinux() && !OperatingSystem.IsMacOS())
            throw new SoftPromptException("--distributed mpi: MPI support is for Linux (and macOS) with Open MPI.");
        // RTLD_GLOBAL: Open MPI's components (dlopen'ed plugins) resolve libmpi's symbols from the global scope.
        foreach (var name in LibraryNames())
        {
            _lib = DlOpen(name, RTLD_NOW | RTLD_GLOBAL);
            if (_lib != 0) break;
        }
        if (_lib == 0)
            throw new SoftPromptException("launched under MPI (or --distributed mpi) but no MPI library could be loaded " +
                $"({Marshal.PtrToStringAnsi(DlError()) ?? "not found"}); install Open MPI (Debian/Ubuntu: apt-get install openmpi-bin libopenmpi-dev) or MPICH (apt-get install mpich), or set SOFTPROMPT_LIBMPI to the libmpi.so of the MPI that launched the job.");
        nint Sym(string s) => NativeLibrary.TryGetExport(_lib, s, out var a) ? a
            : throw new SoftPromptException($"the MPI library has no symbol {s}: it is not an MPI library (see docs/distributed.md).");
        var version = LibraryVersion((delegate* unmanaged<byte*, int*, int>)Sym("MPI_Get_library_version"));
        if (NativeLibrary.TryGetExport(_lib, "ompi_mpi_comm_world", out _))
        {
            Flavor = "Open MPI";
            _world = Sym("ompi_mpi_comm_world");
            _float = Sym("ompi_mpi_float"); _double = Sym("ompi_mpi_double"); _long = Sym("ompi_mpi_long_long_int"); _byte = Sym("ompi_mpi_byte");
            _sum = Sym("ompi_mpi_op_sum"); _max = Sym("ompi_mpi_op_max");
            _inPlace = 1;
        }
        else if (new[] { "MPICH", "Intel(R) MPI", "MVAPICH" }.Any(f => version.Contains(f, StringComparison.OrdinalIgnoreCase)))
        {
            Flavor = "MPICH";
            _world = 0x44000000;
            _float = 0x4c00040a; _double = 0x4c00080b; _long = 0x4c000809; _byte = 0x4c00010d;
            _sum = 0x58000003; _max = 0x58000001;
            _inPlace = -1;
        }
        else throw new SoftPromptException($"the MPI library ({version.Split('\n')[0].Trim()}) is neither Open MPI nor of MPICH's ABI (MPICH, Intel MPI, MVAPICH, Cray MPICH): not supported; see docs/distributed.md.");
        var init = (delegate* unmanaged<nint, nint, int>)Sym("MPI_Init");
        var initialized = (delegate* unmanaged<int*, int>)Sym("MPI_Initialized");
        var rank = (delegate* unmanaged<nint, int*, int>)Sym("MPI_Comm_rank");
        var size = (delegate* unmanaged<nint, int*, int>)Sym("MPI_Comm_size");
        _allreduce = (delegate* unmanaged<nint, nint, int, nint, nint, nint, int>)Sym("MPI_Allreduce");
        _bcast = (delegate* unmanaged<nint, int, nint, int, nint, int>)Sym("MPI_Bcast");
        _barrier = (delegate* unmanaged<nint, int>)Sym("MPI_Barrier");
        _abort = (delegate* unmanaged<nint, int, int>)Sym("MPI_Abort");
        _finalize = (delegate* unmanaged<int>)Sym("MPI_Finalize");

        // .NET turns SIGSEGV/SIGFPE into exceptions with its own handlers; Open MPI would install its backtrace
        // handlers over them. opal_signal="" leaves the runtime's in place (the native environment, read by MPI_Init).
        SetEnv("OMPI_MCA_opal_signal", "", 0);
        int flag = 0;
        initialized(&flag);
        if (flag == 0) Check(init(0, 0), "MPI_Init");
        int r, s;
        Check(rank(_world, &r), "MPI_Comm_rank");
        Check(size(_world, &s), "MPI_Comm_size");
        Rank = r; Size = s;
        (LocalRank, LocalSize) = Launch.LocalRankAndSize() ?? (0, 1);
    }

    /// <summary>MPI_Get_library_version's text (allowed before MPI_Init); empty when the call fails.</summary>
    static string LibraryVersion(delegate* unmanaged<byte*, int*, int> get)
    {
        // MPI_MAX_LIBRARY_VERSION_STRING is 256 in Open MPI, 8192 in MPICH: the larger, twice over.
        var buf = new byte[16384];
        int len = 0;
        fixed (byte* p = buf) if (get(p, &len) != 0) return "";
        return System.Text.Encoding.UTF8.GetString(buf, 0, Math.Clamp(len, 0, buf.Length)).TrimEnd('\0');
    }

    static MpiCommunicator? _world0;
    /// <summary>The process's MPI world (MPI_Init runs once per process).</summary>
    public static MpiCommunicator World() => _world0 ??= new MpiCommunicator();

    static void Check(int rc, string call)
    {
        if (rc != 0) throw new InvalidOperationException($"{call} failed with MPI error {rc}");
    }

    void AllReduce(void* buf, int count, nint type, nint op, string what, int elementSize)
    {
        long t0 = System.Diagnostics.Stopwatch.GetTimestamp();
        Check(_allreduce(_inPlace, (nint)buf, count, type, op, _world), what);
        _ticks += System.Diagnostics.Stopwatch.GetTimestamp() - t0;
        Calls++; Bytes += (long)count * elementSize;
    }

    const int Chunk = 1 << 28; // MPI counts are ints

    public void AllReduceSum(Span<float> values)
    {
        fixed (float* p = values) for (int at = 0; at < values.Length; at += Chunk) AllReduce(p + at, Math.Min(Chunk, values.Length - at), _float, _sum, "MPI_Allreduce(float, sum)", 4);
    }

    public void AllReduceSum(Span<double> values)
    {
        fixed (double* p = values) for (int at = 0; at < values.Length; at += Chunk) AllReduce(p + at, Math.Min(Chunk, values.Length - at), _double, _sum, "MPI_Allreduce(double, sum)", 8);
    }

    public void AllReduceSum(Span<long> values)
    {
        fixed (long* p = values) for (int at = 0; at < values.Length; at += Chunk) AllReduce(p + at, Math.Min(Chunk, values.Length - at), _long, _sum, "MPI_Allreduce(long, sum)", 8);
    }

    public void AllReduceMax(Span<long> values)
    {
        fixed (long* p = values) for (int at = 0; at < values.Length; at += Chunk) AllReduce(p + at, Math.Min(Chunk, values.Length - at), _long, _max, "MPI_Allreduce(long, max)", 8);
    }

    public void Broadcast(Span<byte> data, int root)
    {
        fixed (byte* p = data) for (int at = 0; at < data.Length || at == 0; at += Chunk)
        {
            long t0 = System.Diagnostics.Stopwatch.GetTimestamp();
            Check(_bcast((nint)(p + at), Math.Min(Chunk, data.Length - at), _byte, root, _world), "MPI_Bcast");
            _ticks += System.Diagnostics.Stopwatch.GetTimestamp() - t0;
            Calls++; Bytes += Math.Min(Chunk, data.Length - at);
            if (data.Length == 0) break;
        }
    }

    public void Barrier()
    {
        long t0 = System.Diagnostics.Stopwatch.GetTimestamp();
        Check(_barrier(_world), "MPI_Barrier");
        _ticks += System.Diagnostics.Stopwatch.GetTimestamp() - t0;
        Calls++;
    }

    /// <summary>Calls, bytes and time so far, as one line.</summary>
    public string Stats(int steps) => FormattableString.Invariant(
        $"MPI on rank {Rank}: {Calls} collective calls, {Bytes / 1024.0:F1} KiB, {Time.TotalSeconds:F3} s in them (waiting for other ranks included)")
        + (steps > 0 ? FormattableString.Invariant($"; per step {Time.TotalMilliseconds / steps:F2} ms, {Bytes / 1024.0 / steps:F1} KiB") : "");

    public void Abort(int exitCode)
    {
        Console.Out.Flush(); Console.Error.Flush();
        _abort(_world, exitCode);
        Environment.Exit(exitCode); // not reached
    }

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        _finalize();
    }
}
