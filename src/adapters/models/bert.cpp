// BERT-family encoder: embeddings, post-norm Transformer layers with residual sites after the
// attention output and the feed-forward output, and the tanh pooler over the first token.
#include "adapters/models/bert.h"

#include <torch/torch.h>

#include <cmath>

#include "adapters/nn/activation.h"
#include "adapters/nn/module_dict.h"

namespace adapters::models {
namespace {

using nn::AdaptedLinear;
using nn::ForwardContext;
using torch::Tensor;

torch::nn::LayerNorm layer_norm(const ModelConfig& c) {
  return torch::nn::LayerNorm(torch::nn::LayerNormOptions({c.hidden_size}).eps(c.layer_norm_eps));
}

struct BertEmbeddingsImpl : torch::nn::Module {
  BertEmbeddingsImpl(const ModelConfig& c, bool roberta_positions) : roberta_positions(roberta_positions) {
    auto word = torch::nn::EmbeddingOptions(c.vocab_size, c.hidden_size);
    auto position = torch::nn::EmbeddingOptions(c.max_position_embeddings, c.hidden_size);
    if (roberta_positions) {
      word.padding_idx(c.pad_token_id);
      position.padding_idx(c.pad_token_id);
    }
    word_embeddings = register_module("word_embeddings", torch::nn::Embedding(word));
    position_embeddings = register_module("position_embeddings", torch::nn::Embedding(position));
    token_type_embeddings = register_module("token_type_embeddings",
                                            torch::nn::Embedding(std::max<std::int64_t>(c.type_vocab_size, 1), c.hidden_size));
    LayerNorm = register_module("LayerNorm", layer_norm(c));
    dropout = register_module("dropout", torch::nn::Dropout(c.hidden_dropout_prob));
    position_ids = register_buffer("position_ids", torch::arange(c.max_position_embeddings).unsqueeze(0));
    pad_token_id = c.pad_token_id;
  }

  // (B,T) -> (B,T)
  Tensor positions(const Tensor& input_ids) const {
    const auto T = input_ids.size(1);
    if (!roberta_positions) return torch::arange(T, input_ids.options()).unsqueeze(0).expand_as(input_ids);
    Tensor mask = input_ids.ne(pad_token_id).to(torch::kLong);
    return torch::cumsum(mask, 1) * mask + pad_token_id;
  }

  // (B,T) -> (B,T,C)
  Tensor forward(const Tensor& input_ids, Tensor token_type_ids) {
    if (!token_type_ids.defined()) token_type_ids = torch::zeros_like(input_ids);
    Tensor h = word_embeddings(input_ids) + token_type_embeddings(token_type_ids) +
               position_embeddings(positions(input_ids));
    return dropout(LayerNorm(h));
  }

  bool roberta_positions;
  std::int64_t pad_token_id;
  torch::nn::Embedding word_embeddings{nullptr}, position_embeddings{nullptr}, token_type_embeddings{nullptr};
  torch::nn::LayerNorm LayerNorm{nullptr};
  torch::nn::Dropout dropout{nullptr};
  // HF's buffer (0..max-1), kept so that the checkpoint's key loads; positions are computed with
  // arange instead, since a whole-module dtype cast would round this buffer too.
  Tensor position_ids;
};
TORCH_MODULE(BertEmbeddings);

struct BertSelfAttentionImpl : torch::nn::Module {
  BertSelfAttentionImpl(const ModelConfig& c, std::int64_t layer)
      : heads(c.num_attention_heads), head_dim(c.head_dim()), prefix(layer, nn::attention_location::kSelf) {
    query = register_module("query", AdaptedLinear(c.hidden_size, c.hidden_size, true, layer, nn::role::kQuery));
    key = register_module("key", AdaptedLinear(c.hidden_size, c.hidden_size, true, layer, nn::role::kKey));
    value = register_module("value", AdaptedLinear(c.hidden_size, c.hidden_size, true, layer, nn::role::kValue));
    dropout = register_module("dropout", torch::nn::Dropout(c.attention_probs_dropout_prob));
    prefix.register_in(*this);
  }

  // (B,T,C) -> (B,H,T,D)
  Tensor split_heads(const Tensor& x) const {
    return x.view({x.size(0), x.size(1), heads, head_dim}).permute({0, 2, 1, 3});
  }

  // x (B,T,C), mask (B,1,1,T) additive -> (B,T,C)
  Tensor forward(const Tensor& x, const Tensor& mask, ForwardContext& ctx) {
    nn::AttentionState s = prefix.forward({split_heads(query->forward(x, ctx)), split_heads(key->forward(x, ctx)),
                                           split_heads(value->forward(x, ctx)), mask, x},
                                          ctx);
    Tensor scores = torch::matmul(s.query, s.key.transpose(-1, -2)) / std::sqrt(static_cast<double>(head_dim));
    if (s.mask.defined()) scores = scores + s.mask;
    Tensor probs = dropout(torch::softmax(scores, -1));
    Tensor context = torch::matmul(probs, s.value).permute({0, 2, 1, 3}).contiguous();  // (B,T,H,D)
    return context.view({context.size(0), context.size(1), heads * head_dim});
  }

  std::int64_t heads, head_dim;
  AdaptedLinear query{nullptr}, key{nullptr}, value{nullptr};
  torch::nn::Dropout dropout{nullptr};
  nn::AttentionSite prefix;
};
TORCH_MODULE(BertSelfAttention);

// Dense + dropout, then the residual site (residual + LayerNorm, or the active adapters).
struct BertResidualOutputImpl : torch::nn::Module {
  BertResidualOutputImpl(const ModelConfig& c, std::int64_t in_features, std::int64_t layer, const char* role,
                         const char* location)
      : site(layer, location) {
    dense = register_module("dense", AdaptedLinear(in_features, c.hidden_size, true, layer, role));
    LayerNorm = register_module("LayerNorm", layer_norm(c));
    dropout = register_module("dropout", torch::nn::Dropout(c.hidden_dropout_prob));
    site.register_in(*this);
  }

