// BART and MBart: a shared token embedding (scaled by sqrt(d) with scale_embedding), learned
// positions with offset 2 and layernorm_embedding in both stacks; encoder layers (self-attention,
// feed-forward) and decoder layers (self-attention, cross-attention, feed-forward), each sublayer
// ending in a residual site. BART is post-norm (the site applies the sublayer's LayerNorm); MBart
// is pre-norm with a final layer_norm per stack. Sequence heads read the decoder state at the last
// EOS of input_ids, as the reference's BartAdapterModel does.
#include <torch/torch.h>

#include "adapters/core/error.h"
#include "adapters/models/architectures.h"
#include "adapters/models/blocks.h"
#include "adapters/models/decoder_common.h"
#include "adapters/models/seq2seq.h"
#include "adapters/nn/module_dict.h"

namespace adapters::models {
namespace {

using blocks::layer_norm;
using nn::ForwardContext;
using torch::Tensor;

constexpr double kBartLayerNormEps = 1e-5;  // nn.LayerNorm's default; BART's config has no key
constexpr std::int64_t kPositionOffset = 2;

enum class Norm { Post, Pre };  // BART, MBart

std::int64_t config_int(const ModelConfig& c, const char* key, std::int64_t fallback) {
  return c.raw.contains(key) && c.raw[key].is_number_integer() ? c.raw[key].get<std::int64_t>() : fallback;
}
double config_double(const ModelConfig& c, const char* key, double fallback) {
  return c.raw.contains(key) && c.raw[key].is_number() ? c.raw[key].get<double>() : fallback;
}

nn::AttentionOptions bart_attention(const ModelConfig& c, std::int64_t heads, std::int64_t layer, const char* location,
                                    bool cross) {
  nn::AttentionOptions o;
  o.hidden = c.hidden_size;
  o.heads = heads;
  o.layer = layer;
  o.q = "q_proj";
  o.k = "k_proj";
  o.v = "v_proj";
  o.o = "out_proj";
  o.dropout = c.attention_probs_dropout_prob;
  o.prefix_location = location;
  o.cross = cross;
  return o;
}

// Encoder and decoder layers share this: self-attention (and, in the decoder, cross-attention)
// and the feed-forward, each wrapped by its norm and residual site.
struct BartLayerImpl : torch::nn::Module {
  BartLayerImpl(const ModelConfig& c, std::int64_t layer, bool decoder, Norm norm)
      : norm(norm), act(nn::resolve_activation(c.hidden_act, "config.json: activation_function")) {
    const std::int64_t heads = config_int(c, decoder ? "decoder_attention_heads" : "encoder_attention_heads",
                                          c.num_attention_heads);
    const std::int64_t ffn = config_int(c, decoder ? "decoder_ffn_dim" : "encoder_ffn_dim", c.intermediate_size);
    self_attn = register_module("self_attn", nn::Attention(bart_attention(
                                                 c, heads, layer, decoder ? "self_prefix" : "encoder_prefix", false)));
    self_attn_layer_norm = register_module("self_attn_layer_norm", layer_norm(c.hidden_size, kBartLayerNormEps));
    if (decoder) {
      encoder_attn = register_module("encoder_attn", nn::Attention(bart_attention(c, heads, layer, "cross_prefix", true)));
      encoder_attn_layer_norm = register_module("encoder_attn_layer_norm", layer_norm(c.hidden_size, kBartLayerNormEps));
    }
    fc1 = register_module("fc1", nn::AdaptedLinear(c.hidden_size, ffn, true, layer, nn::role::kIntermediate));
    fc2 = register_module("fc2", nn::AdaptedLinear(ffn, c.hidden_size, true, layer, nn::role::kOutput));
    final_layer_norm = register_module("final_layer_norm", layer_norm(c.hidden_size, kBartLayerNormEps));
    attention_adapters = register_module("attention_adapters", nn::AdapterLayer(layer, nn::location::kAttention));
    if (decoder) {
      cross_attention_adapters =
          register_module("cross_attention_adapters", nn::AdapterLayer(layer, nn::location::kCrossAttention));
    }
    output_adapters = register_module("output_adapters", nn::AdapterLayer(layer, nn::location::kOutput));
    dropout = register_module("dropout", torch::nn::Dropout(c.hidden_dropout_prob));
    activation_dropout = register_module("activation_dropout", torch::nn::Dropout(config_double(c, "activation_dropout", 0.0)));
  }

