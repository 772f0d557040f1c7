// GPT-J: token embeddings only (positions are rotary, interleaved, on the first rotary_dim
// dimensions of q and k), parallel blocks (one ln_1 feeds both the attention and the MLP; the
// attention residual site adds the attention output to the block input, the output site adds the
// MLP output to that), a final ln_f, an untied LM head with a bias. As in transformers 4.26 the
// causal fill comes before the 1/sqrt(d) scaling and the padding mask is added after it; the
// rotary angle is the absolute index of the token (past + t) unless position ids are given.
#include <torch/torch.h>

#include "adapters/models/architectures.h"
#include "adapters/models/blocks.h"
#include "adapters/models/decoder_common.h"
#include "adapters/nn/mask.h"
#include "adapters/nn/module_dict.h"

namespace adapters::models {
namespace {

using blocks::layer_norm;
using nn::ForwardContext;
using torch::Tensor;

struct GPTJMLPImpl : torch::nn::Module {
  GPTJMLPImpl(const ModelConfig& c, std::int64_t layer)
      : act(nn::resolve_activation(c.hidden_act, "config.json: activation_function")) {
    fc_in = register_module("fc_in", nn::AdaptedLinear(c.hidden_size, c.intermediate_size, true, layer, nn::role::kIntermediate));
    fc_out = register_module("fc_out", nn::AdaptedLinear(c.intermediate_size, c.hidden_size, true, layer, nn::role::kOutput));
    dropout = register_module("dropout", torch::nn::Dropout(c.hidden_dropout_prob));
  }
  // (B,T,C) -> (B,T,C)
  Tensor forward(const Tensor& x, ForwardContext& ctx) { return dropout(fc_out->forward(act(fc_in->forward(x, ctx)), ctx)); }
  nn::Activation act;
  nn::AdaptedLinear fc_in{nullptr}, fc_out{nullptr};
  torch::nn::Dropout dropout{nullptr};
};
TORCH_MODULE(GPTJMLP);

nn::AttentionOptions gptj_attention(const ModelConfig& c, std::int64_t layer) {
  nn::AttentionOptions o;
  o.hidden = c.hidden_size;
  o.heads = c.num_attention_heads;
  o.layer = layer;
  o.q = "q_proj";
  o.k = "k_proj";
  o.v = "v_proj";
  o.o = "out_proj";
  o.qkv_bias = false;
  o.o_bias = false;
  o.dropout = c.attention_probs_dropout_prob;
  o.rotary = {nn::RotaryLayout::Interleaved, c.rotary_dim > 0 ? c.rotary_dim : c.head_dim(), 10000.0};
  return o;
}

// (1,1,Tq,Tk) the causal fill divided by sqrt(d), over the keys after the prefix site: query i sits
// at key position Tk - Tq + i (prefix keys first, then the cache, then the new tokens).
Tensor scaled_causal_fill(const nn::AttentionState& s, double head_dim) {
  const std::int64_t Tq = s.query.size(2), Tk = s.key.size(2);
  auto ids = torch::TensorOptions().dtype(torch::kLong).device(s.query.device());
  Tensor allowed = torch::arange(Tk, ids).unsqueeze(0).le(torch::arange(Tk - Tq, Tk, ids).unsqueeze(1));
  const double fill = nn::lowest_value(s.query.scalar_type()) / std::sqrt(head_dim);
  return torch::zeros({Tq, Tk}, s.query.options()).masked_fill(allowed.logical_not(), fill).view({1, 1, Tq, Tk});
}

struct GPTJBlockImpl : torch::nn::Module {
  GPTJBlockImpl(const ModelConfig& c, std::int64_t layer) : head_dim(static_cast<double>(c.head_dim())) {
    ln_1 = register_module("ln_1", layer_norm(c.hidden_size, c.layer_norm_eps));
    attn = register_module("attn", nn::Attention(gptj_attention(c, layer)));
    register_causal_buffers(*attn, c.max_position_embeddings, -1e9);
    mlp = register_module("mlp", GPTJMLP(c, layer));
    attention_adapters = register_module("attention_adapters", nn::AdapterLayer(layer, nn::location::kAttention));
    output_adapters = register_module("output_adapters", nn::AdapterLayer(layer, nn::location::kOutput));
    resid_dropout = register_module("resid_dropout", torch::nn::Dropout(c.hidden_dropout_prob));
  }
  // (B,T,C) -> (B,T,C)
  Tensor forward(const Tensor& x, const Tensor& positions, const LayerArgs& args, nn::LayerKV* cache, ForwardContext& ctx) {
    const Tensor normed = ln_1(x);
    nn::AttentionCall call{normed, args.mask, Tensor(), positions, cache,
                           [this](const nn::AttentionState& s) { return scaled_causal_fill(s, head_dim); }};
    Tensor a = resid_dropout(attn->forward(call, ctx));
    Tensor ff = mlp->forward(normed, ctx);
    Tensor h = attention_adapters->forward(a, x, nn::Norm(), ctx);
    return output_adapters->forward(ff, h, nn::Norm(), ctx);
  }
  double head_dim;
  torch::nn::LayerNorm ln_1{nullptr};
  nn::Attention attn{nullptr};
  GPTJMLP mlp{nullptr};
  nn::AdapterLayer attention_adapters{nullptr}, output_adapters{nullptr};
  torch::nn::Dropout resid_dropout{nullptr};
};
TORCH_MODULE(GPTJBlock);

class GPTJModelImpl : public BaseModelImpl {
 public:
  explicit GPTJModelImpl(const ModelConfig& c) : BaseModelImpl(c) {
    wte = register_module("wte", torch::nn::Embedding(c.vocab_size, c.hidden_size));
    drop = register_module("drop", torch::nn::Dropout(c.raw.value("embd_pdrop", c.hidden_dropout_prob)));
    h = nn::register_layers<GPTJBlock>(*this, "h", c.num_hidden_layers, [&](std::int64_t i) { return GPTJBlock(c, i); });
    ln_f = register_module("ln_f", layer_norm(c.hidden_size, c.layer_norm_eps));
  }

