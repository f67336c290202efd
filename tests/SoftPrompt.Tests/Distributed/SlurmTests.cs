using System.Diagnostics;
using SoftPrompt.Tests.Cli;
using SoftPrompt.Tests.Demo;

namespace SoftPrompt.Tests.Distributed;

/// <summary>A test that needs a one-node Slurm (scripts/mpi/local_slurm.sh: root, slurmd slurmctld slurm-client munge):
/// skipped with the reason otherwise.</summary>
public sealed class SlurmFactAttribute : FactAttribute
{
    [System.Runtime.InteropServices.DllImport("libc")] static extern uint geteuid();

    public SlurmFactAttribute()
    {
        static bool OnPath(string name) => (Environment.GetEnvironmentVariable("PATH") ?? "").Split(':', StringSplitOptions.RemoveEmptyEntries)
            .Any(d => File.Exists(Path.Combine(d, name)) || File.Exists(Path.Combine("/usr/sbin", name)));
        var missing = new[] { "srun", "slurmd", "slurmctld", "munged" }.Where(b => !OnPath(b)).ToList();
        if (missing.Count > 0) Skip = $"{string.Join(", ", missing)} not found: install Slurm (Debian/Ubuntu: apt-get install slurmd slurmctld slurm-client munge; .ci/run does) to run the srun tests";
        else if (!OperatingSystem.IsLinux() || geteuid() != 0) Skip = "a local Slurm node (slurmd) needs root";
    }
}

/// <summary>
/// The srun path (docs/distributed.md, "Several machines"): on a throwaway one-node Slurm cluster, <c>srun -n 2</c>
/// starts the ranks through Slurm's own PMI — pmi2 for MPICH, PMIx for Open MPI — with no mpirun; the job finds its
/// world from Slurm's variables, takes the launcher's MPI and trains the adapter one process trains.
/// </summary>
[Collection("Console")]
public class SlurmTests
{
    static string Script => Path.Combine(DemoPipelineTests.RepoRoot, "scripts", "mpi", "local_slurm.sh");

    static (int Rc, string Out, string Err) Run(string file, IEnumerable<string> args, IDictionary<string, string>? env = null, int seconds = 150)
    {
        var psi = new ProcessStartInfo(file) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in args) psi.ArgumentList.Add(a);
        foreach (var (k, v) in env ?? new Dictionary<string, string>()) psi.Environment[k] = v;
        // The test host's own launcher variables (a suite run under mpirun) must not leak into srun's tasks.
        foreach (var k in psi.Environment.Keys.Where(k => k.StartsWith("OMPI_", StringComparison.Ordinal) || k.StartsWith("PMI", StringComparison.Ordinal)).ToList()) psi.Environment.Remove(k);
        using var p = Process.Start(psi)!;
        var so = p.StandardOutput.ReadToEndAsync();
        var se = p.StandardError.ReadToEndAsync();
        if (!p.WaitForExit(TimeSpan.FromSeconds(seconds))) { p.Kill(true); p.WaitForExit(); throw new Xunit.Sdk.XunitException($"{file} did not finish in {seconds} s: {se.Result}{so.Result}"); }
        p.WaitForExit();
        return (p.ExitCode, so.Result, se.Result);
    }

    [SlurmFact]
    public void SrunTrainsOnTwoRanksWithMpichAndWithOpenMpiAsOneProcessDoes()
    {
        using var tmp = new Fixtures.TempDir();
        var train = MpiTests.WriteTrain(tmp["train.tsv"]);
        var (rc1, out1, err1) = CliRunner.Run(MpiTests.TrainArgs(train, tmp["one"], "prompt"));
        Assert.True(rc1 == 0, err1 + out1);
        var cluster = tmp["slurm"];
        var (rcUp, _, errUp) = Run("bash", new[] { Script, "start", cluster }, seconds: 60);
        Assert.True(rcUp == 0, errUp);
        try
        {
            var env = new Dictionary<string, string> { ["SLURM_CONF"] = Path.Combine(cluster, "slurm.conf") };
            var dotnet = Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") ?? "dotnet";
            var dll = Path.Combine(AppContext.BaseDirectory, "softprompt.dll");
            foreach (var (pmi, flavor, needs) in new[] { ("pmi2", "MPICH", Mpi.Hydra), ("pmix", "Open MPI", Mpi.Launcher) })
            {
                if (needs is null) continue; // that MPI is not installed (its own tests say so)
                var run = tmp["srun-" + pmi];
                var (rc, so, se) = Run("srun", new[] { "-n", "2", $"--mpi={pmi}", dotnet, dll }.Concat(MpiTests.TrainArgs(train, run, "prompt")), env);
                Assert.True(rc == 0, $"srun --mpi={pmi}: exit {rc}: {se}{so}");
                Assert.Contains($"distributed: 2 ranks ({flavor})", se + so);
                Assert.Single(System.Text.RegularExpressions.Regex.Matches(so, "^adapter: ", System.Text.RegularExpressions.RegexOptions.Multiline)); // rank 0 alone reports
                MpiTests.AssertSameAdapter(tmp["one/adapter"], Path.Combine(run, "adapter"), 1e-5);
            }
        }
        finally { Run("bash", new[] { Script, "stop", cluster }, seconds: 30); }
    }
}
