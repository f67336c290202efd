using System.Text;
using System.Text.Json;

namespace SoftPrompt.Tokenization;

/// <summary>
/// A SentencePiece Unigram model (T5, Flan-T5) from a Hugging Face <c>tokenizer.json</c> whose <c>model.type</c> is
/// "Unigram": its pieces and scores, unk id, the Precompiled normalizer's charsmap and the Metaspace pre-tokenizer
/// are written as the SentencePiece <c>ModelProto</c> that Microsoft.ML.Tokenizers' <c>SentencePieceTokenizer</c>
/// reads (it implements Unigram segmentation, but only from a model proto). Written by hand because the package's
/// protobuf classes are internal; the message is five fields deep and stable (sentencepiece_model.proto).
/// </summary>
internal static class UnigramModel
{
    /// <summary>The ModelProto bytes; throws <see cref="UnsupportedComponentException"/> for what it cannot express.</summary>
    public static byte[] ProtoFromTokenizerJson(JsonElement root, JsonElement model, string file, IReadOnlyCollection<AddedToken> added)
    {
        if (!HfJson.Has(model, "vocab", out var vocab) || vocab.ValueKind != JsonValueKind.Array || vocab.GetArrayLength() == 0)
            throw new TokenizerLoadException($"{file}: key 'model.vocab' of the Unigram model must be a non-empty array of [piece, score] pairs", file);
        int? unk = null;
        if (HfJson.Has(model, "unk_id", out var u) && u.ValueKind != JsonValueKind.Null) unk = HfJson.Int(u, file, "model.unk_id");
        if (unk is int ui && (ui < 0 || ui >= vocab.GetArrayLength()))
            throw new TokenizerLoadException($"{file}: key 'model.unk_id' is {ui}, outside model.vocab (0..{vocab.GetArrayLength() - 1})", file);
        if (HfJson.Bool(model, "byte_fallback", file, "model.byte_fallback") == true)
            throw new UnsupportedComponentException("Unigram with byte_fallback");
        var (charsmap, removeExtraSpaces, addDummyPrefix) = Pipeline(root, file);
        var specials = added.Where(a => a.Special).Select(a => a.Id).ToHashSet();

        var pieces = new List<byte[]>();
        int i = 0;
        foreach (var entry in vocab.EnumerateArray())
        {
            string key = $"model.vocab[{i}]";
            if (entry.ValueKind != JsonValueKind.Array || entry.GetArrayLength() != 2 || entry[0].ValueKind != JsonValueKind.String || entry[1].ValueKind != JsonValueKind.Number)
                throw new TokenizerLoadException($"{file}: key '{key}' must be a [piece, score] pair", file);
            var piece = entry[0].GetString()!;
            if (piece.Length == 0) throw new TokenizerLoadException($"{file}: key '{key}' has an empty piece", file);
            double score = entry[1].GetDouble();
            // Types: the unknown piece, special added tokens as control symbols (never produced from text), the rest normal.
            int type = i == unk ? 2 : specials.Contains(i) ? 3 : 1;
            var w = new ProtoWriter();
            w.String(1, piece);
            w.Float(2, (float)score);
            w.Varint(3, (ulong)type);
            pieces.Add(w.ToArray());
            i++;
        }
        var trainer = new ProtoWriter();
        trainer.Varint(3, 1);                                   // model_type UNIGRAM
        trainer.Varint(4, (ulong)pieces.Count);                 // vocab_size
        trainer.Int32(40, unk ?? 0);                            // unk_id
        // The reader needs valid BOS and EOS ids (it never adds them here: HF's post-processor does). T5 has no BOS:
        // it is aliased to the EOS piece, which maps the same text to the same id (see WithBosAlias).
        int Id(string piece) { int k = 0; foreach (var e in vocab.EnumerateArray()) { if (e[0].GetString() == piece) return k; k++; } return -1; }
        int eos = Id("</s>") is int e0 and >= 0 ? e0 : unk ?? 0, bos = Id("<s>");
        string eosPiece = vocab[eos][0].GetString()!;
        trainer.Int32(41, bos >= 0 ? bos : eos);                // bos_id
        trainer.Int32(42, eos);                                 // eos_id
        trainer.Int32(43, Id("<pad>"));                         // pad_id
        trainer.String(46, bos >= 0 ? "<s>" : eosPiece);        // bos_piece
        trainer.String(47, eosPiece);                           // eos_piece
        trainer.String(45, vocab[unk ?? 0][0].GetString()!);    // unk_piece
        var norm = new ProtoWriter();
        norm.String(1, charsmap is null ? "identity" : "precompiled");
        if (charsmap is not null) norm.Bytes(2, charsmap);
        norm.Varint(3, addDummyPrefix ? 1UL : 0);
        norm.Varint(4, removeExtraSpaces ? 1UL : 0);
        norm.Varint(5, 1);                                      // escape_whitespaces
        var proto = new ProtoWriter();
        foreach (var p in pieces) proto.Bytes(1, p);
        proto.Bytes(2, trainer.ToArray());
        proto.Bytes(3, norm.ToArray());
        return proto.ToArray();
    }

