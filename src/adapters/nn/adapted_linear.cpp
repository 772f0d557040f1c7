// Adapted linear layers: a plain linear map followed by the active LoRA-family deltas composed by
// the driver (Stack: in order; Parallel, BatchSplit, Split: on their share of the batch or
// sequence; Average: the weighted sum of the members' outputs), and the folding of deltas into the
// weights (merge) and back (reset).
#include "adapters/nn/adapted_linear.h"

#include <torch/torch.h>
#include <torch/nn/functional/linear.h>
#include <torch/nn/init.h>

#include <algorithm>
#include <cmath>
#include <optional>

#include "adapters/core/error.h"
#include "adapters/nn/composer.h"
#include "adapters/nn/linear.h"

namespace adapters::nn {

using composition::Block;
using composition::BlockType;
using torch::Tensor;

void LinearDelta::merge_into(Tensor& weight, Tensor& bias) const {
  throw Error("merge_into: " + merge_blocker());
}

AdaptedLinearImpl::AdaptedLinearImpl(std::int64_t in_features, std::int64_t out_features, bool with_bias,
                                     std::int64_t layer, std::string role, WeightLayout layout)
    : loras(make_adapter_dict<LinearDelta>()),
      layer_(layer),
      layout_(layout),
      slices_{{role, 0, out_features}},
      role_(std::move(role)) {
  init(in_features, out_features, with_bias);
}

AdaptedLinearImpl::AdaptedLinearImpl(std::int64_t in_features, std::int64_t out_features, bool with_bias,
                                     std::int64_t layer, std::vector<OutputSlice> slices, WeightLayout layout)
    : loras(make_adapter_dict<LinearDelta>()), layer_(layer), layout_(layout), slices_(std::move(slices)) {
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
  Tensor w = torch::empty({out_features, in_features});
  torch::nn::init::kaiming_uniform_(w, std::sqrt(5.0));
  weight = register_parameter("weight", layout_ == WeightLayout::InOut ? w.t().contiguous() : w);
  if (with_bias) {
    double bound = 1.0 / std::sqrt(static_cast<double>(in_features));
    bias = register_parameter("bias", torch::empty({out_features}).uniform_(-bound, bound));
  }
  register_module("loras", loras);
}

std::string AdaptedLinearImpl::describe() const { return str("layer ", layer_, " '", role_, "'"); }

// What flows through a linear layer's composition.
struct LinearState {
  Tensor x;     // (..., in) the layer input
  Tensor base;  // (..., out) x W^T + b
  Tensor y;     // (..., out) the output so far
};

class LinearComposable : public Composable<LinearState> {
 public:
  explicit LinearComposable(const AdaptedLinearImpl& layer) : layer_(layer) {}

  bool holds(const std::string& adapter) const override {
    return layer_.loras->contains(adapter) && !layer_.is_merged(adapter);
  }
  std::string describe() const override { return layer_.describe(); }
  std::string family() const override { return "LoRA-family adapters"; }
  bool supports(BlockType type) const override { return type != BlockType::Fuse; }

  std::int64_t batch_size(const LinearState& s) const override { return s.x.size(0); }
  std::int64_t sequence_length(const LinearState& s) const override {
    ADAPTERS_CHECK(s.x.dim() == 3, "Split at ", describe(), ": expected a (B,T,C) input, found ", s.x.sizes());
    return s.x.size(1);
  }
  LinearState slice_batch(const LinearState& s, std::int64_t b, std::int64_t e) const override {
    return {s.x.slice(0, b, e), s.base.slice(0, b, e), s.y.slice(0, b, e)};
  }
  LinearState slice_sequence(const LinearState& s, std::int64_t b, std::int64_t e) const override {
    return {s.x.slice(1, b, e), s.base.slice(1, b, e), s.y.slice(1, b, e)};
  }
  LinearState repeat_batch(const LinearState& s, std::int64_t n) const override {
    return {repeat_batch_of(s.x, n), repeat_batch_of(s.base, n), repeat_batch_of(s.y, n)};
  }
  LinearState concat_batch(const std::vector<LinearState>& parts) const override { return concat(parts, 0); }
  LinearState concat_sequence(const std::vector<LinearState>& parts) const override { return concat(parts, 1); }
  LinearState average(const std::vector<LinearState>& parts, const std::vector<double>& w) const override {
    std::vector<Tensor> ys;
    for (const auto& p : parts) ys.push_back(p.y);
    LinearState out = parts.front();
    out.y = weighted_sum(ys, w);
    return out;
  }

