// The attention-mask builder: padding, causal, sliding window, cache offset, prefix columns.
#include "adapters/nn/mask.h"

#include <torch/torch.h>

#include <limits>

#include "adapters/core/error.h"

namespace adapters::nn {

using torch::Tensor;

double lowest_value(torch::ScalarType dtype) {
  switch (dtype) {
    case torch::kFloat64: return std::numeric_limits<double>::lowest();
    case torch::kFloat16: return -65504.0;
    case torch::kBFloat16: return -3.3895313892515355e38;
    default: return static_cast<double>(std::numeric_limits<float>::lowest());
  }
}

namespace {

// (Tq,Tk) bool: which keys each query may see by position.
Tensor position_rule(const MaskSpec& s, const torch::Device& device) {
  auto options = torch::TensorOptions().dtype(torch::kLong).device(device);
  Tensor q = torch::arange(s.past_length, s.past_length + s.query_length, options).unsqueeze(1);  // (Tq,1)
  Tensor k = torch::arange(s.key_length, options).unsqueeze(0);                                 // (1,Tk)
  Tensor allowed = k.le(q);
  if (s.sliding_window > 0) allowed = allowed.logical_and(k.gt(q - s.sliding_window));
  return allowed;
}

}  // namespace

Tensor build_attention_mask(const MaskSpec& s, torch::ScalarType dtype, const torch::Device& device) {
  if (s.padding.defined()) {
    ADAPTERS_CHECK(s.padding.dim() == 2 && s.padding.size(1) == s.key_length, "attention_mask must be (B,", s.key_length,
                   "), found ", s.padding.sizes());
  }
  const double lowest = lowest_value(dtype);
  // One new token after the cache (a decoding step) sees every key by position: padding only.
  const bool sees_all_positions = s.causal && s.query_length == 1 && s.key_length == s.past_length + 1 &&
                                  (s.sliding_window <= 0 || s.sliding_window >= s.key_length);
  if ((!s.causal && s.sliding_window <= 0) || sees_all_positions) {
    if (!s.padding.defined()) return Tensor();
    Tensor m = s.padding.to(dtype).unsqueeze(1).unsqueeze(2);  // (B,1,1,Tk)
    if (s.mask_padded_queries) {
      ADAPTERS_CHECK(s.query_length == s.key_length, "masking padded queries needs Tq == Tk");
      m = m * m.transpose(-1, -2);  // (B,1,T,T)
    }
    return (1.0 - m) * lowest;
  }
  Tensor allowed = position_rule(s, device).unsqueeze(0).unsqueeze(0);  // (1,1,Tq,Tk)
  if (s.padding.defined() && s.add_padding_to_causal) {
    Tensor causal = torch::zeros(allowed.sizes(), torch::TensorOptions().dtype(dtype).device(device))
                        .masked_fill(allowed.logical_not(), lowest);
    return causal + (1.0 - s.padding.to(dtype).unsqueeze(1).unsqueeze(2)) * lowest;  // (B,1,Tq,Tk)
  }
  if (s.padding.defined()) allowed = allowed.logical_and(s.padding.to(torch::kBool).unsqueeze(1).unsqueeze(2));
  Tensor zero = torch::zeros({}, torch::TensorOptions().dtype(dtype).device(device));
  return torch::where(allowed, zero, torch::full({}, lowest, zero.options()));
}

Tensor prepend_mask_columns(const Tensor& mask, std::int64_t columns, double fill) {
  if (!mask.defined() || columns <= 0) return mask;
  std::vector<std::int64_t> shape(mask.sizes().begin(), mask.sizes().end());
  shape.back() = columns;
  return torch::cat({torch::full(shape, fill, mask.options()), mask}, -1);
}

}  // namespace adapters::nn
