using System.Text;
using SoftPrompt.Data;

namespace SoftPrompt.Tests.Data;

public class DatasetReaderTests
{
    static string Write(Fixtures.TempDir d, string name, string content, bool bom = false)
    {
        var path = d[name];
        var bytes = new UTF8Encoding(bom).GetPreamble().Concat(Encoding.UTF8.GetBytes(content)).ToArray();
        File.WriteAllBytes(path, bytes);
        return path;
    }

    static readonly DataOptions Defaults = new();

    [Fact]
    public void Jsonl_defaults_and_scalar_fields()
    {
        using var d = new Fixtures.TempDir();
        var p = Write(d, "a.jsonl", "{\"input\":\"2+2=\",\"output\":4}\n\n{\"input\":\"ok?\",\"output\":true,\"x\":[1]}\r\n{\"input\":\"a\",\"output\":\" spaced\"}", bom: true);
        var r = DatasetReader.Read(p, Defaults);
        Assert.Equal(3, r.Examples.Count);
        Assert.Equal(0, r.Skipped);
        Assert.Equal(("2+2=", " 4", 1), (r.Examples[0].Prompt, r.Examples[0].Target, r.Examples[0].Line));
        Assert.Equal((" true", 3), (r.Examples[1].Target, r.Examples[1].Line));
        Assert.Equal(" spaced", r.Examples[2].Target); // already starts with whitespace: no extra space
        Assert.Equal(p, r.Examples[0].File);
    }

    [Fact]
    public void Jsonl_templates_with_escapes()
    {
        using var d = new Fixtures.TempDir();
        var p = Write(d, "a.ndjson", "{\"review\":\"Tasty\",\"label\":\"great\",\"n\":3.50}\n");
        var o = new DataOptions { PromptTemplate = "{{json}} Review: {review} ({n})\nSentiment:", TargetTemplate = " {label}}}" };
        var e = DatasetReader.Read(p, o).Examples.Single();
        Assert.Equal("{json} Review: Tasty (3.50)\nSentiment:", e.Prompt);
        Assert.Equal(" great}", e.Target);
        Assert.Equal("3.50", e.Fields["n"]);
    }

    [Fact]
    public void Bad_lines_throw_with_locations_and_count()
    {
        using var d = new Fixtures.TempDir();
        var p = Write(d, "bad.jsonl", string.Join("\n",
            "{\"input\":\"a\",\"output\":\"b\"}",   // 1 ok
            "{not json",                           // 2
            "[1,2]",                               // 3
            "{\"input\":\"a\"}",                   // 4 missing output
            "{\"input\":{\"x\":1},\"output\":\"b\"}", // 5 object
            "{\"input\":\"a\",\"output\":\"  \"}",  // 6 empty target
            "{\"input\":null,\"output\":\"b\"}"));  // 7 null
        var ex = Assert.Throws<DatasetException>(() => DatasetReader.Read(p, Defaults with { MaxBadLinesReported = 3 }));
        Assert.Equal(6, ex.Problems.Count);
        Assert.Contains($"{p}:2: invalid JSON", ex.Message);
        Assert.Contains($"{p}:3: expected a JSON object, found an array", ex.Message);
        Assert.Contains($"{p}:4: missing field \"output\"", ex.Message);
        Assert.DoesNotContain($"{p}:5:", ex.Message);
        Assert.Contains("6 bad record(s)", ex.Message);
        Assert.Contains("... and 3 more", ex.Message);
        Assert.Contains($"{p}:5: field \"input\" is an object", ex.Problems[3]);
        Assert.Contains($"{p}:6: empty target", ex.Problems[4]);
        Assert.Contains($"{p}:7: field \"input\" is null", ex.Problems[5]);
        Assert.IsAssignableFrom<SoftPromptException>(ex);

        var r = DatasetReader.Read(p, Defaults with { SkipBadLines = true });
        Assert.Single(r.Examples);
        Assert.Equal(6, r.Skipped);
        Assert.Equal(6, r.Problems.Count);
    }

