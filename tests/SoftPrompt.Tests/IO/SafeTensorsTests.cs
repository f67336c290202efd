using System.Buffers.Binary;
using System.Text;
using System.Text.Json.Nodes;
using SoftPrompt.IO;
using TorchSharp;
using static TorchSharp.torch;

namespace SoftPrompt.Tests.IO;

/// <summary>
/// The safetensors reader/writer: exact round trips, the on-disk layout the format specifies (u64 header length,
/// JSON header padded to 8 bytes, names sorted, contiguous data), atomic rewrites, and rejection of every kind of
/// malformed file with a <see cref="SoftPromptException"/> that names the file and the problem.
/// </summary>
public class SafeTensorsTests
{
    // ---------- round trip and layout ----------

    static Dictionary<string, Tensor> SampleTensors()
    {
        var gen = new torch.Generator(1234);
        return new Dictionary<string, Tensor>
        {
            ["f32.matrix"] = torch.randn(new long[] { 3, 5 }, generator: gen),
            ["bf16.vec"] = torch.randn(new long[] { 7 }, generator: gen).to(ScalarType.BFloat16),
            ["f16.cube"] = torch.randn(new long[] { 2, 3, 4 }, generator: gen).to(ScalarType.Float16),
            ["i64.ids"] = torch.tensor(new long[] { 0, -1, long.MaxValue, long.MinValue, 42 }),
            ["bool.mask"] = torch.tensor(new[] { true, false, false, true, true }).view(5, 1),
            ["a.scalar"] = torch.tensor(3.25f),                                  // shape []
            ["empty"] = torch.empty(new long[] { 0, 3 }),                          // 0 elements
            ["f32.noncontig"] = torch.arange(12, ScalarType.Float32).view(3, 4).t(), // a transposed view
        };
    }

    static bool Same(Tensor a, Tensor b) =>
        a.dtype == b.dtype && a.shape.SequenceEqual(b.shape) && (a.NumberOfElements == 0 || a.to(ScalarType.Float64).equal(b.to(ScalarType.Float64)).all().item<bool>());

    [Fact]
    public void RoundTripPreservesDTypesShapesValuesAndMetadata()
    {
        using var dir = new Fixtures.TempDir();
        var path = dir["t.safetensors"];
        var src = SampleTensors();
        var meta = new Dictionary<string, string> { ["format"] = "pt", ["note"] = "ünïcödé \"quoted\"" };
        SafeTensors.Save(path, src, meta);

        var back = SafeTensors.Load(path);
        Assert.Equal(src.Keys.OrderBy(k => k), back.Keys.OrderBy(k => k));
        foreach (var (k, t) in src)
        {
            Assert.True(Same(t.contiguous(), back[k]), $"tensor {k} differs after the round trip");
            Assert.Equal(t.dtype, back[k].dtype);
        }
        Assert.Empty(back["a.scalar"].shape);
        Assert.Equal(new long[] { 0, 3 }, back["empty"].shape);
        // int64 extremes and bools survive bit-exactly.
        Assert.Equal(new long[] { 0, -1, long.MaxValue, long.MinValue, 42 }, back["i64.ids"].data<long>().ToArray());
        Assert.Equal(new[] { true, false, false, true, true }, back["bool.mask"].data<bool>().ToArray());

        var header = SafeTensors.ReadHeader(path);
        Assert.Equal(meta, header.Metadata);
        Assert.Equal("BF16", header.Tensors["bf16.vec"].DType);
        Assert.Equal("F16", header.Tensors["f16.cube"].DType);
        Assert.Equal("I64", header.Tensors["i64.ids"].DType);
        Assert.Equal("BOOL", header.Tensors["bool.mask"].DType);
        Assert.Equal("F32", header.Tensors["a.scalar"].DType);
    }

