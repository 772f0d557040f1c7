// The method registry: one explicit entry per adapter family, each declaring its presets, how it
// validates a config, and how it places its modules at a model's hook sites.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "adapters/core/json.h"
#include "adapters/io/tensors.h"
#include "adapters/models/base_model.h"

namespace adapters {
class AdapterModelImpl;
}

namespace adapters::methods {

struct Preset {
  std::string name;  // "seq_bn", "pfeiffer", ...
  json overrides;    // options that differ from the method's defaults
};

// What the model's verbs may do with a method's adapters.
struct MethodCapabilities {
  bool mergeable = false;  // merge_adapter folds it into the adapted linear layers' weights
};

// A method's own average_adapter strategies (beyond "linear", the weighted sum of every parameter).
struct AveragedAdapter {
  json config;            // the new adapter's config
  io::TensorMap tensors;  // its parameters, keyed as the new adapter's
};
using AverageFn = std::function<AveragedAdapter(const AdapterModelImpl& model, const std::string& name,
                                                const std::vector<std::string>& sources,
                                                const std::vector<double>& weights, const std::string& strategy,
                                                std::int64_t svd_rank)>;

struct MethodSpec {
  std::string name;          // registry key: "bottleneck"
  json architecture;         // the config's "architecture" value for this method (null for bottleneck)
  std::vector<Preset> presets;
  // Complete, validated options from user options (missing keys take the defaults); `source`
  // names the adapter or file in errors.
  std::function<json(const json& options, const std::string& source)> normalize;
  // Places the adapter's modules at the model's hook sites.
  std::function<void(const std::string& adapter, const json& config, models::BaseModelImpl& model)> attach;
  // Extra safetensors aliases {alias key suffix -> stored key suffix} the reference writes.
  std::function<std::vector<std::pair<std::string, std::string>>(const json& config)> key_aliases;
  // Optional: aliases that depend on the model's module tree (a module shared by every layer,
  // as the prefix-tuning pool), same form as key_aliases.
  std::function<std::vector<std::pair<std::string, std::string>>(const json& config, const models::BaseModelImpl& model)>
      model_key_aliases;
  MethodCapabilities capabilities;
  // Optional: averaging with the method's own strategies (null: only "linear").
  AverageFn average;
  // Optional: turns the adapter into its ejected form with identical outputs, returning the new
  // config (prefix tuning: reparametrised -> flat). Null: the method has nothing to eject.
  std::function<json(const std::string& adapter, const json& config, models::BaseModelImpl& model)> eject;
};

const std::vector<MethodSpec>& methods();
const MethodSpec& method_spec(const std::string& name);
// The method whose "architecture" value matches (null -> bottleneck).
const MethodSpec& method_for_architecture(const json& architecture, const std::string& source);
// The method and overrides of a preset name, or null when no method has it.
const MethodSpec* find_preset(const std::string& preset, json* overrides);
std::vector<std::string> preset_names();

}  // namespace adapters::methods