  Tensor forward(const Tensor& h, const Tensor& input, ForwardContext& ctx) {
    Tensor out = dropout(dense->forward(h, ctx));
    return site.forward(out, input, [this](const Tensor& t) { return LayerNorm(t); }, ctx);
  }

  AdaptedLinear dense{nullptr};
  torch::nn::LayerNorm LayerNorm{nullptr};
  torch::nn::Dropout dropout{nullptr};
  nn::ResidualSite site;
};
TORCH_MODULE(BertResidualOutput);

struct BertAttentionImpl : torch::nn::Module {
  BertAttentionImpl(const ModelConfig& c, std::int64_t layer) {
    self = register_module("self", BertSelfAttention(c, layer));
    output = register_module("output", BertResidualOutput(c, c.hidden_size, layer, nn::role::kAttentionOut,
                                                          nn::location::kAttention));
  }
  Tensor forward(const Tensor& x, const Tensor& mask, ForwardContext& ctx) {
    return output->forward(self->forward(x, mask, ctx), x, ctx);
  }
  BertSelfAttention self{nullptr};
  BertResidualOutput output{nullptr};
};
TORCH_MODULE(BertAttention);

struct BertIntermediateImpl : torch::nn::Module {
  BertIntermediateImpl(const ModelConfig& c, std::int64_t layer)
      : act(nn::resolve_activation(c.hidden_act, "config.json: hidden_act")) {
    dense = register_module("dense", AdaptedLinear(c.hidden_size, c.intermediate_size, true, layer,
                                                   nn::role::kIntermediate));
  }
  Tensor forward(const Tensor& x, ForwardContext& ctx) { return act(dense->forward(x, ctx)); }
  nn::Activation act;
  AdaptedLinear dense{nullptr};
};
TORCH_MODULE(BertIntermediate);

struct BertLayerImpl : torch::nn::Module {
  BertLayerImpl(const ModelConfig& c, std::int64_t layer) {
    attention = register_module("attention", BertAttention(c, layer));
    intermediate = register_module("intermediate", BertIntermediate(c, layer));
    output = register_module("output", BertResidualOutput(c, c.intermediate_size, layer, nn::role::kOutput,
                                                           nn::location::kOutput));
  }
  Tensor forward(const Tensor& x, const Tensor& mask, ForwardContext& ctx) {
    Tensor a = attention->forward(x, mask, ctx);
    return output->forward(intermediate->forward(a, ctx), a, ctx);
  }
  BertAttention attention{nullptr};
  BertIntermediate intermediate{nullptr};
  BertResidualOutput output{nullptr};
};
TORCH_MODULE(BertLayer);

struct BertEncoderImpl : torch::nn::Module {
  explicit BertEncoderImpl(const ModelConfig& c)
      : layers(nn::register_layers<BertLayer>(*this, "layer", c.num_hidden_layers,
                                              [&](std::int64_t i) { return BertLayer(c, i); })) {}
  std::vector<BertLayer> layers;  // "layer.<i>"
};
TORCH_MODULE(BertEncoder);

struct BertPoolerImpl : torch::nn::Module {
  explicit BertPoolerImpl(const ModelConfig& c) {
    dense = register_module("dense", torch::nn::Linear(c.hidden_size, c.hidden_size));
  }
  // (B,T,C) -> (B,C): tanh(dense(first token))
  Tensor forward(const Tensor& h) { return torch::tanh(dense(h.select(1, 0))); }
  torch::nn::Linear dense{nullptr};
};
TORCH_MODULE(BertPooler);

class BertModelImpl : public BaseModelImpl {
 public:
  BertModelImpl(const ModelConfig& c, bool roberta_positions) : BaseModelImpl(c) {
    embeddings = register_module("embeddings", BertEmbeddings(c, roberta_positions));
    encoder = register_module("encoder", BertEncoder(c));
    pooler = register_module("pooler", BertPooler(c));
    for (auto& l : encoder->layers) {
      sites_.attention.push_back(&l->attention->self->prefix);
      sites_.residual.push_back(&l->attention->output->site);
      sites_.residual.push_back(&l->output->site);
      for (auto* lin : {l->attention->self->query.get(), l->attention->self->key.get(),
                        l->attention->self->value.get(), l->attention->output->dense.get(),
                        l->intermediate->dense.get(), l->output->dense.get()}) {
        sites_.linear.push_back(lin);
      }
    }
  }

  BaseModelOutput forward(const ModelInputs& in, ForwardContext& ctx) override {
    hooks_.prepare(in.input_ids, ctx);
    Tensor attention_mask = in.attention_mask;
    Tensor h = hooks_.embeddings(embeddings->forward(in.input_ids, in.token_type_ids), attention_mask, ctx);  // (B,T,C)
    Tensor mask = attention_mask.defined() ? extended_attention_mask(attention_mask, h.scalar_type()) : Tensor();
    for (std::size_t i = 0; i < encoder->layers.size(); ++i) {
      h = hooks_.layer_output(static_cast<std::int64_t>(i), encoder->layers[i]->forward(h, mask, ctx), ctx);
    }
    return {h, pooler->forward(h)};
  }

 private:
  BertEmbeddings embeddings{nullptr};
  BertEncoder encoder{nullptr};
  BertPooler pooler{nullptr};
};

}  // namespace

std::shared_ptr<BaseModelImpl> make_bert(const ModelConfig& config, bool roberta_positions) {
  return std::make_shared<BertModelImpl>(config, roberta_positions);
}

}  // namespace adapters::models
