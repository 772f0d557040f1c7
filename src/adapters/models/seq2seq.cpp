// The encoder-decoder skeleton: input checks, the encoder pass, the decoder pass.
#include "adapters/models/seq2seq.h"

#include <torch/torch.h>

#include "adapters/core/error.h"
#include "adapters/nn/residual_site.h"

namespace adapters::models {

using torch::Tensor;

Tensor shift_tokens_right(const Tensor& ids, std::int64_t pad_token_id, std::int64_t decoder_start_token_id) {
  Tensor shifted = torch::empty_like(ids);
  shifted.slice(1, 1).copy_(ids.slice(1, 0, -1));
  shifted.select(1, 0).fill_(decoder_start_token_id);
  return shifted.masked_fill(shifted.eq(-100), pad_token_id);
}

std::int64_t EncoderDecoderModelImpl::batch_size(const ModelInputs& in) const {
  for (const Tensor* t : {&in.input_ids, &in.decoder_input_ids, &in.inputs_embeds, &in.encoder_hidden_states}) {
    if (t->defined()) return t->size(0);
  }
  throw Error(str(config_.model_type, " forward: no input (expected input_ids, inputs_embeds or encoder_hidden_states)"));
}

void EncoderDecoderModelImpl::check_inputs(const ModelInputs& in) const {
  const std::string where = config_.model_type + " forward";
  if (!in.encoder_hidden_states.defined()) {
    ModelInputs encoder = in;
    encoder.cache = nullptr;  // the cache is the decoder's
    BaseModelImpl::check_inputs(encoder);
  } else {
    const Tensor& e = in.encoder_hidden_states;
    ADAPTERS_CHECK(e.dim() == 3 && e.size(2) == config_.hidden_size, where, ": encoder_hidden_states must be (B,T,",
                   config_.hidden_size, "), found ", e.sizes());
    if (in.attention_mask.defined()) {
      ADAPTERS_CHECK(in.attention_mask.dim() == 2 && in.attention_mask.size(1) == e.size(1), where,
                     ": attention_mask must cover the encoder states (B,", e.size(1), "), found ", in.attention_mask.sizes());
    }
  }
  ADAPTERS_CHECK(in.decoder_input_ids.defined() || in.input_ids.defined(), where,
                 ": expected decoder_input_ids (or input_ids to derive them from)");
  if (in.decoder_input_ids.defined()) {
    const Tensor& d = in.decoder_input_ids;
    ADAPTERS_CHECK(d.dim() == 2 && d.scalar_type() == torch::kLong, where, ": decoder_input_ids must be (B,T) int64, found ",
                   d.sizes(), " ", d.scalar_type());
    if (d.numel() > 0) {
      const auto lo = d.min().item<std::int64_t>(), hi = d.max().item<std::int64_t>();
      ADAPTERS_CHECK(lo >= 0 && hi < config_.vocab_size, where, ": decoder_input_ids must lie in [0, ", config_.vocab_size,
                     "), found [", lo, ", ", hi, "]");
    }
    const std::int64_t past = in.cache ? in.cache->length() : 0;
    if (in.decoder_attention_mask.defined()) {
      ADAPTERS_CHECK(in.decoder_attention_mask.sizes() == torch::IntArrayRef({d.size(0), past + d.size(1)}), where,
                     ": decoder_attention_mask must be (", d.size(0), ", ", past + d.size(1), "), found ",
                     in.decoder_attention_mask.sizes());
    }
  }
}

std::int64_t EncoderDecoderModelImpl::decoder_start_token_id() const {
  const json& raw = config_.raw;
  ADAPTERS_CHECK(raw.contains("decoder_start_token_id") && raw["decoder_start_token_id"].is_number_integer(),
                 config_.model_type, ": config.json has no decoder_start_token_id to derive decoder_input_ids with",
                 " (give decoder_input_ids)");
  return raw["decoder_start_token_id"].get<std::int64_t>();
}

Tensor EncoderDecoderModelImpl::decoder_mask(const Tensor& h, const LayerArgs& args) const {
  return causal_mask(h, args, /*add_padding_to_causal=*/false);
}

nn::LayerKV* EncoderDecoderModelImpl::self_slot(const LayerArgs& args, std::int64_t decoder_layer) {
  return args.cache ? args.cache->layer(static_cast<std::size_t>(2 * decoder_layer)) : nullptr;
}

nn::LayerKV* EncoderDecoderModelImpl::cross_slot(const LayerArgs& args, std::int64_t decoder_layer) {
  return args.cache ? args.cache->layer(static_cast<std::size_t>(2 * decoder_layer + 1)) : nullptr;
}

BaseModelOutput EncoderDecoderModelImpl::run(const ModelInputs& in, nn::ForwardContext& ctx) {
  const std::int64_t Ne = encoder_layers();
  Tensor encoded = in.encoder_hidden_states;  // (B,Ts,C)
  Tensor encoder_padding = in.attention_mask;  // (B,Ts) or undefined
  if (!encoded.defined()) {
    ModelInputs encoder_inputs = in;  // the encoder reads no cache
    encoder_inputs.cache = nullptr;
    LayerArgs args = stack_args(encoder_inputs, in.input_ids, in.attention_mask, in.filler);
    Tensor h = embed(in, args, ctx);
    h = hooks_.embeddings(std::move(h), args.attention_mask, ctx);
    args.mask = attention_mask(h, args);
    h = run_layers(std::move(h), 0, Ne, args, ctx);
    encoded = finish_encoder(h, args, ctx);
    encoder_padding = args.attention_mask;
  }
  Tensor decoder_ids = in.decoder_input_ids.defined() ? in.decoder_input_ids : shift_right(in.input_ids);
  // A Parallel block in the encoder replicated its batch: the decoder's inputs follow.
  decoder_ids = nn::match_batch(decoder_ids, encoded);
  Tensor decoder_padding = in.decoder_attention_mask.defined() ? nn::match_batch(in.decoder_attention_mask, encoded)
                                                                : Tensor();
  LayerArgs args = stack_args(in, decoder_ids, decoder_padding, Tensor());
  remember_filler(args);
  args.position_ids = Tensor();
  args.encoder_hidden_states = encoded;
  if (encoder_padding.defined()) {
    nn::MaskSpec spec;
    spec.padding = nn::match_batch(encoder_padding, encoded);
    spec.query_length = decoder_ids.size(1);
    spec.key_length = encoded.size(1);
    args.encoder_mask = nn::build_attention_mask(spec, encoded.scalar_type(), encoded.device());  // (B,1,1,Ts)
  }
  Tensor h = embed_decoder(args, ctx);
  args.mask = decoder_mask(h, args);
  h = run_layers(std::move(h), Ne, num_layers(), args, ctx);
  BaseModelOutput out = finish(h, args, ctx);
  out.encoder_last_hidden_state = encoded;
  return out;
}

}  // namespace adapters::models
