using System.Buffers.Binary;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using TorchSharp;
using static TorchSharp.torch;

namespace SoftPrompt.IO;

/// <summary>One entry of a safetensors header.</summary>
public sealed record SafeTensorInfo(string Name, string DType, long[] Shape, long Begin, long End);

/// <summary>
/// Reader and writer for the safetensors format (https://github.com/huggingface/safetensors).
/// Written here rather than taken from TorchSharp.PyBridge because that writer neither truncates an existing
/// file nor writes <c>__metadata__</c>, and because the reader must validate every header field before
/// trusting it: the format exists so that untrusted weights are safe to load.
/// </summary>
public static class SafeTensors
{
    const long MaxHeaderBytes = 100L << 20;

    static readonly Dictionary<string, (ScalarType Type, int Size)> DTypes = new()
    {
        ["F64"] = (ScalarType.Float64, 8), ["F32"] = (ScalarType.Float32, 4), ["F16"] = (ScalarType.Float16, 2),
        ["BF16"] = (ScalarType.BFloat16, 2), ["I64"] = (ScalarType.Int64, 8), ["I32"] = (ScalarType.Int32, 4),
        ["I16"] = (ScalarType.Int16, 2), ["I8"] = (ScalarType.Int8, 1), ["U8"] = (ScalarType.Byte, 1), ["BOOL"] = (ScalarType.Bool, 1),
    };

    static string DTypeName(ScalarType t) => DTypes.First(kv => kv.Value.Type == t).Key;

    /// <summary>Header of a safetensors file: tensor entries (validated) and the metadata map.</summary>
    public sealed class Header
    {
        public required string Path { get; init; }
        public required IReadOnlyDictionary<string, SafeTensorInfo> Tensors { get; init; }
        public required IReadOnlyDictionary<string, string> Metadata { get; init; }
        public required long DataStart { get; init; }
    }

    public static Header ReadHeader(string path)
    {
        using var fs = InputFile.OpenRead(path);
        return ReadHeader(fs, path);
    }

    static Header ReadHeader(FileStream fs, string path)
    {
        long fileLen = fs.Length;
        if (fileLen < 8) throw Bad(path, $"file is {fileLen} bytes, shorter than the 8-byte header length");
        Span<byte> lenBytes = stackalloc byte[8];
        fs.ReadExactly(lenBytes);
        ulong n = BinaryPrimitives.ReadUInt64LittleEndian(lenBytes);
        if (n > (ulong)(fileLen - 8)) throw Bad(path, $"header length {n} exceeds the file size {fileLen}");
        if (n > MaxHeaderBytes) throw Bad(path, $"header length {n} is larger than {MaxHeaderBytes} bytes");
        if (n < 2) throw Bad(path, $"header length {n} is too small for a JSON object");
        var headerBytes = new byte[n];
        fs.ReadExactly(headerBytes);
        JsonObject root;
        try
        {
            root = JsonNode.Parse(Encoding.UTF8.GetString(headerBytes).TrimEnd(' ', '\0')) as JsonObject
                   ?? throw Bad(path, "header is not a JSON object");
        }
        catch (JsonException e) { throw Bad(path, $"header is not valid JSON ({e.Message})"); }

        long dataStart = 8 + (long)n, dataLen = fileLen - dataStart;
        var meta = new Dictionary<string, string>();
        var tensors = new Dictionary<string, SafeTensorInfo>();
        // System.Text.Json builds a JsonObject's dictionary lazily and throws ArgumentException on a duplicate key
        // (top level, __metadata__ or an entry) while we enumerate it.
        try { ReadEntries(); }
        catch (ArgumentException e) { throw Bad(path, $"header has a duplicate key ({e.Message})"); }
        void ReadEntries()
        {
            foreach (var (name, node) in root)
            {
                if (name == "__metadata__")
                {
                    if (node is not JsonObject mo) throw Bad(path, "__metadata__ must be an object of strings");
                    foreach (var (k, v) in mo)
                    {
                        if (v is not JsonValue jv || !jv.TryGetValue<string>(out var s)) throw Bad(path, $"__metadata__.{k} must be a string");
                        meta[k] = s;
                    }
                    continue;
                }
                if (node is not JsonObject o) throw Bad(path, $"tensor '{name}': entry must be an object");
                string dtype = o["dtype"] is JsonValue dv && dv.TryGetValue<string>(out var ds) ? ds : throw Bad(path, $"tensor '{name}': missing or non-string 'dtype'");
                if (!DTypes.TryGetValue(dtype, out var dt)) throw Bad(path, $"tensor '{name}': unsupported dtype '{dtype}' (supported: {string.Join(", ", DTypes.Keys)})");
                if (o["shape"] is not JsonArray sa) throw Bad(path, $"tensor '{name}': missing 'shape' array");
                var shape = new long[sa.Count];
                for (int i = 0; i < sa.Count; i++)
                {
                    if (sa[i] is not JsonValue sv || !sv.TryGetValue<long>(out var d) || d < 0) throw Bad(path, $"tensor '{name}': shape[{i}] is not a non-negative integer");
                    shape[i] = d;
                }
                if (o["data_offsets"] is not JsonArray oa || oa.Count != 2) throw Bad(path, $"tensor '{name}': 'data_offsets' must be [begin, end]");
                if (oa[0] is not JsonValue b0 || !b0.TryGetValue<long>(out var begin) || oa[1] is not JsonValue b1 || !b1.TryGetValue<long>(out var end))
                    throw Bad(path, $"tensor '{name}': data_offsets must be integers");
                if (begin < 0 || end < begin || end > dataLen)
                    throw Bad(path, $"tensor '{name}': data_offsets [{begin}, {end}] lie outside the {dataLen}-byte data section");
                long numel = 1;
                try { foreach (var d in shape) numel = checked(numel * d); }
                catch (OverflowException) { throw Bad(path, $"tensor '{name}': shape [{string.Join(", ", shape)}] overflows"); }
                long bytes;
                try { bytes = checked(numel * dt.Size); }
                catch (OverflowException) { throw Bad(path, $"tensor '{name}': shape [{string.Join(", ", shape)}] of {dtype} overflows a 64-bit byte count"); }
                if (end - begin != bytes)
                    throw Bad(path, $"tensor '{name}': {end - begin} bytes for shape [{string.Join(", ", shape)}] of {dtype} (expected {bytes})");
                tensors[name] = new SafeTensorInfo(name, dtype, shape, begin, end);
            }
        }
        // The data section must be covered exactly: no overlaps, no holes.
        long pos = 0;
        foreach (var t in tensors.Values.OrderBy(t => t.Begin).ThenBy(t => t.End))
        {
            if (t.Begin != pos) throw Bad(path, t.Begin < pos ? $"tensor '{t.Name}' overlaps another tensor's data" : $"a hole of {t.Begin - pos} bytes precedes tensor '{t.Name}'");
            pos = t.End;
        }
        if (pos != dataLen) throw Bad(path, $"{dataLen - pos} bytes after the last tensor are not described by the header");
        return new Header { Path = path, Tensors = tensors, Metadata = meta, DataStart = dataStart };
    }

