// DistilBERT: word + position embeddings, post-norm blocks whose residual sites are the
// reference's `attention_adapters` and `output_adapters` modules; no pooler.
#include <torch/torch.h>

#include "adapters/core/error.h"
#include "adapters/models/architectures.h"
#include "adapters/nn/activation.h"
#include "adapters/nn/module_dict.h"

namespace adapters::models {
namespace {

using nn::AdaptedLinear;
using nn::ForwardContext;
using torch::Tensor;

torch::nn::LayerNorm layer_norm(const ModelConfig& c) {
  return torch::nn::LayerNorm(torch::nn::LayerNormOptions({c.hidden_size}).eps(1e-12));
}

struct EmbeddingsImpl : torch::nn::Module {
  explicit EmbeddingsImpl(const ModelConfig& c) {
    word_embeddings = register_module(
        "word_embeddings", torch::nn::Embedding(torch::nn::EmbeddingOptions(c.vocab_size, c.hidden_size).padding_idx(c.pad_token_id)));
    position_embeddings = register_module("position_embeddings", torch::nn::Embedding(c.max_position_embeddings, c.hidden_size));
    LayerNorm = register_module("LayerNorm", layer_norm(c));
    dropout = register_module("dropout", torch::nn::Dropout(c.hidden_dropout_prob));
  }
  // (B,T) ids or (B,T,C) embeddings -> (B,T,C)
  Tensor forward(const ModelInputs& in) {
    Tensor h = in.inputs_embeds.defined() ? in.inputs_embeds : word_embeddings(in.input_ids);
    Tensor positions = in.position_ids.defined()
                           ? in.position_ids
                           : torch::arange(h.size(1), torch::TensorOptions().dtype(torch::kLong).device(h.device())).unsqueeze(0);
    return dropout(LayerNorm(h + position_embeddings(positions)));
  }
  torch::nn::Embedding word_embeddings{nullptr}, position_embeddings{nullptr};
  torch::nn::LayerNorm LayerNorm{nullptr};
  torch::nn::Dropout dropout{nullptr};
};
TORCH_MODULE(Embeddings);

nn::AttentionOptions self_attention(const ModelConfig& c, std::int64_t layer) {
  nn::AttentionOptions o;
  o.hidden = c.hidden_size;
  o.heads = c.num_attention_heads;
  o.layer = layer;
  o.q = "q_lin", o.k = "k_lin", o.v = "v_lin", o.o = "out_lin";
  o.dropout = c.attention_probs_dropout_prob;
  o.prefix_location = nn::attention_location::kSelfBare;
  o.invert_prefix_mask = false;
  return o;
}

struct FFNImpl : torch::nn::Module {
  FFNImpl(const ModelConfig& c, std::int64_t layer) : act(nn::resolve_activation(c.hidden_act, "config.json: activation")) {
    lin1 = register_module("lin1", AdaptedLinear(c.hidden_size, c.intermediate_size, true, layer, nn::role::kIntermediate));
    lin2 = register_module("lin2", AdaptedLinear(c.intermediate_size, c.hidden_size, true, layer, nn::role::kOutput));
    dropout = register_module("dropout", torch::nn::Dropout(c.hidden_dropout_prob));
  }
  Tensor forward(const Tensor& x, ForwardContext& ctx) { return dropout(lin2->forward(act(lin1->forward(x, ctx)), ctx)); }
  nn::Activation act;
  AdaptedLinear lin1{nullptr}, lin2{nullptr};
  torch::nn::Dropout dropout{nullptr};
};
TORCH_MODULE(FFN);

struct TransformerBlockImpl : torch::nn::Module {
  TransformerBlockImpl(const ModelConfig& c, std::int64_t layer) {
    attention = register_module("attention", nn::Attention(self_attention(c, layer)));
    sa_layer_norm = register_module("sa_layer_norm", layer_norm(c));
    ffn = register_module("ffn", FFN(c, layer));
    output_layer_norm = register_module("output_layer_norm", layer_norm(c));
    attention_adapters = register_module("attention_adapters", nn::AdapterLayer(layer, nn::location::kAttention));
    output_adapters = register_module("output_adapters", nn::AdapterLayer(layer, nn::location::kOutput));
  }
  Tensor forward(const Tensor& x, const LayerArgs& args, ForwardContext& ctx) {
    Tensor sa = attention->forward({x, args.mask}, ctx);
    sa = attention_adapters->forward(sa, x, [this](const Tensor& t) { return sa_layer_norm(t); }, ctx);
    Tensor out = ffn->forward(sa, ctx);
    return output_adapters->forward(out, sa, [this](const Tensor& t) { return output_layer_norm(t); }, ctx);
  }
  nn::Attention attention{nullptr};
  torch::nn::LayerNorm sa_layer_norm{nullptr}, output_layer_norm{nullptr};
  FFN ffn{nullptr};
  nn::AdapterLayer attention_adapters{nullptr}, output_adapters{nullptr};
};
TORCH_MODULE(TransformerBlock);

struct TransformerImpl : torch::nn::Module {
  explicit TransformerImpl(const ModelConfig& c)
      : blocks(nn::register_layers<TransformerBlock>(*this, "layer", c.num_hidden_layers,
                                                     [&](std::int64_t i) { return TransformerBlock(c, i); })) {}
  std::vector<TransformerBlock> blocks;  // "layer.<i>"
};
TORCH_MODULE(Transformer);

class DistilBertModelImpl : public BaseModelImpl {
 public:
  explicit DistilBertModelImpl(const ModelConfig& c) : BaseModelImpl(c) {
    ADAPTERS_CHECK(!c.raw.value("sinusoidal_pos_embds", false), "config.json: sinusoidal_pos_embds=true is not supported",
                   " (expected false: learned position embeddings)");
    embeddings = register_module("embeddings", Embeddings(c));
    transformer = register_module("transformer", Transformer(c));
  }