    [Fact]
    public void FileLayoutFollowsTheSpec()
    {
        using var dir = new Fixtures.TempDir();
        var path = dir["t.safetensors"];
        var src = SampleTensors();
        SafeTensors.Save(path, src, new Dictionary<string, string> { ["format"] = "pt" });
        var bytes = File.ReadAllBytes(path);

        ulong n = BinaryPrimitives.ReadUInt64LittleEndian(bytes);
        Assert.Equal(0UL, n % 8);                                   // header padded to a multiple of 8
        var headerText = Encoding.UTF8.GetString(bytes, 8, (int)n);
        Assert.Equal(headerText.TrimEnd(' '), headerText.TrimEnd(' ').Trim()); // padding is trailing spaces only
        var root = JsonNode.Parse(headerText)!.AsObject();
        Assert.Equal("pt", root["__metadata__"]!["format"]!.GetValue<string>());

        // Tensor entries sorted by name (ordinal), data laid out in that order, contiguous, covering the data section.
        var names = root.Select(kv => kv.Key).Where(k => k != "__metadata__").ToList();
        Assert.Equal(names.OrderBy(x => x, StringComparer.Ordinal).ToList(), names);
        long pos = 0;
        foreach (var name in names)
        {
            var offs = root[name]!["data_offsets"]!.AsArray();
            Assert.Equal(pos, offs[0]!.GetValue<long>());
            pos = offs[1]!.GetValue<long>();
        }
        Assert.Equal(bytes.Length - 8 - (long)n, pos);

        // The raw data is little-endian: the scalar 3.25f is at its offset.
        var sOff = root["a.scalar"]!["data_offsets"]![0]!.GetValue<long>();
        Assert.Equal(3.25f, BinaryPrimitives.ReadSingleLittleEndian(bytes.AsSpan(8 + (int)n + (int)sOff, 4)));
        // The transposed view is stored in its logical (row-major) order.
        var nc = SafeTensors.Load(path)["f32.noncontig"];
        Assert.Equal(new float[] { 0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11 }, nc.data<float>().ToArray());
    }

    [Fact]
    public void SaveWithoutMetadataWritesNoMetadataKey()
    {
        using var dir = new Fixtures.TempDir();
        var path = dir["t.safetensors"];
        SafeTensors.Save(path, new Dictionary<string, Tensor> { ["x"] = torch.ones(2) });
        var bytes = File.ReadAllBytes(path);
        var n = (int)BinaryPrimitives.ReadUInt64LittleEndian(bytes);
        Assert.DoesNotContain("__metadata__", Encoding.UTF8.GetString(bytes, 8, n));
        Assert.Empty(SafeTensors.ReadHeader(path).Metadata);
    }

    [Fact]
    public void SaveOverALongerFileRewritesItExactlyAndLeavesNoTempFiles()
    {
        using var dir = new Fixtures.TempDir();
        var path = dir["t.safetensors"];
        SafeTensors.Save(path, new Dictionary<string, Tensor> { ["big"] = torch.randn(1000), ["other"] = torch.zeros(50, 50) });
        long bigLen = new FileInfo(path).Length;

        var small = new Dictionary<string, Tensor> { ["x"] = torch.arange(6, ScalarType.Float32).view(2, 3) };
        SafeTensors.Save(path, small);
        // Exactly what a fresh save writes: no trailing bytes from the longer file.
        var fresh = dir["fresh.safetensors"];
        SafeTensors.Save(fresh, small);
        Assert.True(new FileInfo(path).Length < bigLen);
        Assert.Equal(File.ReadAllBytes(fresh), File.ReadAllBytes(path));
        var back = SafeTensors.Load(path);
        Assert.Single(back);
        Assert.True(Same(small["x"], back["x"]));

        Assert.Equal(new[] { "fresh.safetensors", "t.safetensors" },
            Directory.GetFileSystemEntries(dir.Path).Select(Path.GetFileName).OrderBy(x => x, StringComparer.Ordinal).ToArray());
    }

    [Fact]
    public void FixtureModelFileIsReadAsTheReadmeDescribes()
    {
        var path = Path.Combine(Fixtures.HfReference("gpt2"), "model.safetensors");
        var h = SafeTensors.ReadHeader(path);
        Assert.Equal(28, h.Tensors.Count);
        Assert.Equal("pt", h.Metadata["format"]);
        Assert.Equal(new long[] { 64, 192 }, h.Tensors["transformer.h.0.attn.c_attn.weight"].Shape);
        Assert.Equal(0, h.DataStart % 8);
    }

    [Fact]
    public void LoadWithFilterReadsOnlyTheSelectedTensors()
    {
        var path = Path.Combine(Fixtures.HfReference("llama"), "model.safetensors");
        var only = SafeTensors.Load(path, n => n.StartsWith("model.norm"));
        Assert.Equal(new[] { "model.norm.weight" }, only.Keys.ToArray());
        Assert.Equal(new long[] { 64 }, only["model.norm.weight"].shape);
    }

    // ---------- malformed files ----------

