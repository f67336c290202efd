using System.Globalization;
using System.Text;
using System.Text.Json.Nodes;
using SoftPrompt.Data;
using SoftPrompt.Tokenization;

namespace SoftPrompt.Search;

/// <summary>
/// What an OPRO run may cost, worked out from the options and the data without calling anything (<c>--dry-run</c>):
/// the most optimizer and judge calls the settings allow and an upper bound of their tokens. Every call is counted as
/// if made (the verdict cache, duplicates and early stops only lower it; a judge reply without a verdict costs one
/// reminder call, counted). Tokens are bounded by UTF-8 bytes — a token of a byte-level BPE or SentencePiece
/// vocabulary covers at least one byte — plus a margin per message for chat-template tokens; a generated output of
/// the target model is bounded by --max-new-tokens times its vocabulary's longest token in bytes.
/// </summary>
public sealed record OproCostEstimate(int OptimizerCalls, long OptimizerInputTokens, long OptimizerOutputTokens,
    int JudgeCalls, long JudgeInputTokens, long JudgeOutputTokens, int CandidatesScored, int ScoreExamples, int HeldOut)
{
    public int Calls => OptimizerCalls + JudgeCalls;
    public long Tokens => OptimizerInputTokens + OptimizerOutputTokens + JudgeInputTokens + JudgeOutputTokens;

    public IEnumerable<string> Lines()
    {
        var c = CultureInfo.InvariantCulture;
        yield return string.Format(c, "dry run: at most {0:N0} candidates scored on {1} score-set examples ({2} held out)", CandidatesScored, ScoreExamples, HeldOut);
        yield return string.Format(c, "optimizer: at most {0:N0} calls, at most {1:N0} input + {2:N0} output tokens", OptimizerCalls, OptimizerInputTokens, OptimizerOutputTokens);
        yield return string.Format(c, "judge:     at most {0:N0} calls, at most {1:N0} input + {2:N0} output tokens", JudgeCalls, JudgeInputTokens, JudgeOutputTokens);
        yield return string.Format(c, "total:     at most {0:N0} calls, at most {1:N0} tokens (nothing was called)", Calls, Tokens);
    }

    public JsonObject ToJson() => new()
    {
        ["optimizer_calls"] = OptimizerCalls, ["optimizer_input_tokens"] = OptimizerInputTokens, ["optimizer_output_tokens"] = OptimizerOutputTokens,
        ["judge_calls"] = JudgeCalls, ["judge_input_tokens"] = JudgeInputTokens, ["judge_output_tokens"] = JudgeOutputTokens,
        ["calls"] = Calls, ["tokens"] = Tokens, ["candidates_scored"] = CandidatesScored, ["score_examples"] = ScoreExamples, ["held_out_examples"] = HeldOut,
    };
}

public static class OproCost
{
    /// <summary>Tokens added per message by chat templates and per request by the API (role markers, BOS), a margin.</summary>
    const int PerMessage = 16;

    static int Bytes(string? s) => s is null ? 0 : Encoding.UTF8.GetByteCount(s);

    public static OproCostEstimate Estimate(HardPromptSearchOptions o)
    {
        o.Validate();
        if (o.Strategy != SearchStrategy.Opro) throw new SoftPromptException("--dry-run applies to --strategy opro (the gradient search calls no LLM).");
        var data = o.DataOptions();
        IReadOnlyList<Example> search = DatasetReader.Read(o.Train!, data).Examples, heldOut = Array.Empty<Example>();
        if (o.Validation is not null) heldOut = DatasetReader.Read(o.Validation, data).Examples;
        else if (o.ValidationSplit > 0 && search.Count >= 2) (search, heldOut) = DatasetSplit.Split(search, o.ValidationSplit, o.Seed);
        if (search.Count == 0) throw new SoftPromptException($"{o.Train}: no examples.");
        int scoreN = o.ResolvedScoreExamples == 0 ? search.Count : Math.Min(o.ResolvedScoreExamples, search.Count);
        bool local = o.OptimizerModelDir is not null;
        bool plain = local && Llm.ChatFormat.Detect(o.OptimizerModelDir!).IsBase;
        bool judge = o.Objective == "judge";

        int ape = o.InitInstruction.Length > 0 ? 0 : o.ApeProposals >= 0 ? o.ApeProposals : plain ? 0 : o.CandidatesPerStep;
        int optimizerCalls = ape + o.Steps * o.CandidatesPerStep;
        int demoSets = o.Demos > 0 ? o.DemoCandidates : 0;
        int candidates = 1 + (o.Demos > 0 ? 1 : 0) + o.InitInstruction.Length + ape + o.Steps * (o.CandidatesPerStep + demoSets);

        int maxExample = search.Concat(heldOut).Max(e => Bytes(e.Prompt) + Bytes(e.Target));
        int maxPrompt = search.Concat(heldOut).Max(e => Bytes(e.Prompt));
        int maxTarget = search.Concat(heldOut).Max(e => Bytes(e.Target));
        string rubric = judge && o.Rubric is not null ? Llm.Judge.ReadRubric(o.Rubric) : "";
        // The meta-prompt at its longest: fixed text, the task description and rubric, --keep instructions of at most
        // --max-instruction-chars (4 bytes a character at most) with their scores, the exemplars (with demonstrations).
        int fixedText = Bytes(MetaPrompt.Chat(new List<ScoredInstruction>(), new List<(string, string)>(), "judge", o.InstructionPosition, null));
        int instr = 4 * o.MaxInstructionChars + (o.Demos > 0 ? o.Demos * (maxExample + 4) : 0);
        long metaBytes = fixedText + Bytes(o.TaskDescription) + Bytes(rubric) + 200 + (long)o.Keep * (instr + 32) + (long)Math.Max(o.Exemplars, 7) * (maxExample + 32);
        long optIn = (long)optimizerCalls * (metaBytes + PerMessage);
        long optOut = (long)optimizerCalls * o.OptimizerMaxTokens;

        int judgeCalls = 0; long judgeIn = 0, judgeOut = 0;
        if (judge)
        {
            int maxTokenBytes = 16;
            if (HfTokenizer.TryLoad(o.Model!) is HfTokenizer tok)
            {
                maxTokenBytes = 1;
                for (int id = 0; id < tok.VocabSize; id++) maxTokenBytes = Math.Max(maxTokenBytes, Bytes(tok.Decode(new[] { id })));
            }
            int rated = candidates * scoreN + o.ValidateTop * heldOut.Count;
            judgeCalls = 2 * rated; // a reply without a verdict is asked once more
            long first = Bytes(Llm.Judge.System) + Bytes(Llm.Judge.Prompt(rubric, "", "", "x")) + maxPrompt + maxTarget + (long)o.MaxNewTokens * maxTokenBytes + 2 * PerMessage;
            long second = first + Llm.Judge.MaxReplyTokens + Bytes(Llm.Judge.Reminder) + 2 * PerMessage;
            judgeIn = rated * (first + second);
            judgeOut = (long)judgeCalls * Llm.Judge.MaxReplyTokens;
        }
        return new OproCostEstimate(optimizerCalls, optIn, optOut, judgeCalls, judgeIn, judgeOut, candidates, scoreN, heldOut.Count);
    }
}
