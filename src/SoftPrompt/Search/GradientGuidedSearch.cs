using System.Diagnostics;
using SoftPrompt.Data;
using SoftPrompt.Distributed;
using TorchSharp;
using static TorchSharp.torch;

namespace SoftPrompt.Search;

/// <summary>
/// HotFlip / AutoPrompt-style discrete search (Ebrahimi et al. 2018; Shin et al. 2020; the sampling of swaps
/// follows GCG, Zou et al. 2023). Each step, on a minibatch:
/// <list type="number">
/// <item>g = ∂loss/∂e_i for the k prompt embeddings (the one-hot choice made differentiable);</item>
/// <item>every vocabulary token v at position i gets the first-order loss change −g_i·E_v (swapping e_i for E_v
/// changes the loss by about g_i·(E_v − e_i)); the top-C allowed tokens per position are the candidates;</item>
/// <item>B distinct single-token swaps (position uniform, candidate uniform among its top C) are evaluated exactly
/// (no gradient) together with the current prompt on the same minibatch; the best is kept if it lowers the loss.</item>
/// </list>
/// Every <see cref="HardPromptSearchOptions.EvalEvery"/> steps the current prompt is scored on the fixed score set
/// (and held-out data); the result is the best scored prompt (by the held-out metric when there is one). All
/// randomness comes from <see cref="SplitMix64"/> seeded by the options: same seed, same search.
/// </summary>
public sealed class GradientGuidedSearch(ICommunicator? comm = null) : IHardPromptOptimizer
{
    /// <summary>The ranks of an MPI job (every rank runs this same loop on the objective's shared scoring): a stop
    /// request seen by any rank stops every rank at the same step.</summary>
    readonly ICommunicator _comm = comm ?? SingleProcess.Instance;

