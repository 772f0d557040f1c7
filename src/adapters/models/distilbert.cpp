// DistilBERT: word + position embeddings, post-norm blocks whose residual sites are the
// reference's `attention_adapters` and `output_adapters` modules; no pooler.
#include "adapters/models/distilbert.h"

#include <torch/torch.h>

#include <cmath>

#include "adapters/core/error.h"
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
  // (B,T) -> (B,T,C)
  Tensor forward(const Tensor& input_ids) {
    Tensor positions = torch::arange(input_ids.size(1), input_ids.options()).unsqueeze(0).expand_as(input_ids);
    return dropout(LayerNorm(word_embeddings(input_ids) + position_embeddings(positions)));
  }
  torch::nn::Embedding word_embeddings{nullptr}, position_embeddings{nullptr};
  torch::nn::LayerNorm LayerNorm{nullptr};
  torch::nn::Dropout dropout{nullptr};
};
TORCH_MODULE(Embeddings);

struct MultiHeadSelfAttentionImpl : torch::nn::Module {
  MultiHeadSelfAttentionImpl(const ModelConfig& c, std::int64_t layer)
      : heads(c.num_attention_heads), head_dim(c.head_dim()), prefix(layer, nn::attention_location::kSelfBare, /*invert_mask=*/false) {
    const auto C = c.hidden_size;
    q_lin = register_module("q_lin", AdaptedLinear(C, C, true, layer, nn::role::kQuery));
    k_lin = register_module("k_lin", AdaptedLinear(C, C, true, layer, nn::role::kKey));
    v_lin = register_module("v_lin", AdaptedLinear(C, C, true, layer, nn::role::kValue));
    out_lin = register_module("out_lin", AdaptedLinear(C, C, true, layer, nn::role::kAttentionOut));
    dropout = register_module("dropout", torch::nn::Dropout(c.attention_probs_dropout_prob));
    prefix.register_in(*this);
  }
  // (B,T,C) -> (B,H,T,D)
  Tensor split_heads(const Tensor& x) const {
    return x.view({x.size(0), x.size(1), heads, head_dim}).transpose(1, 2);
  }
  // x (B,T,C), mask (B,1,1,T) additive -> (B,T,C)
  Tensor forward(const Tensor& x, const Tensor& mask, ForwardContext& ctx) {
    Tensor q = split_heads(q_lin->forward(x, ctx)) / std::sqrt(static_cast<double>(head_dim));
    nn::AttentionState s = prefix.forward(
        {q, split_heads(k_lin->forward(x, ctx)), split_heads(v_lin->forward(x, ctx)), mask, x}, ctx);
    Tensor scores = torch::matmul(s.query, s.key.transpose(2, 3));
    if (s.mask.defined()) scores = scores + s.mask;
    Tensor probs = dropout(torch::softmax(scores, -1));
    Tensor context = torch::matmul(probs, s.value).transpose(1, 2).contiguous();  // (B,T,H,D)
    context = context.view({context.size(0), context.size(1), heads * head_dim});
    return out_lin->forward(context, ctx);
  }
  std::int64_t heads, head_dim;
  AdaptedLinear q_lin{nullptr}, k_lin{nullptr}, v_lin{nullptr}, out_lin{nullptr};
  torch::nn::Dropout dropout{nullptr};
  nn::AttentionSite prefix;
};
TORCH_MODULE(MultiHeadSelfAttention);

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

// The reference's standalone adapter layer module (`attention_adapters`, `output_adapters`).
struct AdapterLayerImpl : torch::nn::Module {
  AdapterLayerImpl(std::int64_t layer, const char* location) : site(layer, location) { site.register_in(*this); }
  nn::ResidualSite site;
};
TORCH_MODULE(AdapterLayer);

struct TransformerBlockImpl : torch::nn::Module {
  TransformerBlockImpl(const ModelConfig& c, std::int64_t layer) {
    attention = register_module("attention", MultiHeadSelfAttention(c, layer));
    sa_layer_norm = register_module("sa_layer_norm", layer_norm(c));
    ffn = register_module("ffn", FFN(c, layer));
    output_layer_norm = register_module("output_layer_norm", layer_norm(c));
    attention_adapters = register_module("attention_adapters", AdapterLayer(layer, nn::location::kAttention));
    output_adapters = register_module("output_adapters", AdapterLayer(layer, nn::location::kOutput));
  }
  Tensor forward(const Tensor& x, const Tensor& mask, ForwardContext& ctx) {
    Tensor sa = attention->forward(x, mask, ctx);
    sa = attention_adapters->site.forward(sa, x, [this](const Tensor& t) { return sa_layer_norm(t); }, ctx);
    Tensor out = ffn->forward(sa, ctx);
    return output_adapters->site.forward(out, sa, [this](const Tensor& t) { return output_layer_norm(t); }, ctx);
  }
  MultiHeadSelfAttention attention{nullptr};
  torch::nn::LayerNorm sa_layer_norm{nullptr}, output_layer_norm{nullptr};
  FFN ffn{nullptr};
  AdapterLayer attention_adapters{nullptr}, output_adapters{nullptr};
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
    for (auto& b : transformer->blocks) {
      sites_.attention.push_back(&b->attention->prefix);
      sites_.residual.push_back(&b->attention_adapters->site);
      sites_.residual.push_back(&b->output_adapters->site);
      for (auto* lin : {b->attention->q_lin.get(), b->attention->k_lin.get(), b->attention->v_lin.get(),
                        b->attention->out_lin.get(), b->ffn->lin1.get(), b->ffn->lin2.get()}) {
        sites_.linear.push_back(lin);
      }
    }
  }

  BaseModelOutput forward(const ModelInputs& in, ForwardContext& ctx) override {
    hooks_.prepare(in.input_ids, ctx);
    Tensor attention_mask = in.attention_mask;
    Tensor h = hooks_.embeddings(embeddings->forward(in.input_ids), attention_mask, ctx);  // (B,T,C)
    Tensor mask = attention_mask.defined() ? extended_attention_mask(attention_mask, h.scalar_type()) : Tensor();
    for (std::size_t i = 0; i < transformer->blocks.size(); ++i) {
      h = hooks_.layer_output(static_cast<std::int64_t>(i), transformer->blocks[i]->forward(h, mask, ctx), ctx);
    }
    return {h, Tensor()};
  }

 private:
  Embeddings embeddings{nullptr};
  Transformer transformer{nullptr};
};

}  // namespace

std::shared_ptr<BaseModelImpl> make_distilbert(const ModelConfig& config) {
  return std::make_shared<DistilBertModelImpl>(config);
}

}  // namespace adapters::models