 protected:
  Tensor embed(const ModelInputs& in, LayerArgs&, ForwardContext&) override { return embeddings->forward(in); }
  std::int64_t num_layers() const override { return static_cast<std::int64_t>(transformer->blocks.size()); }
  Tensor layer(std::int64_t i, const Tensor& h, LayerArgs& args, ForwardContext& ctx) override {
    return transformer->blocks[static_cast<std::size_t>(i)]->forward(h, args, ctx);
  }

 private:
  Embeddings embeddings{nullptr};
  Transformer transformer{nullptr};
};

}  // namespace

ArchSpec distilbert_arch() {
  ArchSpec spec;
  spec.model_type = "distilbert";
  spec.base_prefix = "distilbert";
  spec.model_class = "DistilBertAdapterModel";
  spec.create = [](const ModelConfig& c) { return std::make_shared<DistilBertModelImpl>(c); };
  spec.base_roots = {"embeddings", "transformer"};
  spec.word_embeddings = "embeddings.word_embeddings.weight";
  const json lm = {{"layers", 2}, {"activation_function", "hidden_act"}, {"layer_norm", true}, {"bias", true}};
  spec.static_heads = {
      {"ForSequenceClassification", "classification",
       {{"layers", 2}, {"activation_function", "relu"}, {"use_pooler", false}}, {"", "pre_classifier", "", "", "classifier"}},
      {"ForTokenClassification", "tagging", {{"layers", 1}, {"activation_function", nullptr}}, {"", "classifier"}},
      {"ForQuestionAnswering", "question_answering",
       {{"layers", 1}, {"activation_function", nullptr}, {"num_labels", 2}}, {"", "qa_outputs"}},
      {"ForMaskedLM", "masked_lm", lm, {"vocab_transform", "", "vocab_layer_norm", "vocab_projector"}},
  };
  spec.module_roles = {{"q_lin", nn::role::kQuery},       {"k_lin", nn::role::kKey},
                       {"v_lin", nn::role::kValue},       {"out_lin", nn::role::kAttentionOut},
                       {"lin1", nn::role::kIntermediate}, {"lin2", nn::role::kOutput}};
  return spec;
}

}  // namespace adapters::models
