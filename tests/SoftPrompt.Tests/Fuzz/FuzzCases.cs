using System.Text;
using System.Text.Json.Nodes;
using TorchSharp;
using static TorchSharp.torch;

namespace SoftPrompt.Tests.Fuzz;

/// <summary>One malformed input: how to build it (in a fresh folder) and the command that must refuse it.</summary>
/// <param name="Class">The class of docs/reliability.md (1 sizes, 2 non-finite/nonsensical, 3 internal exceptions,
/// 4 run-folder ownership, 5 output paths, 6 smaller ones).</param>
/// <param name="Expect">What the one error line must name (a file, key or option).</param>
/// <param name="NoOutput">The command's --output (DIR/out) must not exist afterwards.</param>
/// <param name="After">A further check on the case folder after the command (e.g. that files already there are intact).</param>
public sealed record FuzzCase(string Id, int Class, Func<FuzzWorld, string, string[]> Build, string Expect, bool NoOutput = true, Action<string>? After = null);

/// <summary>
/// The malformed inputs, generated from the shipped model and the fixtures: every size key of config.json with every
/// kind of bad value, every CLI number with out-of-range and non-finite values, corrupt weights, adapters, tokenizer
/// files, configs, data and checkpoints, dangling links, locked and unusable output folders.
/// </summary>
public static class FuzzCases
{
    static string Out(string dir) => Path.Combine(dir, "out");

    static string[] Cmd(string[] head, IDictionary<string, string?> opts, IDictionary<string, string?>? over)
    {
        var merged = new Dictionary<string, string?>(opts);
        if (over is not null) foreach (var (k, v) in over) merged[k] = v;
        var args = head.ToList();
        foreach (var (k, v) in merged) { args.Add(k); if (v is not null) args.Add(v); }
        return args.ToArray();
    }

    static Dictionary<string, string?> O(params string?[] kv)
    {
        var d = new Dictionary<string, string?>();
        for (int i = 0; i < kv.Length; i += 2) d[kv[i]!] = kv[i + 1];
        return d;
    }

    public static string[] Train(FuzzWorld w, string dir, Dictionary<string, string?>? over = null) => Cmd(new[] { "train" },
        O("--model", w.Shipped, "--train", w.TrainData, "--output", Out(dir), "--steps", "1", "--batch-size", "4", "--virtual-tokens", "2", "--threads", "1"), over);
    public static string[] Search(FuzzWorld w, string dir, Dictionary<string, string?>? over = null) => Cmd(new[] { "search-hard-prompt" },
        O("--model", w.Shipped, "--train", w.TrainData, "--output", Out(dir), "--steps", "1", "--prompt-length", "2", "--threads", "1"), over);
    public static string[] Eval(FuzzWorld w, string dir, Dictionary<string, string?>? over = null) => Cmd(new[] { "eval" },
        O("--model", w.Shipped, "--data", w.TestData, "--output", Out(dir), "--threads", "1"), over);
    public static string[] Score(string model, Dictionary<string, string?>? over = null) => Cmd(new[] { "score" }, O("-m", model, "--text", "hello", "--threads", "1"), over);
    static string[] ScoreIds(string model) => new[] { "score", "-m", model, "--ids", "1,2,3", "--threads", "1" };
    static string[] Generate(FuzzWorld w, Dictionary<string, string?>? over = null) => Cmd(new[] { "generate" }, O("-m", w.Shipped, "--text", "hi", "--threads", "1"), over);

    static readonly Lazy<Dictionary<string, FuzzCase>> All = new(() => Build().ToDictionary(c => c.Id));
    public static IReadOnlyDictionary<string, FuzzCase> ById => All.Value;
    public static IEnumerable<object[]> Ids => All.Value.Keys.Select(k => new object[] { k });

    static JsonNode? J(string json) => JsonNode.Parse(json);

