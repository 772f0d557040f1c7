// Adapted linear layers: a plain linear map followed by the active LoRA-family deltas in setup order.
#include "adapters/nn/adapted_linear.h"

#include <torch/nn/functional/linear.h>
#include <torch/nn/init.h>

#include <cmath>

namespace adapters::nn {

AdaptedLinearImpl::AdaptedLinearImpl(std::int64_t in_features, std::int64_t out_features, bool with_bias,
                                     std::int64_t layer, std::string role)
    : loras(make_adapter_dict<LinearDelta>()), layer_(layer), role_(std::move(role)) {
  weight = register_parameter("weight", torch::empty({out_features, in_features}));
  torch::nn::init::kaiming_uniform_(weight, std::sqrt(5.0));
  if (with_bias) {
    double bound = 1.0 / std::sqrt(static_cast<double>(in_features));
    bias = register_parameter("bias", torch::empty({out_features}).uniform_(-bound, bound));
  }
  register_module("loras", loras);
}

torch::Tensor AdaptedLinearImpl::forward(const torch::Tensor& x, const ForwardContext& ctx) {
  torch::Tensor y = torch::nn::functional::linear(x, weight, bias);
  if (ctx.setup == nullptr || loras->empty()) return y;
  for (const auto& name : ctx.setup->flatten()) {
    if (LinearDelta* delta = loras->find(name)) y = delta->apply(x, y);
  }
  return y;
}

void AdaptedLinearImpl::add_adapter(const std::string& name, std::shared_ptr<LinearDelta> delta) {
  loras->insert(name, std::move(delta));
}

void AdaptedLinearImpl::delete_adapter(const std::string& name) { loras->erase(name); }

}  // namespace adapters::nn
