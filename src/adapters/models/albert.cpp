// ALBERT: factorised embeddings (embedding_size E, mapped to the hidden size by
// encoder.embedding_hidden_mapping_in), num_hidden_groups groups of inner_group_num shared post-norm
// layers applied num_hidden_layers times, and the tanh pooler (a plain Linear) over the first token.
// Adapters, LoRA and prefixes belong to the physical shared layers: layer index g * inner_group_num + j
// for layer j of group g, one set of weights reused by every application.
#include <torch/torch.h>

#include "adapters/core/error.h"
#include "adapters/models/architectures.h"
#include "adapters/models/blocks.h"
#include "adapters/nn/activation.h"
#include "adapters/nn/module_dict.h"

namespace adapters::models {
namespace {

using blocks::layer_norm;
using nn::AdaptedLinear;
using nn::ForwardContext;
using torch::Tensor;

// AlbertConfig's defaults for the keys a config.json leaves out, where they differ from the generic ones.
ModelConfig with_albert_defaults(ModelConfig c) {
  if (!c.raw.contains("embedding_size")) c.embedding_size = 128;
  if (!c.raw.contains("hidden_act")) c.hidden_act = "gelu_new";
  if (!c.raw.contains("hidden_dropout_prob")) c.hidden_dropout_prob = 0.0;
  if (!c.raw.contains("attention_probs_dropout_prob")) c.attention_probs_dropout_prob = 0.0;
  return c;
}

struct AlbertEmbeddingsImpl : torch::nn::Module {
  explicit AlbertEmbeddingsImpl(const ModelConfig& c) {
    const auto E = c.embedding_size;
    word_embeddings = register_module(
        "word_embeddings", torch::nn::Embedding(torch::nn::EmbeddingOptions(c.vocab_size, E).padding_idx(c.pad_token_id)));
    position_embeddings = register_module("position_embeddings", torch::nn::Embedding(c.max_position_embeddings, E));
    token_type_embeddings = register_module("token_type_embeddings", torch::nn::Embedding(c.type_vocab_size, E));
    LayerNorm = register_module("LayerNorm", layer_norm(E, c.layer_norm_eps));
    dropout = register_module("dropout", torch::nn::Dropout(c.hidden_dropout_prob));
    // HF's buffer, kept so that the checkpoint key loads; positions are computed with arange.
    position_ids = register_buffer("position_ids", torch::arange(c.max_position_embeddings).unsqueeze(0));
  }
  // (B,T) ids or (B,T,E) embeddings -> (B,T,E)
  Tensor forward(const ModelInputs& in) {
    Tensor h = in.inputs_embeds.defined() ? in.inputs_embeds : word_embeddings(in.input_ids);
    const auto ids = torch::TensorOptions().dtype(torch::kLong).device(h.device());
    Tensor types = in.token_type_ids.defined() ? in.token_type_ids : torch::zeros({h.size(0), h.size(1)}, ids);
    Tensor positions = in.position_ids.defined() ? in.position_ids : torch::arange(h.size(1), ids).unsqueeze(0);
    return dropout(LayerNorm(h + token_type_embeddings(types) + position_embeddings(positions)));
  }
  torch::nn::Embedding word_embeddings{nullptr}, position_embeddings{nullptr}, token_type_embeddings{nullptr};
  torch::nn::LayerNorm LayerNorm{nullptr};
  torch::nn::Dropout dropout{nullptr};
  Tensor position_ids;
};
TORCH_MODULE(AlbertEmbeddings);

nn::AttentionOptions self_attention(const ModelConfig& c, std::int64_t layer) {
  nn::AttentionOptions o;
  o.hidden = c.hidden_size;
  o.heads = c.num_attention_heads;
  o.layer = layer;
  o.dropout = c.attention_probs_dropout_prob;
  return o;  // query / key / value; the output projection is the plain Linear `dense` below
}

// AlbertAttention keeps q/k/v, the output projection, its LayerNorm and its adapters in one module.
struct AlbertAttentionImpl : nn::AttentionImpl {
  AlbertAttentionImpl(const ModelConfig& c, std::int64_t layer) : nn::AttentionImpl(self_attention(c, layer)) {
    dense = register_module("dense", torch::nn::Linear(c.hidden_size, c.hidden_size));  // no LoRA in the reference
    output_dropout = register_module("output_dropout", torch::nn::Dropout(c.hidden_dropout_prob));
    LayerNorm = register_module("LayerNorm", layer_norm(c.hidden_size, c.layer_norm_eps));
    attention_adapters = register_module("attention_adapters", nn::AdapterLayer(layer, nn::location::kAttention));
  }
  // (B,T,C) -> (B,T,C)
  Tensor forward(const Tensor& x, const LayerArgs& args, ForwardContext& ctx) {
    nn::AttentionCall call;
    call.hidden = x;
    call.mask = args.mask;
    Tensor p = output_dropout(dense(nn::AttentionImpl::forward(call, ctx)));  // (B,T,C)
    // The reference calls attention_adapters(hidden_states=x, residual_input=p): the layer input is
    // what the adapter transforms and the attention output is the residual (BERT has them the other
    // way round). Reproduced as it is.
    return attention_adapters->forward(x, p, [this](const Tensor& t) { return LayerNorm(t); }, ctx);
  }
  torch::nn::Linear dense{nullptr};
  torch::nn::Dropout output_dropout{nullptr};
  torch::nn::LayerNorm LayerNorm{nullptr};
  nn::AdapterLayer attention_adapters{nullptr};
};
TORCH_MODULE(AlbertAttention);

struct AlbertLayerImpl : torch::nn::Module {
  AlbertLayerImpl(const ModelConfig& c, std::int64_t layer)
      : activation(nn::resolve_activation(c.hidden_act, "config.json: hidden_act")) {
    full_layer_layer_norm = register_module("full_layer_layer_norm", layer_norm(c.hidden_size, c.layer_norm_eps));
    attention = register_module("attention", AlbertAttention(c, layer));
    ffn = register_module("ffn", AdaptedLinear(c.hidden_size, c.intermediate_size, true, layer, nn::role::kIntermediate));
    ffn_output = register_module("ffn_output",
                                 AdaptedLinear(c.intermediate_size, c.hidden_size, true, layer, nn::role::kOutput));
    output_adapters = register_module("output_adapters", nn::AdapterLayer(layer, nn::location::kOutput));
  }
  // (B,T,C) -> (B,T,C)
  Tensor forward(const Tensor& x, const LayerArgs& args, ForwardContext& ctx) {
    Tensor a = attention->forward(x, args, ctx);
    Tensor f = ffn_output->forward(activation(ffn->forward(a, ctx)), ctx);
    return output_adapters->forward(f, a, [this](const Tensor& t) { return full_layer_layer_norm(t); }, ctx);
  }
  nn::Activation activation;
  torch::nn::LayerNorm full_layer_layer_norm{nullptr};
  AlbertAttention attention{nullptr};
  AdaptedLinear ffn{nullptr}, ffn_output{nullptr};
  nn::AdapterLayer output_adapters{nullptr};
};
TORCH_MODULE(AlbertLayer);

struct AlbertLayerGroupImpl : torch::nn::Module {
  AlbertLayerGroupImpl(const ModelConfig& c, std::int64_t first_layer, std::int64_t inner)
      : albert_layers(nn::register_layers<AlbertLayer>(*this, "albert_layers", inner, [&](std::int64_t j) {
          return AlbertLayer(c, first_layer + j);
        })) {}
  std::vector<AlbertLayer> albert_layers;  // "albert_layers.<j>"
};
TORCH_MODULE(AlbertLayerGroup);

struct AlbertTransformerImpl : torch::nn::Module {
  AlbertTransformerImpl(const ModelConfig& c, std::int64_t groups, std::int64_t inner) {
    embedding_hidden_mapping_in = register_module("embedding_hidden_mapping_in",
                                                  torch::nn::Linear(c.embedding_size, c.hidden_size));
    albert_layer_groups = nn::register_layers<AlbertLayerGroup>(
        *this, "albert_layer_groups", groups, [&](std::int64_t g) { return AlbertLayerGroup(c, g * inner, inner); });
  }
  torch::nn::Linear embedding_hidden_mapping_in{nullptr};
  std::vector<AlbertLayerGroup> albert_layer_groups;  // "albert_layer_groups.<g>"
};
TORCH_MODULE(AlbertTransformer);

std::int64_t config_int(const ModelConfig& c, const char* key, std::int64_t fallback) {
  const std::int64_t v = c.raw.value(key, fallback);
  ADAPTERS_CHECK(v > 0, "config.json: '", key, "' must be a positive integer, found ", v);
  return v;
}

class AlbertModelImpl : public BaseModelImpl {
 public:
  explicit AlbertModelImpl(const ModelConfig& c)
      : BaseModelImpl(c), groups_(config_int(c, "num_hidden_groups", 1)), inner_(config_int(c, "inner_group_num", 1)) {
    const std::string position_type = c.raw.value("position_embedding_type", "absolute");
    ADAPTERS_CHECK(position_type == "absolute", "config.json: position_embedding_type '", position_type,
                   "' is not supported (expected \"absolute\")");
    embeddings = register_module("embeddings", AlbertEmbeddings(c));
    encoder = register_module("encoder", AlbertTransformer(c, groups_, inner_));
    pooler = register_module("pooler", torch::nn::Linear(c.hidden_size, c.hidden_size));
  }