    public HardPromptSearchResult Optimize(IPromptObjective objective, HardPromptSearchOptions o, int[] initialIds,
        IProgress<HardPromptSearchProgress>? progress = null, CancellationToken cancel = default)
    {
        if (objective is not IGradientPromptObjective g)
            throw new SoftPromptException("the gradient-guided search needs an objective that gives gradients (a local model).");
        o.Validate(needPaths: false);
        if (initialIds.Length != o.PromptLength) throw new SoftPromptException($"the initial prompt has {initialIds.Length} tokens, --prompt-length is {o.PromptLength}.");
        int k = o.PromptLength;
        var clock = Stopwatch.StartNew();
        var rng = SplitMix64.For(o.Seed, stream: 0x40F11);
        var sampler = new BatchSampler(objective.ExampleCount, Math.Min(o.BatchSize, objective.ExampleCount), o.Seed);
        int epoch = 0; var epochBatches = sampler.EpochBatches(0); int batchIdx = 0;
        int[] NextBatch()
        {
            if (batchIdx == epochBatches.Count) { epoch++; epochBatches = sampler.EpochBatches(epoch); batchIdx = 0; }
            return epochBatches[batchIdx++];
        }

        // Additive mask over the vocabulary: 0 for allowed tokens, -inf for the rest.
        using var vocabMask = torch.tensor(objective.Allowed.Select(a => a ? 0f : float.NegativeInfinity).ToArray(), device: g.EmbeddingMatrix.device);
        int allowedCount = objective.Allowed.Count(a => a);

        var current = initialIds.ToArray();
        double initialScore = objective.Score(current);
        var best = current; double bestScore = initialScore; double? bestSelect = objective.Select(current);
        int accepted = 0, step = 0; string stop = "max_steps";

        while (step < o.Steps)
        {
            if (_comm.Any(cancel.IsCancellationRequested)) { stop = "cancelled"; break; }
            step++;
            var batch = NextBatch();
            var (gradLoss, grad) = g.Gradient(current, batch);
            List<int[]> proposals;
            using (var scope = torch.NewDisposeScope())
            using (torch.no_grad())
            {
                var E = g.EmbeddingMatrix;
                var scores = -grad.to(E.dtype).matmul(E.t()).to(ScalarType.Float32) + vocabMask;        // [k, vocab]
                var cur = torch.tensor(current.Select(i => (long)i).ToArray(), ScalarType.Int64, E.device).unsqueeze(1);
                scores = scores.scatter(1, cur, torch.full(new long[] { k, 1 }, float.NegativeInfinity, device: E.device)); // no "swap" to itself
                int c = Math.Min(o.Candidates, Math.Max(1, allowedCount - 1));
                var top = scores.topk(c, dim: 1);
                var topIds = top.indexes.cpu().data<long>().ToArray();
                var topOk = top.values.isfinite().cpu().data<bool>().ToArray();
                proposals = SampleSwaps(current, topIds, topOk, c, o.EvalCandidates, ref rng);
            }
            grad.Dispose();
            if (proposals.Count == 0) { stop = "no_candidates"; step--; break; }

            var losses = objective.Loss(new[] { current }.Concat(proposals).ToList(), batch);
            double before = losses[0];
            int arg = -1; double bestLoss = before;
            for (int i = 1; i < losses.Length; i++) if (losses[i] < bestLoss) { bestLoss = losses[i]; arg = i - 1; }
            int pos = -1;
            if (arg >= 0)
            {
                pos = Enumerable.Range(0, k).First(p => proposals[arg][p] != current[p]);
                current = proposals[arg];
                accepted++;
            }

            double? score = null, select = null;
            if (step % o.EvalEvery == 0 || step == o.Steps)
            {
                score = objective.Score(current);
                select = objective.Select(current);
                bool better = select is double sv && bestSelect is double bv
                    ? sv > bv + 1e-12 || (Math.Abs(sv - bv) <= 1e-12 && score < bestScore)
                    : score < bestScore;
                if (better) { best = current; bestScore = score.Value; bestSelect = select; }
            }
            var eta = TimeSpan.FromSeconds(clock.Elapsed.TotalSeconds / step * (o.Steps - step));
            progress?.Report(new HardPromptSearchProgress
            {
                Step = step, TotalSteps = o.Steps, LossBefore = before, Loss = Math.Min(before, bestLoss), Accepted = arg >= 0, Position = pos,
                Ids = current, Text = objective.Decode(current), Score = score, SelectValue = select,
                BestScore = bestScore, BestIds = best, BestText = objective.Decode(best), Elapsed = clock.Elapsed, Eta = eta,
            });
        }
        // Cancelled (or stopped early) between evaluations: the current prompt still competes for "best".
        if (stop != "max_steps" && step > 0 && !best.SequenceEqual(current))
        {
            double score = objective.Score(current); double? select = objective.Select(current);
            bool better = select is double sv && bestSelect is double bv ? sv > bv + 1e-12 || (Math.Abs(sv - bv) <= 1e-12 && score < bestScore) : score < bestScore;
            if (better) { best = current; bestScore = score; bestSelect = select; }
        }
        return new HardPromptSearchResult
        {
            TokenIds = best, Text = objective.Decode(best), Score = bestScore, InitialIds = initialIds.ToArray(), InitialScore = initialScore,
            SelectValue = bestSelect, SelectMetric = objective.SelectMetric, Steps = step, Accepted = accepted, StopReason = stop,
        };
    }

    /// <summary>Up to <paramref name="budget"/> distinct single-token swaps of <paramref name="current"/>: position
    /// uniform over 0..k-1, replacement uniform over that position's finite top-C candidates. When the whole candidate
    /// pool is no larger than the budget, all of it is taken (in order).</summary>
    static List<int[]> SampleSwaps(int[] current, long[] topIds, bool[] topOk, int c, int budget, ref SplitMix64 rng)
    {
        int k = current.Length;
        var pool = new List<(int Pos, int Id)>();
        for (int p = 0; p < k; p++)
            for (int j = 0; j < c; j++)
                if (topOk[p * c + j]) pool.Add((p, (int)topIds[p * c + j]));
        var chosen = new List<(int Pos, int Id)>();
        if (pool.Count <= budget) chosen = pool;
        else
        {
            var seen = new HashSet<(int, int)>();
            var byPos = pool.GroupBy(x => x.Pos).ToDictionary(gp => gp.Key, gp => gp.Select(x => x.Id).ToArray());
            var positions = byPos.Keys.OrderBy(x => x).ToArray();
            for (int tries = 0; chosen.Count < budget && tries < budget * 20; tries++)
            {
                int p = positions[rng.NextInt(positions.Length)];
                var ids = byPos[p];
                var sw = (p, ids[rng.NextInt(ids.Length)]);
                if (seen.Add(sw)) chosen.Add(sw);
            }
        }
        return chosen.Select(sw => { var x = current.ToArray(); x[sw.Pos] = sw.Id; return x; }).ToList();
    }
}
