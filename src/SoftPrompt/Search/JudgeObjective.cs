using Microsoft.Extensions.AI;
using SoftPrompt.Llm;

namespace SoftPrompt.Search;

/// <summary>
/// The judge objective: an instruction's score is the mean judge rating (1-10) of the frozen model's outputs on the
/// score set with the instruction in place. Everything else (data, prompt layout, held-out selection) is the inner
/// objective's.
/// </summary>
public sealed class JudgeObjective(TargetLossObjective inner, IChatClient judge, string rubric, int parallel) : IInstructionObjective
{
    public string Metric => "judge";
    public int ScoreSetCount => inner.ScoreSetCount;
    public int ExampleCount => inner.ExampleCount;
    public string? SelectMetric => inner.SelectMetric;
    public IReadOnlyList<bool> Allowed => inner.Allowed;
    public double[] Loss(IReadOnlyList<int[]> candidates, IReadOnlyList<int> examples) => inner.Loss(candidates, examples);
    public double Score(int[] ids) => inner.Score(ids);
    public double? Select(int[] ids) => inner.Select(ids);
    public int[] Encode(string text) => inner.Encode(text);
    public string Decode(IReadOnlyList<int> ids) => inner.Decode(ids);
    public int[] InstructionIds(string instruction) => inner.InstructionIds(instruction);
    public (string Prompt, string Target) ExampleText(int index) => inner.ExampleText(index);

    public InstructionScore[] ScoreInstructions(IReadOnlyList<string> instructions, CancellationToken cancel = default)
    {
        var set = inner.ScoreSetIndices;
        var inputs = set.Select(i => inner.ExampleText(i).Prompt).ToList();
        return instructions.Select(text =>
        {
            var outputs = inner.GenerateOutputs(text, set, cancel);
            var verdicts = Judge.RateAll(judge, rubric, inputs.Zip(outputs).ToList(), parallel, cancel).GetAwaiter().GetResult();
            int failed = verdicts.Count(v => !v.Parsed);
            return new InstructionScore(verdicts.Average(v => v.Rating), failed, failed > 0 ? $"{failed} judge repl{(failed == 1 ? "y" : "ies")} without a number (rated 1)" : null);
        }).ToArray();
    }
}