 protected:
  void check_inputs(const ModelInputs& in) const override {
    if (!in.inputs_embeds.defined()) return BaseModelImpl::check_inputs(in);
    // Embeddings come in embedding_size E; the base check expects the hidden size.
    const auto E = config_.embedding_size;
    ADAPTERS_CHECK(!in.input_ids.defined() && in.inputs_embeds.dim() == 3 && in.inputs_embeds.size(2) == E,
                   "albert forward: expected inputs_embeds (B,T,", E, ") and no input_ids, found ", in.inputs_embeds.sizes());
    ModelInputs rest = in;
    rest.inputs_embeds = Tensor();
    rest.input_ids = torch::zeros({in.inputs_embeds.size(0), in.inputs_embeds.size(1)}, torch::kLong);
    BaseModelImpl::check_inputs(rest);
  }
  // (B,T,E): the embedding hook (invertible adapters) acts in E, before the mapping to C.
  Tensor embed(const ModelInputs& in, LayerArgs&, ForwardContext&) override { return embeddings->forward(in); }
  std::int64_t num_layers() const override { return config_.num_hidden_layers * inner_; }
  // Application i of the shared layers: layer i % inner of the group AlbertTransformer picks.
  Tensor layer(std::int64_t i, const Tensor& h, LayerArgs& args, ForwardContext& ctx) override {
    const std::int64_t application = i / inner_;
    // As the reference, in floating point: int(application / (num_hidden_layers / num_hidden_groups)).
    const auto group = static_cast<std::int64_t>(static_cast<double>(application) /
                                                 (static_cast<double>(config_.num_hidden_layers) / groups_));
    const Tensor x = i == 0 ? encoder->embedding_hidden_mapping_in(h) : h;  // (B,T,E) -> (B,T,C)
    auto& layers = encoder->albert_layer_groups[static_cast<std::size_t>(group)]->albert_layers;
    return layers[static_cast<std::size_t>(i % inner_)]->forward(x, args, ctx);
  }
  BaseModelOutput finish(const Tensor& h, const LayerArgs&, ForwardContext&) override {
    BaseModelOutput out;
    out.last_hidden_state = h;
    out.pooler_output = torch::tanh(pooler(h.select(1, 0)));  // (B,C)
    return out;
  }

