using Spectre.Console;

namespace SoftPrompt.Cli;

public enum Verbosity { Quiet, Normal, Verbose }

/// <summary>
/// Progress and messages of a long command, all on stderr (results go to stdout). On a terminal: a Spectre.Console
/// progress bar (percentage, elapsed, remaining) with messages printed above it. When stderr is not a terminal, or
/// with <c>--verbose</c>: plain lines, as often as the caller forces them and otherwise at most every
/// <see cref="LineInterval"/>. <c>--quiet</c>: no progress and no messages, only warnings and errors.
/// Shared by every command that runs long (train, search-hard-prompt, eval, and any future search).
/// </summary>
public sealed class ConsoleProgress
{
    /// <summary>From <c>--quiet</c> / <c>--verbose</c> of the invocation (<see cref="Cli.VerbosityOf"/>).</summary>
    public Verbosity Level { get; }
    public static readonly TimeSpan LineInterval = TimeSpan.FromSeconds(10);

    readonly IAnsiConsole? _console;
    readonly ProgressContext? _ctx;
    ProgressTask? _task;
    DateTime _lastLine = DateTime.MinValue;
    readonly object _lock = new();

    ConsoleProgress(Verbosity level, IAnsiConsole? console, ProgressContext? ctx) { Level = level; _console = console; _ctx = ctx; }

    /// <summary>Runs <paramref name="job"/> with a progress display for it; returns what the job returns.</summary>
    public static T Run<T>(Verbosity level, Func<ConsoleProgress, T> job)
    {
        if (level != Verbosity.Normal || Console.IsErrorRedirected) return job(new ConsoleProgress(level, null, null));
        var console = AnsiConsole.Create(new AnsiConsoleSettings { Out = new AnsiConsoleOutput(Console.Error) });
        if (!console.Profile.Capabilities.Interactive || !console.Profile.Capabilities.Ansi) return job(new ConsoleProgress(level, null, null));
        T result = default!;
        console.Progress()
            .AutoClear(true).HideCompleted(true)
            .Columns(new TaskDescriptionColumn { Alignment = Justify.Left }, new ProgressBarColumn(), new PercentageColumn(),
                     new ElapsedTimeColumn(), new RemainingTimeColumn(), new SpinnerColumn())
            .Start(ctx => { result = job(new ConsoleProgress(level, console, ctx)); });
        return result;
    }

    /// <summary>Starts a new bar (a phase or an eval condition) of <paramref name="total"/> units.</summary>
    public void Begin(string description, double total)
    {
        lock (_lock)
        {
            _lastLine = DateTime.UtcNow; // plain lines: the first comes when forced or after an interval
            if (_ctx is null) return;
            if (_task is not null) _task.StopTask();
            _task = _ctx.AddTask(Markup.Escape(description), maxValue: Math.Max(1, total));
        }
    }

    /// <summary>
    /// Progress to <paramref name="done"/> units. On a terminal the bar moves and shows <paramref name="status"/>;
    /// otherwise <paramref name="line"/> (or the status) is printed when <paramref name="force"/> is set, with
    /// --verbose, or when <see cref="LineInterval"/> has passed since the last line.
    /// </summary>
    public void Update(double done, string status, string? line = null, bool force = false)
    {
        lock (_lock)
        {
            if (_task is not null)
            {
                _task.Value = done;
                _task.Description = Markup.Escape(status);
                return;
            }
            if (Level == Verbosity.Quiet) return;
            var now = DateTime.UtcNow;
            if (force || Level == Verbosity.Verbose || now - _lastLine >= LineInterval)
            {
                Console.Error.WriteLine(line ?? status);
                _lastLine = now;
            }
        }
    }

    /// <summary>An informational line (suppressed by --quiet).</summary>
    public void Message(string text)
    {
        if (Level == Verbosity.Quiet) return;
        Write(text);
    }

    /// <summary>A line printed whatever the verbosity (warnings, the interruption notice).</summary>
    public void Important(string text) => Write(text);

    void Write(string text)
    {
        lock (_lock)
        {
            if (_console is not null) _console.MarkupLine(Markup.Escape(text));
            else Console.Error.WriteLine(text);
        }
    }

    /// <summary>An informational line outside a progress display (stderr; suppressed by --quiet).</summary>
    public static void Info(Verbosity level, string text) { if (level != Verbosity.Quiet) Console.Error.WriteLine(text); }

    /// <summary>Result lines: stdout, whatever the verbosity.</summary>
    public static readonly ResultLines Results = new();
    public sealed class ResultLines { public void Message(string text) => Console.WriteLine(text); }

    /// <summary>"1m05s" / "2h03m".</summary>
    public static string Duration(TimeSpan t) => t.TotalHours >= 1 ? $"{(int)t.TotalHours}h{t.Minutes:D2}m" : $"{t.Minutes}m{t.Seconds:D2}s";
}
