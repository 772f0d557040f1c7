// The method registry: one line per adapter family.
#include "adapters/methods/registry.h"

#include <set>

#include "adapters/methods/bottleneck.h"

namespace adapters::methods {

const std::vector<MethodSpec>& methods() {
  static const std::vector<MethodSpec> specs = {
      bottleneck_method(),
  };
  return specs;
}

const MethodSpec& method_spec(const std::string& name) {
  for (const auto& m : methods()) {
    if (m.name == name) return m;
  }
  throw Error(str("unknown adapter method '", name, "'"));
}

namespace {

// Methods of the reference that this build does not implement yet: asking for them is valid
// input answered with NotSupported, not a config error.
bool is_pending_architecture(const json& architecture) {
  static const std::set<std::string> pending = {"lora", "prefix_tuning", "prompt_tuning", "union", "reft"};
  return architecture.is_string() && pending.count(architecture.get<std::string>()) != 0;
}

bool is_pending_preset(const std::string& name) {
  static const std::set<std::string> pending = {
      "lora",     "ia3",          "vera",          "dora",      "prefix_tuning",     "prefix_tuning_flat",
      "compacter", "compacter++", "mam",           "unipelt",   "prompt_tuning",     "loreft",
      "noreft",   "direft",       "pfeiffer+inv",  "houlsby+inv", "seq_bn_inv",      "double_seq_bn_inv"};
  return pending.count(name) != 0;
}

}  // namespace

const MethodSpec& method_for_architecture(const json& architecture, const std::string& source) {
  for (const auto& m : methods()) {
    if (m.architecture == architecture) return m;
  }
  if (is_pending_architecture(architecture)) {
    throw NotSupported(str(source, ": adapter architecture ", describe(architecture), " is not supported yet"));
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
  if (is_pending_preset(preset)) throw NotSupported(str("adapter config '", preset, "' is not supported yet"));
  return nullptr;
}

std::vector<std::string> preset_names() {
  std::vector<std::string> names;
  for (const auto& m : methods()) {
    for (const auto& p : m.presets) names.push_back(p.name);
  }
  return names;
}

}  // namespace adapters::methods