 private:
  std::int64_t groups_, inner_;
  AlbertEmbeddings embeddings{nullptr};
  AlbertTransformer encoder{nullptr};
  torch::nn::Linear pooler{nullptr};
};

}  // namespace

ArchSpec albert_arch() {
  ArchSpec spec;
  spec.model_type = "albert";
  spec.base_prefix = "albert";
  spec.model_class = "AlbertAdapterModel";
  spec.create = [](const ModelConfig& c) { return std::make_shared<AlbertModelImpl>(with_albert_defaults(c)); };
  spec.base_roots = {"embeddings", "encoder", "pooler"};
  spec.word_embeddings = "embeddings.word_embeddings.weight";
  spec.pooler = "pooler";
  spec.static_heads = bert_static_heads();  // classifier on the pooler, classifier per token, qa_outputs
  for (auto& h : spec.static_heads) {
    // predictions.decoder.bias aliases predictions.bias, which checkpoints store (the bias fallback).
    if (h.class_suffix == "ForMaskedLM") h.layers = {"predictions.dense", "", "predictions.LayerNorm", "predictions.decoder"};
  }
  spec.module_roles = {{"query", nn::role::kQuery},
                       {"key", nn::role::kKey},
                       {"value", nn::role::kValue},
                       {"ffn", nn::role::kIntermediate},
                       {"ffn_output", nn::role::kOutput}};
  return spec;
}

}  // namespace adapters::models