    [Fact]
    public void Missing_empty_and_unknown_files_are_clear_errors()
    {
        using var d = new Fixtures.TempDir();
        Assert.Contains("not found", Assert.Throws<DatasetException>(() => DatasetReader.Read(d["nope.jsonl"], Defaults)).Message);
        var empty = Write(d, "e.jsonl", "\n  \n");
        var ex = Assert.Throws<DatasetException>(() => DatasetReader.Read(empty, Defaults));
        Assert.StartsWith(empty + ": no examples", ex.Message);
        var allBad = Write(d, "b.tsv", "only-one-column\n");
        ex = Assert.Throws<DatasetException>(() => DatasetReader.Read(allBad, Defaults with { SkipBadLines = true }));
        Assert.Contains("no usable examples", ex.Message);
        Assert.Contains($"{allBad}:1: expected 2 tab-separated columns", ex.Message);
        var txt = Write(d, "x.txt", "a\tb\n");
        Assert.Contains(".txt", Assert.Throws<DatasetException>(() => DatasetReader.Read(txt, Defaults)).Message);
        Assert.Single(DatasetReader.Read(txt, Defaults with { Format = "tsv" }).Examples);
        var bin = d["bad.tsv"];
        File.WriteAllBytes(bin, [.. Encoding.UTF8.GetBytes("a\tb\nc\t"), 0xC3, 0x28, (byte)'\n']);
        Assert.Contains($"{bin}:2: not valid UTF-8", Assert.Throws<DatasetException>(() => DatasetReader.Read(bin, Defaults)).Message);
    }

    [Fact]
    public void Tsv_headerless_and_header_auto()
    {
        using var d = new Fixtures.TempDir();
        var p = Write(d, "t.tsv", "good food\tgreat\r\n\r\nmeh\tother\n");
        var r = DatasetReader.Read(p, Defaults);
        Assert.Equal(2, r.Examples.Count);
        Assert.Equal(("good food", " great", 1), (r.Examples[0].Prompt, r.Examples[0].Target, r.Examples[0].Line));
        Assert.Equal(3, r.Examples[1].Line);

        var h = Write(d, "h.tsv", "label\treview\nother\tbad\tEXTRA\ngreat\tyum\n");
        var o = new DataOptions { PromptTemplate = "Review: {review}\nSentiment:", TargetTemplate = " {label}", SkipBadLines = true };
        r = DatasetReader.Read(h, o);
        Assert.Equal("Review: yum\nSentiment:", r.Examples.Single().Prompt);
        Assert.Equal(3, r.Examples.Single().Line);
        Assert.Contains($"{h}:2: expected 2 tab-separated columns (label, review), found 3", r.Problems.Single());

        // headerless, label first (like the shared fine_foods file): name the columns
        var f = Write(d, "f.tsv", "great\tyum\n");
        var e = DatasetReader.Read(f, o with { Columns = ["label", "review"] }).Examples.Single();
        Assert.Equal((" great", 1), (e.Target, e.Line));
        var ex = Assert.Throws<DatasetException>(() => DatasetReader.Read(f, o));
        Assert.Contains("no header row", ex.Message);
        Assert.Contains("\"review\"", ex.Message);
        // forced header
        var forced = DatasetReader.Read(Write(d, "g.tsv", "a\tb\nx\ty\n"), new DataOptions { HasHeader = true, InputField = "a", OutputField = "b" });
        Assert.Equal(("x", " y", 2), (forced.Examples[0].Prompt, forced.Examples[0].Target, forced.Examples[0].Line));
    }

    [Fact]
    public void Csv_rfc4180_quoting_and_line_numbers()
    {
        using var d = new Fixtures.TempDir();
        var p = Write(d, "c.csv",
            "input,output\r\n" +                       // 1 header
            "\"Hello, world\",yes\r\n" +               // 2
            "\"She said \"\"hi\"\"\",no\r\n" +         // 3
            "\"multi\nline\r\ntext\",maybe\n" +        // 4-6
            "\n" +                                      // 7 blank
            "plain,\"x\"\n" +                           // 8
            "\"bad\"junk,z\n" +                         // 9
            "a,b,c\n" +                                 // 10
            "last,one");                                // 11, no final newline
        var r = DatasetReader.Read(p, Defaults with { SkipBadLines = true });
        Assert.Equal(new[] { "Hello, world", "She said \"hi\"", "multi\nline\r\ntext", "plain", "last" }, r.Examples.Select(e => e.Prompt));
        Assert.Equal(new[] { 2, 3, 4, 8, 11 }, r.Examples.Select(e => e.Line));
        Assert.Equal(new[] { " yes", " no", " maybe", " x", " one" }, r.Examples.Select(e => e.Target));
        Assert.Equal(2, r.Skipped);
        Assert.StartsWith($"{p}:9: unexpected text after a closing quote", r.Problems[0]);
        Assert.StartsWith($"{p}:10: expected 2 comma-separated columns", r.Problems[1]);

        var u = Write(d, "u.csv", "a,b\n\"open,never closed\nmore\n");
        var ex = Assert.Throws<DatasetException>(() => DatasetReader.Read(u, Defaults));
        Assert.Contains($"{u}:2: unterminated quoted field", ex.Message);
    }

