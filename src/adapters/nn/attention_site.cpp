// Attention sites: the active Stack's attention adapters of this site, in setup order.
#include "adapters/nn/attention_site.h"

#include "adapters/core/error.h"

namespace adapters::nn {

using composition::Block;
using composition::BlockType;

AttentionSite::AttentionSite(std::int64_t layer, std::string location)
    : layer_(layer),
      location_(std::move(location)),
      module_(std::make_shared<torch::nn::Module>()),
      adapters_(make_adapter_dict<AttentionAdapter>()) {
  module_->register_module("prefix_gates", adapters_);
}

void AttentionSite::register_in(torch::nn::Module& owner) { owner.register_module("prefix_tuning", module_); }

bool AttentionSite::holds_any(const Block& setup) const {
  for (const auto& name : setup.flatten()) {
    if (adapters_->contains(name)) return true;
  }
  return false;
}

AttentionState AttentionSite::forward(AttentionState state, const torch::Tensor& hidden, ForwardContext& ctx) const {
  if (ctx.setup == nullptr || adapters_->empty() || !holds_any(*ctx.setup)) return state;
  const Block& setup = *ctx.setup;
  if (setup.type != BlockType::Stack) {
    const std::string what = str("adapter setup ", setup.to_string(), ": ", composition::block_type_name(setup.type));
    if (setup.type == BlockType::Parallel || setup.type == BlockType::BatchSplit) {
      throw NotSupported(what + " with prefix tuning is not supported yet");
    }
    throw Error(what + " cannot be used with prefix tuning (expected Stack, Parallel or BatchSplit)");
  }
  for (const Block& child : setup.children) {
    if (!child.is_adapter()) {
      if (!holds_any(child)) continue;
      throw NotSupported(str("adapter setup ", setup.to_string(), ": ", composition::block_type_name(child.type),
                             " inside Stack is not supported with prefix tuning"));
    }
    if (AttentionAdapter* a = adapters_->find(child.name)) state = a->apply(state, hidden, layer_, location_, ctx);
  }
  return state;
}

void AttentionSite::add_adapter(const std::string& name, std::shared_ptr<AttentionAdapter> adapter) {
  adapters_->insert(name, std::move(adapter));
}

void AttentionSite::delete_adapter(const std::string& name) { adapters_->erase(name); }

}  // namespace adapters::nn
