using System.Text.Json.Nodes;
using SoftPrompt.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace SoftPrompt.Pretraining;

/// <summary>The shape of a Llama-architecture model to pretrain (tied embeddings, RMSNorm, RoPE, SwiGLU, no biases).</summary>
public sealed record LlamaShape
{
    public int VocabSize { get; init; } = 8192;
    public int Hidden { get; init; } = 256;
    public int Layers { get; init; } = 6;
    public int Heads { get; init; } = 4;
    public int KvHeads { get; init; } = 4;
    public int Intermediate { get; init; } = 768;
    public int MaxPositions { get; init; } = 1024;
    public double RopeTheta { get; init; } = 10000;
    public double RmsNormEps { get; init; } = 1e-5;
    public int BosId { get; init; } = 0;
    public int EosId { get; init; } = 0;

    public int HeadDim => Hidden / Heads;

    /// <summary>Parameters (tied: the embedding matrix counted once).</summary>
    public long Parameters => (long)VocabSize * Hidden + Hidden + Layers * NonEmbeddingPerLayer;
    public long NonEmbeddingPerLayer => 2L * Hidden * Hidden + 2L * Hidden * KvHeads * HeadDim + 3L * Hidden * Intermediate + 2L * Hidden;

    /// <summary>Training FLOPs per token, 6N for the matmuls (head included) plus attention scores (6 * layers * T * hidden, causal half counted full as SDPA computes it).</summary>
    public double TrainFlopsPerToken(int seqLen) => 6.0 * ((long)VocabSize * Hidden + Layers * (NonEmbeddingPerLayer - 2L * Hidden)) + 12.0 * Layers * seqLen * Hidden;

    /// <summary>A Hugging Face <c>config.json</c> that transformers' LlamaForCausalLM loads as is.</summary>
    public JsonObject ToHfConfig() => new()
    {
        ["architectures"] = new JsonArray("LlamaForCausalLM"),
        ["model_type"] = "llama",
        ["vocab_size"] = VocabSize,
        ["hidden_size"] = Hidden,
        ["intermediate_size"] = Intermediate,
        ["num_hidden_layers"] = Layers,
        ["num_attention_heads"] = Heads,
        ["num_key_value_heads"] = KvHeads,
        ["head_dim"] = HeadDim,
        ["hidden_act"] = "silu",
        ["max_position_embeddings"] = MaxPositions,
        ["initializer_range"] = 0.02,
        ["rms_norm_eps"] = RmsNormEps,
        ["rope_theta"] = RopeTheta,
        ["rope_scaling"] = null,
        ["attention_bias"] = false,
        ["attention_dropout"] = 0.0,
        ["mlp_bias"] = false,
        ["pretraining_tp"] = 1,
        ["tie_word_embeddings"] = true,
        ["use_cache"] = true,
        ["bos_token_id"] = BosId,
        ["eos_token_id"] = EosId,
        ["torch_dtype"] = "float32",
        ["transformers_version"] = "4.46.0",
    };

    public ModelConfig ToModelConfig() => ModelConfig.Parse((JsonObject)JsonNode.Parse(ToHfConfig().ToJsonString())!); // parsed values, as from a file

    /// <summary>Weight names and shapes as Hugging Face's LlamaForCausalLM names them (lm_head tied, not listed).</summary>
    public IEnumerable<(string Name, long[] Shape)> WeightShapes()
    {
        yield return ("model.embed_tokens.weight", new long[] { VocabSize, Hidden });
        for (int i = 0; i < Layers; i++)
        {
            string p = $"model.layers.{i}.";
            yield return (p + "input_layernorm.weight", new long[] { Hidden });
            yield return (p + "self_attn.q_proj.weight", new long[] { Heads * HeadDim, Hidden });
            yield return (p + "self_attn.k_proj.weight", new long[] { KvHeads * HeadDim, Hidden });
            yield return (p + "self_attn.v_proj.weight", new long[] { KvHeads * HeadDim, Hidden });
            yield return (p + "self_attn.o_proj.weight", new long[] { Hidden, Heads * HeadDim });
            yield return (p + "post_attention_layernorm.weight", new long[] { Hidden });
            yield return (p + "mlp.gate_proj.weight", new long[] { Intermediate, Hidden });
            yield return (p + "mlp.up_proj.weight", new long[] { Intermediate, Hidden });
            yield return (p + "mlp.down_proj.weight", new long[] { Hidden, Intermediate });
        }
        yield return ("model.norm.weight", new long[] { Hidden });
    }

    /// <summary>Random initialisation as Hugging Face's LlamaPreTrainedModel._init_weights does it: matrices (linear and
    /// embedding) ~ N(0, initializer_range = 0.02), norm weights 1 (there are no biases). fp32, CPU, requires_grad.</summary>
    public Dictionary<string, Tensor> InitWeights(long seed, double std = 0.02)
    {
        var w = Models.ModelFactory.RandomWeights(WeightShapes(), seed, std);
        foreach (var t in w.Values) t.requires_grad_(true).DetachFromDisposeScope();
        return w;
    }

    public static bool IsNormWeight(string name) => name.EndsWith("layernorm.weight", StringComparison.Ordinal) || name == "model.norm.weight";
}
