namespace SoftPrompt.Tests.Distributed;

/// <summary>
/// The same jobs on MPICH (launched by its mpiexec.hydra; MPICH's ABI has integer handles where Open MPI has exported
/// objects, see MpiCommunicator): training, eval and OPRO on 2 ranks give what one process gives, a failing rank ends
/// the job naming itself, and SIGTERM to the launcher checkpoints once with the resume command.
/// </summary>
[Collection("Console")]
public class MpichTests
{
    [MpichFact]
    public void TrainingOnTwoMpichRanksGivesTheOneProcessAdapter() => MpiTests.TrainOnTwoRanks("prompt", hydra: true);

    [MpichFact]
    public void EvalOnTwoMpichRanksEqualsOneProcessExactly() => MpiTests.EvalOnTwoRanks(hydra: true);

    [MpichFact]
    public Task OproOnTwoMpichRanksIsTheOneProcessRun() => MpiOproTests.OproOnTwoRanks("accuracy", hydra: true);

    [MpichFact]
    public void AFailingMpichRankEndsEveryRankNamingIt() => MpiTests.ARankFails(hydra: true);

    [MpichFact]
    public void SigtermToHydraCheckpointsOnceAndPrintsTheResumeCommand() => MpiTests.SigtermCheckpoints(hydra: true);
}
