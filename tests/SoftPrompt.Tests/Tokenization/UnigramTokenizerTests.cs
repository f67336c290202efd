using SoftPrompt.Tokenization;

namespace SoftPrompt.Tests.Tokenization;

/// <summary>
/// T5's SentencePiece Unigram tokenizer.json through Microsoft.ML.Tokenizers, on a hand-made file in T5's layout
/// (fixtures/tokenizers/t5-unigram: no real T5 tokenizer is obtainable offline) whose best segmentations are known
/// by hand from its scores.
/// </summary>
public class UnigramTokenizerTests
{
    static string Dir => Path.Combine(Fixtures.Root, "tokenizers", "t5-unigram");

    [Fact]
    public void ViterbiSegmentationEosSuffixAndDecode()
    {
        var t = HfTokenizer.Load(Dir);
        Assert.StartsWith("SentencePiece Unigram", t.Kind);
        Assert.Equal(1, t.EosId);
        Assert.Equal(0, t.PadId);
        Assert.True(t.AddEos);
        Assert.False(t.AddBos);
        // "abc": ▁a + bc (-3.5) beats ▁ab + c (-4) and ▁abc (-5); then T5's </s>.
        Assert.Equal(new[] { 8, 9, 1 }, t.Encode("abc"));
        Assert.Equal(new[] { 8, 9 }, t.Encode("abc", addSpecialTokens: false));
        Assert.Equal(new[] { 7, 11, 1 }, t.Encode("ab c"));
        // WhitespaceSplit before Metaspace: runs of spaces count as one, leading/trailing ones vanish.
        Assert.Equal(new[] { 7, 11, 1 }, t.Encode("  ab   c "));
        Assert.Equal("ab c", t.Decode(t.Encode("ab c"), skipSpecialTokens: true));
        var good = t.TokenToId("\u2581good")!.Value;
        Assert.Equal(new[] { good, 1 }, t.Encode("good"));
        // A special token in the text is its id, not pieces.
        Assert.Equal(new[] { good, 1, 1 }, t.Encode("good</s>"));
        Assert.Equal("good review", t.Decode(t.Encode("good review"), skipSpecialTokens: true));
    }

    [Fact]
    public void UnsupportedUnigramPiecesAreRefusedByName()
    {
        var dir = Path.Combine(Path.GetTempPath(), "softprompt-unigram-" + Guid.NewGuid().ToString("N")[..8]);
        Directory.CreateDirectory(dir);
        try
        {
            var json = File.ReadAllText(Path.Combine(Dir, "tokenizer.json"));
            File.WriteAllText(Path.Combine(dir, "tokenizer.json"), json.Replace("\"Precompiled\"", "\"NFKC\""));
            var e = Assert.Throws<TokenizerLoadException>(() => HfTokenizer.Load(dir));
            Assert.Contains("normalizer type 'NFKC'", e.Message);
            File.WriteAllText(Path.Combine(dir, "tokenizer.json"), json.Replace("\"unk_id\": 2", "\"unk_id\": 5000"));
            Assert.Contains("model.unk_id", Assert.Throws<TokenizerLoadException>(() => HfTokenizer.Load(dir)).Message);
        }
        finally { Directory.Delete(dir, true); }
    }

    /// <summary>T5's own file layout: spiece.model, a SentencePiece Unigram ModelProto with bos_id -1 (T5 has no BOS),
    /// written here from the same pieces (protobuf by hand: field numbers of sentencepiece_model.proto).</summary>
    [Fact]
    public void SpieceModelWithoutBosSegmentsAsTheTokenizerJson()
    {
        var json = HfTokenizer.Load(Dir);
        using var doc = System.Text.Json.JsonDocument.Parse(File.ReadAllText(Path.Combine(Dir, "tokenizer.json")));
        var pieces = new MemoryStream();
        void Raw(Stream s, ulong v) { while (v >= 0x80) { s.WriteByte((byte)(v | 0x80)); v >>= 7; } s.WriteByte((byte)v); }
        void Len(Stream s, int field, byte[] b) { Raw(s, (ulong)(field << 3 | 2)); Raw(s, (ulong)b.Length); s.Write(b); }
        void Var(Stream s, int field, long v) { Raw(s, (ulong)(field << 3)); Raw(s, (ulong)v); }
        int id = 0;
        foreach (var e in doc.RootElement.GetProperty("model").GetProperty("vocab").EnumerateArray())
        {
            var p = new MemoryStream();
            Len(p, 1, System.Text.Encoding.UTF8.GetBytes(e[0].GetString()!));
            Raw(p, 2 << 3 | 5); p.Write(BitConverter.GetBytes((float)e[1].GetDouble()));
            Var(p, 3, id == 2 ? 2 : id < 2 ? 3 : 1);
            Len(pieces, 1, p.ToArray());
            id++;
        }
        var trainer = new MemoryStream();
        Var(trainer, 3, 1); Var(trainer, 40, 2); Var(trainer, 41, -1); Var(trainer, 42, 1); Var(trainer, 43, 0);
        Len(trainer, 45, System.Text.Encoding.UTF8.GetBytes("<unk>")); Len(trainer, 47, System.Text.Encoding.UTF8.GetBytes("</s>")); Len(trainer, 48, System.Text.Encoding.UTF8.GetBytes("<pad>"));
        var norm = new MemoryStream();
        Len(norm, 1, System.Text.Encoding.UTF8.GetBytes("identity")); Var(norm, 3, 1); Var(norm, 4, 1); Var(norm, 5, 1);
        Len(pieces, 2, trainer.ToArray());
        Len(pieces, 3, norm.ToArray());
        using var tmp = new Fixtures.TempDir();
        File.WriteAllBytes(tmp["spiece.model"], pieces.ToArray());
        File.Copy(Path.Combine(Dir, "tokenizer_config.json"), tmp["tokenizer_config.json"]);
        var sp = HfTokenizer.Load(tmp.Path);
        Assert.Equal("SentencePiece (spiece.model)", sp.Kind);
        Assert.Null(sp.BosId);
        Assert.Equal(1, sp.EosId);
        foreach (var text in new[] { "abc", "ab c", "  ab   c ", "good review", "this was very good food.", "xyz?" })
            Assert.Equal(json.Encode(text), sp.Encode(text));
        Assert.Equal(new[] { 8, 9, 1 }, sp.Encode("abc"));
        Assert.Equal("good review", sp.Decode(sp.Encode("good review"), skipSpecialTokens: true));
    }
}
