using System.CommandLine;
using SoftPrompt.Distributed;
using SoftPrompt.Training;

namespace SoftPrompt.Cli.Commands;

/// <summary>
/// <c>softprompt train</c>. Its options are generated from <see cref="TrainOptions"/>, so every config-file key is
/// also an option (<c>virtual_tokens</c> ⇔ <c>--virtual-tokens</c>). Precedence: defaults &lt; --config file &lt; options given.
/// </summary>
public static class TrainCommand
{
    public static Command Create()
    {
        var resume = new Option<string>("--resume") { Description = "Continue the run in this folder from its last checkpoint (its config.json, then any options given)." };
        var cmd = new Command("train", "Train a soft prompt (prompt tuning) or prefix (prefix tuning) for a frozen model; writes RUN_DIR/adapter/ in PEFT's format.") { resume };
        var options = new RecordOptions<TrainOptions>(cmd);
        cmd.SetAction((pr, cancel) =>
        {
            var resumeDir = pr.GetValue(resume);
            // Under MPI the options are read and checked by every rank, agreed on: a bad one is said once, by rank 0.
            var comm = DistributedRun.Open(pr);
            var o = comm.Agree(() => options.Bind(pr, resumeDir is not null ? TrainingJob.ResumeOptions(resumeDir) : null));
            if (resumeDir is not null) o = o with { Output = resumeDir };
            o = o with { CheckFinite = Cli.CheckFinite(pr) };
            using var interruption = new Interruption(cancel, announce: comm.IsWriter);
            var result = ConsoleProgress.Run(Cli.VerbosityOf(pr), p => TrainingJob.Run(o, new TrainProgress(p, o.LogEvery), resume: resumeDir is not null, interruption.Token, comm));
            if (!comm.IsWriter) return Task.FromResult(result.StopReason == "cancelled" ? interruption.ExitCode : 0); // rank 0 reports
            if (comm is SoftPrompt.Distributed.MpiCommunicator mpi) ConsoleProgress.Info(Cli.VerbosityOf(pr), mpi.Stats(result.Steps)); // what communication cost
            if (result.StopReason == "cancelled")
            {
                Console.Error.WriteLine($"interrupted at step {result.Steps}; continue with: softprompt train --resume {Interruption.Quote(o.Output!)}" +
                    (comm.Size > 1 ? $" (under mpirun -np {comm.Size}, any other number of ranks, or none)" : ""));
                return Task.FromResult(interruption.ExitCode);
            }
            var reporter = ConsoleProgress.Results; // the closing lines are results: stdout
            reporter.Message(result.Summary()); // which checkpoint was exported, chosen how, with its metrics
            reporter.Message($"adapter: {Path.GetFullPath(result.AdapterDir)}");
            return Task.FromResult(0);
        });
        return cmd;
    }
}