    /// <summary>Writes u64 length + header + data; <paramref name="lengthOverride"/> replaces the length field.</summary>
    static void WriteRaw(string path, string header, byte[]? data = null, ulong? lengthOverride = null, bool pad = true)
    {
        var h = Encoding.UTF8.GetBytes(header);
        int n = pad ? (h.Length + 7) / 8 * 8 : h.Length;
        using var fs = File.Create(path);
        Span<byte> len = stackalloc byte[8];
        BinaryPrimitives.WriteUInt64LittleEndian(len, lengthOverride ?? (ulong)n);
        fs.Write(len);
        fs.Write(h);
        for (int i = h.Length; i < n; i++) fs.WriteByte((byte)' ');
        if (data != null) fs.Write(data);
    }

    static string Entry(string dtype, string shape, long b, long e) =>
        $"{{\"dtype\":\"{dtype}\",\"shape\":{shape},\"data_offsets\":[{b},{e}]}}";

    /// <summary>Both ReadHeader and Load must throw a SoftPromptException naming the file and containing <paramref name="expect"/>.</summary>
    static void AssertRejected(string path, string expect)
    {
        var task = Task.Run(() =>
        {
            var e1 = Assert.Throws<SoftPromptException>(() => SafeTensors.ReadHeader(path));
            var e2 = Assert.Throws<SoftPromptException>(() => SafeTensors.Load(path));
            return (e1, e2);
        });
        Assert.True(task.Wait(TimeSpan.FromSeconds(20)), "reading a malformed file must not hang");
        var (a, b) = task.Result;
        foreach (var e in new[] { a, b })
        {
            Assert.Contains(path, e.Message);
            Assert.Contains(expect, e.Message, StringComparison.OrdinalIgnoreCase);
        }
    }

    public static IEnumerable<object[]> MalformedCases()
    {
        byte[] Z(int n) => new byte[n];
        // name, header, data, length override, expected words in the message
        yield return new object[] { "header length > file size", "{}", Z(0), (ulong?)4096, "exceeds the file size" };
        yield return new object[] { "huge header length 2^63", "{}", Z(0), (ulong?)(1UL << 63), "exceeds the file size" };
        yield return new object[] { "header length 2^64-1", "{}", Z(0), (ulong?)ulong.MaxValue, "exceeds the file size" };
        yield return new object[] { "non-JSON header", "{\"a\": [1, 2", Z(0), null!, "not valid JSON" };
        yield return new object[] { "header is an array", "[1, 2, 3]", Z(0), null!, "not a JSON object" };
        yield return new object[] { "header is null", "null", Z(0), null!, "not a JSON object" };
        yield return new object[] { "unknown dtype", "{\"x\":" + Entry("F8_E9", "[2]", 0, 2) + "}", Z(2), null!, "unsupported dtype 'F8_E9'" };
        yield return new object[] { "negative shape", "{\"x\":" + Entry("F32", "[-1, 2]", 0, 8) + "}", Z(8), null!, "shape[0]" };
        yield return new object[] { "fractional shape", "{\"x\":" + Entry("F32", "[1.5]", 0, 4) + "}", Z(4), null!, "shape[0]" };
        yield return new object[] { "overflowing shape", "{\"x\":" + Entry("F32", "[4294967296, 4294967296, 4294967296]", 0, 4) + "}", Z(4), null!, "overflows" };
        // numel fits in a long, numel * 4 bytes does not: 2^62 * 4 wraps to 0 in unchecked arithmetic.
        yield return new object[] { "byte size overflows", "{\"x\":" + Entry("F32", "[4611686018427387904]", 0, 0) + "}", Z(0), null!, "overflows" };
        yield return new object[] { "shape beyond int64", "{\"x\":" + Entry("F32", "[18446744073709551616]", 0, 4) + "}", Z(4), null!, "shape[0]" };
        yield return new object[] { "end offset beyond data", "{\"x\":" + Entry("F32", "[4]", 0, 16) + "}", Z(8), null!, "outside" };
        yield return new object[] { "negative begin offset", "{\"x\":" + Entry("F32", "[1]", -4, 0) + "}", Z(4), null!, "outside" };
        yield return new object[] { "end before begin", "{\"x\":" + Entry("F32", "[0]", 8, 4) + "}", Z(8), null!, "outside" };
        yield return new object[] { "huge offsets", "{\"x\":" + Entry("F32", "[1]", long.MaxValue - 3, long.MaxValue) + "}", Z(4), null!, "outside" };
        yield return new object[] { "byte count != numel*size", "{\"x\":" + Entry("F32", "[3]", 0, 8) + "}", Z(8), null!, "expected 12" };
        yield return new object[] { "overlapping tensors", "{\"a\":" + Entry("F32", "[2]", 0, 8) + ",\"b\":" + Entry("F32", "[2]", 4, 12) + "}", Z(12), null!, "overlaps" };
        yield return new object[] { "hole between tensors", "{\"a\":" + Entry("F32", "[1]", 0, 4) + ",\"b\":" + Entry("F32", "[1]", 8, 12) + "}", Z(12), null!, "hole" };
        yield return new object[] { "trailing bytes", "{\"a\":" + Entry("F32", "[1]", 0, 4) + "}", Z(9), null!, "after the last tensor" };
        yield return new object[] { "metadata value is a number", "{\"__metadata__\":{\"format\":1}}", Z(0), null!, "__metadata__.format" };
        yield return new object[] { "metadata value is an object", "{\"__metadata__\":{\"format\":{\"a\":\"b\"}}}", Z(0), null!, "__metadata__.format" };
        yield return new object[] { "metadata is an array", "{\"__metadata__\":[\"pt\"]}", Z(0), null!, "__metadata__" };
        yield return new object[] { "entry not an object", "{\"x\":5}", Z(0), null!, "must be an object" };
        yield return new object[] { "missing data_offsets", "{\"x\":{\"dtype\":\"F32\",\"shape\":[1]}}", Z(4), null!, "data_offsets" };
        yield return new object[] { "missing shape", "{\"x\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", Z(4), null!, "shape" };
        yield return new object[] { "duplicate tensor name", "{\"x\":" + Entry("F32", "[1]", 0, 4) + ",\"x\":" + Entry("F32", "[1]", 4, 8) + "}", Z(8), null!, "duplicate" };
        yield return new object[] { "duplicate metadata key", "{\"__metadata__\":{\"a\":\"1\",\"a\":\"2\"}}", Z(0), null!, "duplicate" };
        yield return new object[] { "duplicate key in an entry", "{\"x\":{\"dtype\":\"F32\",\"dtype\":\"I64\",\"shape\":[1],\"data_offsets\":[0,4]}}", Z(4), null!, "duplicate" };
    }

