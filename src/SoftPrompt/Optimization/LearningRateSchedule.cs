namespace SoftPrompt.Optimization;

/// <summary>
/// Learning-rate schedules, as pure functions of the 0-based update index (so resuming needs only the step count).
/// The warm-up follows Hugging Face transformers: lr = baseLr · step / warmupSteps for step &lt; warmupSteps (so the
/// very first update, step 0, has lr 0 when warmupSteps &gt; 0), then:
/// <list type="bullet">
/// <item><c>constant</c>: baseLr (no warm-up, whatever warmupSteps says);</item>
/// <item><c>constant_with_warmup</c>: baseLr after the warm-up;</item>
/// <item><c>linear</c>: linear decay from baseLr at the end of the warm-up to 0 at totalSteps;</item>
/// <item><c>cosine</c>: half cosine from baseLr to baseLr · minLrRatio at totalSteps.</item>
/// </list>
/// Steps at or past totalSteps give the final value. The one schedule of the project: prompt training and the
/// pretraining of the shipped model (cosine with a floor, <c>minLrRatio</c> = lr_min / lr_max) both use it.
/// </summary>
public static class LearningRateSchedule
{
    public static readonly IReadOnlyList<string> Kinds = ["constant", "constant_with_warmup", "linear", "cosine"];

    public static double At(string kind, long step, long totalSteps, long warmupSteps, double baseLr, double minLrRatio = 0)
    {
        if (step < 0) throw new SoftPromptException($"lr schedule: step must be >= 0 (got {step}).");
        if (warmupSteps < 0) throw new SoftPromptException($"lr schedule: warm-up steps must be >= 0 (got {warmupSteps}).");
        if (!(minLrRatio >= 0 && minLrRatio <= 1)) throw new SoftPromptException($"lr schedule: min lr ratio must be in [0, 1] (got {minLrRatio}).");
        var k = (kind ?? "").Trim().ToLowerInvariant();
        if (!Kinds.Contains(k)) throw new SoftPromptException($"unknown lr schedule \"{kind}\" (expected {string.Join(", ", Kinds)}).");
        if (k == "constant") return baseLr;
        if (step < warmupSteps) return baseLr * step / (double)warmupSteps;
        if (k == "constant_with_warmup") return baseLr;
        if (totalSteps < 1) throw new SoftPromptException($"lr schedule \"{k}\" needs total steps >= 1 (got {totalSteps}).");
        double progress = Math.Clamp((double)(step - warmupSteps) / Math.Max(1, totalSteps - warmupSteps), 0, 1);
        return k == "linear"
            ? baseLr * (1 - progress)
            : baseLr * (minLrRatio + (1 - minLrRatio) * 0.5 * (1 + Math.Cos(Math.PI * progress)));
    }
}