    /// <summary>
    /// A SentencePiece model file made ready for Microsoft.ML.Tokenizers 2.0.1, whose Unigram reader indexes the vocabulary
    /// with bos_id and so fails on models without a BOS (T5's spiece.model has bos_id -1). When bos_id is -1, a
    /// trainer_spec fragment is appended that sets bos_id / bos_piece to the EOS id and piece: protobuf merges a repeated
    /// message field into the earlier one, so only those two fields change, and the EOS piece still maps to its own id.
    /// The tokenizer never adds the BOS (the model folder's own rules decide the special tokens).
    /// </summary>
    public static byte[] WithBosAlias(byte[] model)
    {
        int bos = 1, eos = 2; string eosPiece = "</s>";          // sentencepiece_model.proto defaults
        var r = new ProtoReader(model, 0, model.Length);
        while (r.Next(out int field, out int wire))
        {
            if (field == 2 && wire == 2)
            {
                var (start, len) = r.Slice();
                var t = new ProtoReader(model, start, start + len);
                while (t.Next(out int f, out int w))
                {
                    if (f == 41 && w == 0) bos = (int)t.Varint();
                    else if (f == 42 && w == 0) eos = (int)t.Varint();
                    else if (f == 47 && w == 2) { var (s0, l0) = t.Slice(); eosPiece = Encoding.UTF8.GetString(model, s0, l0); }
                    else t.Skip(w);
                }
            }
            else r.Skip(wire);
        }
        if (bos >= 0) return model;
        var fix = new ProtoWriter();
        fix.Int32(41, eos);
        fix.String(46, eosPiece);
        var tail = new ProtoWriter();
        tail.Bytes(2, fix.ToArray());
        return model.Concat(tail.ToArray()).ToArray();
    }

    /// <summary>Reads protobuf wire format (varints, length-delimited slices, skips), bounds-checked.</summary>
    sealed class ProtoReader(byte[] b, int pos, int end)
    {
        int _p = pos;
        public bool Next(out int field, out int wire)
        {
            field = wire = 0;
            if (_p >= end) return false;
            ulong tag = Varint();
            field = (int)(tag >> 3); wire = (int)(tag & 7);
            return true;
        }
        public ulong Varint()
        {
            ulong v = 0;
            for (int shift = 0; shift < 64; shift += 7)
            {
                if (_p >= end) throw new FormatException("truncated varint");
                byte x = b[_p++];
                v |= (ulong)(x & 0x7F) << shift;
                if (x < 0x80) return v;
            }
            throw new FormatException("varint too long");
        }
        public (int Start, int Length) Slice()
        {
            ulong len = Varint();
            if (len > (ulong)(end - _p)) throw new FormatException("length past the end");
            var r = (_p, (int)len);
            _p += (int)len;
            return r;
        }
        public void Skip(int wire)
        {
            switch (wire)
            {
                case 0: Varint(); break;
                case 1: _p += 8; break;
                case 2: Slice(); break;
                case 5: _p += 4; break;
                default: throw new FormatException($"wire type {wire}");
            }
            if (_p > end) throw new FormatException("field past the end");
        }
    }

