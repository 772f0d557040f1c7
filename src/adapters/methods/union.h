// Config unions: several methods under one adapter name ("architecture": "union"), as the
// reference's ConfigUnion, with its presets `mam` (prefix tuning + parallel bottleneck) and
// `unipelt` (gated prefix tuning + gated seq_bn + gated LoRA), and the "a|b" string form.
#pragma once

#include "adapters/methods/registry.h"

namespace adapters::methods {

MethodSpec union_method();
// The presets `mam` and `unipelt`, built from the other methods' presets.
std::vector<Preset> union_presets();

// The union of configs (each a complete "config" object of its method), validated with the
// reference's rules: no nested unions; two configs of one architecture only when both are
// bottleneck adapters at different places (or one of them has a leave_out).
json make_union(const std::vector<json>& configs, const std::string& source);

}  // namespace adapters::methods
