// AdapterModel::merge_adapter / reset_adapter: folding LoRA-family adapters into the base weights
// of the adapted linear layers and restoring them (see nn/adapted_linear.h for the mechanics).
#include <algorithm>

#include "adapters/methods/lora.h"
#include "adapters/model.h"

namespace adapters {

void AdapterModelImpl::merge_adapter(const std::string& name) {
  const methods::AdapterConfig& config = adapter_config(name);
  if (config.method != "lora") {
    throw Error(str("merge_adapter: adapter '", name, "' is a ", config.method,
                    " adapter, which cannot be merged into the weights (only the LoRA family can: lora, ia3, "
                    "vera, dora)"));
  }
  std::vector<nn::AdaptedLinearImpl*> sites;
  for (nn::AdaptedLinearImpl* site : base_->sites().linear) {
    nn::LinearDelta* delta = site->adapter(name);
    if (delta == nullptr) continue;
    // Check every layer before changing any, so that a refusal leaves the model as it was.
    const std::string blocker = delta->merge_blocker();
    ADAPTERS_CHECK(blocker.empty(), "merge_adapter: adapter '", name, "' (",
                   methods::LoRAConfig::from_json(config.values, name).variant(), ") cannot be merged: ", blocker);
    sites.push_back(site);
  }
  ADAPTERS_CHECK(!sites.empty(), "merge_adapter: adapter '", name, "' has no module in this model (leave_out and ",
                 "the placement options leave no layer)");
  for (nn::AdaptedLinearImpl* site : sites) site->merge_adapter(name);
}

void AdapterModelImpl::reset_adapter() {
  for (nn::AdaptedLinearImpl* site : base_->sites().linear) site->reset_merged();
}

std::vector<std::string> AdapterModelImpl::merged_adapters() const {
  std::vector<std::string> names;
  for (const nn::AdaptedLinearImpl* site : base_->sites().linear) {
    for (const auto& m : site->merged()) {
      if (std::find(names.begin(), names.end(), m) == names.end()) names.push_back(m);
    }
  }
  return names;
}

}  // namespace adapters
