// Upper bounds on sizes read from configs written by strangers (adapter_config.json,
// head_config.json, config strings): beyond them a config would allocate far more than any real
// adapter or head needs, so it is refused naming the key instead.
#pragma once

#include <cstdint>

namespace adapters {

inline constexpr std::int64_t kMaxAdapterSize = 1 << 16;  // ranks, bottleneck sizes, prefix / prompt lengths
inline constexpr std::int64_t kMaxHeadLabels = 1 << 20;   // num_labels, num_choices, an LM head's vocab_size
inline constexpr std::int64_t kMaxHeadLayers = 64;        // a head's layers

}  // namespace adapters
