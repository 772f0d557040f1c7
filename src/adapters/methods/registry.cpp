// The method registry: one line per adapter family.
#include "adapters/methods/registry.h"

#include "adapters/methods/bottleneck.h"
#include "adapters/methods/lora.h"
#include "adapters/methods/prefix_tuning.h"
#include "adapters/methods/prompt_tuning.h"
#include "adapters/methods/reft.h"
#include "adapters/methods/union.h"

namespace adapters::methods {

const std::vector<MethodSpec>& methods() {
  static const std::vector<MethodSpec> specs = {
      bottleneck_method(),
      lora_method(),
      prefix_tuning_method(),
      prompt_tuning_method(),
      reft_method(),
      union_method(),
  };
  return specs;
}

const MethodSpec& method_spec(const std::string& name) {
  for (const auto& m : methods()) {
    if (m.name == name) return m;
  }
  throw Error(str("unknown adapter method '", name, "'"));
}

const MethodSpec& method_for_architecture(const json& architecture, const std::string& source) {
  for (const auto& m : methods()) {
    if (m.architecture == architecture) return m;
  }
  std::string known;
  for (const auto& m : methods()) known += (known.empty() ? "" : ", ") + m.architecture.dump();
  throw Error(str(source, ": unknown adapter architecture ", describe(architecture)), "known: " + known);
}

const MethodSpec* find_preset(const std::string& preset, json* overrides) {
  for (const auto& m : methods()) {
    for (const auto& p : m.presets) {
      if (p.name == preset) {
        *overrides = p.overrides;
        return &m;
      }
    }
  }
  // Union presets are made of the other methods' presets, so they are built after the registry.
  static const std::vector<Preset> unions = union_presets();
  for (const auto& p : unions) {
    if (p.name == preset) {
      *overrides = p.overrides;
      return &method_spec("union");
    }
  }
  return nullptr;
}

std::vector<std::string> preset_names() {
  std::vector<std::string> names;
  for (const auto& m : methods()) {
    for (const auto& p : m.presets) names.push_back(p.name);
  }
  for (const auto& p : union_presets()) names.push_back(p.name);
  return names;
}

}  // namespace adapters::methods