    static IEnumerable<FuzzCase> Build()
    {
        // ---- class 1: sizes bounded before allocation --------------------------------------------------------------
        var sizeKeys = new[] { "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim", "vocab_size", "max_position_embeddings" };
        var badSizes = new[] { "0", "-1", "1000000000", "67108864", "4294967296", "1.5", "\"12\"", "true", "[]", "{}" };
        foreach (var key in sizeKeys)
            foreach (var v in badSizes)
                yield return new($"config-{key}={v}", 1, (w, d) => Score(w.Model(d, c => c[key] = J(v))), key);
        // Plausible but not this checkpoint's: the weights' shapes decide.
        foreach (var (key, v) in new[] { ("hidden_size", 128), ("hidden_size", 512), ("num_hidden_layers", 5), ("num_hidden_layers", 7), ("vocab_size", 4095),
                     ("vocab_size", 4097), ("intermediate_size", 767), ("num_key_value_heads", 2), ("head_dim", 32), ("num_attention_heads", 8) })
            yield return new($"config-mismatch-{key}={v}", 1, (w, d) => Score(w.Model(d, c => c[key] = v)), "config.json");
        yield return new("config-heads-overflow", 1, (w, d) => Score(w.Model(d, c => { c["num_attention_heads"] = 1 << 26; c["num_key_value_heads"] = 1 << 26; c["head_dim"] = 64; })), "num_attention_heads");
        yield return new("config-gpt2-n_head-0", 1, (w, d) => Score(w.Model(d, c => { c.Clear(); c["model_type"] = "gpt2"; c["n_head"] = 0; })), "n_head");
        yield return new("config-gpt2-n_layer-huge", 1, (w, d) => Score(w.Model(d, c => { c.Clear(); c["model_type"] = "gpt2"; c["n_layer"] = 1000000000; })), "n_layer");

        foreach (var (opt, v) in new[] { ("--virtual-tokens", "0"), ("--virtual-tokens", "-1"), ("--virtual-tokens", "10000000"), ("--virtual-tokens", "70000"),
                     ("--encoder-hidden-size", "0"), ("--encoder-hidden-size", "1000000000"), ("--encoder-hidden-size", "100000"),
                     ("--batch-size", "0"), ("--batch-size", "-3"), ("--batch-size", "100000000"), ("--grad-accum", "0"), ("--grad-accum", "1000000"),
                     ("--max-length", "1"), ("--max-length", "0"), ("--max-length", "100000000"), ("--steps", "-1"), ("--epochs", "0"),
                     ("--threads", "-1"), ("--eval-every", "-1"), ("--warmup-steps", "-5"), ("--log-every", "0") })
            yield return new($"train{opt}={v}", 1, (w, d) => Train(w, d, O(opt, v, "--method", opt == "--encoder-hidden-size" ? "prefix" : "prompt",
                "--prefix-projection", opt == "--encoder-hidden-size" ? "true" : "false")), opt);
        foreach (var (opt, v) in new[] { ("-n", "0"), ("-n", "-5"), ("-n", "2000000000"), ("-n", "1000000"), ("-n", "1024"), ("--threads", "-2") })
            yield return new($"generate{opt}={v}", 1, (w, d) => Generate(w, O(opt, v)), opt == "-n" ? "--max-new-tokens" : opt);
        foreach (var (opt, v) in new[] { ("--max-new-tokens", "0"), ("--max-new-tokens", "100000000"), ("--batch-size", "0"), ("--batch-size", "100000000"), ("--max-length", "1"),
                     ("--few-shot", "-1"), ("--threads", "-1"), ("--max-examples", "-1") })
            yield return new($"eval{opt}={v}", 1, (w, d) => Eval(w, d, O(opt, v)), opt);
        foreach (var (opt, v) in new[] { ("--prompt-length", "0"), ("--prompt-length", "100000"), ("--candidates", "0"), ("--candidates", "1000000"), ("--batch-size", "0"),
                     ("--steps", "-1"), ("--max-length", "1"), ("--threads", "-1"), ("--eval-candidates", "0"), ("--forward-batch", "10000000") })
            yield return new($"search{opt}={v}", 1, (w, d) => Search(w, d, O(opt, v)), opt);

        // ---- class 2: non-finite and nonsensical values ------------------------------------------------------------
        foreach (var (key, v) in new[] { ("rope_theta", "0"), ("rope_theta", "-1"), ("rope_theta", "1e999"), ("rms_norm_eps", "0"), ("rms_norm_eps", "-1e-5"),
                     ("rms_norm_eps", "1e999"), ("hidden_act", "5"), ("hidden_act", "true"), ("hidden_act", "[]"), ("hidden_act", "{}"), ("hidden_act", "\"gelu_foo\""),
                     ("bos_token_id", "-2"), ("bos_token_id", "4096"), ("bos_token_id", "99999"), ("bos_token_id", "2147483648"), ("bos_token_id", "\"0\""),
                     ("eos_token_id", "-1"), ("eos_token_id", "4096"), ("eos_token_id", "[0, 5000]"), ("eos_token_id", "[0, \"x\"]"), ("eos_token_id", "[0, -3]"),
                     ("pad_token_id", "-5"), ("pad_token_id", "4096"), ("tie_word_embeddings", "\"yes\""), ("attention_bias", "1"), ("torch_dtype", "32"),
                     ("rope_scaling", "5"), ("rope_scaling", "\"linear\""), ("rope_scaling", "{\"rope_type\":\"linear\",\"factor\":0}"),
                     ("rope_scaling", "{\"rope_type\":\"linear\",\"factor\":-2}"), ("rope_scaling", "{\"rope_type\":\"yarn\",\"factor\":2}"), ("rope_scaling", "{}"),
                     ("rope_scaling", "{\"rope_type\":\"llama3\",\"factor\":8,\"low_freq_factor\":0,\"high_freq_factor\":4,\"original_max_position_embeddings\":512}"),
                     ("rope_scaling", "{\"rope_type\":\"llama3\",\"factor\":8,\"low_freq_factor\":4,\"high_freq_factor\":1,\"original_max_position_embeddings\":512}"),
                     ("rope_scaling", "{\"rope_type\":\"llama3\",\"factor\":8,\"low_freq_factor\":2,\"high_freq_factor\":2,\"original_max_position_embeddings\":512}"),
                     ("rope_scaling", "{\"rope_type\":\"llama3\",\"factor\":8,\"low_freq_factor\":1,\"high_freq_factor\":4,\"original_max_position_embeddings\":0}"),
                     ("rope_scaling", "{\"rope_type\":\"llama3\",\"factor\":0,\"low_freq_factor\":1,\"high_freq_factor\":4,\"original_max_position_embeddings\":512}"),
                     ("partial_rotary_factor", "0.5") })
        {
            var expect = key is "rope_scaling" && (v.Contains("factor") || v.Contains("type") || v == "{}") ? "rope_scaling" : key;
            yield return new($"config-{key}={v}", 2, (w, d) => Score(w.Model(d, c => c[key] = J(v))), expect);
        }
        foreach (var v in new[] { "0", "-4" })
            yield return new($"config-mistral-sliding_window={v}", 2, (w, d) => Score(w.Model(d, c => { c["model_type"] = "mistral"; c["sliding_window"] = int.Parse(v); })), "sliding_window");
        var tensors = new[] { "model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.k_proj.weight", "model.layers.1.mlp.down_proj.weight",
            "model.layers.1.input_layernorm.weight", "model.norm.weight", "lm_head.weight", "model.layers.0.mlp.gate_proj.weight" };
        foreach (var t in tensors)
            foreach (var (name, value) in new[] { ("nan", double.NaN), ("inf", double.PositiveInfinity), ("-inf", double.NegativeInfinity) })
                yield return new($"weights-{name}-{t}", 2, (w, d) => ScoreIds(w.TinyModel(d, edit: ws => { using var _ = no_grad(); ws[t].view(-1)[3] = value; })), t);
        foreach (var (name, edit) in new (string, Action<Tensor>)[]
                 {
                     ("one-nan", e => e[1, 5] = double.NaN), ("one-inf", e => e[0, 0] = double.PositiveInfinity), ("neg-inf", e => e[3, 255] = double.NegativeInfinity),
                     ("all-nan", e => e.fill_(double.NaN)),
                 })
            yield return new($"adapter-{name}", 2, (w, d) => Score(w.Shipped, O("--prompt", w.WriteAdapter(Path.Combine(d, "a"), edit))), "adapter_model.safetensors");

        // ---- class 3: internal exceptions become one-line errors naming the file / key ----------------------------
        foreach (var (key, v) in new[] { ("peft_type", "5"), ("peft_type", "null"), ("peft_type", "[]"), ("peft_type", "{}"), ("peft_type", "\"LORA\""), ("peft_type", "true"),
                     ("task_type", "5"), ("task_type", "\"SEQ_CLS\""), ("num_virtual_tokens", "\"4\""), ("num_virtual_tokens", "1.5"), ("num_virtual_tokens", "-1"),
                     ("num_virtual_tokens", "0"), ("num_virtual_tokens", "1000000000000"), ("num_virtual_tokens", "5"), ("num_virtual_tokens", "null"),
                     ("num_transformer_submodules", "2"), ("num_transformer_submodules", "\"x\""), ("prompt_tuning_init", "5"), ("prompt_tuning_init_text", "[1]") })
            yield return new($"adapter-config-{key}={v}", 3, (w, d) => Score(w.Shipped, O("--prompt", w.WriteAdapter(Path.Combine(d, "a"), _ => { }, c => c[key] = J(v)))),
                key == "num_virtual_tokens" && v == "5" ? "virtual tokens" : "adapter_config.json");
        foreach (var (name, raw) in new[] { ("not-json", "{peft_type: PROMPT"), ("array", "[1,2]"), ("empty", ""), ("duplicate", "{\"peft_type\":\"PROMPT_TUNING\",\"peft_type\":\"PREFIX_TUNING\",\"num_virtual_tokens\":4}"),
                     ("string", "\"PROMPT_TUNING\""), ("deep", new string('[', 1000) + new string(']', 1000)) })
            yield return new($"adapter-config-{name}", 3, (w, d) => Score(w.Shipped, O("--prompt", w.WriteAdapter(Path.Combine(d, "a"), _ => { }, rawConfig: raw))), "adapter_config.json");
        foreach (var (name, tensorsOf) in new (string, Func<Dictionary<string, Tensor>>)[]
                 {
                     ("wrong-name", () => new() { ["embeddings"] = zeros(4, 256) }), ("3d", () => new() { ["prompt_embeddings"] = zeros(4, 256, 1) }),
                     ("width-255", () => new() { ["prompt_embeddings"] = zeros(4, 255) }), ("int32", () => new() { ["prompt_embeddings"] = zeros(4, 256, ScalarType.Int32) }),
                     ("rows-3", () => new() { ["prompt_embeddings"] = zeros(3, 256) }), ("empty", () => new()),
                 })
            yield return new($"adapter-weights-{name}", 3, (w, d) =>
            {
                var a = w.WriteAdapter(Path.Combine(d, "a"), _ => { });
                var ts = tensorsOf();
                SoftPrompt.IO.SafeTensors.Save(Path.Combine(a, "adapter_model.safetensors"), ts);
                foreach (var t in ts.Values) t.Dispose();
                return Score(w.Shipped, O("--prompt", a));
            }, "adapter_model.safetensors");
        foreach (var (name, len) in new[] { ("0", 0), ("4", 4), ("8", 8), ("100", 100), ("half", -2) })
            yield return new($"adapter-weights-truncated-{name}", 3, (w, d) =>
            {
                var a = w.WriteAdapter(Path.Combine(d, "a"), _ => { });
                var p = Path.Combine(a, "adapter_model.safetensors");
                var bytes = File.ReadAllBytes(p);
                File.WriteAllBytes(p, bytes[..(len >= 0 ? len : bytes.Length / 2)]);
                return Score(w.Shipped, O("--prompt", a));
            }, "adapter_model.safetensors");

        // Weight files (the tiny reference copy): truncated, header length, header JSON, entries.
        foreach (var (name, len) in new[] { ("0", 0), ("7", 7), ("8", 8), ("64", 64), ("half", -2), ("minus-1", -1) })
            yield return new($"weights-truncated-{name}", 3, (w, d) => ScoreIds(w.TinyModel(d, w.TinyWeights[..(len == -2 ? w.TinyWeights.Length / 2 : len == -1 ? w.TinyWeights.Length - 1 : len)])), "model.safetensors");
        foreach (var (name, n) in new[] { ("huge", ulong.MaxValue), ("2^63", 1UL << 63), ("past-end", 10_000_000UL), ("1", 1UL), ("zero", 0UL) })
            yield return new($"weights-header-length-{name}", 3, (w, d) =>
            {
                var b = (byte[])w.TinyWeights.Clone();
                System.Buffers.Binary.BinaryPrimitives.WriteUInt64LittleEndian(b, n);
                return ScoreIds(w.TinyModel(d, b));
            }, "model.safetensors");
        foreach (var (name, edit) in new (string, Func<JsonObject, string>)[]
                 {
                     ("not-json", h => "{\"a\": "), ("array", h => "[1, 2, 3]"), ("number", h => "42"),
                     ("duplicate-tensor", h => { var s = h.ToJsonString(); return s.Insert(1, "\"model.norm.weight\":" + h["model.norm.weight"]!.ToJsonString() + ","); }),
                     ("dtype-F8", h => { h["model.norm.weight"]!["dtype"] = "F8"; return h.ToJsonString(); }),
                     ("dtype-number", h => { h["model.norm.weight"]!["dtype"] = 4; return h.ToJsonString(); }),
                     ("dtype-I64", h => { h["model.norm.weight"]!["dtype"] = "I64"; return h.ToJsonString(); }),
                     ("shape-negative", h => { h["model.norm.weight"]!["shape"] = new JsonArray(-64); return h.ToJsonString(); }),
                     ("shape-string", h => { h["model.norm.weight"]!["shape"] = "64"; return h.ToJsonString(); }),
                     ("shape-overflow", h => { h["model.norm.weight"]!["shape"] = new JsonArray(1L << 40, 1L << 40); return h.ToJsonString(); }),
                     ("shape-wrong", h => { h["model.norm.weight"]!["shape"] = new JsonArray(32, 2); return h.ToJsonString(); }),
                     ("offsets-missing", h => { h["model.norm.weight"]!.AsObject().Remove("data_offsets"); return h.ToJsonString(); }),
                     ("offsets-out-of-range", h => { h["model.norm.weight"]!["data_offsets"] = new JsonArray(0, 1L << 40); return h.ToJsonString(); }),
                     ("offsets-reversed", h => { var o = h["model.norm.weight"]!["data_offsets"]!.AsArray(); h["model.norm.weight"]!["data_offsets"] = new JsonArray(o[1]!.GetValue<long>(), o[0]!.GetValue<long>()); return h.ToJsonString(); }),
                     ("entry-not-object", h => { h["model.norm.weight"] = 5; return h.ToJsonString(); }),
                     ("metadata-not-strings", h => { h["__metadata__"] = new JsonObject { ["format"] = 5 }; return h.ToJsonString(); }),
                     ("tensor-missing", h => { h.Remove("model.norm.weight"); return h.ToJsonString(); }),
                     ("extra-tensor", h => { h["model.extra.weight"] = new JsonObject { ["dtype"] = "F32", ["shape"] = new JsonArray(0), ["data_offsets"] = new JsonArray(0, 0) }; return h.ToJsonString(); }),
                 })
            yield return new($"weights-header-{name}", 3, (w, d) => ScoreIds(w.TinyModel(d, w.TinyWithHeader(edit))), "model.safetensors");
        foreach (var (name, raw) in new[] { ("not-json", "{\"model_type\": \"llama\","), ("empty", ""), ("array", "[]"), ("null", "null"),
                     ("duplicate", "{\"model_type\":\"llama\",\"model_type\":\"gpt2\"}"), ("bom-garbage", "\uFEFF\u0000{}"), ("comment", "{/* */ \"model_type\": \"llama\"}") })
            yield return new($"config-raw-{name}", 3, (w, d) => Score(w.Model(d, rawConfig: raw)), "config.json");
        foreach (var v in new[] { "5", "\"bert\"", "null", "[\"llama\"]" })
            yield return new($"config-model_type={v}", 3, (w, d) => Score(w.Model(d, c => c["model_type"] = J(v))), "model_type");
        foreach (var (name, edit) in new (string, Action<JsonObject>)[]
                 {
                     ("no-model", t => t.Remove("model")), ("model-type-wordpiece", t => t["model"]!["type"] = "WordPiece"), ("model-type-unigram", t => t["model"]!["type"] = "Unigram"),
                     ("model-number", t => t["model"] = 5), ("vocab-array", t => t["model"]!["vocab"] = new JsonArray(1, 2)), ("vocab-string-ids", t => t["model"]!["vocab"] = new JsonObject { ["a"] = "x" }),
                     ("merges-number", t => t["model"]!["merges"] = 7), ("added-tokens-object", t => t["added_tokens"] = new JsonObject()),
                     ("added-token-id-string", t => t["added_tokens"] = new JsonArray(new JsonObject { ["id"] = "x", ["content"] = "<s>" })), ("dropout", t => t["model"]!["dropout"] = 0.5),
                 })
            yield return new($"tokenizer-{name}", 3, (w, d) =>
            {
                var m = w.Model(d, replace: "tokenizer.json");
                var t = JsonNode.Parse(File.ReadAllText(Path.Combine(w.Shipped, "tokenizer.json")))!.AsObject();
                edit(t);
                File.WriteAllText(Path.Combine(m, "tokenizer.json"), t.ToJsonString());
                return Score(m);
            }, "tokenizer.json");
        foreach (var (name, raw) in new[] { ("not-json", "{\"version\":"), ("empty", ""), ("array", "[]") })
            yield return new($"tokenizer-raw-{name}", 3, (w, d) =>
            {
                var m = w.Model(d, replace: "tokenizer.json");
                File.WriteAllText(Path.Combine(m, "tokenizer.json"), raw);
                return Score(m);
            }, "tokenizer.json");
        // Train config files: wrong types, duplicate and unknown keys, not JSON (each names file:line and the key).
        foreach (var (name, body, expect) in new[]
                 {
                     ("output-number", "\"output\": 12345", "'output'"), ("model-number", "\"model\": 5", "'model'"), ("template-array", "\"prompt_template\": [\"a\"]", "'prompt_template'"),
                     ("label-words-numbers", "\"label_words\": [1, 2]", "'label_words'"), ("steps-string", "\"steps\": \"many\"", "'steps'"), ("steps-fraction", "\"steps\": 1.5", "'steps'"),
                     ("steps-huge", "\"steps\": 1e12", "'steps'"), ("lr-string", "\"lr\": \"fast\"", "'lr'"), ("lr-huge", "\"lr\": 1e999", "'lr'"), ("seed-null", "\"seed\": null", "'seed'"),
                     ("bool-string", "\"add_eos\": \"yes\"", "'add_eos'"), ("unknown", "\"virtual_tokenz\": 3", "virtual_tokenz"),
                     ("duplicate", "\"steps\": 1, \"steps\": 2", "\"steps\" appears twice"), ("method-object", "\"method\": {}", "'method'"),
                 })
            yield return new($"train-config-{name}", 6, (w, d) =>
            {
                var cfg = Path.Combine(d, "cfg.json");
                File.WriteAllText(cfg, $"{{\n  \"train\": \"{w.TrainData}\",\n  {body}\n}}\n");
                return new[] { "train", "--config", cfg, "--model", w.Shipped, "--output", Out(d) };
            }, expect);
        foreach (var (name, raw) in new[] { ("not-json", "{\"steps\": "), ("array", "[]"), ("trailing-garbage", "{} x"), ("empty", "") })
            yield return new($"train-config-raw-{name}", 3, (w, d) =>
            {
                var cfg = Path.Combine(d, "cfg.json");
                File.WriteAllText(cfg, raw);
                return new[] { "train", "--config", cfg, "--model", w.Shipped, "--train", w.TrainData, "--output", Out(d) };
            }, "cfg.json");
        // Data files.
        foreach (var (name, ext, lines) in new[]
                 {
                     ("input-array", ".jsonl", "{\"input\": [1], \"output\": \"positive\"}"), ("output-null", ".jsonl", "{\"input\": \"good\", \"output\": null}"),
                     ("output-object", ".jsonl", "{\"input\": \"good\", \"output\": {}}"), ("top-level-array", ".jsonl", "[\"good\", \"positive\"]"),
                     ("not-json", ".jsonl", "{input: good}"), ("missing-output", ".jsonl", "{\"input\": \"good\"}"), ("tsv-one-column", ".tsv", "good"),
                     ("csv-open-quote", ".csv", "\"good,positive"), ("json-extension", ".json", "{\"input\": \"good\", \"output\": \"positive\"}"), ("empty", ".jsonl", ""),
                     ("unknown-extension", ".txt", "good\tpositive"), ("empty-target", ".jsonl", "{\"input\": \"good\", \"output\": \"\"}"),
                 })
            yield return new($"data-{name}", 3, (w, d) =>
            {
                var f = Path.Combine(d, "bad" + ext);
                File.WriteAllText(f, lines + "\n");
                return Train(w, d, O("--train", f));
            }, "bad" + ext);
        yield return new("data-invalid-utf8", 3, (w, d) =>
        {
            var f = Path.Combine(d, "bad.jsonl");
            File.WriteAllBytes(f, Encoding.UTF8.GetBytes("{\"input\": \"go").Concat(new byte[] { 0xC3, 0x28 }).Concat(Encoding.UTF8.GetBytes("od\", \"output\": \"positive\"}\n")).ToArray());
            return Train(w, d, O("--train", f));
        }, "bad.jsonl");
        // Two columns of one name: which one the templates would read is undefined, so the header is refused.
        yield return new("data-csv-duplicate-header", 3, (w, d) =>
        {
            var f = Path.Combine(d, "dup.csv");
            File.WriteAllText(f, "input,output,output\ngood,positive,negative\nbad,negative,positive\n");
            return Train(w, d, O("--train", f));
        }, "dup.csv:1: header names column \"output\" more than once");
        // A binary file given as instructions (here: bytes with NULs, and invalid UTF-8) is not made into prompts.
        foreach (var (name, bytes) in new[] { ("nul", new byte[] { 0x7F, 0x45, 0x4C, 0x46, 2, 1, 1, 0, 0, 0, 0x0A, 0x41 }), ("invalid-utf8", new byte[] { 0x41, 0xC3, 0x28, 0x0A, 0xFF, 0xFE, 0xFD }) })
            yield return new($"eval-instructions-file-binary-{name}", 3, (w, d) =>
            {
                var f = Path.Combine(d, "instructions.bin");
                File.WriteAllBytes(f, bytes);
                return Eval(w, d, O("--instructions-file", f));
            }, "--instructions-file " );
        // An added token with empty content would match everywhere: refused, naming the key and the token id.
        yield return new("tokenizer-added-token-empty-content", 3, (w, d) =>
        {
            var m = w.Model(d, replace: "tokenizer.json");
            var t = JsonNode.Parse(File.ReadAllText(Path.Combine(w.Shipped, "tokenizer.json")))!.AsObject();
            if (t["added_tokens"] is not JsonArray added) t["added_tokens"] = added = new JsonArray();
            added.Add(new JsonObject { ["id"] = 4000, ["content"] = "", ["special"] = true });
            File.WriteAllText(Path.Combine(m, "tokenizer.json"), t.ToJsonString());
            return Score(m);
        }, "(added token id 4000) is the empty string");
        // Virtual tokens beyond the model's positions (1,024 for the shipped model): refused from config.json, before the
        // weights or the prompt are allocated (it used to train, growing past 3 GB at sequence length).
        yield return new("train-virtual-tokens-beyond-positions", 1, (w, d) => Train(w, d, O("--virtual-tokens", "5000")), "--virtual-tokens 5000 leaves no room for text in the model's 1024 positions");
        yield return new("train-virtual-tokens-beyond-positions-prefix", 1, (w, d) => Train(w, d, O("--virtual-tokens", "1023", "--method", "prefix")), "--virtual-tokens 1023");
        // Corrupt checkpoints (--resume): the folder stays for another try, so no "no output" check.
        foreach (var (name, file, content) in new[]
                 {
                     ("state-garbage", "checkpoint/trainer_state.json", "{\"Step\": "), ("state-negative", "checkpoint/trainer_state.json", "{\"Step\": -5}"),
                     ("state-string", "checkpoint/trainer_state.json", "{\"Step\": \"x\"}"), ("state-duplicate", "checkpoint/trainer_state.json", "{\"Step\": 1, \"Step\": 2}"),
                     ("state-empty", "checkpoint/trainer_state.json", ""), ("state-array", "checkpoint/trainer_state.json", "[]"),
                     ("state-overflow", "checkpoint/trainer_state.json", "{\"Step\": 1e20}"), ("weights-garbage", "checkpoint/state.safetensors", "not a safetensors file"),
                     ("run-config-garbage", "config.json", "{\"steps\": "),
                 })
            yield return new($"resume-{name}", 3, (w, d) =>
            {
                var run = w.CopyRun(d);
                File.WriteAllText(Path.Combine(run, file), content);
                return new[] { "train", "--resume", run, "--threads", "1" };
            }, Path.GetFileName(file), NoOutput: false);
        yield return new("resume-state-missing", 3, (w, d) => { var run = w.CopyRun(d); File.Delete(Path.Combine(run, "checkpoint", "trainer_state.json")); return new[] { "train", "--resume", run }; }, "trainer_state.json", NoOutput: false);
        yield return new("resume-weights-missing", 3, (w, d) => { var run = w.CopyRun(d); File.Delete(Path.Combine(run, "checkpoint", "state.safetensors")); return new[] { "train", "--resume", run }; }, "state.safetensors", NoOutput: false);
        yield return new("resume-weights-nan", 3, (w, d) =>
        {
            var run = w.CopyRun(d);
            var p = Path.Combine(run, "checkpoint", "state.safetensors");
            var ts = SoftPrompt.IO.SafeTensors.Load(p);
            using (no_grad()) ts[ts.Keys.First(k => k.StartsWith("param."))].view(-1)[0] = double.NaN;
            SoftPrompt.IO.SafeTensors.Save(p, ts);
            foreach (var t in ts.Values) t.Dispose();
            return new[] { "train", "--resume", run };
        }, "state.safetensors", NoOutput: false);
        yield return new("resume-no-checkpoint", 3, (w, d) => { var run = w.CopyRun(d); Directory.Delete(Path.Combine(run, "checkpoint"), true); return new[] { "train", "--resume", run }; }, "no checkpoint", NoOutput: false);
        yield return new("resume-wrong-method", 3, (w, d) => { var run = w.CopyRun(d); return new[] { "train", "--resume", run, "--method", "prefix" }; }, "checkpoint", NoOutput: false);
        // A training curve (eval --run) that is not one: rows of other types, garbage, nothing.
        foreach (var (name, content) in new[] { ("step-string", "{\"kind\": \"train\", \"step\": \"x\", \"loss\": 1}"), ("kind-number", "{\"kind\": 5, \"step\": 1}"),
                     ("garbage", "not json at all"), ("empty", "") })
            yield return new($"eval-run-metrics-{name}", 3, (w, d) =>
            {
                var run = Path.Combine(d, "run");
                Directory.CreateDirectory(run);
                File.WriteAllText(Path.Combine(run, "metrics.jsonl"), content + "\n");
                return Eval(w, d, O("--run", run, "--max-examples", "2"));
            }, "--run");
        // Dangling symbolic links where a file is expected.
        foreach (var file in new[] { "config.json", "model.safetensors", "tokenizer.json" })
            yield return new($"dangling-{file}", 3, (w, d) =>
            {
                var m = w.Model(d, replace: file);
                var p = Path.Combine(m, file);
                if (File.Exists(p)) File.Delete(p);
                File.CreateSymbolicLink(p, Path.Combine(d, "gone-" + file));
                return Score(m);
            }, "dangling");
        yield return new("dangling-train-data", 3, (w, d) => { var l = Path.Combine(d, "t.jsonl"); File.CreateSymbolicLink(l, Path.Combine(d, "gone.jsonl")); return Train(w, d, O("--train", l)); }, "t.jsonl");
        yield return new("dangling-config", 3, (w, d) => { var l = Path.Combine(d, "c.json"); File.CreateSymbolicLink(l, Path.Combine(d, "gone.json")); return new[] { "train", "--config", l }; }, "c.json");
        foreach (var file in new[] { "adapter_config.json", "adapter_model.safetensors" })
            yield return new($"dangling-{file}", 3, (w, d) =>
            {
                var a = w.WriteAdapter(Path.Combine(d, "a"), _ => { });
                File.Delete(Path.Combine(a, file));
                File.CreateSymbolicLink(Path.Combine(a, file), Path.Combine(d, "gone"));
                return Score(w.Shipped, O("--prompt", a));
            }, file);
        yield return new("link-loop-config", 3, (w, d) =>
        {
            var m = w.Model(d);
            File.Delete(Path.Combine(m, "config.json"));
            File.CreateSymbolicLink(Path.Combine(m, "config.json"), Path.Combine(m, "loop.json"));
            File.CreateSymbolicLink(Path.Combine(m, "loop.json"), Path.Combine(m, "config.json"));
            return Score(m);
        }, "config.json");

        // ---- class 4: one writer per run / report folder -----------------------------------------------------------
        foreach (var (cmd, build) in new (string, Func<FuzzWorld, string, string[]>)[] { ("train", (w, d) => Train(w, d)), ("search", (w, d) => Search(w, d)), ("eval", (w, d) => Eval(w, d)) })
            yield return new($"locked-{cmd}", 4, (w, d) =>
            {
                FuzzLocks.Hold(cmd == "eval" ? SoftPrompt.IO.RunLock.AcquireSibling(Out(d)) : SoftPrompt.IO.RunLock.Acquire(Out(d)));
                return build(w, d);
            }, "is in use by another run", NoOutput: false);
        yield return new("locked-train-resume", 4, (w, d) => { var run = w.CopyRun(d); FuzzLocks.Hold(SoftPrompt.IO.RunLock.Acquire(run)); return new[] { "train", "--resume", run }; }, "is in use by another run", NoOutput: false);

        // ---- class 5: output paths checked before the model load ---------------------------------------------------
        foreach (var (cmd, build) in new (string, Func<FuzzWorld, string, Dictionary<string, string?>, string[]>)[]
                 { ("train", (w, d, o) => Train(w, d, o)), ("search", (w, d, o) => Search(w, d, o)), ("eval", (w, d, o) => Eval(w, d, o)) })
        {
            yield return new($"output-is-file-{cmd}", 5, (w, d) => { var f = Path.Combine(d, "file"); File.WriteAllText(f, "x"); return build(w, d, O("--output", f)); }, "--output");
            yield return new($"output-under-file-{cmd}", 5, (w, d) => { var f = Path.Combine(d, "file"); File.WriteAllText(f, "x"); return build(w, d, O("--output", Path.Combine(f, "sub"))); }, "--output");
            yield return new($"output-in-proc-{cmd}", 5, (w, d) => build(w, d, O("--output", "/proc/softprompt-fuzz/out")), "--output");
            yield return new($"output-dangling-link-{cmd}", 5, (w, d) => { var l = Path.Combine(d, "link"); Directory.CreateSymbolicLink(l, "/proc/softprompt-fuzz-gone"); return build(w, d, O("--output", l)); }, "--output");
        }

        // A failed run into an existing folder removes only what it added: what was there stays.
        static void Intact(string d)
        {
            foreach (var f in new[] { "config.json", "notes.txt", "hard_prompt.json" })
                if (File.Exists(Path.Combine(d, "keep-" + f))) Assert.Equal("mine", File.ReadAllText(Path.Combine(Out(d), f)));
        }
        static string[] Prepare(string d, string[] args, params string[] files)
        {
            Directory.CreateDirectory(Out(d));
            foreach (var f in files) { File.WriteAllText(Path.Combine(Out(d), f), "mine"); File.WriteAllText(Path.Combine(d, "keep-" + f), ""); }
            return args;
        }
        yield return new("output-existing-search-result", 5, (w, d) => Prepare(d, Search(w, d), "hard_prompt.json", "config.json", "notes.txt"), "already holds a search result", NoOutput: false, After: Intact);
        yield return new("output-existing-folder-bad-data-train", 5, (w, d) => Prepare(d, Train(w, d, O("--train", Path.Combine(d, "missing.jsonl"))), "config.json", "notes.txt"), "missing.jsonl", NoOutput: false, After: Intact);
        yield return new("output-existing-folder-bad-data-search", 5, (w, d) => Prepare(d, Search(w, d, O("--train", Path.Combine(d, "missing.jsonl"))), "config.json", "notes.txt"), "missing.jsonl", NoOutput: false, After: Intact);

        // ---- class 6: the smaller ones -----------------------------------------------------------------------------
        foreach (var (opt, v) in new[] { ("--temperature", "NaN"), ("--temperature", "Infinity"), ("--temperature", "-1"), ("--top-p", "NaN"), ("--top-p", "0"), ("--top-p", "1.5"),
                     ("--top-p", "-Infinity"), ("--top-k", "-3"), ("--top-k", "-1") })
            yield return new($"generate{opt}={v}", 6, (w, d) => Generate(w, O(opt, v, "--temperature", opt == "--temperature" ? v : "0.8")), opt);
        foreach (var (opt, v) in new[] { ("--lr", "NaN"), ("--lr", "Infinity"), ("--lr", "0"), ("--lr", "-1"), ("--validation-split", "NaN"), ("--validation-split", "1"),
                     ("--weight-decay", "NaN"), ("--weight-decay", "-1"), ("--max-grad-norm", "NaN"), ("--max-grad-norm", "-Infinity") })
            yield return new($"train{opt}={v}", 6, (w, d) => Train(w, d, O(opt, v)), opt);
        yield return new("eval--temperature=NaN", 6, (w, d) => Eval(w, d, O("--temperature", "NaN")), "--temperature");
        yield return new("search--validation-split=NaN", 6, (w, d) => Search(w, d, O("--validation-split", "NaN")), "--validation-split");
        foreach (var (cmd, build) in new (string, Func<FuzzWorld, string, Dictionary<string, string?>, string[]>)[]
                 { ("train", (w, d, o) => Train(w, d, o)), ("search", (w, d, o) => Search(w, d, o)), ("eval", (w, d, o) => Eval(w, d, o)) })
        {
            yield return new($"labels-unseen-{cmd}", 6, (w, d) => build(w, d, O("--labels", "positive,neutral")), "neutral");
            yield return new($"labels-duplicate-{cmd}", 6, (w, d) => build(w, d, O("--labels", "positive,positive,negative")), "--labels");
        }
    }
}

/// <summary>Locks held by class-4 cases until the test run ends (a second writer must find them taken).</summary>
public static class FuzzLocks
{
    static readonly List<IDisposable> Held = new();
    public static void Hold(IDisposable d) { lock (Held) Held.Add(d); }
    public static void ReleaseAll() { lock (Held) { foreach (var d in Held) d.Dispose(); Held.Clear(); } }
}
