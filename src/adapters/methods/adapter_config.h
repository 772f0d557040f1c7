// AdapterConfig: the method and the complete options of one adapter, as the reference writes them
// into adapter_config.json ("config"). Built from a preset string ("seq_bn",
// "seq_bn[reduction_factor=8,non_linearity=gelu]", legacy names such as "pfeiffer"), from the
// JSON of a saved adapter, or from a method's typed config struct.
#pragma once

#include <string>

#include "adapters/core/json.h"

namespace adapters::methods {

struct AdapterConfig {
  std::string method;  // registry key of the method: "bottleneck", ...
  json values;         // every option, validated and complete

  // "name" or "name[key=value,...]": a preset with overrides. Values are Python/JSON literals:
  // 8, 0.5, true/True, null/None, gelu, 'text', [0, 1], {'1': 8, 'default': 16}.
  static AdapterConfig parse(const std::string& spec);
  // The "config" object of an adapter_config.json; `source` names it in errors.
  static AdapterConfig from_json(const json& config, const std::string& source);

  bool operator==(const AdapterConfig& o) const { return method == o.method && values == o.values; }
  bool operator!=(const AdapterConfig& o) const { return !(*this == o); }
};

// Parses one option value of a config string (exposed for tests).
json parse_option_value(const std::string& text, const std::string& context);

}  // namespace adapters::methods
