namespace SoftPrompt.Data;

/// <summary>
/// Deterministic batches of example indices.
/// </summary>
/// <remarks>
/// <para>The order of epoch e is a pure function of (seed, e, lengths, batch size, grouping options): nothing is
/// carried from one epoch to the next. So a training position is fully described by <b>(epoch, batchIndex)</b>: to
/// resume after batch k of epoch e, call <c>Batches(e, startBatch: k + 1)</c> (or <c>Batches(e + 1)</c> if that was the
/// last batch) with the same sampler settings; checkpoints need to store just those two numbers.</para>
/// <para>Nothing is dropped: every index appears exactly once per epoch; the last batch may be smaller
/// (<see cref="BatchesPerEpoch"/> = ceil(count / batchSize)).</para>
/// <para>Length grouping (optional, to reduce padding): shuffle, cut into buckets of <c>bucketFactor × batchSize</c>
/// indices, sort each bucket by length (longest first, ties by position), cut buckets into batches, shuffle the
/// batch order. Buckets are whole multiples of the batch size, so only the very last bucket can give a partial batch.
/// </para>
/// <para>Randomness comes from <see cref="SplitMix64"/>, not System.Random, so orders are the same on every runtime.</para>
/// </remarks>
public sealed class BatchSampler
{
    readonly int[]? _lengths;
    public int Count { get; }
    public int BatchSize { get; }
    public int Seed { get; }
    public bool GroupByLength { get; }
    public int BucketFactor { get; }
    public bool Shuffle { get; }

    public int BatchesPerEpoch => (Count + BatchSize - 1) / BatchSize;

    /// <summary>Sampler over <paramref name="count"/> examples, shuffled (or in order when <paramref name="shuffle"/> is false).</summary>
    public BatchSampler(int count, int batchSize, int seed, bool shuffle = true)
        : this(count, null, batchSize, seed, false, 50, shuffle) { }

    /// <summary>Sampler that knows each example's length (token count), optionally grouping similar lengths.</summary>
    public BatchSampler(IReadOnlyList<int> lengths, int batchSize, int seed, bool groupByLength = false, int bucketFactor = 50, bool shuffle = true)
        : this(lengths?.Count ?? throw new ArgumentNullException(nameof(lengths)), lengths.ToArray(), batchSize, seed, groupByLength, bucketFactor, shuffle) { }

    BatchSampler(int count, int[]? lengths, int batchSize, int seed, bool groupByLength, int bucketFactor, bool shuffle)
    {
        if (count < 1) throw new SoftPromptException("the batch sampler needs at least one example.");
        if (batchSize < 1) throw new SoftPromptException($"batch size must be at least 1 (got {batchSize}).");
        if (bucketFactor < 1) throw new SoftPromptException($"bucket factor must be at least 1 (got {bucketFactor}).");
        Count = count; _lengths = lengths; BatchSize = batchSize; Seed = seed;
        GroupByLength = groupByLength; BucketFactor = bucketFactor; Shuffle = shuffle;
    }

    /// <summary>The batches of <paramref name="epoch"/>, starting at batch <paramref name="startBatch"/> (for resuming).</summary>
    public IEnumerable<int[]> Batches(int epoch, int startBatch = 0)
    {
        if (epoch < 0) throw new ArgumentOutOfRangeException(nameof(epoch), "epoch must be >= 0");
        if (startBatch < 0 || startBatch > BatchesPerEpoch)
            throw new ArgumentOutOfRangeException(nameof(startBatch), $"start batch {startBatch} is outside 0..{BatchesPerEpoch}");
        return EpochBatches(epoch).Skip(startBatch);
    }

    /// <summary>All batches of an epoch, materialised.</summary>
    public List<int[]> EpochBatches(int epoch)
    {
        var rng = SplitMix64.For(Seed, epoch);
        var order = Enumerable.Range(0, Count).ToArray();
        if (Shuffle) rng.Shuffle(order);
        var batches = new List<int[]>(BatchesPerEpoch);
        if (GroupByLength && _lengths != null)
        {
            int bucket = checked(BucketFactor * BatchSize);
            for (int s = 0; s < Count; s += bucket)
            {
                var part = order.AsSpan(s, Math.Min(bucket, Count - s)).ToArray();
                var keyed = part.Select((idx, pos) => (idx, pos)).OrderByDescending(x => _lengths[x.idx]).ThenBy(x => x.pos).Select(x => x.idx).ToArray();
                Cut(keyed, batches);
            }
            if (Shuffle) rng.Shuffle(batches);
        }
        else Cut(order, batches);
        return batches;
    }

    void Cut(int[] indices, List<int[]> into)
    {
        for (int s = 0; s < indices.Length; s += BatchSize)
            into.Add(indices.AsSpan(s, Math.Min(BatchSize, indices.Length - s)).ToArray());
    }
}