  // x (B,T,C) -> (B,T,C): norm first (pre-norm), the sublayer, dropout, the residual site.
  template <typename F>
  Tensor sublayer(const Tensor& x, torch::nn::LayerNorm& ln, nn::AdapterLayer& site, F&& body, ForwardContext& ctx) {
    if (norm == Norm::Pre) return site->forward(dropout(body(ln(x))), x, nn::Norm(), ctx);
    return site->forward(dropout(body(x)), x, [&ln](const Tensor& t) { return ln(t); }, ctx);
  }

  Tensor forward(const Tensor& x, const LayerArgs& args, nn::LayerKV* self_cache, nn::LayerKV* cross_cache,
                 ForwardContext& ctx) {
    Tensor h = sublayer(x, self_attn_layer_norm, attention_adapters,
                        [&](const Tensor& t) { return self_attn->forward({t, args.mask, Tensor(), Tensor(), self_cache}, ctx); },
                        ctx);
    if (encoder_attn) {
      h = sublayer(h, encoder_attn_layer_norm, cross_attention_adapters,
                   [&](const Tensor& t) {
                     return encoder_attn->forward({t, args.encoder_mask, args.encoder_hidden_states, Tensor(), cross_cache}, ctx);
                   },
                   ctx);
    }
    return sublayer(h, final_layer_norm, output_adapters,
                    [&](const Tensor& t) { return fc2->forward(activation_dropout(act(fc1->forward(t, ctx))), ctx); }, ctx);
  }

  Norm norm;
  nn::Activation act;
  nn::Attention self_attn{nullptr}, encoder_attn{nullptr};
  torch::nn::LayerNorm self_attn_layer_norm{nullptr}, encoder_attn_layer_norm{nullptr}, final_layer_norm{nullptr};
  nn::AdaptedLinear fc1{nullptr}, fc2{nullptr};
  nn::AdapterLayer attention_adapters{nullptr}, cross_attention_adapters{nullptr}, output_adapters{nullptr};
  torch::nn::Dropout dropout{nullptr}, activation_dropout{nullptr};
};
TORCH_MODULE(BartLayer);

// BartEncoder / BartDecoder: embed_tokens is the model's `shared` (tied, not registered again).
struct BartStackImpl : torch::nn::Module {
  BartStackImpl(const ModelConfig& c, torch::nn::Embedding shared, bool decoder, Norm norm, std::int64_t first_layer)
      : embed_tokens(std::move(shared)),
        embed_scale(c.raw.value("scale_embedding", false) ? std::sqrt(static_cast<double>(c.hidden_size)) : 1.0) {
    const std::int64_t n = decoder ? c.num_decoder_layers : config_int(c, "encoder_layers", c.num_hidden_layers);
    embed_positions = register_module(
        "embed_positions", torch::nn::Embedding(c.max_position_embeddings + kPositionOffset, c.hidden_size));
    layers = nn::register_layers<BartLayer>(*this, "layers", n, [&](std::int64_t i) {
      return BartLayer(c, first_layer + i, decoder, norm);
    });
    layernorm_embedding = register_module("layernorm_embedding", layer_norm(c.hidden_size, kBartLayerNormEps));
    if (norm == Norm::Pre) layer_norm_ = register_module("layer_norm", layer_norm(c.hidden_size, kBartLayerNormEps));
    dropout = register_module("dropout", torch::nn::Dropout(c.hidden_dropout_prob));
  }
  // ids (B,T) or embeddings (B,T,C), after the stack's cached positions -> (B,T,C)
  Tensor embed(const Tensor& ids, const Tensor& inputs_embeds, const LayerArgs& args) {
    Tensor h = inputs_embeds.defined() ? inputs_embeds : embed_tokens(ids) * embed_scale;
    auto long_options = torch::TensorOptions().dtype(torch::kLong).device(h.device());
    const std::int64_t past = args.past_length;
    h = h + embed_positions(shifted_positions(torch::arange(past, past + h.size(1), long_options).unsqueeze(0), args) +
                            kPositionOffset);
    return dropout(layernorm_embedding(h));
  }
  Tensor finish(const Tensor& h) { return layer_norm_ ? layer_norm_(h) : h; }