    static SoftPromptException Bad(string path, string why) => new($"{path}: not a valid safetensors file: {why}.");

    /// <summary>Reads every tensor (or those <paramref name="filter"/> accepts) as CPU tensors of their stored dtype.</summary>
    public static Dictionary<string, Tensor> Load(string path, Func<string, bool>? filter = null)
    {
        using var fs = InputFile.OpenRead(path);
        var header = ReadHeader(fs, path);
        var result = new Dictionary<string, Tensor>();
        try
        {
            foreach (var info in header.Tensors.Values.OrderBy(t => t.Begin))
            {
                if (filter != null && !filter(info.Name)) continue;
                result[info.Name] = ReadTensor(fs, header, info);
            }
        }
        catch
        {
            foreach (var t in result.Values) t.Dispose();
            throw;
        }
        return result;
    }

    /// <summary>Reads one tensor described by <paramref name="info"/> from an open file.</summary>
    public static Tensor ReadTensor(FileStream fs, Header header, SafeTensorInfo info)
    {
        var t = torch.empty(info.Shape, DTypes[info.DType].Type, device: torch.CPU); // read into host memory; callers move it
        if (info.End > info.Begin)
        {
            fs.Seek(header.DataStart + info.Begin, SeekOrigin.Begin);
            fs.ReadExactly(t.bytes); // a span over the CPU tensor's own storage
        }
        if (!BitConverter.IsLittleEndian) throw new PlatformNotSupportedException("safetensors data is little-endian; big-endian hosts are not supported.");
        return t;
    }

    /// <summary>Writes tensors (any device, any supported dtype) atomically, sorted by name, with optional metadata.</summary>
    public static void Save(string path, IReadOnlyDictionary<string, Tensor> tensors, IReadOnlyDictionary<string, string>? metadata = null)
    {
        var names = tensors.Keys.OrderBy(k => k, StringComparer.Ordinal).ToList();
        var cpu = names.Select(n => tensors[n].detach().cpu().contiguous()).ToList();
        try
        {
            var header = new JsonObject();
            if (metadata is { Count: > 0 })
            {
                var mo = new JsonObject();
                foreach (var (k, v) in metadata.OrderBy(kv => kv.Key, StringComparer.Ordinal)) mo[k] = v;
                header["__metadata__"] = mo;
            }
            long offset = 0;
            for (int i = 0; i < names.Count; i++)
            {
                var t = cpu[i];
                long size = t.NumberOfElements * t.ElementSize;
                header[names[i]] = new JsonObject
                {
                    ["dtype"] = DTypeName(t.dtype),
                    ["shape"] = new JsonArray(t.shape.Select(d => (JsonNode)JsonValue.Create(d)!).ToArray()),
                    ["data_offsets"] = new JsonArray(JsonValue.Create(offset), JsonValue.Create(offset + size)),
                };
                offset += size;
            }
            var json = Encoding.UTF8.GetBytes(header.ToJsonString());
            int padded = (json.Length + 7) / 8 * 8;
            AtomicFile.Write(path, s =>
            {
                Span<byte> len = stackalloc byte[8];
                BinaryPrimitives.WriteUInt64LittleEndian(len, (ulong)padded);
                s.Write(len);
                s.Write(json);
                for (int i = json.Length; i < padded; i++) s.WriteByte((byte)' ');
                foreach (var t in cpu) if (t.NumberOfElements > 0) s.Write(t.bytes);
            });
        }
        finally
        {
            foreach (var t in cpu) t.Dispose();
        }
    }
}
