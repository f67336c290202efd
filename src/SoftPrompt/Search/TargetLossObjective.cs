using SoftPrompt.Data;
using SoftPrompt.Models;
using SoftPrompt.Distributed;
using SoftPrompt.Scoring;
using SoftPrompt.Tokenization;
using SoftPrompt.Tuning;
using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace SoftPrompt.Search;

/// <summary>
/// The search objective on a frozen model: mean target-token loss (summed NLL of target tokens over their count, as
/// the trainer computes it) of examples whose prompt is <c>prefix (BOS) + hard prompt + example prompt text</c>, the
/// layout of <see cref="HardPrompt.BuildPromptIds"/>. Holds a fixed, seeded score set (what results report) and
/// optional held-out examples for the final pick.
/// </summary>
public sealed class TargetLossObjective : IGradientPromptObjective, IInstructionObjective
{
    sealed record Item(int[] Text, int[] Target, Example Source);

    readonly CausalLM _model;
    readonly HfTokenizer _tok;
    readonly int[] _prefix;
    readonly List<Item> _search, _heldOut;
    readonly int[] _scoreSet;
    readonly int _padId, _maxLength, _forwardBatch;
    readonly bool[] _allowed;
    readonly string _selectBy;
    readonly List<string> _labels = new();
    readonly List<int[]> _labelIds = new();
    readonly Dictionary<string, double> _scoreCache = new();
    // Instruction (OPRO) scoring: the metric, the classification task for accuracy, the instruction's position.
    readonly string _metric = "neg_loss", _position = "before_q";
    readonly bool _after; // q_end / a_begin: the instruction follows the example's prompt text
    readonly ClassificationTask? _ct;
    readonly int _maxNewTokens;
    readonly int[] _stopIds = Array.Empty<int>();
    readonly bool _firstLine; // generated outputs are cut at the first line (--output-cut)
    readonly Func<string, string?>? _parser; // --output-parser
    readonly int _maxTarget;

    public int ExampleCount => _search.Count;
    public IReadOnlyList<int> ScoreSet => _scoreSet;
    public IReadOnlyList<bool> Allowed => _allowed;
    public string? SelectMetric => _heldOut.Count == 0 ? null : _selectBy == "accuracy" ? "accuracy" : "neg_val_loss";
    public Tensor EmbeddingMatrix => _model.EmbeddingMatrix;
    public int HeldOutCount => _heldOut.Count;

    /// <summary>The ranks candidate scoring is spread over: for losses each runs every Size-th forward chunk of the same
    /// chunking and the per-row sums are gathered; rank classification and generation, done one example at a time,
    /// are shared out by example. Every rank gets the one-process results bit for bit. Every method that scores or
    /// generates is then a collective call (every rank calls it, in the same order), and a cancellation token is not
    /// looked at inside it (ranks would stop at different points): the caller stops between calls.</summary>
    public ICommunicator Communicator { get; init; } = SingleProcess.Instance;

