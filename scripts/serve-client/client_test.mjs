// Drives a running `softprompt serve` with the official `openai` npm package: lists the models, and for the base
// model and every adapter runs a completion, the same completion streamed (the texts must agree), and checks the
// errors a client sees for an unknown model and for chat on a model without a chat template.
// Usage: node client_test.mjs BASE_URL   (e.g. http://127.0.0.1:8000/v1); exits non-zero on the first failure.
import OpenAI from "openai";

const baseURL = process.argv[2];
if (!baseURL) { console.error("usage: node client_test.mjs BASE_URL"); process.exit(2); }
const client = new OpenAI({ baseURL, apiKey: process.env.SOFTPROMPT_API_KEY ?? "unused", maxRetries: 0, timeout: 120_000 });

function check(cond, what) {
  if (!cond) { console.error(`FAIL: ${what}`); process.exit(1); }
  console.log(`ok: ${what}`);
}

const models = [];
for await (const m of client.models.list()) models.push(m);
const ids = models.map((m) => m.id);
check(ids.includes("base"), `models.list has base (${ids.join(", ")})`);
const adapters = models.filter((m) => m.id !== "base");
check(adapters.length >= 2, "models.list has the adapters");
check(adapters.some((m) => m.method === "prompt_tuning") && adapters.some((m) => m.method === "prefix_tuning"), "adapters of both methods");

for (const model of ids) {
  const req = { model, prompt: "Word: joy\nSentiment:", max_tokens: 8, temperature: 0, logprobs: 1 };
  const plain = await client.completions.create(req);
  const text = plain.choices[0].text;
  check(typeof text === "string" && plain.usage.completion_tokens >= 1, `${model}: completion "${text.replace(/\n/g, "\\n")}"`);
  check(plain.choices[0].logprobs.token_logprobs.every((x) => typeof x === "number" && x <= 0), `${model}: token logprobs`);
  let streamed = "";
  let finish = null;
  const stream = await client.completions.create({ ...req, logprobs: undefined, stream: true });
  for await (const chunk of stream) {
    streamed += chunk.choices[0]?.text ?? "";
    finish = chunk.choices[0]?.finish_reason ?? finish;
  }
  check(streamed === text, `${model}: streamed text equals the plain completion`);
  check(finish === plain.choices[0].finish_reason, `${model}: streamed finish_reason ${finish}`);
}

try {
  await client.completions.create({ model: "no-such-adapter", prompt: "x", max_tokens: 1 });
  check(false, "unknown model is an error");
} catch (e) {
  check(e instanceof OpenAI.NotFoundError && e.code === "model_not_found", `unknown model: ${e.status} ${e.code}`);
}
try {
  await client.chat.completions.create({ model: "base", messages: [{ role: "user", content: "hi" }] });
  console.log("ok: chat completion (the model has a chat template)");
} catch (e) {
  check(e instanceof OpenAI.BadRequestError && e.code === "chat_template_unsupported", `chat without a template: ${e.status} ${e.code}`);
}
console.log("openai client test: all checks passed");