  torch::nn::Embedding embed_tokens;
  double embed_scale;
  torch::nn::Embedding embed_positions{nullptr};
  std::vector<BartLayer> layers;  // "layers.<i>"
  torch::nn::LayerNorm layernorm_embedding{nullptr}, layer_norm_{nullptr};
  torch::nn::Dropout dropout{nullptr};
};
TORCH_MODULE(BartStack);

// (B,C): the decoder state at each row's last EOS of input_ids (every row must have as many).
Tensor last_eos_summary(const Tensor& h, const Tensor& input_ids, std::int64_t eos_token_id) {
  if (!input_ids.defined() || input_ids.size(1) != h.size(1)) return Tensor();
  const Tensor eos = nn::match_batch(input_ids.eq(eos_token_id), h.select(2, 0));  // (B,T)
  const Tensor counts = eos.sum(1);
  if (counts.numel() == 0 || counts.min().item<std::int64_t>() == 0) return Tensor();
  ADAPTERS_CHECK(counts.min().item<std::int64_t>() == counts.max().item<std::int64_t>(),
                 "sequence classification: all examples must have the same number of <eos> tokens (",
                 eos_token_id, "), found ", counts.min().item<std::int64_t>(), " to ", counts.max().item<std::int64_t>());
  const Tensor positions = torch::arange(h.size(1), input_ids.options()).expand_as(eos);
  const Tensor last = torch::where(eos, positions, torch::full_like(positions, -1)).amax(1);  // (B)
  return h.index({torch::arange(h.size(0), last.options()), last});
}

class BartModelImpl : public EncoderDecoderModelImpl {
 public:
  BartModelImpl(const ModelConfig& c, Norm norm) : EncoderDecoderModelImpl(c), norm_(norm) {
    shared = register_module("shared", torch::nn::Embedding(torch::nn::EmbeddingOptions(c.vocab_size, c.hidden_size)
                                                                  .padding_idx(c.pad_token_id)));
    encoder = register_module("encoder", BartStack(c, shared, false, norm, 0));
    decoder = register_module("decoder", BartStack(c, shared, true, norm, encoder_layers()));
    hooks_.place("invertible_adapters", *encoder);
  }

  Tensor shift_right(const Tensor& ids) const override {
    if (norm_ == Norm::Post) return shift_tokens_right(ids, config_.pad_token_id, decoder_start_token_id());
    // MBart: the last non-pad token (the language id) wraps around to the front.
    Tensor out = ids.masked_fill(ids.eq(-100), config_.pad_token_id);
    const Tensor last = (out.ne(config_.pad_token_id).sum(1) - 1).clamp_min(0).unsqueeze(1);
    const Tensor start = out.gather(1, last);
    return torch::cat({start, out.slice(1, 0, -1)}, 1);
  }

  // BartScaledWordEmbedding: the scale is part of the embedding module.
  Tensor input_embeddings(const Tensor& input_ids) const override {
    return torch::embedding(encoder->embed_tokens->weight, input_ids) * encoder->embed_scale;
  }

