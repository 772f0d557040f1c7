// T5 and MT5: a shared token embedding (unscaled), pre-norm blocks with T5LayerNorm (RMS: no mean,
// no bias), unscaled attention with a relative position bias (log buckets, bidirectional in the
// encoder, causal in the decoder) that the first block owns and every block shares, and a ReLU or
// gated-GELU feed-forward (feed_forward_proj). Each T5Layer* module is itself the residual site, as
// in the reference (keys "block.<i>.layer.<j>.adapters.<name>"). With tied embeddings the heads
// read the decoder output rescaled by d_model^-0.5, as the reference's T5AdapterModel does
// (last_hidden_state stays the stack's output).
#include <torch/torch.h>

#include <cmath>

#include "adapters/core/error.h"
#include "adapters/models/architectures.h"
#include "adapters/models/blocks.h"
#include "adapters/models/decoder_common.h"
#include "adapters/models/seq2seq.h"
#include "adapters/nn/activation.h"
#include "adapters/nn/composer.h"
#include "adapters/nn/module_dict.h"

namespace adapters::models {
namespace {

using nn::ForwardContext;
using torch::Tensor;

using T5LayerNorm = blocks::RMSNorm;  // no mean, no bias

// feed_forward_proj "relu" / "gelu" / "gated-gelu" / "gated-silu": (gated, activation).
std::pair<bool, std::string> feed_forward(const ModelConfig& c) {
  const std::string proj = c.raw.value("feed_forward_proj", std::string("relu"));
  const bool gated = proj.rfind("gated-", 0) == 0;
  std::string act = gated ? proj.substr(6) : proj;
  ADAPTERS_CHECK(!act.empty() && act.find('-') == std::string::npos, "config.json: feed_forward_proj '", proj,
                 "' is not of the form {ACT} or gated-{ACT}");
  if (proj == "gated-gelu") act = "gelu_new";  // as transformers' T5Config
  return {gated, act};
}

struct T5DenseImpl : torch::nn::Module {
  T5DenseImpl(const ModelConfig& c, std::int64_t layer) {
    auto [is_gated, act_name] = feed_forward(c);
    gated = is_gated;
    act = nn::resolve_activation(act_name, "config.json: feed_forward_proj");
    if (gated) {
      wi_0 = register_module("wi_0", torch::nn::Linear(torch::nn::LinearOptions(c.hidden_size, c.intermediate_size).bias(false)));
      wi_1 = register_module("wi_1", nn::AdaptedLinear(c.hidden_size, c.intermediate_size, false, layer, nn::role::kIntermediate));
    } else {
      wi = register_module("wi", nn::AdaptedLinear(c.hidden_size, c.intermediate_size, false, layer, nn::role::kIntermediate));
    }
    wo = register_module("wo", nn::AdaptedLinear(c.intermediate_size, c.hidden_size, false, layer, nn::role::kOutput));
    dropout = register_module("dropout", torch::nn::Dropout(c.hidden_dropout_prob));
  }
  // (B,T,C) -> (B,T,C)
  Tensor forward(const Tensor& x, ForwardContext& ctx) {
    Tensor h = gated ? act(wi_0(x)) * wi_1->forward(x, ctx) : act(wi->forward(x, ctx));
    return wo->forward(dropout(h), ctx);
  }
  bool gated = false;
  nn::Activation act;
  torch::nn::Linear wi_0{nullptr};
  nn::AdaptedLinear wi{nullptr}, wi_1{nullptr}, wo{nullptr};
  torch::nn::Dropout dropout{nullptr};
};
TORCH_MODULE(T5Dense);

// The bucket of each relative position (key - query), as Mesh TensorFlow / transformers.
Tensor relative_position_bucket(Tensor relative, bool bidirectional, std::int64_t num_buckets, std::int64_t max_distance) {
  Tensor buckets = torch::zeros_like(relative);
  if (bidirectional) {
    num_buckets /= 2;
    buckets = buckets + relative.gt(0).to(torch::kLong) * num_buckets;
    relative = relative.abs();
  } else {
    relative = -torch::min(relative, torch::zeros_like(relative));
  }
  const std::int64_t max_exact = num_buckets / 2;
  const Tensor is_small = relative.lt(max_exact);
  Tensor large = max_exact + (torch::log(relative.to(torch::kFloat) / static_cast<double>(max_exact)) /
                              std::log(static_cast<double>(max_distance) / static_cast<double>(max_exact)) *
                              static_cast<double>(num_buckets - max_exact))
                                 .to(torch::kLong);
  large = torch::min(large, torch::full_like(large, num_buckets - 1));
  return buckets + torch::where(is_small, relative, large);
}

nn::AttentionOptions t5_attention(const ModelConfig& c, std::int64_t layer, const char* location, bool cross) {
  nn::AttentionOptions o;
  o.hidden = c.hidden_size;
  o.heads = c.num_attention_heads;
  o.head_dim = c.head_dim();
  o.layer = layer;
  o.q = "q";
  o.k = "k";
  o.v = "v";
  o.o = "o";
  o.qkv_bias = false;
  o.o_bias = false;
  o.scale = 1.0;
  o.dropout = c.hidden_dropout_prob;  // T5's dropout_rate
  o.prefix_location = location;
  o.cross = cross;
  return o;
}

// T5LayerSelfAttention / T5LayerCrossAttention / T5LayerFF: norm, sublayer, dropout, and this
// module's own residual site (no norm after: pre-norm).
struct T5SublayerImpl : torch::nn::Module {
  T5SublayerImpl(const ModelConfig& c, std::int64_t layer, const char* location) : site(layer, location) {
    layer_norm = register_module("layer_norm", T5LayerNorm(c.hidden_size, c.layer_norm_eps));
    dropout = register_module("dropout", torch::nn::Dropout(c.hidden_dropout_prob));
  }
  template <typename F>
  Tensor wrap(const Tensor& x, F&& body, ForwardContext& ctx) {
    return site.forward(dropout(body(layer_norm(x))), x, nn::Norm(), ctx);
  }
  T5LayerNorm layer_norm{nullptr};
  torch::nn::Dropout dropout{nullptr};
  nn::ResidualSite site;
};

struct T5LayerSelfAttentionImpl : T5SublayerImpl {
  T5LayerSelfAttentionImpl(const ModelConfig& c, std::int64_t layer, bool decoder, bool has_bias)
      : T5SublayerImpl(c, layer, nn::location::kAttention) {
    SelfAttention = register_module("SelfAttention", nn::Attention(t5_attention(c, layer, decoder ? "self_prefix" : "encoder_prefix", false)));
    if (has_bias) {
      relative_attention_bias = SelfAttention->register_module(
          "relative_attention_bias", torch::nn::Embedding(c.raw.value("relative_attention_num_buckets", 32), c.num_attention_heads));
    }
    site.register_in(*this);
  }
  Tensor forward(const Tensor& x, const LayerArgs& args, const nn::ScoreBias& bias, nn::LayerKV* cache, ForwardContext& ctx) {
    return wrap(x, [&](const Tensor& t) { return SelfAttention->forward({t, args.mask, Tensor(), Tensor(), cache, bias}, ctx); }, ctx);
  }
  nn::Attention SelfAttention{nullptr};
  torch::nn::Embedding relative_attention_bias{nullptr};
};
TORCH_MODULE(T5LayerSelfAttention);

struct T5LayerCrossAttentionImpl : T5SublayerImpl {
  T5LayerCrossAttentionImpl(const ModelConfig& c, std::int64_t layer) : T5SublayerImpl(c, layer, nn::location::kCrossAttention) {
    EncDecAttention = register_module("EncDecAttention", nn::Attention(t5_attention(c, layer, "cross_prefix", true)));
    site.register_in(*this);
  }
  Tensor forward(const Tensor& x, const LayerArgs& args, nn::LayerKV* cache, ForwardContext& ctx) {
    return wrap(x, [&](const Tensor& t) {
      return EncDecAttention->forward({t, args.encoder_mask, args.encoder_hidden_states, Tensor(), cache}, ctx);
    }, ctx);
  }
  nn::Attention EncDecAttention{nullptr};
};
TORCH_MODULE(T5LayerCrossAttention);

struct T5LayerFFImpl : T5SublayerImpl {
  T5LayerFFImpl(const ModelConfig& c, std::int64_t layer) : T5SublayerImpl(c, layer, nn::location::kOutput) {
    DenseReluDense = register_module("DenseReluDense", T5Dense(c, layer));
    site.register_in(*this);
  }
  Tensor forward(const Tensor& x, ForwardContext& ctx) {
    return wrap(x, [&](const Tensor& t) { return DenseReluDense->forward(t, ctx); }, ctx);
  }
  T5Dense DenseReluDense{nullptr};
};
TORCH_MODULE(T5LayerFF);

struct T5BlockImpl : torch::nn::Module {
  T5BlockImpl(const ModelConfig& c, std::int64_t layer, bool decoder, bool has_bias) {
    self_attention = T5LayerSelfAttention(c, layer, decoder, has_bias);
    layer_list->push_back(self_attention);
    if (decoder) {
      cross_attention = T5LayerCrossAttention(c, layer);
      layer_list->push_back(cross_attention);
    }
    feed_forward = T5LayerFF(c, layer);
    layer_list->push_back(feed_forward);
    register_module("layer", layer_list);
  }
  Tensor forward(const Tensor& x, const LayerArgs& args, const nn::ScoreBias& bias, nn::LayerKV* self_cache,
                 nn::LayerKV* cross_cache, ForwardContext& ctx) {
    Tensor h = self_attention->forward(x, args, bias, self_cache, ctx);
    if (cross_attention) h = cross_attention->forward(h, args, cross_cache, ctx);
    return feed_forward->forward(h, ctx);
  }
  torch::nn::ModuleList layer_list;  // "layer.<j>"
  T5LayerSelfAttention self_attention{nullptr};
  T5LayerCrossAttention cross_attention{nullptr};
  T5LayerFF feed_forward{nullptr};
};
TORCH_MODULE(T5Block);

// T5Stack: embed_tokens is the model's `shared` (tied, not registered again).
struct T5StackImpl : torch::nn::Module {
  T5StackImpl(const ModelConfig& c, torch::nn::Embedding shared, bool decoder, std::int64_t first_layer)
      : embed_tokens(std::move(shared)),
        is_decoder(decoder),
        num_buckets(c.raw.value("relative_attention_num_buckets", static_cast<std::int64_t>(32))),
        max_distance(c.raw.value("relative_attention_max_distance", static_cast<std::int64_t>(128))) {
    const std::int64_t n = decoder ? c.num_decoder_layers : c.num_hidden_layers;
    block = nn::register_layers<T5Block>(*this, "block", n, [&](std::int64_t i) {
      return T5Block(c, first_layer + i, decoder, i == 0);
    });
    final_layer_norm = register_module("final_layer_norm", T5LayerNorm(c.hidden_size, c.layer_norm_eps));
    dropout = register_module("dropout", torch::nn::Dropout(c.hidden_dropout_prob));
  }
  Tensor embed(const Tensor& ids, const Tensor& inputs_embeds) {
    return dropout(inputs_embeds.defined() ? inputs_embeds : embed_tokens(ids));
  }
  // (1,H,Tq,Tk) over the keys after the prefix site: query i at position past + i, key j at j;
  // (B,H,Tq,Tk) when rows' keys start `shift` (B) columns late (shorter prefixes padded on the left).
  Tensor position_bias(const nn::AttentionState& s, std::int64_t past, const Tensor& shift = Tensor()) {
    const std::int64_t Tq = s.query.size(2), Tk = s.key.size(2);
    auto ids = torch::TensorOptions().dtype(torch::kLong).device(s.query.device());
    Tensor relative = torch::arange(Tk, ids).unsqueeze(0) - torch::arange(past, past + Tq, ids).unsqueeze(1);  // (Tq,Tk)
    if (shift.defined()) relative = relative.unsqueeze(0) - shift.to(s.query.device()).view({-1, 1, 1});  // (B,Tq,Tk)
    const Tensor buckets = relative_position_bucket(relative, !is_decoder, num_buckets, max_distance);
    const Tensor bias = block.front()->self_attention->relative_attention_bias(buckets);  // (...,Tq,Tk,H)
    return (shift.defined() ? bias.permute({0, 3, 1, 2}) : bias.permute({2, 0, 1}).unsqueeze(0)).to(s.query.scalar_type());
  }
  Tensor finish(const Tensor& h) { return dropout(final_layer_norm(h)); }

