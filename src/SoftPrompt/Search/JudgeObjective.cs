using Microsoft.Extensions.AI;
using SoftPrompt.Llm;

namespace SoftPrompt.Search;

/// <summary>
/// The judge objective: an instruction's score is the mean judge rating (1-10) of the frozen model's outputs on the
/// score set with the instruction in place, each output judged with its input and reference answer (the example's
/// target). Verdicts that could not be had are failures, left out of the mean and counted; an instruction none of
/// whose outputs got a verdict is a failed candidate, and one cut short by the call budget is one too ("budget").
/// With held-out data the final pick is the judge's mean rating there (<see cref="SelectMetric"/> "judge"), not the
/// inner objective's loss. Verdicts go through <paramref name="cache"/>: an output is judged once per run, resume included.
/// Under MPI the ranks share the generation out (the inner objective's communicator) and rank 0 alone calls the judge
/// (<paramref name="calls"/>), every rank getting the verdicts.
/// </summary>
public sealed class JudgeObjective(TargetLossObjective inner, IChatClient judge, string rubric, int parallel, VerdictCache? cache = null, RootCalls? calls = null) : IInstructionObjective
{
    public string Metric => "judge";
    public string Rubric => rubric;
    public int ScoreSetCount => inner.ScoreSetCount;
    public IReadOnlyList<int> ScoreSetIndices => inner.ScoreSetIndices;
    public int ExampleCount => inner.ExampleCount;
    public string? SelectMetric => inner.HeldOutCount > 0 ? "judge" : null;
    public IReadOnlyList<bool> Allowed => inner.Allowed;
    public VerdictCache? Cache => cache;
    public double[] Loss(IReadOnlyList<int[]> candidates, IReadOnlyList<int> examples) => inner.Loss(candidates, examples);
    public double Score(int[] ids) => inner.Score(ids);
    public double? Select(int[] ids) => inner.Select(ids);
    public int[] Encode(string text) => inner.Encode(text);
    public string Decode(IReadOnlyList<int> ids) => inner.Decode(ids);
    public int[] InstructionIds(string instruction) => inner.InstructionIds(instruction);
    public (string Prompt, string Target) ExampleText(int index) => inner.ExampleText(index);

    JudgeVerdict[] Rate(List<JudgeItem> items, CancellationToken cancel)
    {
        JudgeVerdict[] Call()
        {
            try { return Judge.RateAll(judge, rubric, items, parallel, cache, cancel).GetAwaiter().GetResult(); }
            finally { cache?.Save(); }
        }
        return calls is null ? Call() : calls.Run(Call);
    }

    public InstructionScore[] ScoreInstructions(IReadOnlyList<string> instructions, CancellationToken cancel = default)
    {
        var set = inner.ScoreSetIndices;
        var texts = set.Select(i => inner.ExampleText(i)).ToList();
        var result = new InstructionScore[instructions.Count];
        for (int c = 0; c < instructions.Count; c++)
        {
            if (inner.FitProblem(instructions[c]) is string why) { result[c] = InstructionScore.Fail("too_long_tokens", why); continue; }
            var outputs = inner.GenerateOutputs(instructions[c], set, cancel);
            var verdicts = Rate(texts.Zip(outputs, (t, o) => new JudgeItem(t.Prompt, o.Text, t.Target)).ToList(), cancel);
            double meanTokens = outputs.Average(o => (double)o.Tokens);
            int failed = verdicts.Count(v => v.Failure is not null);
            int notCalled = verdicts.Count(v => v.NotCalled);
            string? firstFailure = verdicts.FirstOrDefault(v => v.Failure is not null)?.Failure;
            if (notCalled > 0)
            {
                result[c] = InstructionScore.Fail("budget", $"{notCalled} of {verdicts.Length} outputs not judged: the call or token budget is used up") with { Failures = failed, MeanOutputTokens = meanTokens };
                continue;
            }
            if (failed == verdicts.Length)
            {
                result[c] = InstructionScore.Fail("judge_failed", $"no verdict for any of the {failed} outputs (first: {firstFailure})") with { Failures = failed, MeanOutputTokens = meanTokens };
                continue;
            }
            double mean = Judge.Mean(verdicts);
            result[c] = new InstructionScore(mean, failed, failed > 0 ? $"{failed} of {verdicts.Length} verdicts failed (left out of the mean; first: {firstFailure})" : null)
            {
                MeanOutputTokens = meanTokens,
                Wrong = Enumerable.Range(0, verdicts.Length).Where(j => verdicts[j].Rating is int r && r < mean).Select(j => set[j]).ToList(),
            };
        }
        return result;
    }

    /// <summary>The judge's mean rating of the instruction's outputs on the held-out data. Throws
    /// <see cref="BudgetExhaustedException"/> when the budget runs out before every output is judged.</summary>
    public double? SelectInstruction(string instruction, CancellationToken cancel = default)
    {
        if (inner.HeldOutCount == 0) return null;
        if (inner.FitProblem(instruction) is not null) return null;
        var outputs = inner.GenerateHeldOut(instruction, cancel);
        var items = Enumerable.Range(0, outputs.Length).Select(j => { var (p, t) = inner.HeldOutText(j); return new JudgeItem(p, outputs[j].Text, t); }).ToList();
        var verdicts = Rate(items, cancel);
        if (verdicts.Any(v => v.NotCalled)) throw new BudgetExhaustedException("budget");
        var mean = Judge.Mean(verdicts);
        return double.IsNaN(mean) ? null : mean;
    }
}
