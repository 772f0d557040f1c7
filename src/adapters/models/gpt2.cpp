// GPT-2: token + learned position embeddings, pre-norm decoder blocks (ln_1 -> attention ->
// residual site; ln_2 -> MLP -> residual site) with causal self-attention, a final ln_f. Its
// Conv1D weights are stored (in, out) under HF's names (c_attn fused q/k/v, c_proj, c_fc); the
// attention keeps HF's attn.bias / attn.masked_bias buffers so checkpoints load as they are (the
// mask itself comes from the shared mask builder). Sequence heads read the last real token.
#include <torch/torch.h>

#include "adapters/core/error.h"
#include "adapters/models/architectures.h"
#include "adapters/models/blocks.h"
#include "adapters/models/decoder_common.h"
#include "adapters/nn/module_dict.h"

namespace adapters::models {
namespace {

using blocks::layer_norm;
using nn::ForwardContext;
using nn::WeightLayout;
using torch::Tensor;

struct GPT2MLPImpl : torch::nn::Module {
  GPT2MLPImpl(const ModelConfig& c, std::int64_t layer)
      : act(nn::resolve_activation(c.hidden_act, "config.json: activation_function")) {
    c_fc = register_module("c_fc", nn::AdaptedLinear(c.hidden_size, c.intermediate_size, true, layer,
                                                     nn::role::kIntermediate, WeightLayout::InOut));
    c_proj = register_module("c_proj", nn::AdaptedLinear(c.intermediate_size, c.hidden_size, true, layer,
                                                         nn::role::kOutput, WeightLayout::InOut));
    dropout = register_module("dropout", torch::nn::Dropout(c.hidden_dropout_prob));
  }
  // (B,T,C) -> (B,T,C)
  Tensor forward(const Tensor& x, ForwardContext& ctx) {
    return dropout(c_proj->forward(act(c_fc->forward(x, ctx)), ctx));
  }
  nn::Activation act;
  nn::AdaptedLinear c_fc{nullptr}, c_proj{nullptr};
  torch::nn::Dropout dropout{nullptr};
};
TORCH_MODULE(GPT2MLP);

nn::AttentionOptions gpt2_attention(const ModelConfig& c, std::int64_t layer) {
  nn::AttentionOptions o;
  o.hidden = c.hidden_size;
  o.heads = c.num_attention_heads;
  o.layer = layer;
  o.qkv = "c_attn";
  o.o = "c_proj";
  o.layout = WeightLayout::InOut;
  o.dropout = c.attention_probs_dropout_prob;
  const bool scale = c.raw.value("scale_attn_weights", true);
  double s = scale ? 1.0 / std::sqrt(static_cast<double>(c.head_dim())) : 1.0;
  if (c.raw.value("scale_attn_by_inverse_layer_idx", false)) s /= static_cast<double>(layer + 1);
  o.scale = s;
  return o;
}

struct GPT2BlockImpl : torch::nn::Module {
  GPT2BlockImpl(const ModelConfig& c, std::int64_t layer) {
    ln_1 = register_module("ln_1", layer_norm(c.hidden_size, c.layer_norm_eps));
    attn = register_module("attn", nn::Attention(gpt2_attention(c, layer)));
    register_causal_buffers(*attn, c.max_position_embeddings, -1e4);
    ln_2 = register_module("ln_2", layer_norm(c.hidden_size, c.layer_norm_eps));
    mlp = register_module("mlp", GPT2MLP(c, layer));
    attention_adapters = register_module("attention_adapters", nn::AdapterLayer(layer, nn::location::kAttention));
    output_adapters = register_module("output_adapters", nn::AdapterLayer(layer, nn::location::kOutput));
    resid_dropout = register_module("resid_dropout", torch::nn::Dropout(c.hidden_dropout_prob));
  }
  // (B,T,C) -> (B,T,C); the cache slot is this block's
  Tensor forward(const Tensor& x, const LayerArgs& args, nn::LayerKV* cache, ForwardContext& ctx) {
    Tensor a = resid_dropout(attn->forward({ln_1(x), args.mask, Tensor(), Tensor(), cache}, ctx));
    Tensor h = attention_adapters->forward(a, x, nn::Norm(), ctx);
    return output_adapters->forward(mlp->forward(ln_2(h), ctx), h, nn::Norm(), ctx);
  }
  torch::nn::LayerNorm ln_1{nullptr}, ln_2{nullptr};
  nn::Attention attn{nullptr};
  GPT2MLP mlp{nullptr};
  nn::AdapterLayer attention_adapters{nullptr}, output_adapters{nullptr};
  torch::nn::Dropout resid_dropout{nullptr};
};
TORCH_MODULE(GPT2Block);

class GPT2ModelImpl : public BaseModelImpl {
 public:
  explicit GPT2ModelImpl(const ModelConfig& c) : BaseModelImpl(c) {
    wte = register_module("wte", torch::nn::Embedding(c.vocab_size, c.hidden_size));
    wpe = register_module("wpe", torch::nn::Embedding(c.max_position_embeddings, c.hidden_size));
    drop = register_module("drop", torch::nn::Dropout(c.raw.value("embd_pdrop", c.hidden_dropout_prob)));
    h = nn::register_layers<GPT2Block>(*this, "h", c.num_hidden_layers, [&](std::int64_t i) { return GPT2Block(c, i); });
    ln_f = register_module("ln_f", layer_norm(c.hidden_size, c.layer_norm_eps));
  }

