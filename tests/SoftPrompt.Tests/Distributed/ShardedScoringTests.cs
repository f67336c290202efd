using SoftPrompt.Data;
using SoftPrompt.Distributed;
using SoftPrompt.Inference;
using SoftPrompt.Search;
using SoftPrompt.Tests.Evaluation;

namespace SoftPrompt.Tests.Distributed;

/// <summary>
/// The search objective's scoring shared out over ranks (here a world of threads, each with its own copy of the
/// model; under mpirun the MPI tests run the whole search): every rank gets, bit for bit, what one process computes:
/// instruction scores by accuracy, exact match and loss, the examples each got wrong, generated outputs, and the
/// held-out pick's accuracy and loss.
/// </summary>
public class ShardedScoringTests
{
    static readonly string[] Instructions = { "", "Answer yes or no.", "the review:", "Is the movie good?" };

    sealed record Scored(double[] Scores, string[] Wrong, double?[] MeanTokens, string[] Outputs, double? SelectAccuracy, double? SelectLoss);

    static Scored ScoreAll(string train, string heldOut, string objective, ICommunicator comm)
    {
        using var lm = LanguageModel.Load(SearchFixture.ModelDir);
        var tok = lm.RequireTokenizer();
        var search = DatasetReader.Read(train, new DataOptions()).Examples;
        var held = DatasetReader.Read(heldOut, new DataOptions()).Examples;
        var o = new HardPromptSearchOptions { Strategy = SearchStrategy.Opro, Objective = objective, ScoreExamples = 7, MaxNewTokens = 3, SelectBy = "accuracy", Seed = 4, OptimizerEndpoint = "http://127.0.0.1:9/v1", OptimizerModel = "unused" };
        var obj = new TargetLossObjective(lm.Model, tok, search, held, o) { Communicator = comm };
        var lossObj = new TargetLossObjective(lm.Model, tok, search, held, o with { SelectBy = "loss" }) { Communicator = comm };
        var scores = obj.ScoreInstructions(Instructions);
        var outputs = obj.GenerateOutputs(Instructions[1], obj.ScoreSetIndices).Concat(obj.GenerateHeldOut(Instructions[3])).Select(x => $"{x.Text}|{x.Tokens}").ToArray();
        return new Scored(scores.Select(s => s.Score).ToArray(), scores.Select(s => string.Join(",", s.Wrong ?? Array.Empty<int>())).ToArray(),
            scores.Select(s => s.MeanOutputTokens).ToArray(), outputs, ((IInstructionObjective)obj).SelectInstruction(Instructions[1]), ((IInstructionObjective)lossObj).SelectInstruction(Instructions[2]));
    }

    static (double Loss, float[] Grad) GradientOn(string train, ICommunicator comm)
    {
        using var lm = LanguageModel.Load(SearchFixture.ModelDir);
        var search = DatasetReader.Read(train, new DataOptions()).Examples;
        var obj = new TargetLossObjective(lm.Model, lm.RequireTokenizer(), search, null, new HardPromptSearchOptions { PromptLength = 3, ForwardBatch = 2 }) { Communicator = comm };
        var ids = HardPromptSearchJob.InitialIds(lm.RequireTokenizer(), obj.Allowed, 3, "the review");
        var (loss, grad) = obj.Gradient(ids, new[] { 0, 2, 3, 5, 6, 8, 9 }); // 7 rows in chunks of 2: 4 chunks
        using (grad) return (loss, grad.data<float>().ToArray());
    }

    [Theory]
    [InlineData(2)]
    [InlineData(3)]
    public void TheGradientOnRanksIsTheOneProcessGradientBitForBit(int size)
    {
        using var tmp = new Fixtures.TempDir();
        var train = SearchFixture.WriteTask(tmp["train.jsonl"], 11, 6);
        var one = GradientOn(train, SingleProcess.Instance);
        Assert.Contains(one.Grad, g => g != 0);
        foreach (var r in ThreadWorld.OnEveryRank(size, c => GradientOn(train, c), TimeSpan.FromSeconds(120)))
        {
            Assert.Equal(one.Loss, r.Loss);
            Assert.Equal(one.Grad, r.Grad);
        }
    }

    [Theory]
    [InlineData("accuracy", 2)]
    [InlineData("exact_match", 2)]
    [InlineData("loss", 2)]
    [InlineData("accuracy", 3)]    // shares of unequal size
    [InlineData("exact_match", 6)] // more ranks than held-out examples: some ranks have none
    public void RanksScoreExactlyAsOneProcess(string objective, int size)
    {
        using var tmp = new Fixtures.TempDir();
        var train = SearchFixture.WriteTask(tmp["train.jsonl"], 11, 6); // 7 of 11 in the score set: shares of 4 and 3
        var heldOut = SearchFixture.WriteTask(tmp["held.jsonl"], 5, 9);
        var one = ScoreAll(train, heldOut, objective, SingleProcess.Instance);
        // What is compared is not trivial: real scores, real outputs, examples both right and wrong.
        Assert.DoesNotContain(one.Scores, double.IsNaN);
        Assert.Contains(one.Outputs, x => !x.StartsWith('|'));
        if (objective != "loss") Assert.Contains(one.Scores, s => s is > 0 and < 1 || one.Wrong.Any(w => w.Length > 0));
        var ranks = ThreadWorld.OnEveryRank(size, c => ScoreAll(train, heldOut, objective, c), TimeSpan.FromSeconds(120));
        foreach (var r in ranks)
        {
            Assert.Equal(one.Scores, r.Scores);
            Assert.Equal(one.Wrong, r.Wrong);
            Assert.Equal(one.MeanTokens, r.MeanTokens);
            Assert.Equal(one.Outputs, r.Outputs);
            Assert.Equal(one.SelectAccuracy, r.SelectAccuracy);
            Assert.Equal(one.SelectLoss, r.SelectLoss);
        }
    }
}