    /// <summary>What SentencePiece's normalizer spec can say of the tokenizer.json pipeline: a Precompiled normalizer
    /// (or none), and a Metaspace pre-tokenizer (with a leading WhitespaceSplit = remove_extra_whitespaces).</summary>
    static (byte[]? Charsmap, bool RemoveExtraSpaces, bool AddDummyPrefix) Pipeline(JsonElement root, string file)
    {
        byte[]? charsmap = null;
        if (HfJson.Has(root, "normalizer", out var n) && n.ValueKind != JsonValueKind.Null)
        {
            var t = HfJson.String(n, "type", file, "normalizer.type");
            if (t != "Precompiled") throw new UnsupportedComponentException($"Unigram with normalizer type '{t}' (only Precompiled)");
            var b64 = HfJson.String(n, "precompiled_charsmap", file, "normalizer.precompiled_charsmap");
            if (!string.IsNullOrEmpty(b64))
            {
                try { charsmap = Convert.FromBase64String(b64); }
                catch (FormatException) { throw new TokenizerLoadException($"{file}: key 'normalizer.precompiled_charsmap' is not base64", file); }
            }
        }
        if (!HfJson.Has(root, "pre_tokenizer", out var p) || p.ValueKind == JsonValueKind.Null)
            throw new UnsupportedComponentException("Unigram without a Metaspace pre_tokenizer");
        var list = new List<(JsonElement E, string Key)>();
        if (HfJson.String(p, "type", file, "pre_tokenizer.type") == "Sequence" && HfJson.Has(p, "pretokenizers", out var arr) && arr.ValueKind == JsonValueKind.Array)
        {
            int k = 0;
            foreach (var e in arr.EnumerateArray()) list.Add((e, $"pre_tokenizer.pretokenizers[{k++}]"));
        }
        else list.Add((p, "pre_tokenizer"));
        bool split = false, prefix = true, sawMeta = false;
        foreach (var (e, key) in list)
        {
            var t = HfJson.String(e, "type", file, key + ".type");
            if (t == "WhitespaceSplit" && !sawMeta) { split = true; continue; }
            if (t != "Metaspace" || sawMeta) throw new UnsupportedComponentException($"Unigram with pre_tokenizer '{t}' (key '{key}.type'; only [WhitespaceSplit,] Metaspace)");
            sawMeta = true;
            var rep = HfJson.String(e, "replacement", file, key + ".replacement") ?? "\u2581";
            if (rep != "\u2581") throw new UnsupportedComponentException($"Metaspace replacement '{rep}' (key '{key}.replacement'; only U+2581)");
            var scheme = HfJson.String(e, "prepend_scheme", file, key + ".prepend_scheme");
            bool? addPrefix = HfJson.Bool(e, "add_prefix_space", file, key + ".add_prefix_space");
            if (scheme is "first") throw new UnsupportedComponentException($"Metaspace prepend_scheme 'first' (key '{key}.prepend_scheme')");
            prefix = scheme is null ? addPrefix ?? true : scheme == "always";
        }
        if (!sawMeta) throw new UnsupportedComponentException("Unigram without a Metaspace pre_tokenizer");
        return (charsmap, split, prefix);
    }

    /// <summary>Protocol-buffer wire format, the few field kinds a ModelProto uses.</summary>
    sealed class ProtoWriter
    {
        readonly MemoryStream _s = new();
        void Raw(ulong v) { while (v >= 0x80) { _s.WriteByte((byte)(v | 0x80)); v >>= 7; } _s.WriteByte((byte)v); }
        void Tag(int field, int wire) => Raw(((ulong)field << 3) | (uint)wire);
        public void Varint(int field, ulong v) { Tag(field, 0); Raw(v); }
        public void Int32(int field, int v) { Tag(field, 0); Raw((ulong)(long)v); } // negative int32: 10-byte two's complement
        public void Float(int field, float v) { Tag(field, 5); Span<byte> b = stackalloc byte[4]; BitConverter.TryWriteBytes(b, v); if (!BitConverter.IsLittleEndian) b.Reverse(); _s.Write(b); }
        public void Bytes(int field, byte[] v) { Tag(field, 2); Raw((ulong)v.Length); _s.Write(v); }
        public void String(int field, string v) => Bytes(field, Encoding.UTF8.GetBytes(v));
        public byte[] ToArray() => _s.ToArray();
    }
}
