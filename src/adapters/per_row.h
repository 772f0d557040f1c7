// One adapter per batch row: a forward pass in which row i uses adapter adapter_per_row[i] (or no
// adapter: kNoAdapter). The rows are grouped by adapter (a stable permutation), the groups run as one
// BatchSplit through every adapted linear layer in one forward (each layer applies each adapter to
// its rows only), and the outputs return to the caller's row order. Differentiable: a batch of
// several adapters trains them all in one step, each on its rows. The LoRA family (LoRA, rsLoRA,
// DoRA, IA3, VeRA) so far; other methods are refused (NotSupported), never run approximately.
#pragma once

#include <string>
#include <vector>

#include "adapters/model.h"

namespace adapters {

// The name of "no adapter" in adapter_per_row (PEFT's).
inline constexpr const char* kNoAdapter = "__base__";

// Throws naming the row when adapter_per_row does not have one entry per row of `inputs` or names
// an adapter the model does not hold; options.setup must be unset (the rows are the setup).
ModelOutput forward_per_row(AdapterModelImpl& model, const models::ModelInputs& inputs,
                            const std::vector<std::string>& adapter_per_row, ForwardOptions options = {});

}  // namespace adapters
