// Attention sites: every active attention adapter of the setup, in setup order.
#include "adapters/nn/attention_site.h"

namespace adapters::nn {

AttentionSite::AttentionSite(std::int64_t layer, std::string location)
    : layer_(layer), location_(std::move(location)), adapters_(make_adapter_dict<AttentionAdapter>()) {}

void AttentionSite::register_in(torch::nn::Module& owner) { owner.register_module("prefix_tuning", adapters_); }

AttentionState AttentionSite::forward(AttentionState state, const torch::Tensor& hidden, ForwardContext& ctx) const {
  if (ctx.setup == nullptr || adapters_->empty()) return state;
  for (const auto& name : ctx.setup->flatten()) {
    if (AttentionAdapter* a = adapters_->find(name)) state = a->apply(state, hidden, layer_, location_, ctx);
  }
  return state;
}

void AttentionSite::add_adapter(const std::string& name, std::shared_ptr<AttentionAdapter> adapter) {
  adapters_->insert(name, std::move(adapter));
}

void AttentionSite::delete_adapter(const std::string& name) { adapters_->erase(name); }

}  // namespace adapters::nn
