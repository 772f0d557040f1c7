// The one attention-mask builder. Every architecture and the prefix site describe what may be
// attended (padding, causality, a sliding window, the offset of a key/value cache, prefix columns)
// and get the additive mask (B|1, 1, Tq|1, Tk): 0 where a query attends a key, the dtype's lowest
// value where it does not. Shapes stay broadcastable: a padding-only mask is (B,1,1,Tk), HF's
// extended attention mask, so the encoder path costs what it always did.
#pragma once

#include <torch/types.h>

namespace adapters::nn {

struct MaskSpec {
  torch::Tensor padding{};        // (B,Tk) 1 = attend, 0 = padding; undefined = every key is real
  std::int64_t query_length = 0;  // Tq (the new tokens of this step)
  std::int64_t key_length = 0;    // Tk = past_length + Tq for self-attention
  std::int64_t past_length = 0;   // query i sits at position past_length + i (a cached decode step)
  bool causal = false;            // query at position p sees keys at positions <= p
  std::int64_t sliding_window = 0;  // > 0: and only keys at positions > p - sliding_window
  // Padded queries see nothing (DeBERTa's (B,1,T,T) = m_i * m_j); the softmax then gives zeros.
  bool mask_padded_queries = false;
  // HF's older decoders (GPT-2, GPT-J, BART in transformers 4.26) add the padding mask to the
  // causal mask instead of combining them, so a key that is both in the future and padding gets
  // lowest + lowest = -inf. Only the rows of padded queries see the difference; set this to match
  // them exactly.
  bool add_padding_to_causal = false;
};

// The dtype's most negative finite value (HF's torch.finfo(dtype).min).
double lowest_value(torch::ScalarType dtype);

// The additive mask for `spec` in `dtype` on `device`; undefined when nothing is masked.
torch::Tensor build_attention_mask(const MaskSpec& spec, torch::ScalarType dtype, const torch::Device& device);

// Prepends `columns` always-attended key columns (prefix keys): (B,1,Tq,Tk) -> (B,1,Tq,P+Tk) with
// `fill` in the new columns (0: attended).
torch::Tensor prepend_mask_columns(const torch::Tensor& mask, std::int64_t columns, double fill = 0.0);

}  // namespace adapters::nn
