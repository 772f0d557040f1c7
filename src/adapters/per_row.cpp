// One adapter per batch row through one BatchSplit over the rows grouped by adapter (the LoRA family).
#include "adapters/per_row.h"

#include <torch/torch.h>

#include <algorithm>

#include "adapters/core/error.h"

namespace adapters {

namespace {

using torch::Tensor;

std::string known_adapters(const AdapterModelImpl& model) {
  std::string known;
  for (const auto& n : model.adapter_names()) known += (known.empty() ? "" : ", ") + n;
  return known.empty() ? "none" : known;
}

Tensor take_rows(const Tensor& t, const Tensor& rows) { return t.defined() ? t.index_select(0, rows.to(t.device())) : t; }

}  // namespace

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

void check_adapter_per_row(const AdapterModelImpl& model, const std::vector<std::string>& adapter_per_row,
                           std::int64_t batch) {
  ADAPTERS_CHECK(static_cast<std::int64_t>(adapter_per_row.size()) == batch, "adapter_per_row has ",
                 adapter_per_row.size(), " entries for a batch of ", batch, " rows (expected one per row)");
  for (std::size_t i = 0; i < adapter_per_row.size(); ++i) {
    const std::string& name = adapter_per_row[i];
    if (name == kNoAdapter) continue;
    ADAPTERS_CHECK(model.has_adapter(name), "adapter_per_row[", i, "]: no adapter named '", name,
                   "' is loaded (known: ", known_adapters(model), "; \"", kNoAdapter, "\" = no adapter)");
    const methods::AdapterConfig& config = model.adapter_config(name);
    const bool past_prefix = config.method == "prefix_tuning" && config.values.value("placement", "") == "past";
    const bool input_prompt = config.method == "prompt_tuning" && config.values.value("combine", "") == "input";
    if (past_prefix || input_prompt) {
      throw NotSupported(str("adapter_per_row[", i, "]: adapter '", name, "' is PEFT's ",
                             past_prefix ? "prefix tuning (past key/values)" : "prompt tuning (joined at the input)",
                             ", which moves the positions of every token of its rows; one adapter per row runs the ",
                             "LoRA family, bottleneck adapters, Compacter, AdapterHub prefix and prompt tuning and ReFT"),
                         "run the rows of this adapter as a batch of their own");
    }
  }
}

ModelOutput forward_per_row(AdapterModelImpl& model, const models::ModelInputs& inputs,
                            const std::vector<std::string>& adapter_per_row, ForwardOptions options) {
  ADAPTERS_CHECK(options.setup == nullptr, "forward_per_row: give adapter_per_row or a setup, not both");
  ADAPTERS_CHECK(!options.inputs_replicated_for_parallel, "forward_per_row: rows of one adapter each cannot be Parallel copies");
  const std::int64_t batch = model.base().batch_size(inputs);
  check_adapter_per_row(model, adapter_per_row, batch);
  const RowGroups groups = group_rows(adapter_per_row);
  options.adapter_per_row.clear();
  options.setup = &groups.setup;
  options.rows_independent = true;
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
