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

// PEFT's soft tokens in front of a batch's tokens, per row group of a setup: prefix tuning's key/
// values (placement "past", in the cache) and prompt tuning's embeddings joined at the input
// (combine "input"). Rows of one batch whose soft tokens differ in length (a BatchSplit, one
// adapter per row) are filled to the longest: prefixes on the left (in the cache), prompts on the
// left in decoder-only models (the last column stays each row's last token) and on the right in
// encoders (the first column stays each row's first token); filler is masked out and, on the left,
// not counted in positions (models::ModelInputs::filler), so every row sees what it sees alone.
struct SoftTokens {
  struct Group {
    std::int64_t rows = 0;
    std::string past_prefix;  // adapter name, or empty
    std::int64_t past = 0;    // its length
    std::string prompt;       // adapter name, or empty
    std::int64_t prompt_length = 0;
  };
  std::vector<Group> groups;  // the batch's rows in order
  std::int64_t past = 0;      // the longest past prefix
  std::int64_t prompt = 0;    // the longest input prompt
  bool prompt_on_left = true;  // decoder-only models

  // Whether some row's past prefix / input prompt is shorter than another's (so filled).
  bool past_filled() const;
  bool prompt_filled() const;
  // (B,past) int64: 1 where a row's past prefix is shorter than the longest (its left columns).
  torch::Tensor past_filler(const torch::Device& device) const;
  // (B,prompt) int64: 1 at a row's filler columns of the prompt part (left or right of its prompt).
  torch::Tensor prompt_filler(const torch::Device& device) const;
  // (B,prompt+T): the attention mask (B,T) (undefined: all ones) with each row's prompt columns
  // joined as attended and its filler as not: [filler][prompt][mask] or [prompt][mask][filler].
  torch::Tensor join_prompt_mask(const torch::Tensor& mask, std::int64_t batch, std::int64_t T,
                                 const torch::Device& device) const;
};
// PEFT's soft tokens by adapter config: prefix tuning with placement "past" (in the key/value
// cache), prompt tuning with combine "input" (before the embedding layer).
bool is_past_prefix(const methods::AdapterConfig& config);
bool is_input_prompt(const methods::AdapterConfig& config);

// The soft tokens of `setup` (nullptr: none) over `batch` rows. Throws NotSupported for a past
// prefix in a block other than an adapter, a Stack or a BatchSplit of those (one cache holds one
// prefix per row), or for two of them in one row.
SoftTokens soft_tokens(const AdapterModelImpl& model, const Block* setup, std::int64_t batch);

// Throws naming the row when adapter_per_row does not have one entry per row of the batch, or names
// an adapter the model does not hold.
void check_adapter_per_row(const AdapterModelImpl& model, const std::vector<std::string>& adapter_per_row,
                           std::int64_t batch);

// The forward of one adapter per row; options.setup must be unset (the rows are the setup).
ModelOutput forward_per_row(AdapterModelImpl& model, const models::ModelInputs& inputs,
                            const std::vector<std::string>& adapter_per_row, ForwardOptions options = {});

}  // namespace adapters
