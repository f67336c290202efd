namespace SoftPrompt.Distributed;

/// <summary>How this process was launched: alone, or as one rank of an MPI job (mpirun, srun), read from the
/// launcher's environment so that nothing needs MPI when nothing is distributed.</summary>
public static class Launch
{
    /// <summary>"auto" (MPI when a launcher's variables say there are several ranks), "mpi" (always), "none" (never).</summary>
    public static readonly string[] Modes = { "auto", "mpi", "none" };

    /// <summary>The world size an MPI launcher announced (Open MPI, MPICH/Hydra, Slurm), or null outside one.</summary>
    public static int? WorldSizeFromEnvironment() =>
        Int("OMPI_COMM_WORLD_SIZE") ?? Int("PMI_SIZE") ?? Int("PMIX_SIZE") ?? (Environment.GetEnvironmentVariable("SLURM_STEP_ID") is not null ? Int("SLURM_NTASKS") : null);

    /// <summary>This rank's index among the ranks on its host and their number, from the launcher's variables.</summary>
    public static (int Rank, int Size)? LocalRankAndSize()
    {
        var rank = Int("OMPI_COMM_WORLD_LOCAL_RANK") ?? Int("MPI_LOCALRANKID") ?? Int("SLURM_LOCALID");
        var size = Int("OMPI_COMM_WORLD_LOCAL_SIZE") ?? Int("MPI_LOCALNRANKS") ?? SlurmTasksOnThisNode();
        return rank is int r ? (r, Math.Max(size ?? 1, r + 1)) : null;
    }

    /// <summary>SLURM_TASKS_PER_NODE reads "2(x3),1": this node's count is not known from it alone; the first count is used.</summary>
    static int? SlurmTasksOnThisNode()
    {
        var v = Environment.GetEnvironmentVariable("SLURM_TASKS_PER_NODE");
        if (string.IsNullOrEmpty(v)) return null;
        var first = v.Split(',')[0];
        int paren = first.IndexOf('(');
        return int.TryParse(paren >= 0 ? first[..paren] : first, out var n) ? n : null;
    }

    static int? Int(string name) => int.TryParse(Environment.GetEnvironmentVariable(name), out var v) && v >= 0 ? v : null;

    /// <summary>
    /// The communicator for a job: <see cref="SingleProcess"/> unless <paramref name="mode"/> is "mpi", or "auto" and
    /// a launcher started more than one rank. SOFTPROMPT_DISTRIBUTED sets the mode when the option is "auto".
    /// </summary>
    public static ICommunicator Communicator(string mode = "auto")
    {
        if (mode == "auto" && Environment.GetEnvironmentVariable("SOFTPROMPT_DISTRIBUTED") is { Length: > 0 } env) mode = env;
        if (!Modes.Contains(mode)) throw new SoftPromptException($"--distributed {mode}: expected one of {string.Join(", ", Modes)}.");
        if (mode == "none" || mode == "auto" && (WorldSizeFromEnvironment() ?? 1) <= 1) return SingleProcess.Instance;
        return MpiCommunicator.World();
    }

    /// <summary>The device of this rank: "cuda" becomes cuda:&lt;local rank&gt; when several ranks share a host; an
    /// explicit index or the CPU is kept.</summary>
    public static string DeviceFor(string device, ICommunicator c) =>
        c.Size > 1 && device.Equals("cuda", StringComparison.OrdinalIgnoreCase) ? $"cuda:{c.LocalRank}" : device;

    /// <summary>The default thread count of a rank (--threads 0): the host's cores shared evenly among its ranks.</summary>
    public static int DefaultThreads(ICommunicator c) => Math.Max(1, Environment.ProcessorCount / Math.Max(1, c.LocalSize));

    /// <summary>The one-line banner rank 0 prints: world size, ranks per host, device and threads per rank.</summary>
    public static string Banner(ICommunicator c, string device, int threads) =>
        $"distributed: {c.Size} ranks ({(c is MpiCommunicator m ? m.Flavor : "MPI")}), {c.LocalSize} on this host; rank 0 on {device}, {threads} thread{(threads == 1 ? "" : "s")} per rank; rank 0 writes the run folder";
}