    [Theory, MemberData(nameof(MalformedCases))]
    public void MalformedFileIsRejectedWithAClearError(string name, string header, byte[] data, ulong? lengthOverride, string expect)
    {
        using var dir = new Fixtures.TempDir();
        var path = dir["bad.safetensors"];
        WriteRaw(path, header, data, lengthOverride);
        try { AssertRejected(path, expect); }
        catch (Exception e) when (e is not SoftPromptException) { throw new Exception($"case '{name}': {e.Message}", e); }
    }

    [Theory]
    [InlineData(0)]
    [InlineData(3)]
    [InlineData(7)]
    public void FileShorterThanEightBytesIsRejected(int length)
    {
        using var dir = new Fixtures.TempDir();
        var path = dir["short.safetensors"];
        File.WriteAllBytes(path, new byte[length]);
        AssertRejected(path, "shorter than the 8-byte header length");
    }

    [Fact]
    public void MissingFileIsASoftPromptException()
    {
        using var dir = new Fixtures.TempDir();
        var e = Assert.Throws<SoftPromptException>(() => SafeTensors.Load(dir["nope.safetensors"]));
        Assert.Contains("nope.safetensors", e.Message);
        Assert.Contains("not found", e.Message);
    }

    [Fact]
    public void TruncatedFixtureIsRejected()
    {
        using var dir = new Fixtures.TempDir();
        var bytes = File.ReadAllBytes(Path.Combine(Fixtures.HfReference("llama"), "model.safetensors"));
        var path = dir["cut.safetensors"];
        File.WriteAllBytes(path, bytes[..^100]);
        AssertRejected(path, "outside");
    }

    [Fact]
    public void HeaderPaddedWithNulOrSpacesAndUnpaddedHeadersAreAccepted()
    {
        using var dir = new Fixtures.TempDir();
        var path = dir["ok.safetensors"];
        var data = BitConverter.GetBytes(1.5f);
        WriteRaw(path, "{\"x\":" + Entry("F32", "[1]", 0, 4) + "}", data, pad: false);
        Assert.Equal(1.5f, SafeTensors.Load(path)["x"].item<float>());
        WriteRaw(path, "{\"x\":" + Entry("F32", "[]", 0, 4) + "}      ", data, pad: true);
        Assert.Equal(1.5f, SafeTensors.Load(path)["x"].item<float>());
    }
}
