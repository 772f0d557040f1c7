// One adapter per batch row: a forward pass in which row i uses adapter adapter_per_row[i] (or no
// adapter: kNoAdapter). The rows are grouped by adapter (a stable permutation) and the groups run
// as one BatchSplit in one forward with nn::ForwardContext::rows_independent: adapted linear layers
// apply each adapter to its rows' segment, residual sites run each group's own bottleneck
// pre/post-processing, attention sites pad shorter prefixes with masked-out columns, prompts and
// ReFT interventions act per group; the outputs return to the caller's row order. Every row equals
// running it alone with its adapter, and the pass is differentiable: a batch of several adapters
// trains them all in one step, each on its rows. generate() takes adapter_per_row the same way.
#pragma once

#include <string>
#include <vector>

#include "adapters/model.h"

namespace adapters {

// The name of "no adapter" in adapter_per_row (PEFT's).
inline constexpr const char* kNoAdapter = "__base__";

// Rows reordered so that each adapter's rows are contiguous (groups in order of first appearance,
// rows in their order within a group), and the BatchSplit over those groups.
struct RowGroups {
  torch::Tensor order;    // (B) int64: new row i is old row order[i]
  torch::Tensor inverse;  // (B) int64: old row j is new row inverse[j]
  Block setup;            // BatchSplit(adapter or kNoAdapter per group, batch_sizes)
  bool identity = true;   // the rows are grouped already
};
RowGroups group_rows(const std::vector<std::string>& adapter_per_row);

// Throws naming the row when adapter_per_row does not have one entry per row of the batch, names
// an adapter the model does not hold, or names one whose method cannot run per row (PEFT's prefix
// tuning and prompt tuning joined at the input: their positions shift each row differently).
void check_adapter_per_row(const AdapterModelImpl& model, const std::vector<std::string>& adapter_per_row,
                           std::int64_t batch);

// The forward of one adapter per row; options.setup must be unset (the rows are the setup).
ModelOutput forward_per_row(AdapterModelImpl& model, const models::ModelInputs& inputs,
                            const std::vector<std::string>& adapter_per_row, ForwardOptions options = {});

}  // namespace adapters
