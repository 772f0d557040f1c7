// Residual sites: the plain residual + norm when no adapter is active here, otherwise the
// reference's adapter_layer_forward over the active setup.
#include "adapters/nn/residual_site.h"

#include "adapters/core/error.h"

namespace adapters::nn {

using composition::Block;
using composition::BlockType;
using torch::Tensor;

ResidualSite::ResidualSite(std::int64_t layer, std::string location)
    : layer_(layer), location_(std::move(location)), adapters_(make_adapter_dict<ResidualAdapter>()) {}

void ResidualSite::register_in(torch::nn::Module& owner) { owner.register_module("adapters", adapters_); }

void ResidualSite::add_adapter(const std::string& name, std::shared_ptr<ResidualAdapter> adapter) {
  adapters_->insert(name, std::move(adapter));
}

void ResidualSite::delete_adapter(const std::string& name) { adapters_->erase(name); }

ResidualAdapter* ResidualSite::adapter(const std::string& name) const { return adapters_->find(name); }

const Block* ResidualSite::active_setup(const ForwardContext& ctx) const {
  if (ctx.setup == nullptr || adapters_->empty()) return nullptr;
  for (const auto& name : ctx.setup->flatten()) {
    if (adapters_->contains(name)) return ctx.setup;
  }
  return nullptr;
}

Tensor ResidualSite::forward(const Tensor& hidden, const Tensor& input, const Norm& norm, ForwardContext& ctx) const {
  const Block* setup = active_setup(ctx);
  if (setup == nullptr) return norm ? norm(hidden + input) : hidden + input;

  Tensor input_hidden = hidden;
  Tensor out;
  switch (setup->type) {
    case BlockType::Stack: out = stack(*setup, hidden, input, norm, ctx).output; break;
    default:
      throw NotSupported(str("adapter setup ", setup->to_string(), ": ", composition::block_type_name(setup->type),
                      " is not supported at residual sites"));
  }
  // The last adapter of the setup that lives here decides the residual and norm after it.
  ResidualAdapter* last = nullptr;
  for (const auto& name : setup->flatten()) {
    if (auto* a = adapters_->find(name)) last = a;
  }
  return last->post_forward(out, input_hidden, input, norm);
}

AdapterOutput ResidualSite::stack(const Block& setup, Tensor hidden, const Tensor& input, const Norm& norm,
                                  ForwardContext& ctx) const {
  for (std::size_t i = 0; i < setup.children.size(); ++i) {
    const Block& child = setup.children[i];
    if (!child.is_adapter()) {
      throw NotSupported(str("adapter setup ", setup.to_string(), ": ", composition::block_type_name(child.type),
                      " inside Stack is not supported at residual sites"));
    }
    ResidualAdapter* adapter = adapters_->find(child.name);
    if (adapter == nullptr) continue;  // not placed at this site (e.g. leave_out)
    PreForward pre = adapter->pre_forward(hidden, input, norm, false, false);
    AdapterOutput out = adapter->forward(pre.hidden, pre.residual);
    store_gating_score(ctx, child.name, out.gate);
    hidden = out.output;
    if (i + 1 == setup.children.size()) return {hidden, out.down, out.up, out.gate};
  }
  return {hidden, Tensor(), Tensor(), Tensor()};
}

void ResidualSite::store_gating_score(ForwardContext& ctx, const std::string& name, const Tensor& gate) const {
  if (!ctx.output_gating_scores || !gate.defined()) return;
  ctx.gating_scores[name][layer_][location_] = gate.detach();
}

}  // namespace adapters::nn
