namespace SoftPrompt.Data;

/// <summary>
/// SplitMix64 (Steele, Lea &amp; Flood 2014): a tiny, fully specified PRNG. Used instead of <see cref="System.Random"/>
/// so that shuffles, splits and batch orders are identical on every .NET version and platform (System.Random's
/// algorithm is an implementation detail that has changed before).
/// </summary>
public struct SplitMix64
{
    ulong _state;

    public SplitMix64(ulong seed) => _state = seed;

    /// <summary>A generator for (seed, stream): distinct streams (e.g. epochs) give unrelated sequences.</summary>
    public static SplitMix64 For(long seed, long stream) => new(Mix((ulong)seed) ^ Mix((ulong)stream + 0x632BE59BD9B4E019UL));

    public ulong Next()
    {
        ulong z = _state += 0x9E3779B97F4A7C15UL;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return z ^ (z >> 31);
    }

    /// <summary>Uniform integer in [0, n), without modulo bias (rejection sampling).</summary>
    public int NextInt(int n)
    {
        if (n <= 0) throw new ArgumentOutOfRangeException(nameof(n), "n must be positive");
        ulong un = (ulong)n, threshold = (0UL - un) % un; // 2^64 mod n
        while (true)
        {
            ulong r = Next();
            if (r >= threshold) return (int)(r % un);
        }
    }

    /// <summary>Fisher–Yates shuffle in place.</summary>
    public void Shuffle<T>(IList<T> items)
    {
        for (int i = items.Count - 1; i > 0; i--)
        {
            int j = NextInt(i + 1);
            (items[i], items[j]) = (items[j], items[i]);
        }
    }

    static ulong Mix(ulong x) { var g = new SplitMix64(x); return g.Next(); }
}