  torch::nn::Embedding embed_tokens;
  bool is_decoder;
  std::int64_t num_buckets, max_distance;
  std::vector<T5Block> block;  // "block.<i>"
  T5LayerNorm final_layer_norm{nullptr};
  torch::nn::Dropout dropout{nullptr};
};
TORCH_MODULE(T5Stack);

// One adapter per row: each row's keys are its prefix, then `tokens` keys; rows with a shorter
// prefix than the longest were padded on the left (nn::AttentionSite), so their keys start that
// many columns late. (B) int64, or undefined when no row is padded.
Tensor row_key_shift(const nn::AttentionState& s, std::int64_t tokens, const std::string& location,
                     const ForwardContext& ctx) {
  const composition::Block* groups = nn::independent_row_groups(ctx);
  if (groups == nullptr) return Tensor();
  const std::int64_t prefixed = s.key.size(2) - tokens;  // the longest prefix
  std::vector<std::int64_t> shift;
  bool any = false;
  nn::for_each_row_group(*groups, [&](const composition::Block& member, std::int64_t begin, std::int64_t end) {
    std::int64_t own = 0;
    for (const auto& name : member.flatten()) {
      auto adapter = ctx.prefix_states.find(name);
      if (adapter == ctx.prefix_states.end()) continue;
      auto at = adapter->second.find(location);
      if (at != adapter->second.end() && !at->second.empty()) own += at->second.front().key.size(2);
    }
    any = any || own != prefixed;
    shift.insert(shift.end(), static_cast<std::size_t>(end - begin), prefixed - own);
  });
  return any ? torch::tensor(shift, torch::kLong) : Tensor();
}

class T5ModelImpl : public EncoderDecoderModelImpl {
 public:
  explicit T5ModelImpl(const ModelConfig& c) : EncoderDecoderModelImpl(c) {
    shared = register_module("shared", torch::nn::Embedding(c.vocab_size, c.hidden_size));
    encoder = register_module("encoder", T5Stack(c, shared, false, 0));
    decoder = register_module("decoder", T5Stack(c, shared, true, encoder_layers()));
    hooks_.place("invertible_adapters", *encoder);
  }

