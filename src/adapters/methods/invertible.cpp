// NICE and GLOW coupling blocks (reference: adapters/modeling.py NICECouplingBlock,
// GLOWCouplingBlock) and the model-level hook applying them around the Transformer.
#include "adapters/methods/invertible.h"

#include <torch/torch.h>

#include "adapters/nn/composer.h"

#include <cmath>

#include "adapters/nn/activation.h"

namespace adapters::methods {

using torch::Tensor;

namespace {

// The reference's subnet: Linear(in, int(in // rf)), activation, Linear(int(in // rf), out), with
// init_bert_weights (normal(0, 0.02) weights, zero biases).
torch::nn::Sequential subnet(std::int64_t in, std::int64_t out, const std::string& non_linearity,
                             double reduction_factor, const std::string& source) {
  const auto hidden = static_cast<std::int64_t>(std::floor(static_cast<double>(in) / reduction_factor));
  ADAPTERS_CHECK(hidden >= 1, source, ": inv_adapter_reduction_factor ", reduction_factor,
                 " leaves no units in the invertible adapter's subnetworks (input ", in, " features)");
  nn::Activation act = nn::resolve_activation(non_linearity, source + ": non_linearity");
  torch::nn::Sequential net(torch::nn::Linear(in, hidden),
                            torch::nn::Functional([act](const Tensor& x) { return act(x); }),
                            torch::nn::Linear(hidden, out));
  torch::NoGradGuard no_grad;
  for (auto& p : net->named_parameters()) {
    if (p.key().find("weight") != std::string::npos) {
      p.value().normal_(0.0, 0.02);
    } else {
      p.value().zero_();
    }
  }
  return net;
}

}  // namespace

// ---- NICE -----------------------------------------------------------------------------------

NiceCouplingBlockImpl::NiceCouplingBlockImpl(std::int64_t channels, const std::string& non_linearity,
                                             double reduction_factor, const std::string& source)
    : len1_(channels / 2), len2_(channels - channels / 2) {
  F_ = register_module("F", subnet(len2_, len1_, non_linearity, reduction_factor, source));
  G_ = register_module("G", subnet(len1_, len2_, non_linearity, reduction_factor, source));
}

Tensor NiceCouplingBlockImpl::forward(const Tensor& x) {
  const Tensor x1 = x.narrow(-1, 0, len1_), x2 = x.narrow(-1, len1_, len2_);
  const Tensor y1 = x1 + F_->forward(x2);
  const Tensor y2 = x2 + G_->forward(y1);
  return torch::cat({y1, y2}, -1);
}

Tensor NiceCouplingBlockImpl::inverse(const Tensor& y) {
  const Tensor y1 = y.narrow(-1, 0, len1_), y2 = y.narrow(-1, len1_, len2_);
  const Tensor x2 = y2 - G_->forward(y1);
  const Tensor x1 = y1 - F_->forward(x2);
  return torch::cat({x1, x2}, -1);
}

// ---- GLOW -----------------------------------------------------------------------------------

GlowCouplingBlockImpl::GlowCouplingBlockImpl(std::int64_t channels, const std::string& non_linearity,
                                             double reduction_factor, const std::string& source, double clamp)
    : len1_(channels / 2), len2_(channels - channels / 2), clamp_(clamp) {
  s1_ = register_module("s1", subnet(len1_, 2 * len2_, non_linearity, reduction_factor, source));
  s2_ = register_module("s2", subnet(len2_, 2 * len1_, non_linearity, reduction_factor, source));
}

Tensor GlowCouplingBlockImpl::e(const Tensor& s) const { return torch::exp(clamp_ * 0.636 * torch::atan(s / clamp_)); }

Tensor GlowCouplingBlockImpl::forward(const Tensor& x) {
  const Tensor x1 = x.narrow(-1, 0, len1_), x2 = x.narrow(-1, len1_, len2_);
  const Tensor r2 = s2_->forward(x2);  // (B,T,2*len1): scale, shift
  const Tensor y1 = e(r2.narrow(-1, 0, len1_)) * x1 + r2.narrow(-1, len1_, len1_);
  const Tensor r1 = s1_->forward(y1);  // (B,T,2*len2)
  const Tensor y2 = e(r1.narrow(-1, 0, len2_)) * x2 + r1.narrow(-1, len2_, len2_);
  return torch::cat({y1, y2}, -1);
}

Tensor GlowCouplingBlockImpl::inverse(const Tensor& y) {
  const Tensor y1 = y.narrow(-1, 0, len1_), y2 = y.narrow(-1, len1_, len2_);
  const Tensor r1 = s1_->forward(y1);
  const Tensor x2 = (y2 - r1.narrow(-1, len2_, len2_)) / e(r1.narrow(-1, 0, len2_));
  const Tensor r2 = s2_->forward(x2);
  const Tensor x1 = (y1 - r2.narrow(-1, len1_, len1_)) / e(r2.narrow(-1, 0, len1_));
  return torch::cat({x1, x2}, -1);
}

// ---- the hook -------------------------------------------------------------------------------

void InvertibleAdaptersHook::insert(const std::string& adapter, std::shared_ptr<InvertibleBlock> block) {
  delete_adapter(adapter);
  items_[adapter] = register_module(adapter, std::move(block));
}

InvertibleBlock* InvertibleAdaptersHook::find(const std::string& adapter) const {
  auto it = items_.find(adapter);
  return it == items_.end() ? nullptr : it->second.get();
}

void InvertibleAdaptersHook::delete_adapter(const std::string& name) {
  if (items_.erase(name)) unregister_module(name);
}

InvertibleBlock* InvertibleAdaptersHook::active(const nn::ForwardContext& ctx) const {
  // As the reference: only the very first adapter of the active setup (no fusion over them).
  return ctx.setup == nullptr ? nullptr : find(ctx.setup->first());
}

namespace {

// One adapter per row: each row group through its own first adapter's block (none: unchanged).
template <typename F>
Tensor per_row_groups(const InvertibleAdaptersHook& hook, const composition::Block& groups, const Tensor& h, F apply) {
  std::vector<Tensor> parts;
  bool any = false;
  nn::for_each_row_group(groups, [&](const composition::Block& member, std::int64_t begin, std::int64_t end) {
    InvertibleBlock* block = hook.find(member.first());
    any = any || block != nullptr;
    parts.push_back(block ? apply(*block, h.slice(0, begin, end)) : h.slice(0, begin, end));
  });
  return any ? torch::cat(parts, 0) : h;
}

}  // namespace

Tensor InvertibleAdaptersHook::embeddings(const Tensor& h, Tensor& attention_mask, nn::ForwardContext& ctx) {
  if (const composition::Block* groups = nn::independent_row_groups(ctx)) {
    return per_row_groups(*this, *groups, h, [](InvertibleBlock& b, const Tensor& x) { return b.forward(x); });
  }
  InvertibleBlock* block = active(ctx);
  return block ? block->forward(h) : h;
}

Tensor InvertibleAdaptersHook::before_lm_head(const Tensor& h, nn::ForwardContext& ctx) {
  if (const composition::Block* groups = nn::independent_row_groups(ctx)) {
    return per_row_groups(*this, *groups, h, [](InvertibleBlock& b, const Tensor& x) { return b.inverse(x); });
  }
  InvertibleBlock* block = active(ctx);
  return block ? block->inverse(h) : h;
}

void add_invertible_adapter(const std::string& adapter, const std::string& type, const std::string& non_linearity,
                            double reduction_factor, models::BaseModelImpl& model, const std::string& source) {
  const std::int64_t channels = model.config().embedding_size;  // as the reference (ALBERT: E)
  std::shared_ptr<InvertibleBlock> block;
  if (type == "nice") {
    block = std::make_shared<NiceCouplingBlockImpl>(channels, non_linearity, reduction_factor, source);
  } else if (type == "glow") {
    block = std::make_shared<GlowCouplingBlockImpl>(channels, non_linearity, reduction_factor, source);
  } else {
    throw Error(str(source, ": inv_adapter: expected \"nice\" or \"glow\", found \"", type, "\""));
  }
  auto hook = model.hooks().get_or_create<InvertibleAdaptersHook>(
      "invertible_adapters", [] { return std::make_shared<InvertibleAdaptersHook>(); });
  hook->insert(adapter, block);
}

}  // namespace adapters::methods
