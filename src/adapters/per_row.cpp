// One adapter per batch row through one BatchSplit over the rows grouped by adapter (the LoRA family).
#include "adapters/per_row.h"

#include <torch/torch.h>

#include <algorithm>

#include "adapters/core/error.h"

namespace adapters {

namespace {

using torch::Tensor;

// Rows reordered so that each adapter's rows are contiguous (groups in order of first appearance,
// rows in their order within a group), and the BatchSplit over those groups.
struct RowGroups {
  Tensor order;    // (B) int64: new row i is old row order[i]
  Tensor inverse;  // (B) int64: old row j is new row inverse[j]
  Block setup;     // BatchSplit(adapter or kNoAdapter per group, batch_sizes)
  bool identity = true;
};

RowGroups group_rows(const std::vector<std::string>& names) {
  std::vector<std::string> groups;
  for (const auto& n : names) {
    if (std::find(groups.begin(), groups.end(), n) == groups.end()) groups.push_back(n);
  }
  std::vector<std::int64_t> order;
  std::vector<Block> members;
  std::vector<std::int64_t> sizes;
  for (const auto& g : groups) {
    std::int64_t size = 0;
    for (std::size_t i = 0; i < names.size(); ++i) {
      if (names[i] == g) {
        order.push_back(static_cast<std::int64_t>(i));
        ++size;
      }
    }
    members.push_back(Block::adapter(g));
    sizes.push_back(size);
  }
  RowGroups r;
  r.setup = Block::of(composition::BlockType::BatchSplit, std::move(members));
  r.setup.batch_sizes = std::move(sizes);
  for (std::size_t i = 0; i < order.size(); ++i) r.identity = r.identity && order[i] == static_cast<std::int64_t>(i);
  r.order = torch::tensor(order, torch::kLong);
  r.inverse = torch::argsort(r.order);
  return r;
}

std::string known_adapters(const AdapterModelImpl& model) {
  std::string known;
  for (const auto& n : model.adapter_names()) known += (known.empty() ? "" : ", ") + n;
  return known.empty() ? "none" : known;
}

Tensor take_rows(const Tensor& t, const Tensor& rows) { return t.defined() ? t.index_select(0, rows.to(t.device())) : t; }

}  // namespace

ModelOutput forward_per_row(AdapterModelImpl& model, const models::ModelInputs& inputs,
                            const std::vector<std::string>& adapter_per_row, ForwardOptions options) {
  ADAPTERS_CHECK(options.setup == nullptr, "forward_per_row: give adapter_per_row or a setup, not both");
  const std::int64_t batch = model.base().batch_size(inputs);
  ADAPTERS_CHECK(static_cast<std::int64_t>(adapter_per_row.size()) == batch, "adapter_per_row has ",
                 adapter_per_row.size(), " entries for a batch of ", batch, " rows (expected one per row)");
  for (std::size_t i = 0; i < adapter_per_row.size(); ++i) {
    const std::string& name = adapter_per_row[i];
    ADAPTERS_CHECK(name == kNoAdapter || model.has_adapter(name), "adapter_per_row[", i, "]: no adapter named '", name,
                   "' is loaded (known: ", known_adapters(model), "; \"", kNoAdapter, "\" = no adapter)");
  }
  // The LoRA family adapts linear layers row by row through the composition driver; the residual
  // and attention sites apply one adapter's pre- and post-processing to the whole batch
  // (AdapterHub's BatchSplit), which is not each row alone: refused until they run per group.
  for (const auto& name : adapter_per_row) {
    if (name == kNoAdapter) continue;
    const std::string& method = model.adapter_config(name).method;
    if (method != "lora") {
      throw NotSupported(str("adapter_per_row: adapter '", name, "' is a ", method,
                             " adapter; one adapter per row runs the LoRA family (lora, rsLoRA, dora, ia3, vera) so far"),
                         "run the rows of other adapters as separate batches");
    }
  }
  const RowGroups groups = group_rows(adapter_per_row);
  options.setup = &groups.setup;
  if (groups.identity) return model.forward(inputs, options);

  models::ModelInputs in = inputs;
  for (Tensor* t : {&in.input_ids, &in.attention_mask, &in.token_type_ids, &in.position_ids, &in.inputs_embeds,
                    &in.pixel_values, &in.decoder_input_ids, &in.decoder_attention_mask, &in.encoder_hidden_states}) {
    *t = take_rows(*t, groups.order);
  }
  for (auto& [key, t] : options.head_inputs) t = take_rows(t, groups.order);
  ModelOutput out = model.forward(in, options);
  for (Tensor* t : {&out.last_hidden_state, &out.pooler_output, &out.encoder_last_hidden_state}) {
    *t = take_rows(*t, groups.inverse);
  }
  for (auto& [key, t] : out.head) {
    if (t.defined() && t.dim() > 0 && t.size(0) == batch) t = take_rows(t, groups.inverse);
  }
  return out;
}

}  // namespace adapters
