// The encoder-decoder skeleton (BART, MBart, T5, MT5). One forward runs the base model's stack
// twice through the same hook points:
//   encoder (unless its states are given): embed -> embedding hook (invertible adapters, on the
//     encoder only, as the reference) -> padding mask -> layers [0, Ne) -> finish_encoder;
//   decoder: decoder_input_ids (given, or the architecture's shift of input_ids) matched to the
//     encoder's batch (a Parallel block may have replicated it) -> embed_decoder -> causal mask
//     over the cache and the new tokens -> layers [Ne, Ne + Nd) -> finish.
// Layer indices are model-global (decoder layer i is Ne + i), as the reference numbers them for
// leave_out and the layer-output hook. The cache holds the decoder's attentions: slot 2i is
// decoder layer i's self-attention, slot 2i+1 its cross-attention (computed once).
#pragma once

#include "adapters/models/base_model.h"

namespace adapters::models {

class EncoderDecoderModelImpl : public BaseModelImpl {
 public:
  using BaseModelImpl::BaseModelImpl;

  std::int64_t batch_size(const ModelInputs& inputs) const override;
  // The decoder inputs the architecture derives from token ids (labels or input_ids) when none
  // are given: shifted right behind the decoder start token, -100 replaced by the pad token.
  virtual torch::Tensor shift_right(const torch::Tensor& ids) const = 0;
  // config.json's decoder_start_token_id; a clear error when it has none.
  std::int64_t decoder_start_token_id() const;

  std::int64_t num_encoder_layers() const { return encoder_layers(); }

 protected:
  void check_inputs(const ModelInputs& inputs) const override;
  BaseModelOutput run(const ModelInputs& inputs, nn::ForwardContext& ctx) override;

  // The encoder: embed() and layer(i < Ne) of the base model, then this.
  virtual std::int64_t encoder_layers() const = 0;
  virtual torch::Tensor finish_encoder(const torch::Tensor& h, const LayerArgs& args, nn::ForwardContext& ctx) = 0;
  // The decoder: (B,Td,C) embeddings of args.input_ids, layer(i >= Ne), then finish().
  virtual torch::Tensor embed_decoder(LayerArgs& args, nn::ForwardContext& ctx) = 0;
  virtual torch::Tensor decoder_mask(const torch::Tensor& h, const LayerArgs& args) const;
  // This decoder layer's cache slots (null without a cache).
  static nn::LayerKV* self_slot(const LayerArgs& args, std::int64_t decoder_layer);
  static nn::LayerKV* cross_slot(const LayerArgs& args, std::int64_t decoder_layer);
};

// BART's and T5's shift: [start, ids[:, :-1]] with -100 -> pad.
torch::Tensor shift_tokens_right(const torch::Tensor& ids, std::int64_t pad_token_id, std::int64_t decoder_start_token_id);

}  // namespace adapters::models