 protected:
  void check_inputs(const ModelInputs& in) const override {
    BaseModelImpl::check_inputs(in);
    check_positions_fit(in, config_);
  }
  Tensor embed(const ModelInputs& in, LayerArgs&, ForwardContext&) override {
    return in.inputs_embeds.defined() ? in.inputs_embeds : wte(in.input_ids);
  }
  // The base model's padding-only mask (B,1,1,Tk): the causal part is each layer's scaled fill.
  std::int64_t num_layers() const override { return static_cast<std::int64_t>(h.size()); }
  Tensor layer(std::int64_t i, const Tensor& x, LayerArgs& args, ForwardContext& ctx) override {
    Tensor in = x;
    if (i == 0) {
      if (args.inputs->token_type_ids.defined()) in = in + wte(args.inputs->token_type_ids);
      in = drop(in);
    }
    nn::LayerKV* slot = args.cache ? args.cache->layer(static_cast<std::size_t>(i)) : nullptr;
    return h[static_cast<std::size_t>(i)]->forward(in, positions(x, args), args, slot, ctx);
  }
  BaseModelOutput finish(const Tensor& x, const LayerArgs& args, ForwardContext&) override {
    Tensor out = ln_f(x);
    return {out, Tensor(), last_token_summary(out, args.input_ids, configured_pad_token(config_))};
  }

 private:
  torch::nn::Embedding wte{nullptr};
  torch::nn::Dropout drop{nullptr};
  std::vector<GPTJBlock> h;  // "h.<i>"
  torch::nn::LayerNorm ln_f{nullptr};
};

}  // namespace

ArchSpec gptj_arch() {
  ArchSpec spec;
  spec.model_type = "gptj";
  spec.base_prefix = "transformer";
  spec.model_class = "GPTJAdapterModel";
  spec.create = [](const ModelConfig& c) { return std::make_shared<GPTJModelImpl>(c); };
  spec.base_roots = {"wte", "h", "ln_f"};
  spec.word_embeddings = "wte.weight";
  spec.kind = ArchKind::Decoder;
  spec.static_heads = decoder_static_heads(true);
  spec.module_roles = {{"q_proj", nn::role::kQuery},          {"k_proj", nn::role::kKey},
                       {"v_proj", nn::role::kValue},          {"out_proj", nn::role::kAttentionOut},
                       {"fc_in", nn::role::kIntermediate},    {"fc_out", nn::role::kOutput}};
  spec.unsupported_methods = generative_unsupported_methods();
  spec.generation_positions_from_mask = false;
  return spec;
}

}  // namespace adapters::models