 protected:
  void check_inputs(const ModelInputs& in) const override {
    EncoderDecoderModelImpl::check_inputs(in);
    check_positions_fit(in, config_);
    if (in.decoder_input_ids.defined()) {
      const std::int64_t past = in.cache ? in.cache->length() : 0;
      ADAPTERS_CHECK(past + in.decoder_input_ids.size(1) <= config_.max_position_embeddings, config_.model_type,
                     " forward: ", past + in.decoder_input_ids.size(1), " decoder tokens exceed the model's ",
                     config_.max_position_embeddings, " positions");
    }
  }
  std::int64_t encoder_layers() const override { return static_cast<std::int64_t>(encoder->layers.size()); }
  std::int64_t num_layers() const override {
    return static_cast<std::int64_t>(encoder->layers.size() + decoder->layers.size());
  }
  Tensor embed(const ModelInputs& in, LayerArgs& args, ForwardContext&) override {
    return encoder->embed(in.input_ids, in.inputs_embeds, args);
  }
  Tensor embed_decoder(LayerArgs& args, ForwardContext&) override { return decoder->embed(args.input_ids, Tensor(), args); }
  Tensor decoder_mask(const Tensor& h, const LayerArgs& args) const override {
    return causal_mask(h, args, /*add_padding_to_causal=*/true);
  }
  Tensor layer(std::int64_t i, const Tensor& h, LayerArgs& args, ForwardContext& ctx) override {
    const std::int64_t Ne = encoder_layers();
    if (i < Ne) return encoder->layers[static_cast<std::size_t>(i)]->forward(h, args, nullptr, nullptr, ctx);
    return decoder->layers[static_cast<std::size_t>(i - Ne)]->forward(h, args, self_slot(args, i - Ne),
                                                                       cross_slot(args, i - Ne), ctx);
  }
  Tensor finish_encoder(const Tensor& h, const LayerArgs&, ForwardContext&) override { return encoder->finish(h); }
  BaseModelOutput finish(const Tensor& h, const LayerArgs& args, ForwardContext&) override {
    Tensor out = decoder->finish(h);
    const std::int64_t eos = config_.raw.value("eos_token_id", static_cast<std::int64_t>(2));
    return {out, Tensor(), last_eos_summary(out, args.inputs->input_ids, eos)};
  }

 private:
  Norm norm_;
  torch::nn::Embedding shared{nullptr};
  BartStack encoder{nullptr}, decoder{nullptr};
};

ArchSpec bart_like(std::string model_type, std::string model_class, Norm norm) {
  ArchSpec spec;
  spec.model_type = std::move(model_type);
  spec.base_prefix = "model";
  spec.model_class = std::move(model_class);
  spec.create = [norm](const ModelConfig& c) { return std::make_shared<BartModelImpl>(c, norm); };
  spec.base_roots = {"shared", "encoder", "decoder"};
  spec.word_embeddings = "shared.weight";
  spec.kind = ArchKind::EncoderDecoder;
  spec.tied_keys = {{"encoder.embed_tokens.weight", "shared.weight"}, {"decoder.embed_tokens.weight", "shared.weight"}};
  // Labels without decoder inputs are shifted into them, as BartForConditionalGeneration does (the
  // reference's flexible-head BartAdapterModel would shift input_ids instead, teaching the decoder
  // to copy the source; with decoder_input_ids given, as in its fixtures, both agree).
  spec.decoder_inputs_from_labels = true;
  spec.static_heads = {
      {"ForConditionalGeneration", "seq2seq_lm", {{"layers", 1}, {"activation_function", nullptr}, {"bias", false}},
       {"lm_head"}},
      {"ForSequenceClassification", "classification",
       {{"layers", 2}, {"activation_function", "tanh"}, {"use_pooler", false}},
       {"", "classification_head.dense", "", "", "classification_head.out_proj"}},
      {"ForQuestionAnswering", "question_answering",
       {{"layers", 1}, {"activation_function", nullptr}, {"num_labels", 2}}, {"", "qa_outputs"}},
  };
  spec.module_roles = {{"q_proj", nn::role::kQuery},       {"k_proj", nn::role::kKey}, {"v_proj", nn::role::kValue},
                       {"out_proj", nn::role::kAttentionOut}, {"fc1", nn::role::kIntermediate}, {"fc2", nn::role::kOutput}};
  spec.unsupported_methods = generative_unsupported_methods();
  return spec;
}

}  // namespace

ArchSpec bart_arch() { return bart_like("bart", "BartAdapterModel", Norm::Post); }
ArchSpec mbart_arch() { return bart_like("mbart", "MBartAdapterModel", Norm::Pre); }

}  // namespace adapters::models
