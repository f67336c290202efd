namespace SoftPrompt.Tests.Cli;

/// <summary>Runs the softprompt command line in-process (the same command tree as Program.cs) and captures its output.
/// Console redirection is process-wide: callers belong to the non-parallel "Console" collection.</summary>
public static class CliRunner
{
    public static (int Rc, string Out, string Err) Run(params string[] args) => RunIn(null, args);

    /// <summary>Runs with <paramref name="workingDirectory"/> as the current directory (for repository-relative configs).</summary>
    public static (int Rc, string Out, string Err) RunIn(string? workingDirectory, params string[] args)
    {
        var (o, e) = (Console.Out, Console.Error);
        var so = new StringWriter(); var se = new StringWriter();
        var cwd = Directory.GetCurrentDirectory();
        Console.SetOut(so); Console.SetError(se);
        if (workingDirectory is not null) Directory.SetCurrentDirectory(workingDirectory);
        try { return (SoftPrompt.Cli.Cli.Invoke(SoftPrompt.Cli.Cli.BuildRoot(), args), so.ToString(), se.ToString()); }
        finally { Directory.SetCurrentDirectory(cwd); Console.SetOut(o); Console.SetError(e); }
    }
}
