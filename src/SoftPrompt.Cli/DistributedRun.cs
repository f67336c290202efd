using System.CommandLine;
using SoftPrompt.Distributed;

namespace SoftPrompt.Cli;

/// <summary>
/// The command line's side of MPI: <c>--distributed auto|mpi|none</c> (auto: MPI when launched by mpirun/srun with
/// more than one rank), the one communicator of the process (MPI is initialised once per process and finalised when
/// the command ends), and how an error ends a distributed job: an error every rank met alike (a start-up disagreement,
/// a failure of rank 0's remote calls passed to all) is said once by rank 0 and every rank exits with its code;
/// an error on one rank is one line naming that rank, then MPI_Abort ends every rank with the exit code.
/// </summary>
public static class DistributedRun
{
    public static readonly Option<string> Option = new("--distributed")
    {
        Description = "Run as one rank of an MPI job: auto (when launched by mpirun/srun with several ranks), mpi, or none. See docs/distributed.md.",
        Recursive = true, DefaultValueFactory = _ => "auto",
    };

    static ICommunicator? _current;

    /// <summary>The commands that run as MPI ranks.</summary>
    static readonly string[] Commands = { "train", "eval", "search-hard-prompt" };

    /// <summary>The communicator of train, eval and search-hard-prompt (single-process outside MPI).</summary>
    public static ICommunicator Open(ParseResult pr) => _current ??= Launch.Communicator(pr.GetValue(Option) ?? "auto");

    /// <summary>True when <paramref name="pr"/> (even one with errors) is one of the distributed commands launched as
    /// several ranks, so that its ranks can agree on an error.</summary>
    public static bool Launched(ParseResult pr) => IsDistributed(pr) && UnderLauncher(pr);

    /// <summary>train, eval or search-hard-prompt (not pretrain's own train).</summary>
    static bool IsDistributed(ParseResult pr) =>
        Commands.Contains(pr.CommandResult.Command.Name) && pr.CommandResult.Parent is System.CommandLine.Parsing.CommandResult { Command: RootCommand };

    /// <summary>Launched as one of several ranks (mpirun, mpiexec, srun), with --distributed not none.</summary>
    static bool UnderLauncher(ParseResult pr)
    {
        if ((Launch.WorldSizeFromEnvironment() ?? 1) <= 1) return false;
        try { return Launch.Distributes(pr.GetValue(Option) ?? "auto"); }
        catch (Exception e) when (e is InvalidOperationException or SoftPromptException) { return false; }
    }

    /// <summary>
    /// Why a command that runs in one process (serve, generate, score, export, pretrain, ...) is refused when launched as
    /// several ranks: each rank would run it whole (N servers on one port, N writers of one file). Null when it may run.
    /// <c>--distributed none</c> runs it once per rank anyway.
    /// </summary>
    public static string? Refusal(ParseResult pr)
    {
        if (pr.Action is System.CommandLine.Help.HelpAction || pr.CommandResult.Command is RootCommand || IsDistributed(pr) || !UnderLauncher(pr)) return null;
        var path = new List<string>();
        for (var r = pr.CommandResult; r is not null && r.Command is not RootCommand; r = r.Parent as System.CommandLine.Parsing.CommandResult) path.Insert(0, r.Command.Name);
        return $"'softprompt {string.Join(" ", path)}' runs in one process, but it was launched as one of {Launch.WorldSizeFromEnvironment()} ranks (mpirun / mpiexec / srun): " +
               $"run it without the launcher ({string.Join(", ", Commands)} are the commands that run as ranks), or add --distributed none to run it once per rank.";
    }


    /// <summary>True on the rank that prints results and writes files (every process outside MPI).</summary>
    public static bool IsWriter => _current is null || _current.IsWriter;

    /// <summary>An error during a distributed command: returns the exit code after printing (rank 0 alone for an error
    /// all ranks met alike), or does not return (MPI_Abort) for an error of one rank.</summary>
    public static int? Fail(Exception e, Func<Exception, int> report)
    {
        if (_current is not { Size: > 1 } c) return null;
        if (Collectives.MetByAllRanks(e))
        {
            // Every rank is here, from the same collective: rank 0 says it once and every rank exits with its code.
            Span<long> code = stackalloc long[] { c.IsWriter ? report(e) : 0 };
            c.AllReduceMax(code);
            return (int)code[0];
        }
        var w = new StringWriter();
        var err = Console.Error;
        Console.SetError(w);
        int rc;
        try { rc = report(e); }
        finally { Console.SetError(err); }
        Console.Error.WriteLine($"error: rank {c.Rank} of {c.Size} failed: {w.ToString().Trim().Replace("error: ", "", StringComparison.Ordinal)}");
        Console.Error.WriteLine($"ending all {c.Size} ranks (MPI_Abort, exit {rc}); the run folder keeps its last complete checkpoint for --resume");
        c.Abort(rc == 0 ? 1 : rc);
        return rc;
    }

    /// <summary>MPI_Finalize at the end of the command.</summary>
    public static void Close()
    {
        _current?.Dispose();
        _current = null;
    }
}