    [Fact]
    public void Template_errors_name_the_template()
    {
        Assert.Contains("lone '}'", Assert.Throws<DatasetException>(() => new Template("a } b")).Message);
        Assert.Contains("no closing", Assert.Throws<DatasetException>(() => new Template("a {b")).Message);
        Assert.Equal(new[] { "x", "y" }, new Template("{x}{y}{x}").Fields);
    }

    [Fact]
    public void Split_is_deterministic_and_nonempty()
    {
        var ex = Enumerable.Range(0, 10).Select(i => new Example($"p{i}", " t", "f", i + 1, new Dictionary<string, string>())).ToList();
        var (t1, v1) = DatasetSplit.Split(ex, 0.2, 7);
        var (t2, v2) = DatasetSplit.Split(ex, 0.2, 7);
        var (_, v3) = DatasetSplit.Split(ex, 0.2, 8);
        Assert.Equal(8, t1.Count);
        Assert.Equal(2, v1.Count);
        Assert.Equal(v1.Select(e => e.Line), v2.Select(e => e.Line));
        Assert.NotEqual(v1.Select(e => e.Line), v3.Select(e => e.Line));
        Assert.Equal(10, t1.Concat(v1).Select(e => e.Line).Distinct().Count());
        var (t4, v4) = DatasetSplit.Split(ex.Take(2).ToList(), 0.01, 1);
        Assert.Equal((1, 1), (t4.Count, v4.Count));
        var (t5, v5) = DatasetSplit.Split(ex, 0.0, 1);
        Assert.Equal((10, 0), (t5.Count, v5.Count));
        Assert.Throws<SoftPromptException>(() => DatasetSplit.Split(ex, 1.0, 1));
    }

    [Fact]
    public void Reads_shared_task_file_if_present()
    {
        var path = "/work/shared/data/tasks/word_sentiment_bing_liu.tsv";
        if (!File.Exists(path)) return;
        var r = DatasetReader.Read(path, Defaults);
        Assert.True(r.Examples.Count > 6000);
        Assert.All(r.Examples.Take(50), e => Assert.True(e.Target is " positive" or " negative"));
    }

    [Fact]
    public void Label_words_verbalize_the_target_and_keep_the_label()
    {
        using var d = new Fixtures.TempDir();
        var p = Write(d, "w.tsv", "abound\tpositive\nabuse\tnegative\n");
        var o = new DataSettings { LabelWords = ["positive=good", "negative= bad"] }.DataOptions();
        var ex = DatasetReader.Read(p, o).Examples;
        Assert.Equal(new[] { " good", " bad" }, ex.Select(e => e.Target));
        Assert.Equal(new[] { "positive", "negative" }, ex.Select(e => e.Fields["output"]));
        // With a target template the template's one field is the label.
        var t = DatasetReader.Read(p, o with { TargetTemplate = " it is {output}." }).Examples;
        Assert.Equal(" it is good.", t[0].Target);
    }

    [Fact]
    public void Label_words_missing_a_label_name_the_line()
    {
        using var d = new Fixtures.TempDir();
        var p = Write(d, "w.tsv", "abound\tpositive\nmeh\tneutral\n");
        var o = new DataSettings { LabelWords = ["positive=good", "negative=bad"] }.DataOptions();
        var ex = Assert.Throws<DatasetException>(() => DatasetReader.Read(p, o));
        Assert.Contains("w.tsv:2", ex.Message);
        Assert.Contains("\"neutral\" has no label word", ex.Message);
    }

    [Theory]
    [InlineData("positive", "expected LABEL=WORD")]
    [InlineData("=good", "expected LABEL=WORD")]
    [InlineData("positive=", "expected LABEL=WORD")]
    public void Label_words_malformed_pair_is_an_error(string pair, string message)
    {
        var ex = Assert.Throws<SoftPromptException>(() => DataFields.ParseLabelWords([pair]));
        Assert.Contains(message, ex.Message);
    }

    [Fact]
    public void Label_words_duplicates_are_errors()
    {
        Assert.Contains("given twice", Assert.Throws<SoftPromptException>(() => DataFields.ParseLabelWords(["a=x", "a=y"])).Message);
        Assert.Contains("both map to", Assert.Throws<SoftPromptException>(() => DataFields.ParseLabelWords(["a=x", "b= x"])).Message);
        Assert.Null(DataFields.ParseLabelWords([]));
    }
}
