using System.Runtime.InteropServices;

namespace SoftPrompt.Cli;

/// <summary>
/// Ctrl-C / SIGTERM for a long job: the first signal cancels <see cref="Token"/> (the job finishes or abandons its
/// step, writes its checkpoint and returns), a second Ctrl-C gets the runtime's default handling and ends the process
/// at once. System.CommandLine's own handler is only installed by its asynchronous invocation, which the synchronous
/// <c>Invoke</c> path does not use, so commands that must save on a signal register this themselves.
/// </summary>
public sealed class Interruption : IDisposable
{
    readonly CancellationTokenSource _cts;
    readonly PosixSignalRegistration[] _registrations;
    int _signal;
    readonly bool _announce;

    /// <summary><paramref name="announce"/>: say so on stderr when a signal arrives (false on the MPI ranks that do not report).</summary>
    public Interruption(CancellationToken outer = default, bool announce = true)
    {
        _announce = announce;
        _cts = CancellationTokenSource.CreateLinkedTokenSource(outer);
        _registrations = new[] { PosixSignal.SIGINT, PosixSignal.SIGTERM }.Select(s => PosixSignalRegistration.Create(s, Handle)).ToArray();
    }

    public CancellationToken Token => _cts.Token;

    /// <summary>True once a signal has asked the job to stop.</summary>
    public bool Interrupted => Volatile.Read(ref _signal) != 0 || _cts.IsCancellationRequested;

    /// <summary>The shell convention: 128 + signal number (130 for SIGINT, 143 for SIGTERM).</summary>
    public int ExitCode => Volatile.Read(ref _signal) == (int)PosixSignal.SIGTERM ? 143 : 130;

    void Handle(PosixSignalContext ctx)
    {
        if (Interlocked.CompareExchange(ref _signal, (int)ctx.Signal, 0) != 0)
        {
            ctx.Cancel = false; // second signal: the runtime's default (terminate now)
            return;
        }
        ctx.Cancel = true;
        if (_announce) Console.Error.WriteLine($"\n{(ctx.Signal == PosixSignal.SIGTERM ? "SIGTERM" : "interrupt")}: stopping after this step and saving (Ctrl-C again to quit at once without saving)");
        _cts.Cancel();
    }

    public void Dispose()
    {
        foreach (var r in _registrations) r.Dispose();
        _cts.Dispose();
    }

    /// <summary>A path as a user can paste it back into a shell.</summary>
    public static string Quote(string path) => path.Length > 0 && path.All(c => char.IsLetterOrDigit(c) || "/._-+:@,".Contains(c)) ? path : "'" + path.Replace("'", "'\\''") + "'";
}
