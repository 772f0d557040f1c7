// Building blocks of the post-norm encoders (the BERT family, DeBERTa, ELECTRA): HF's
// *SelfOutput / *Output (dense, dropout, then the residual site with the sublayer's LayerNorm) and
// *Intermediate (dense, activation). Module names are HF's.
#pragma once

#include <torch/nn/modules/dropout.h>
#include <torch/nn/modules/normalization.h>

#include "adapters/models/config.h"
#include "adapters/nn/activation.h"
#include "adapters/nn/adapted_linear.h"
#include "adapters/nn/residual_site.h"

namespace adapters::models::blocks {

inline torch::nn::LayerNorm layer_norm(std::int64_t size, double eps) {
  return torch::nn::LayerNorm(torch::nn::LayerNormOptions({size}).eps(eps));
}

// RMS norm (T5LayerNorm, LlamaRMSNorm): w * x / sqrt(mean(x^2) + eps), computed in float32 and
// returned in x's dtype; unit_offset scales by (1 + w) instead (GemmaRMSNorm, whose weight starts at 0).
struct RMSNormImpl : torch::nn::Module {
  RMSNormImpl(std::int64_t size, double eps, bool unit_offset = false) : eps(eps), unit_offset(unit_offset) {
    weight = register_parameter("weight", unit_offset ? torch::zeros({size}) : torch::ones({size}));
  }
  // (..., C) -> (..., C)
  torch::Tensor forward(const torch::Tensor& x) {
    const torch::Tensor h = x.to(torch::kFloat32);
    const torch::Tensor normed = h * torch::rsqrt(h.pow(2).mean(-1, true) + eps);
    if (unit_offset) return (normed * (1.0 + weight.to(torch::kFloat32))).to(x.scalar_type());
    return weight * normed.to(x.scalar_type());
  }
  double eps;
  bool unit_offset;
  torch::Tensor weight;
};
TORCH_MODULE(RMSNorm);

// Dense + dropout, then the residual site (residual + LayerNorm, or the active adapters).
struct ResidualOutputImpl : torch::nn::Module {
  ResidualOutputImpl(const ModelConfig& c, std::int64_t in_features, std::int64_t layer, const char* role,
                     const char* location)
      : site(layer, location) {
    dense = register_module("dense", nn::AdaptedLinear(in_features, c.hidden_size, true, layer, role));
    LayerNorm = register_module("LayerNorm", layer_norm(c.hidden_size, c.layer_norm_eps));
    dropout = register_module("dropout", torch::nn::Dropout(c.hidden_dropout_prob));
    site.register_in(*this);
  }
  // h (B,T,in), input (B,T,C) the sublayer's input -> (B,T,C)
  torch::Tensor forward(const torch::Tensor& h, const torch::Tensor& input, nn::ForwardContext& ctx) {
    torch::Tensor out = dropout(dense->forward(h, ctx));
    return site.forward(out, input, [this](const torch::Tensor& t) { return LayerNorm(t); }, ctx);
  }
  nn::AdaptedLinear dense{nullptr};
  torch::nn::LayerNorm LayerNorm{nullptr};
  torch::nn::Dropout dropout{nullptr};
  nn::ResidualSite site;
};
TORCH_MODULE(ResidualOutput);

// (B,T,C) -> (B,T,I): act(dense(x))
struct IntermediateImpl : torch::nn::Module {
  IntermediateImpl(const ModelConfig& c, std::int64_t layer)
      : act(nn::resolve_activation(c.hidden_act, "config.json: hidden_act")) {
    dense = register_module("dense", nn::AdaptedLinear(c.hidden_size, c.intermediate_size, true, layer,
                                                       nn::role::kIntermediate));
  }
  torch::Tensor forward(const torch::Tensor& x, nn::ForwardContext& ctx) { return act(dense->forward(x, ctx)); }
  nn::Activation act;
  nn::AdaptedLinear dense{nullptr};
};
TORCH_MODULE(Intermediate);

}  // namespace adapters::models::blocks