  LinearState single(const std::string& name, LinearState s, ForwardContext& ctx) const override {
    const Tensor weight = layer_.weight_out_in();
    const LinearCall call{s.x, weight, layer_.bias, s.base, ctx};
    s.y = layer_.loras->find(name)->apply(call, s.y);
    return s;
  }

 private:
  static LinearState concat(const std::vector<LinearState>& parts, std::int64_t dim) {
    std::vector<Tensor> x, base, y;
    for (const auto& p : parts) {
      x.push_back(p.x);
      base.push_back(p.base);
      y.push_back(p.y);
    }
    return {torch::cat(x, dim), torch::cat(base, dim), torch::cat(y, dim)};
  }

  const AdaptedLinearImpl& layer_;
};

namespace {

// One adapter per row (every member an adapter): each group's delta on its rows' segment of the one
// base product, rows whose adapter has no delta here keep the base output; one concatenation.
// Null when a member is a block (the composition driver runs it).
std::optional<Tensor> row_group_deltas(const AdaptedLinearImpl& layer, const Block& groups, const Tensor& x,
                                       const Tensor& y, ForwardContext& ctx) {
  for (const Block& member : groups.children) {
    if (!member.is_adapter()) return std::nullopt;
  }
  const Tensor w = layer.weight_out_in();
  std::vector<Tensor> parts;
  bool any = false;
  for_each_row_group(groups, [&](const Block& member, std::int64_t begin, std::int64_t end) {
    const Tensor rows = y.slice(0, begin, end);
    LinearDelta* delta = layer.is_merged(member.name) ? nullptr : layer.loras->find(member.name);
    any = any || delta != nullptr;
    parts.push_back(delta ? delta->apply({x.slice(0, begin, end), w, layer.bias, rows, ctx}, rows) : rows);
  });
  return any ? torch::cat(parts, 0) : y;
}

}  // namespace

bool AdaptedLinearImpl::any_active(const Block& setup) const {
  for (const auto& name : setup.flatten()) {
    if (loras->contains(name) && !is_merged(name)) return true;
  }
  return false;
}

// x W^T + b; Conv1D's layout computes x W + b with addmm, as HF does.
Tensor AdaptedLinearImpl::forward(const Tensor& x, ForwardContext& ctx) {
  const Tensor y = layout_ == WeightLayout::OutIn ? linear(x, weight, bias) : linear_in_out(x, weight, bias);
  if (ctx.setup == nullptr || loras->empty()) return y;
  // One adapter active (the common case, every decoding step): straight to its delta.
  const Block& setup = *ctx.setup;
  const Block* only = setup.is_adapter() ? &setup
                      : setup.type == BlockType::Stack && setup.children.size() == 1 && setup.children[0].is_adapter()
                          ? &setup.children[0]
                          : nullptr;
  if (only != nullptr) {
    LinearDelta* delta = loras->find(only->name);
    if (delta == nullptr || is_merged(only->name)) return y;
    const Tensor w = weight_out_in();
    return delta->apply({x, w, bias, y, ctx}, y);
  }
  if (!any_active(setup)) return y;
  if (const Block* groups = independent_row_groups(ctx)) {
    if (auto out = row_group_deltas(*this, *groups, x, y, ctx)) return *out;
  }
  LinearComposable site(*this);
  return compose<LinearState>(site, *ctx.setup, {x, y, y}, ctx).y;
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
  Tensor w = weight_out_in().detach().clone();
  Tensor b = bias.defined() ? bias.detach().clone() : Tensor();
  delta->merge_into(w, b);
  weight_out_in().copy_(w);
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