 protected:
  void check_inputs(const ModelInputs& in) const override {
    BaseModelImpl::check_inputs(in);
    check_positions_fit(in, config_);
  }
  // (B,T,C) word embeddings: the embedding hook (invertible adapters) acts on them before the
  // positions are added, as in the reference.
  Tensor embed(const ModelInputs& in, LayerArgs&, ForwardContext&) override {
    return in.inputs_embeds.defined() ? in.inputs_embeds : wte(in.input_ids);
  }
  Tensor attention_mask(const Tensor& x, const LayerArgs& args) const override {
    return causal_mask(x, args, /*add_padding_to_causal=*/true);
  }
  std::int64_t num_layers() const override { return static_cast<std::int64_t>(h.size()); }
  Tensor layer(std::int64_t i, const Tensor& x, LayerArgs& args, ForwardContext& ctx) override {
    Tensor in = x;
    if (i == 0) {
      in = x + wpe(positions(x, args));
      if (args.inputs->token_type_ids.defined()) in = in + wte(args.inputs->token_type_ids);
      in = drop(in);
    }
    nn::LayerKV* slot = args.cache ? args.cache->layer(static_cast<std::size_t>(i)) : nullptr;
    return h[static_cast<std::size_t>(i)]->forward(in, args, slot, ctx);
  }
  BaseModelOutput finish(const Tensor& x, const LayerArgs& args, ForwardContext&) override {
    Tensor out = ln_f(x);
    return {out, Tensor(), last_token_summary(out, args.input_ids, configured_pad_token(config_))};
  }

 private:
  torch::nn::Embedding wte{nullptr}, wpe{nullptr};
  torch::nn::Dropout drop{nullptr};
  std::vector<GPT2Block> h;  // "h.<i>"
  torch::nn::LayerNorm ln_f{nullptr};
};

}  // namespace

ArchSpec gpt2_arch() {
  ArchSpec spec;
  spec.model_type = "gpt2";
  spec.base_prefix = "transformer";
  spec.model_class = "GPT2AdapterModel";
  spec.create = [](const ModelConfig& c) { return std::make_shared<GPT2ModelImpl>(c); };
  spec.base_roots = {"wte", "wpe", "h", "ln_f"};
  spec.word_embeddings = "wte.weight";
  spec.kind = ArchKind::Decoder;
  spec.static_heads = decoder_static_heads(false);
  spec.module_roles = {{"c_attn", "q,k,v"}, {"attn.c_proj", nn::role::kAttentionOut}, {"c_fc", nn::role::kIntermediate},
                       {"mlp.c_proj", nn::role::kOutput}};
  spec.unsupported_methods = generative_unsupported_methods();
  return spec;
}

}  // namespace adapters::models