    public TargetLossObjective(CausalLM model, HfTokenizer tok, IReadOnlyList<Example> search, IReadOnlyList<Example>? heldOut, HardPromptSearchOptions o)
    {
        o.Validate(needPaths: false);
        if (search.Count == 0) throw new SoftPromptException("the search data is empty.");
        if (tok.VocabSize > model.Config.VocabSize)
            throw new SoftPromptException($"the tokenizer has {tok.VocabSize} tokens but the model's vocabulary is {model.Config.VocabSize}: they do not belong together.");
        _model = model; _tok = tok;
        _prefix = tok.PrefixIds.ToArray();
        _padId = tok.PadId ?? tok.EosId ?? 0;
        _maxLength = o.MaxLength; _forwardBatch = o.ForwardBatch; _selectBy = o.SelectBy;
        if (o.AddEos && tok.EosId is null) throw new SoftPromptException("--add-eos is set but the tokenizer has no EOS token.");
        Item Tokenize(Example e)
        {
            var target = tok.Encode(e.Target, false);
            if (o.AddEos) target = [.. target, tok.EosId!.Value];
            if (target.Length == 0) throw new SoftPromptException($"{e.Location}: target \"{e.Target}\" encodes to no tokens.");
            if (_prefix.Length + o.PromptLength + target.Length > o.MaxLength)
                throw new SoftPromptException($"{e.Location}: {_prefix.Length} special + {o.PromptLength} hard-prompt + {target.Length} target tokens exceed --max-length {o.MaxLength}.");
            return new Item(tok.Encode(e.Prompt, false), target, e);
        }
        _search = search.Select(Tokenize).ToList();
        _heldOut = (heldOut ?? Array.Empty<Example>()).Select(Tokenize).ToList();
        _maxTarget = _search.Concat(_heldOut).Max(x => x.Target.Length);

        // Score set: every search example, or a seeded sample of ScoreExamples of them (kept in file order).
        _scoreSet = DatasetSplit.SampleIndices(_search.Count, o.ResolvedScoreExamples, o.Seed, stream: 0x5C0BE);

        _allowed = TokenSets.AllowedTokens(tok, model.Config.VocabSize, readableOnly: !o.AllTokens);
        if (!_allowed.Any(a => a)) throw new SoftPromptException("no vocabulary token passes the token filter; try --all-tokens.");

        if (_heldOut.Count > 0 && _selectBy == "accuracy")
        {
            var labels = o.Labels is not null
                ? o.Labels.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries).Select(l => o.TargetTemplate is null ? DatasetReader.DefaultTarget(l) : l).ToList()
                : _search.Concat(_heldOut).Select(x => x.Source.Target).Distinct().OrderBy(s => s, StringComparer.Ordinal).ToList();
            if (labels.Count < 2) throw new SoftPromptException($"--select-by accuracy needs at least two labels (found {labels.Count}).");
            foreach (var h in _heldOut)
                if (!labels.Contains(h.Source.Target))
                    throw new SoftPromptException($"{h.Source.Location}: target \"{h.Source.Target}\" is not one of the labels ({string.Join(", ", labels.Select(l => $"\"{l}\""))}).");
            _labels = labels;
            _labelIds = labels.Select(l => tok.Encode(l, false)).ToList();
        }

        if (o.Strategy == SearchStrategy.Opro)
        {
            _position = o.InstructionPosition; _maxNewTokens = o.MaxNewTokens;
            _after = _position is "q_end" or "a_begin";
            var data = o.DataOptions();
            var all = search.Concat(heldOut ?? Array.Empty<Example>()).ToList();
            string objective = o.Objective;
            if (objective == "auto")
            {
                bool isClass = o.Labels is not null;
                if (!isClass)
                    try { isClass = ClassificationTask.Detect(all.Select(e => ClassificationTask.LabelOf(e, data.LabelField())).ToList()).IsClassification; }
                    catch (SoftPromptException) { isClass = false; }
                objective = isClass ? "accuracy" : "loss";
            }
            _metric = objective == "loss" ? "neg_loss" : objective;
            if (_metric == "accuracy") _ct = ClassificationTask.Create(all, data, tok, o.Labels, o.Train ?? "the search data");
            if (o.OutputParser is string parser)
            {
                if (parser.StartsWith("regex:", StringComparison.Ordinal))
                {
                    var rx = new System.Text.RegularExpressions.Regex(parser[6..], System.Text.RegularExpressions.RegexOptions.None, TimeSpan.FromSeconds(1));
                    _parser = text => rx.Match(text) is { Success: true } m ? (m.Groups.Count > 1 && m.Groups[1].Success ? m.Groups[1].Value : m.Value) : null;
                }
                else
                {
                    var labels = (o.Labels?.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries) ?? all.Select(e => e.Target.Trim()).Distinct().ToArray())
                        .Where(l => l.Length > 0).OrderByDescending(l => l.Length).ToArray();
                    var rxs = labels.Select(l => (Label: l, Rx: new System.Text.RegularExpressions.Regex(@"(?<!\w)" + System.Text.RegularExpressions.Regex.Escape(l) + @"(?!\w)", System.Text.RegularExpressions.RegexOptions.IgnoreCase))).ToArray();
                    // The label that occurs first in the output (the longest at a tie), as a word, case-insensitive.
                    _parser = text => rxs.Select(r => (r.Label, M: r.Rx.Match(text))).Where(x => x.M.Success).OrderBy(x => x.M.Index).ThenByDescending(x => x.Label.Length).Select(x => x.Label).FirstOrDefault();
                }
            }
            _firstLine = o.OutputCut == "line" || (o.OutputCut == "auto" && _metric == "exact_match" && _parser is null);
            if (_metric is "exact_match" or "judge")
                _stopIds = (tok.EosId is int eos ? new[] { eos } : Array.Empty<int>()).Concat(_firstLine ? TokenSets.NewlineIds(tok) : Array.Empty<int>()).Distinct().ToArray();
        }
    }

    /// <summary>The tokenized example with a hard prompt in place (prompt text cut from the left to fit max length).</summary>
    TokenizedExample Build(int[] ids, Item x)
    {
        int room = _maxLength - _prefix.Length - ids.Length - x.Target.Length;
        if (room < 0) throw new SoftPromptException($"{x.Source.Location}: a {ids.Length}-token hard prompt and the {x.Target.Length}-token target do not fit in --max-length {_maxLength}.");
        var text = x.Text.Length > room ? x.Text[^room..] : x.Text;
        return new TokenizedExample(_after ? [.. _prefix, .. text, .. ids] : [.. _prefix, .. ids, .. text], x.Target);
    }

    /// <summary>The search example <paramref name="index"/> with <paramref name="ids"/> as hard prompt (for checks and eval).</summary>
    public TokenizedExample Example(int[] ids, int index) => Build(ids, _search[index]);

    public int[] Encode(string text) => _tok.Encode(text, false);
    public string Decode(IReadOnlyList<int> ids) => _tok.Decode(ids);

    void CheckIds(int[] ids, bool allowEmpty = true)
    {
        if (ids.Length == 0 && !allowEmpty) throw new SoftPromptException("a hard prompt needs at least one token.");
        foreach (var id in ids) if (id < 0 || id >= _model.Config.VocabSize) throw new SoftPromptException($"token id {id} is outside the model's vocabulary (size {_model.Config.VocabSize}).");
    }

    public double[] Loss(IReadOnlyList<int[]> candidates, IReadOnlyList<int> examples)
    {
        foreach (var c in candidates) CheckIds(c);
        return LossOn(candidates, examples.Select(i => _search[i]).ToList());
    }

    /// <summary>Mean target loss of each candidate and each example's own mean loss (for the hardest exemplars).</summary>
    (double[] Loss, double[][] PerRow) LossOnRows(IReadOnlyList<int[]> candidates, List<Item> items)
    {
        var rows = new List<TokenizedExample>(candidates.Count * items.Count);
        foreach (var c in candidates) foreach (var x in items) rows.Add(Build(c, x));
        var (sums, counts) = RowNll(rows);
        var loss = new double[candidates.Count];
        var per = new double[candidates.Count][];
        for (int c = 0; c < candidates.Count; c++)
        {
            double s = 0; long n = 0;
            per[c] = new double[items.Count];
            for (int j = 0; j < items.Count; j++) { int r = c * items.Count + j; s += sums[r]; n += counts[r]; per[c][j] = counts[r] > 0 ? sums[r] / counts[r] : 0; }
            loss[c] = n > 0 ? s / n : double.NaN;
        }
        return (loss, per);
    }

    double[] LossOn(IReadOnlyList<int[]> candidates, List<Item> items)
    {
        var rows = new List<TokenizedExample>(candidates.Count * items.Count);
        foreach (var c in candidates) foreach (var x in items) rows.Add(Build(c, x));
        var (sums, counts) = RowNll(rows);
        var result = new double[candidates.Count];
        for (int c = 0; c < candidates.Count; c++)
        {
            double s = 0; long n = 0;
            for (int j = 0; j < items.Count; j++) { s += sums[c * items.Count + j]; n += counts[c * items.Count + j]; }
            result[c] = n > 0 ? s / n : double.NaN;
        }
        return result;
    }

    /// <summary>Per-row summed target NLL (no gradients), rows evaluated in chunks of ForwardBatch, each chunk
    /// sorted by length to limit padding.</summary>
    (double[] Sums, int[] Counts) RowNll(List<TokenizedExample> rows)
    {
        var sums = new double[rows.Count];
        var counts = rows.Select(r => r.TargetIds.Length).ToArray();
        var order = Enumerable.Range(0, rows.Count).OrderBy(i => rows[i].Length).ThenBy(i => i).ToArray();
        using var noGrad = torch.no_grad();
        for (int s = 0, chunk = 0; s < order.Length; s += _forwardBatch, chunk++)
        {
            if (!Communicator.Owns(chunk)) continue; // another rank's chunk: its rows stay 0 here until the sum below
            var idx = order.Skip(s).Take(_forwardBatch).ToArray();
            using var scope = torch.NewDisposeScope();
            using var batch = Collator.Collate(idx.Select(i => rows[i]).ToList(), _padId, _model.Device);
            var res = _model.Forward(new ForwardArgs { InputIds = batch.InputIds, AttentionMask = batch.AttentionMask });
            var (nll, rowOf) = TargetNll(res.Hidden, batch);
            var perRow = torch.zeros(idx.Length, ScalarType.Float64, _model.Device).index_add_(0, rowOf, nll.to(ScalarType.Float64), 1.0);
            var vals = perRow.cpu().data<double>().ToArray();
            for (int r = 0; r < idx.Length; r++) sums[idx[r]] = vals[r];
        }
        Communicator.AllReduceSum(sums);
        return (sums, counts);
    }

    /// <summary>NLL of every labelled token (the trainer's selection: row t predicts the label at t+1) and its row.</summary>
    (Tensor Nll, Tensor Row) TargetNll(Tensor hidden, Batch batch)
    {
        long T = batch.SeqLen;
        var labels = batch.Labels.narrow(1, 1, T - 1).reshape(-1);
        var rows = hidden.narrow(1, 0, T - 1).reshape(-1, hidden.shape[2]);
        var sel = (labels != Batch.IgnoreIndex).nonzero().squeeze(1);
        var logits = _model.Logits(rows.index_select(0, sel));
        var nll = F.cross_entropy(logits, labels.index_select(0, sel), reduction: nn.Reduction.None);
        return (nll, torch.div(sel, T - 1, RoundingMode.floor).to(ScalarType.Int64));
    }

    /// <summary>
    /// Mean target loss on <paramref name="examples"/> and its gradient with respect to the k prompt embeddings,
    /// accumulated over forward chunks of ForwardBatch rows in order. Under MPI each rank computes the gradients of
    /// every Size-th chunk; the chunks' gradients and loss sums are gathered and added in chunk order, the very additions
    /// one process makes (autograd accumulates a leaf's gradient chunk by chunk), so every world size gets the same bits.
    /// </summary>
    public (double Loss, Tensor Grad) Gradient(int[] ids, IReadOnlyList<int> examples)
    {
        CheckIds(ids, allowEmpty: false);
        if (examples.Count == 0) throw new SoftPromptException("the gradient needs at least one example.");
        using var scope = torch.NewDisposeScope();
        int k = ids.Length, p0 = _prefix.Length;
        // The one-hot choice made differentiable: the k chosen embedding rows as a leaf, spliced into the embedded
        // sequence [BOS emb, k prompt rows, prompt text emb, target emb]; base weights stay frozen.
        var chosen = _model.EmbeddingMatrix.index_select(0, torch.tensor(ids.Select(i => (long)i).ToArray(), ScalarType.Int64, _model.Device))
            .to(ScalarType.Float32).detach();
        var rows = examples.Select(i => Build(ids, _search[i])).ToList();
        long total = rows.Sum(r => (long)r.TargetIds.Length);

        // One chunk's forward and backward into leaf.grad; returns the chunk's summed NLL.
        float Chunk(int s, Tensor leaf)
        {
            using var inner = torch.NewDisposeScope();
            using var batch = Collator.Collate(rows.Skip(s).Take(_forwardBatch).ToList(), _padId, _model.Device);
            long n = batch.Size, T = batch.SeqLen;
            var emb = _model.Embed(batch.InputIds);
            var mid = leaf.to(emb.dtype).unsqueeze(0).expand(n, -1, -1);
            var full = torch.cat(new[] { emb.narrow(1, 0, p0), mid, emb.narrow(1, p0 + k, T - p0 - k) }, 1);
            var res = _model.Forward(new ForwardArgs { InputsEmbeds = full, AttentionMask = batch.AttentionMask });
            var (nll, _) = TargetNll(res.Hidden, batch);
            var sum = nll.sum();
            (sum / total).backward();
            return sum.item<float>();
        }

        double nllSum = 0;
        if (Communicator.Size == 1)
        {
            var leaf = chosen.clone().requires_grad_(true);
            for (int s = 0; s < rows.Count; s += _forwardBatch) nllSum += Chunk(s, leaf);
            return (nllSum / total, leaf.grad!.detach().clone().MoveToOuterDisposeScope());
        }

        // Each owned chunk on a fresh leaf: [its gradient's floats..., its NLL sum] appended to this rank's buffer.
        int chunks = (rows.Count + _forwardBatch - 1) / _forwardBatch;
        int width = (int)chosen.NumberOfElements;
        var mine = new List<float>();
        for (int c = Communicator.Rank; c < chunks; c += Communicator.Size)
        {
            var leaf = chosen.clone().requires_grad_(true);
            float sum = Chunk(c * _forwardBatch, leaf);
            using var g = leaf.grad!.detach().cpu().contiguous();
            mine.AddRange(g.data<float>().ToArray());
            mine.Add(sum);
        }
        var parts = Communicator.AllGather(System.Runtime.InteropServices.MemoryMarshal.AsBytes(mine.ToArray().AsSpan()).ToArray());
        Tensor? acc = null;
        for (int c = 0; c < chunks; c++)
        {
            var floats = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(parts[c % Communicator.Size].AsSpan()).Slice((c / Communicator.Size) * (width + 1), width + 1);
            var g = torch.tensor(floats[..width].ToArray(), chosen.shape, ScalarType.Float32).to(_model.Device);
            if (acc is null) acc = g; else acc.add_(g);
            nllSum += floats[width];
        }
        return (nllSum / total, acc!.MoveToOuterDisposeScope());
    }

    public double Score(int[] ids)
    {
        CheckIds(ids);
        var key = string.Join(",", ids);
        if (_scoreCache.TryGetValue(key, out var v)) return v;
        v = LossOn(new[] { ids }, _scoreSet.Select(i => _search[i]).ToList())[0];
        if (_scoreCache.Count > 10_000) _scoreCache.Clear();
        return _scoreCache[key] = v;
    }

    public double? Select(int[] ids)
    {
        if (_heldOut.Count == 0) return null;
        CheckIds(ids);
        if (_selectBy != "accuracy") return -LossOn(new[] { ids }, _heldOut)[0];
        var best = Communicator.Map(_heldOut.Count, j => RankClassifier.Score(_model, null, Build(ids, _heldOut[j]).PromptIds, _labelIds).Best(lengthNormalize: false));
        int correct = Enumerable.Range(0, _heldOut.Count).Count(j => _labels[best[j]] == _heldOut[j].Source.Target);
        return (double)correct / _heldOut.Count;
    }

    // ---- instruction (text) scoring, for OPRO ----

    public string Metric => _metric;
    public int ScoreSetCount => _scoreSet.Length;

    /// <summary>before_q: the instruction on its own line before the example's prompt (as eval's instructions);
    /// q_begin: at the start of the prompt, followed by a space; q_end: on a new line after the prompt text; a_begin:
    /// after the prompt text (its answer cue) after a space. The empty instruction is the zero-shot prompt.</summary>
    public int[] InstructionIds(string instruction) => instruction.Length == 0 ? Array.Empty<int>() : _tok.Encode(_position switch
    {
        "q_begin" => instruction + " ", "q_end" => "\n" + instruction, "a_begin" => " " + instruction, _ => instruction + "\n",
    }, false);

    /// <summary>Where the instruction's ids go in a <see cref="HardPrompt"/>: null (before the prompt text) or "after".</summary>
    public string? HardPromptPosition => _after ? "after" : null;

    public (string Prompt, string Target) ExampleText(int index) => (_search[index].Source.Prompt, _search[index].Source.Target);

    /// <summary>Why an instruction cannot be scored within --max-length (its tokens plus the longest target, or plus
    /// --max-new-tokens for generated outputs, leave no room), or null when it fits.</summary>
    public string? FitProblem(string instruction)
    {
        int n = InstructionIds(instruction).Length;
        bool generates = _metric is "exact_match" or "judge";
        int need = _prefix.Length + n + (generates ? _maxNewTokens : _maxTarget) + 1;
        return need <= _maxLength ? null
            : $"{n} instruction tokens + {_prefix.Length} special + {(generates ? $"{_maxNewTokens} new" : $"{_maxTarget} target")} tokens leave no room for the example in --max-length {_maxLength}";
    }

    public InstructionScore[] ScoreInstructions(IReadOnlyList<string> instructions, CancellationToken cancel = default)
    {
        var result = new InstructionScore[instructions.Count];
        var fits = new List<int>();
        for (int i = 0; i < instructions.Count; i++)
            if (FitProblem(instructions[i]) is string why) result[i] = InstructionScore.Fail("too_long_tokens", why);
            else fits.Add(i);
        var ids = fits.Select(i => InstructionIds(instructions[i])).ToList();
        var items = _scoreSet.Select(i => _search[i]).ToList();
        switch (_metric)
        {
            case "neg_loss":
            {
                var (loss, perRow) = LossOnRows(ids, items);
                for (int c = 0; c < fits.Count; c++)
                {
                    // The examples with the highest loss (the worse half) count as "wrong" for --exemplar-selection hardest.
                    var rows = perRow[c];
                    double median = rows.Order().ElementAt(rows.Length / 2);
                    result[fits[c]] = new InstructionScore(-loss[c]) { Wrong = Enumerable.Range(0, rows.Length).Where(j => rows[j] >= median && rows.Length > 1).Select(j => _scoreSet[j]).ToList() };
                }
                break;
            }
            case "accuracy":
            {
                // Every (candidate, example) pair is one rank classification: the pairs are shared out over the ranks.
                var local = Communicator.InCollective(cancel);
                var picked = Communicator.MapShare(fits.Count * items.Count, share =>
                {
                    var picks = new List<int>(share.Count);
                    foreach (var pair in share)
                    {
                        local.ThrowIfCancellationRequested();
                        var (c, j) = Math.DivRem(pair, items.Count);
                        picks.Add(_ct!.Score(_model, null, new[] { Build(ids[c], items[j]).PromptIds })[0].Best(lengthNormalize: false));
                    }
                    return picks;
                });
                for (int c = 0; c < fits.Count; c++)
                {
                    var wrong = Enumerable.Range(0, items.Count).Where(j => picked[c * items.Count + j] != _ct!.Gold(items[j].Source)).Select(j => _scoreSet[j]).ToList();
                    result[fits[c]] = new InstructionScore((double)(items.Count - wrong.Count) / items.Count) { Wrong = wrong };
                }
                break;
            }
            case "exact_match":
                foreach (var i in fits)
                {
                    var outputs = GenerateOutputs(instructions[i], _scoreSet, cancel);
                    var answers = outputs.Select(x => _parser is null ? x.Text : _parser(x.Text)).ToArray();
                    var wrong = Enumerable.Range(0, items.Count).Where(j => answers[j] is not string a || !AnswerMetrics.ExactMatch(a, items[j].Source.Target, ExactMatchSteps)).Select(j => _scoreSet[j]).ToList();
                    result[i] = new InstructionScore((double)(items.Count - wrong.Count) / items.Count)
                    {
                        Wrong = wrong, MeanOutputTokens = outputs.Average(x => (double)x.Tokens),
                        ParsedRate = _parser is null ? null : answers.Count(a => a is not null) / (double)answers.Length,
                    };
                }
                break;
            default:
                throw new SoftPromptException($"the '{_metric}' objective is scored by its own objective (e.g. the judge), not by the target model alone.");
        }
        return result;
    }

    static readonly string[] ExactMatchSteps = { "whitespace" };

    /// <summary>The frozen model's greedy continuation of each search example with <paramref name="instruction"/> in place,
    /// up to --max-new-tokens, cut at the first newline when --output-cut says so, trimmed (what exact match and the
    /// judge look at), with the number of tokens generated.</summary>
    public (string Text, int Tokens)[] GenerateOutputs(string instruction, IReadOnlyList<int> examples, CancellationToken cancel = default) =>
        GenerateOn(instruction, examples.Select(i => _search[i]).ToList(), cancel);

    /// <summary>As <see cref="GenerateOutputs"/>, on the held-out examples (the judge's final pick).</summary>
    public (string Text, int Tokens)[] GenerateHeldOut(string instruction, CancellationToken cancel = default) => GenerateOn(instruction, _heldOut, cancel);

    /// <summary>The prompt and target text of held-out example <paramref name="index"/>.</summary>
    public (string Prompt, string Target) HeldOutText(int index) => (_heldOut[index].Source.Prompt, _heldOut[index].Source.Target);

    (string Text, int Tokens)[] GenerateOn(string instruction, List<Item> items, CancellationToken cancel)
    {
        var ids = InstructionIds(instruction);
        var local = Communicator.InCollective(cancel);
        // One example at a time (greedy, no padding): the ranks share the examples out and get identical outputs.
        var outputs = Communicator.Map(items.Count, j =>
        {
            local.ThrowIfCancellationRequested();
            var x = items[j];
            using var scope = torch.NewDisposeScope();
            var prompt = PromptBuilder.Truncate(_after ? [.. _prefix, .. x.Text, .. ids] : [.. _prefix, .. ids, .. x.Text], _prefix.Length + (_after ? 0 : ids.Length), _maxLength - _maxNewTokens, out _);
            var r = Inference.Generator.Generate(_model, prompt, new Inference.GenerationOptions { MaxNewTokens = _maxNewTokens, EosIds = _stopIds });
            var text = _tok.Decode(r.NewIds, skipSpecialTokens: true);
            return new GeneratedOutput((_firstLine && text.IndexOf('\n') is int nl and >= 0 ? text[..nl] : text).Trim(), r.NewIds.Length);
        });
        return outputs.Select(o => (o.Text, o.Tokens)).ToArray();
    }

    /// <summary>A generated output as it crosses between ranks (JSON).</summary>
    sealed record GeneratedOutput(string Text, int Tokens);


    /// <summary>The score-set example indices (for objectives built on this one, like the judge).</summary>
    public IReadOnlyList<int> ScoreSetIndices => _scoreSet;
}