  Tensor shift_right(const Tensor& ids) const override {
    return shift_tokens_right(ids, config_.pad_token_id, decoder_start_token_id());
  }

 protected:
  std::int64_t encoder_layers() const override { return static_cast<std::int64_t>(encoder->block.size()); }
  std::int64_t num_layers() const override { return static_cast<std::int64_t>(encoder->block.size() + decoder->block.size()); }
  Tensor embed(const ModelInputs& in, LayerArgs&, ForwardContext&) override { return encoder->embed(in.input_ids, in.inputs_embeds); }
  Tensor embed_decoder(LayerArgs& args, ForwardContext&) override { return decoder->embed(args.input_ids, Tensor()); }
  Tensor layer(std::int64_t i, const Tensor& h, LayerArgs& args, ForwardContext& ctx) override {
    const std::int64_t Ne = encoder_layers();
    const bool in_decoder = i >= Ne;
    T5Stack& stack = in_decoder ? decoder : encoder;
    // The first block computes the bias (with the prefix columns of its attention) and every
    // block reuses it, as the reference passes position_bias on.
    const std::string key = in_decoder ? "decoder_position_bias" : "encoder_position_bias";
    const char* location = in_decoder ? nn::attention_location::kSelf : "encoder_prefix";
    nn::ScoreBias bias = [&args, &stack, &ctx, key, location](const nn::AttentionState& s) {
      auto it = args.extras.find(key);
      if (it == args.extras.end() || it->second.size(3) != s.key.size(2)) {
        const Tensor shift = row_key_shift(s, args.past_length + s.query.size(2), location, ctx);
        it = args.extras.insert_or_assign(key, stack->position_bias(s, args.past_length, shift)).first;
      }
      return it->second;
    };
    if (!in_decoder) return encoder->block[static_cast<std::size_t>(i)]->forward(h, args, bias, nullptr, nullptr, ctx);
    const std::int64_t j = i - Ne;
    return decoder->block[static_cast<std::size_t>(j)]->forward(h, args, bias, self_slot(args, j), cross_slot(args, j), ctx);
  }
  Tensor finish_encoder(const Tensor& h, const LayerArgs&, ForwardContext&) override { return encoder->finish(h); }
  BaseModelOutput finish(const Tensor& h, const LayerArgs&, ForwardContext&) override {
    BaseModelOutput out{decoder->finish(h)};
    if (config_.tie_word_embeddings) out.head_input = out.last_hidden_state * std::pow(static_cast<double>(config_.hidden_size), -0.5);
    return out;
  }

