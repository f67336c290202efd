namespace SoftPrompt.Data;

public static class DatasetSplit
{
    /// <summary>
    /// Random train/validation split, deterministic for a seed (see <see cref="SplitMix64"/>). The validation size is
    /// round(count × fraction), but at least 1 in each part when fraction &gt; 0 and there are at least 2 examples.
    /// fraction 0 gives an empty validation set. Both parts keep the file order.
    /// </summary>
    public static (IReadOnlyList<Example> Train, IReadOnlyList<Example> Validation) Split(IReadOnlyList<Example> examples, double validationFraction, int seed)
    {
        ArgumentNullException.ThrowIfNull(examples);
        if (!(validationFraction >= 0 && validationFraction < 1))
            throw new SoftPromptException($"validation fraction must be in [0, 1), got {validationFraction}.");
        int n = examples.Count;
        int nVal = (int)Math.Round(n * validationFraction, MidpointRounding.AwayFromZero);
        if (validationFraction > 0 && n >= 2) nVal = Math.Clamp(nVal, 1, n - 1);
        else if (n < 2) nVal = 0;

        var order = Enumerable.Range(0, n).ToArray();
        var rng = SplitMix64.For(seed, stream: 0x5EED_5B11);
        rng.Shuffle(order);
        var isVal = new bool[n];
        for (int i = 0; i < nVal; i++) isVal[order[i]] = true;
        var train = new List<Example>(n - nVal);
        var val = new List<Example>(nVal);
        for (int i = 0; i < n; i++) (isVal[i] ? val : train).Add(examples[i]);
        return (train, val);
    }

    /// <summary>A seeded sample of <paramref name="n"/> of <paramref name="count"/> indices, in ascending (file) order;
    /// all indices when n is 0 or not smaller than count. <paramref name="stream"/> separates independent draws.</summary>
    public static int[] SampleIndices(int count, int n, int seed, long stream)
    {
        var order = Enumerable.Range(0, count).ToArray();
        if (n <= 0 || n >= count) return order;
        SplitMix64.For(seed, stream).Shuffle(order);
        return order.Take(n).OrderBy(i => i).ToArray();
    }
}
