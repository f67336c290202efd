// Produces tests/SoftPrompt.Tests/fixtures/tokenizers/reference_ids.json: token ids computed by an independent
// implementation (transformers.js, via @lenml/tokenizers) for a set of awkward strings, for every fixture tokenizer.
// Usage (from this folder):  npm install && node make_reference.mjs
import fs from "node:fs";
import path from "node:path";
import zlib from "node:zlib";
import { fileURLToPath } from "node:url";
import { TokenizerLoader } from "@lenml/tokenizers";

const here = path.dirname(fileURLToPath(import.meta.url));
const fixtures = path.resolve(here, "../../tests/SoftPrompt.Tests/fixtures/tokenizers");

// Keep in sync with nothing: the C# test reads the texts from the output file.
export const TEXTS = [
  "Hello world",
  " Hello world",
  "Hello world ",
  "",
  "   ",
  "  leading and   inner    spaces  ",
  "line one\nline two\n\n\nline three\n",
  "a\r\nb",
  "\tindented\twith\ttabs\t",
  "café naïve résumé Ångström",
  "cafe\u0301 (combining acute)",
  "日本語のテキストです。中文测试",
  "emoji 😀🎉 👍🏽 family 👨‍👩‍👧",
  "12345 and 1234567 and 3.14159",
  "don't you're I'LL we've",
  "<|endoftext|> after endoftext",
  "<s>hello</s> world",
  "Hello<|begin_of_text|>world<|end_of_text|>",
  "<|im_start|>user\nhi<|im_end|>",
  "def f(x):\n    return x**2  # comment",
  "𠀀 supplementary-plane CJK",
  // BPE ties between overlapping equal-rank pairs (HF merges the leftmost first):
  "zzzz ...... ???? ____ aaaaaaa",
  "\u2581 literal \u2581\u2581 marks",
  "<0x41> <unk> byte-token text",
  "\nstarts with a newline",
];

// Variants of a fixture: the same vocabulary with another tokenizer.json layout.
const VARIANTS = {
  // The layout newer transformers versions write for Llama/Mistral (legacy = false): no normalizer, a Metaspace
  // pre-tokenizer that prepends only at the start of the text. add_prefix_space is set for transformers.js, which
  // ignores prepend_scheme without it.
  mistral_metaspace: {
    base: "mistral",
    edit: (j) => ({
      ...j,
      normalizer: null,
      pre_tokenizer: { type: "Metaspace", replacement: "\u2581", prepend_scheme: "first", split: false, add_prefix_space: true },
    }),
  },
};
// Tokenizers whose decode output is recorded too (clean_up_tokenization_spaces is false for them).
const DECODE = new Set(["mistral", "mistral_metaspace"]);

const packageVersion = JSON.parse(fs.readFileSync(path.join(here, "node_modules/@lenml/tokenizers/package.json"), "utf8")).version;

function readJson(dir, name) {
  const p = path.join(dir, name);
  if (fs.existsSync(p)) return JSON.parse(fs.readFileSync(p, "utf8"));
  if (fs.existsSync(p + ".gz")) return JSON.parse(zlib.gunzipSync(fs.readFileSync(p + ".gz")).toString("utf8"));
  return null;
}

const out = {
  generator: "scripts/tokenizer-reference/make_reference.mjs",
  implementation: `@lenml/tokenizers ${packageVersion} (transformers.js tokenizers)`,
  note: "ids_special = encode(text, add_special_tokens=true); ids_plain = add_special_tokens=false; decoded_special / decoded_skip = decode(ids_special, skip_special_tokens=false / true)",
  variants: "mistral_metaspace = the mistral fixture with normalizer null and pre_tokenizer Metaspace(prepend_scheme first, split false), see VARIANTS",
  tokenizers: {},
};
const names = ["llama3", "qwen3", "mistral", ...Object.keys(VARIANTS)];
for (const name of names) {
  const variant = VARIANTS[name];
  const dir = path.join(fixtures, variant ? variant.base : name);
  let tokenizerJSON = readJson(dir, "tokenizer.json");
  if (variant) tokenizerJSON = variant.edit(tokenizerJSON);
  const tokenizer = TokenizerLoader.fromPreTrained({
    tokenizerJSON,
    tokenizerConfig: readJson(dir, "tokenizer_config.json") ?? {},
  });
  out.tokenizers[name] = TEXTS.map((text) => {
    const ids_special = Array.from(tokenizer.encode(text, { add_special_tokens: true }));
    const entry = { text, ids_special, ids_plain: Array.from(tokenizer.encode(text, { add_special_tokens: false })) };
    if (DECODE.has(name)) {
      entry.decoded_special = tokenizer.decode(ids_special, { skip_special_tokens: false });
      entry.decoded_skip = tokenizer.decode(ids_special, { skip_special_tokens: true });
    }
    return entry;
  });
}
fs.writeFileSync(path.join(fixtures, "reference_ids.json"), JSON.stringify(out, null, 1) + "\n");
console.log("wrote", path.join(fixtures, "reference_ids.json"));
