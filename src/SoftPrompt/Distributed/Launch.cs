namespace SoftPrompt.Distributed;

/// <summary>How this process was launched: alone, or as one rank of an MPI job (mpirun, srun), read from the
/// launcher's environment so that nothing needs MPI when nothing is distributed.</summary>
public static class Launch
{
    /// <summary>"auto" (MPI when a launcher's variables say there are several ranks), "mpi" (always), "none" (never).</summary>
    public static readonly string[] Modes = { "auto", "mpi", "none" };

    /// <summary>The world size an MPI launcher announced (Open MPI, MPICH/Hydra, Slurm's srun), or null outside one.
    /// <paramref name="env"/> reads a variable (the process environment by default).</summary>
    public static int? WorldSizeFromEnvironment(Func<string, string?>? env = null)
    {
        env ??= Environment.GetEnvironmentVariable;
        // Slurm's variables count only inside a job step (srun), not in the batch script that starts it.
        return Int(env, "OMPI_COMM_WORLD_SIZE") ?? Int(env, "PMI_SIZE") ?? Int(env, "PMIX_SIZE")
               ?? (env("SLURM_STEP_ID") is not null ? Int(env, "SLURM_STEP_NUM_TASKS") ?? Int(env, "SLURM_NTASKS") : null);
    }

    /// <summary>This process's rank as the launcher announced it (before any MPI call), or null outside a launcher.</summary>
    public static int? WorldRankFromEnvironment(Func<string, string?>? env = null)
    {
        env ??= Environment.GetEnvironmentVariable;
        return Int(env, "OMPI_COMM_WORLD_RANK") ?? Int(env, "PMI_RANK") ?? Int(env, "PMIX_RANK") ?? (env("SLURM_STEP_ID") is not null ? Int(env, "SLURM_PROCID") : null);
    }

    /// <summary>This rank's index among the ranks on its host and their number, from the launcher's variables.</summary>
    public static (int Rank, int Size)? LocalRankAndSize(Func<string, string?>? env = null)
    {
        env ??= Environment.GetEnvironmentVariable;
        var rank = Int(env, "OMPI_COMM_WORLD_LOCAL_RANK") ?? Int(env, "MPI_LOCALRANKID") ?? Int(env, "SLURM_LOCALID");
        var size = Int(env, "OMPI_COMM_WORLD_LOCAL_SIZE") ?? Int(env, "MPI_LOCALNRANKS") ?? SlurmTasksOnThisNode(env);
        return rank is int r ? (r, Math.Max(size ?? 1, r + 1)) : null;
    }

    /// <summary>Slurm's tasks on this node: the step's (or the job's) tasks-per-node list, compressed as "2(x3),1" (two
    /// tasks on each of the first three nodes, one on the fourth), expanded and read at this node's index
    /// (SLURM_NODEID); the first count when the index is unknown.</summary>
    static int? SlurmTasksOnThisNode(Func<string, string?> env)
    {
        var v = env("SLURM_STEP_TASKS_PER_NODE") is { Length: > 0 } step ? step : env("SLURM_TASKS_PER_NODE");
        if (string.IsNullOrEmpty(v)) return null;
        var counts = new List<int>();
        foreach (var part in v.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries))
        {
            var m = System.Text.RegularExpressions.Regex.Match(part, @"^(\d+)(?:\(x(\d+)\))?$");
            if (!m.Success) return null;
            int n = int.Parse(m.Groups[1].Value), times = m.Groups[2].Success ? int.Parse(m.Groups[2].Value) : 1;
            for (int i = 0; i < times && counts.Count < 100_000; i++) counts.Add(n);
        }
        if (counts.Count == 0) return null;
        int node = Int(env, "SLURM_NODEID") ?? 0;
        return node < counts.Count ? counts[node] : counts[0];
    }

    static int? Int(Func<string, string?> env, string name) => int.TryParse(env(name), out var v) && v >= 0 ? v : null;

    /// <summary>
    /// The communicator for a job: <see cref="SingleProcess"/> unless <paramref name="mode"/> is "mpi", or "auto" and
    /// a launcher started more than one rank. SOFTPROMPT_DISTRIBUTED sets the mode when the option is "auto".
    /// </summary>
    public static ICommunicator Communicator(string mode = "auto") =>
        Distributes(mode) ? MpiCommunicator.World() : SingleProcess.Instance;

    /// <summary>The mode in force: <paramref name="mode"/>, or SOFTPROMPT_DISTRIBUTED when the option is "auto".</summary>
    public static string ResolveMode(string mode)
    {
        if (mode == "auto" && Environment.GetEnvironmentVariable("SOFTPROMPT_DISTRIBUTED") is { Length: > 0 } env) mode = env;
        if (!Modes.Contains(mode)) throw new SoftPromptException($"--distributed {mode}: expected one of {string.Join(", ", Modes)}.");
        return mode;
    }

    /// <summary>Whether <paramref name="mode"/> makes this process a rank of an MPI job: "mpi", or "auto" under a
    /// launcher that started more than one rank.</summary>
    public static bool Distributes(string mode)
    {
        mode = ResolveMode(mode);
        return mode == "mpi" || mode == "auto" && (WorldSizeFromEnvironment() ?? 1) > 1;
    }

    /// <summary>The device of this rank: "cuda" becomes cuda:&lt;local rank&gt; when several ranks share a host; an
    /// explicit index or the CPU is kept.</summary>
    public static string DeviceFor(string device, ICommunicator c) =>
        c.Size > 1 && device.Equals("cuda", StringComparison.OrdinalIgnoreCase) ? $"cuda:{c.LocalRank}" : device;

    /// <summary>The default thread count of a rank (--threads 0): the host's cores shared evenly among its ranks.</summary>
    public static int DefaultThreads(ICommunicator c) => Math.Max(1, Environment.ProcessorCount / Math.Max(1, c.LocalSize));

    /// <summary>The one-line banner rank 0 prints: world size, ranks per host, the device of each rank (its own GPU,
    /// cuda:&lt;local rank&gt;, when <paramref name="gpuPerRank"/>) and threads per rank.</summary>
    public static string Banner(ICommunicator c, string device, int threads, bool gpuPerRank = false) =>
        $"distributed: {c.Size} ranks ({(c is MpiCommunicator m ? m.Flavor : "MPI")}), {c.LocalSize} on this host; " +
        (gpuPerRank ? $"each rank on cuda:<local rank> (rank 0 on {device})" : $"every rank on {device}") +
        $", {threads} thread{(threads == 1 ? "" : "s")} per rank; rank 0 writes the run folder";
}