 private:
  torch::nn::Embedding shared{nullptr};
  T5Stack encoder{nullptr}, decoder{nullptr};
};

ArchSpec t5_like(std::string model_type, std::string model_class) {
  ArchSpec spec;
  spec.model_type = std::move(model_type);
  spec.base_prefix = "transformer";
  spec.model_class = std::move(model_class);
  spec.create = [](const ModelConfig& c) { return std::make_shared<T5ModelImpl>(c); };
  spec.base_roots = {"shared", "encoder", "decoder"};
  spec.word_embeddings = "shared.weight";
  spec.kind = ArchKind::EncoderDecoder;
  spec.heads_split_hidden = false;  // d_kv x num_heads need not be d_model
  spec.decoder_inputs_from_labels = true;
  spec.tied_keys = {{"encoder.embed_tokens.weight", "shared.weight"}, {"decoder.embed_tokens.weight", "shared.weight"}};
  spec.static_heads = {{"ForConditionalGeneration", "seq2seq_lm",
                        {{"layers", 1}, {"activation_function", nullptr}, {"bias", false}}, {"lm_head"}}};
  spec.module_roles = {{"q", nn::role::kQuery},          {"k", nn::role::kKey},   {"v", nn::role::kValue},
                       {"o", nn::role::kAttentionOut},   {"wi", nn::role::kIntermediate},
                       {"wi_1", nn::role::kIntermediate}, {"wo", nn::role::kOutput}};
  spec.unsupported_methods = generative_unsupported_methods();
  return spec;
}

}  // namespace

ArchSpec t5_arch() { return t5_like("t5", "T5AdapterModel"); }
ArchSpec mt5_arch() { return t5_like("mt5", "MT5AdapterModel"); }

}  // namespace adapters::models
