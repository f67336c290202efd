namespace SoftPrompt.Distributed;

/// <summary>
/// The seam between a job and the processes it runs in. One process: <see cref="SingleProcess"/> (every call is a
/// no-op). Several (launched by <c>mpirun</c> / <c>srun</c>): <see cref="MpiCommunicator"/>. Jobs ask it "am I the
/// writer" (rank 0 alone touches the run folder), "sum this over all ranks" (gradients, loss sums, metric counts),
/// broadcast, barrier and abort; the trainer knows nothing more of distribution than "reduce this gradient".
/// Every collective call must be made by every rank, in the same order.
/// </summary>
public interface ICommunicator : IDisposable
{
    /// <summary>This process's index, 0..Size-1.</summary>
    int Rank { get; }
    /// <summary>Number of processes (the world size).</summary>
    int Size { get; }
    /// <summary>This process's index among the ranks on its host (picks its GPU: cuda:LocalRank).</summary>
    int LocalRank { get; }
    /// <summary>Ranks on this host (the host's cores are shared among them).</summary>
    int LocalSize { get; }
    /// <summary>Rank 0: the one process that writes the run folder, logs and prints progress.</summary>
    bool IsWriter => Rank == 0;

    void AllReduceSum(Span<float> values);
    void AllReduceSum(Span<double> values);
    void AllReduceSum(Span<long> values);
    void AllReduceMax(Span<long> values);
    /// <summary>Replaces <paramref name="data"/> on every rank with root's bytes (same length on every rank).</summary>
    void Broadcast(Span<byte> data, int root);
    void Barrier();
    /// <summary>Ends every rank of the job with <paramref name="exitCode"/> (MPI_Abort); does not return.</summary>
    void Abort(int exitCode);
}

/// <summary>One process: the world of one rank. Reductions over one rank leave values as they are.</summary>
public sealed class SingleProcess : ICommunicator
{
    public static readonly SingleProcess Instance = new();
    public int Rank => 0;
    public int Size => 1;
    public int LocalRank => 0;
    public int LocalSize => 1;
    public void AllReduceSum(Span<float> values) { }
    public void AllReduceSum(Span<double> values) { }
    public void AllReduceSum(Span<long> values) { }
    public void AllReduceMax(Span<long> values) { }
    public void Broadcast(Span<byte> data, int root) { }
    public void Barrier() { }
    public void Abort(int exitCode) => Environment.Exit(exitCode);
    public void Dispose() { }
}

/// <summary>
/// An error every rank met at the same point with the same message (inputs that differ between ranks, found by a
/// collective check): rank 0 reports it once and every rank exits with the same code, no abort needed.
/// </summary>
public sealed class RanksDisagreeException(string message) : SoftPromptException(message);

/// <summary>
/// What the ranks other than 0 end with when work rank 0 does alone (a call to a remote service) failed there: rank 0
/// reports its own error and exit code, the others follow with the same code and say nothing.
/// </summary>
public sealed class RootFailedException(string message) : SoftPromptException(message);
