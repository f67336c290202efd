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
  // Chat markers of the Gemma and Phi-3 templates (added special tokens in their tokenizers):
  "<start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\n",
  "<|user|>\nhi<|end|>\n<|assistant|>\n",
  "four    spaces and  two",
];

// Added tokens of the layout variants below (tests/SoftPrompt.Tests/Tokenization/TokenizerFixtures.cs makes the same).
const added = (id, content, special, normalized = false) =>
  ({ id, content, single_word: false, lstrip: false, rstrip: false, normalized, special });
const PHI3_ADDED = [
  added(32000, "<|endoftext|>", true), added(32001, "<|assistant|>", true), added(32006, "<|system|>", true),
  added(32007, "<|end|>", true), added(32010, "<|user|>", true),
];
const NEOX_ADDED = [added(128256, "    ", false, true), added(128257, "  ", false, true)];

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
  // Phi-3's layout: a Llama-2-style SentencePiece tokenizer.json plus its chat tokens as added special tokens (ids
  // 32000..32010 as in Phi-3-mini), here on the Mistral vocabulary (which has 32000 entries too).
  phi3_layout: {
    base: "mistral",
    edit: (j) => ({ ...j, added_tokens: [...j.added_tokens, ...PHI3_ADDED] }),
    config: { bos_token: "<s>", eos_token: "<|endoftext|>", clean_up_tokenization_spaces: false },
  },
  // GPT-NeoX / Pythia's layout: NFC normalizer, a ByteLevel pre-tokenizer with the GPT-2 regex (no Split), ByteLevel
  // post-processor and decoder, and runs of spaces as normalized, non-special added tokens; here on the Llama 3 vocabulary.
  neox_layout: {
    base: "llama3",
    edit: (j) => ({
      ...j,
      normalizer: { type: "NFC" },
      pre_tokenizer: { type: "ByteLevel", add_prefix_space: false, trim_offsets: true, use_regex: true },
      post_processor: { type: "ByteLevel", add_prefix_space: false, trim_offsets: true, use_regex: true },
      decoder: { type: "ByteLevel", add_prefix_space: false, trim_offsets: true, use_regex: true },
      added_tokens: [...j.added_tokens, ...NEOX_ADDED],
    }),
    config: { eos_token: "<|end_of_text|>" },
  },
};
// Tokenizers whose decode output is recorded too (clean_up_tokenization_spaces is false for them).
const DECODE = new Set(["mistral", "mistral_metaspace", "gemma", "phi3_layout"]);

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
  variants: "mistral_metaspace = the mistral fixture with normalizer null and pre_tokenizer Metaspace(prepend_scheme first, split false); phi3_layout = mistral + Phi-3's chat tokens; neox_layout = llama3 in GPT-NeoX's tokenizer.json layout; see VARIANTS",
  tokenizers: {},
};
const names = ["llama3", "qwen3", "mistral", "gemma", ...Object.keys(VARIANTS)];
for (const name of names) {
  const variant = VARIANTS[name];
  const dir = path.join(fixtures, variant ? variant.base : name);
  let tokenizerJSON = readJson(dir, "tokenizer.json");
  if (variant) tokenizerJSON = variant.edit(tokenizerJSON);
  const tokenizer = TokenizerLoader.fromPreTrained({
    tokenizerJSON,
    tokenizerConfig: variant?.config ?? readJson(dir, "tokenizer_config.json") ?? {},
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
