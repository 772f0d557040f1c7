// Adapted linear layers: a plain linear map followed by the active LoRA-family deltas in the order
// of the active Stack, and the folding of deltas into the weights (merge) and back (reset).
#include "adapters/nn/adapted_linear.h"

#include <torch/nn/functional/linear.h>
#include <torch/nn/init.h>

#include <algorithm>
#include <cmath>

#include "adapters/core/error.h"

namespace adapters::nn {

using composition::Block;
using composition::BlockType;
using torch::Tensor;

void LinearDelta::merge_into(Tensor& weight, Tensor& bias) const {
  throw Error("merge_into: " + merge_blocker());
}

AdaptedLinearImpl::AdaptedLinearImpl(std::int64_t in_features, std::int64_t out_features, bool with_bias,
                                     std::int64_t layer, std::string role)
    : loras(make_adapter_dict<LinearDelta>()), layer_(layer), slices_{{role, 0, out_features}}, role_(std::move(role)) {
  init(in_features, out_features, with_bias);
}

AdaptedLinearImpl::AdaptedLinearImpl(std::int64_t in_features, std::int64_t out_features, bool with_bias,
                                     std::int64_t layer, std::vector<OutputSlice> slices)
    : loras(make_adapter_dict<LinearDelta>()), layer_(layer), slices_(std::move(slices)) {
  ADAPTERS_CHECK(!slices_.empty(), "AdaptedLinear: a fused layer needs at least one output slice");
  std::int64_t offset = 0;
  for (const auto& s : slices_) {
    ADAPTERS_CHECK(s.offset == offset && s.size > 0, "AdaptedLinear: output slice '", s.role, "' at [", s.offset, ", ",
                   s.offset + s.size, ") does not continue the slices before it at ", offset);
    offset += s.size;
    role_ += (role_.empty() ? "" : ",") + s.role;
  }
  ADAPTERS_CHECK(offset == out_features, "AdaptedLinear: the output slices cover ", offset, " of ", out_features,
                 " output features");
  init(in_features, out_features, with_bias);
}

void AdaptedLinearImpl::init(std::int64_t in_features, std::int64_t out_features, bool with_bias) {
  weight = register_parameter("weight", torch::empty({out_features, in_features}));
  torch::nn::init::kaiming_uniform_(weight, std::sqrt(5.0));
  if (with_bias) {
    double bound = 1.0 / std::sqrt(static_cast<double>(in_features));
    bias = register_parameter("bias", torch::empty({out_features}).uniform_(-bound, bound));
  }
  register_module("loras", loras);
}

std::string AdaptedLinearImpl::describe() const { return str("layer ", layer_, " '", role_, "'"); }

void AdaptedLinearImpl::active_deltas(const Block& setup, bool in_stack, std::vector<LinearDelta*>& out) const {
  if (setup.is_adapter()) {
    LinearDelta* delta = loras->find(setup.name);
    if (delta == nullptr || is_merged(setup.name)) return;
    if (!in_stack) {
      throw NotSupported(str("adapter '", setup.name, "' (LoRA family) at ", describe(),
                             ": only Stack composes LoRA-family adapters; this block is not supported for them"));
    }
    out.push_back(delta);
    return;
  }
  const bool stacked = in_stack && setup.type == BlockType::Stack;
  for (const auto& child : setup.children) active_deltas(child, stacked, out);
}

Tensor AdaptedLinearImpl::forward(const Tensor& x, ForwardContext& ctx) {
  Tensor y = torch::nn::functional::linear(x, weight, bias);
  if (ctx.setup == nullptr || loras->empty()) return y;
  std::vector<LinearDelta*> deltas;
  active_deltas(*ctx.setup, true, deltas);
  if (deltas.empty()) return y;
  const Tensor base = y;
  const LinearCall call{x, weight, bias, base, ctx};
  for (LinearDelta* delta : deltas) y = delta->apply(call, y);
  return y;
}

void AdaptedLinearImpl::add_adapter(const std::string& name, std::shared_ptr<LinearDelta> delta) {
  if (loras->contains(name)) delete_adapter(name);
  loras->insert(name, std::move(delta));
}

void AdaptedLinearImpl::delete_adapter(const std::string& name) {
  if (is_merged(name)) {
    // Unmerge everything, then merge the others again in their order.
    std::vector<std::string> others;
    for (const auto& m : merged_) {
      if (m != name) others.push_back(m);
    }
    reset_merged();
    loras->erase(name);
    for (const auto& m : others) merge_adapter(m);
    return;
  }
  loras->erase(name);
}

bool AdaptedLinearImpl::is_merged(const std::string& name) const {
  return std::find(merged_.begin(), merged_.end(), name) != merged_.end();
}

void AdaptedLinearImpl::merge_adapter(const std::string& name) {
  LinearDelta* delta = loras->find(name);
  ADAPTERS_CHECK(delta != nullptr, "merge_adapter: adapter '", name, "' has no module at ", describe());
  if (is_merged(name)) return;
  const std::string blocker = delta->merge_blocker();
  ADAPTERS_CHECK(blocker.empty(), "merge_adapter: adapter '", name, "' cannot be merged: ", blocker);
  torch::NoGradGuard no_grad;
  if (merged_.empty()) {
    original_weight_ = weight.detach().clone();
    if (bias.defined()) original_bias_ = bias.detach().clone();
  }
  Tensor w = weight.detach().clone();
  Tensor b = bias.defined() ? bias.detach().clone() : Tensor();
  delta->merge_into(w, b);
  weight.copy_(w);
  if (bias.defined()) bias.copy_(b);
  merged_.push_back(name);
}

void AdaptedLinearImpl::reset_merged() {
  if (merged_.empty()) return;
  torch::NoGradGuard no_grad;
  weight.copy_(original_weight_);
  if (bias.defined()) bias.copy_(original_bias_);
  original_weight_ = Tensor();
  original_bias_ = Tensor();
  merged_.clear();
}

}  // namespace adapters::nn
