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

bool is_past_prefix(const methods::AdapterConfig& c) {
  return c.method == "prefix_tuning" && c.values.value("placement", std::string()) == "past";
}

bool is_input_prompt(const methods::AdapterConfig& c) {
  return c.method == "prompt_tuning" && c.values.value("combine", std::string()) == "input";
}

namespace {

// One row group's soft tokens: the member's past prefix (adapter or Stack) and, when its first
// adapter is an input prompt, that prompt.
SoftTokens::Group soft_group(const AdapterModelImpl& model, const Block& member, std::int64_t rows, const Block& setup) {
  SoftTokens::Group g;
  g.rows = rows;
  for (const auto& name : member.flatten()) {
    if (!model.has_adapter(name) || !is_past_prefix(model.adapter_config(name))) continue;
    if (!member.is_adapter() && member.type != composition::BlockType::Stack) {
      throw NotSupported(str("prefix tuning '", name, "' (placement \"past\", PEFT's) runs alone, in a Stack or in a ",
                             "BatchSplit of those, not in ", setup.to_string()));
    }
    ADAPTERS_CHECK(g.past_prefix.empty(), "the setup ", setup.to_string(), " holds two past prefixes ('", g.past_prefix,
                   "', '", name, "') for the same rows; one key/value cache holds one");
    g.past_prefix = name;
    g.past = model.adapter_config(name).values.at("prefix_length").get<std::int64_t>();
  }
  const std::string first = member.first();
  if (model.has_adapter(first) && is_input_prompt(model.adapter_config(first))) {
    g.prompt = first;
    g.prompt_length = model.adapter_config(first).values.at("prompt_length").get<std::int64_t>();
  }
  return g;
}

}  // namespace

SoftTokens soft_tokens(const AdapterModelImpl& model, const Block* setup, std::int64_t batch) {
  SoftTokens soft;
  soft.prompt_on_left = model.arch().kind == models::ArchKind::Decoder;
  if (setup == nullptr) return soft;
  if (setup->type == composition::BlockType::BatchSplit) {
    for (std::size_t i = 0; i < setup->children.size(); ++i) {
      soft.groups.push_back(soft_group(model, setup->children[i], setup->batch_sizes.at(i), *setup));
    }
  } else {
    soft.groups.push_back(soft_group(model, *setup, batch, *setup));
  }
  std::int64_t rows = 0;
  for (const auto& g : soft.groups) {
    soft.past = std::max(soft.past, g.past);
    soft.prompt = std::max(soft.prompt, g.prompt_length);
    rows += g.rows;
  }
  ADAPTERS_CHECK(rows == batch || batch == 0 || (soft.past == 0 && soft.prompt == 0), "the setup ", setup->to_string(),
                 " splits ", rows, " rows, the batch has ", batch);
  return soft;
}

bool SoftTokens::past_filled() const {
  return std::any_of(groups.begin(), groups.end(), [&](const Group& g) { return g.past < past; });
}

bool SoftTokens::prompt_filled() const {
  return std::any_of(groups.begin(), groups.end(), [&](const Group& g) { return g.prompt_length < prompt; });
}

Tensor SoftTokens::past_filler(const torch::Device& device) const {
  std::vector<Tensor> rows;
  for (const auto& g : groups) {
    Tensor row = torch::cat({torch::ones({past - g.past}, torch::kLong), torch::zeros({g.past}, torch::kLong)});
    rows.push_back(row.unsqueeze(0).expand({g.rows, past}));
  }
  return torch::cat(rows, 0).to(device);
}

Tensor SoftTokens::prompt_filler(const torch::Device& device) const {
  std::vector<Tensor> rows;
  for (const auto& g : groups) {
    const Tensor fill = torch::ones({prompt - g.prompt_length}, torch::kLong);
    const Tensor own = torch::zeros({g.prompt_length}, torch::kLong);
    rows.push_back(torch::cat(prompt_on_left ? std::vector<Tensor>{fill, own} : std::vector<Tensor>{own, fill})
                       .unsqueeze(0)
                       .expand({g.rows, prompt}));
  }
  return torch::cat(rows, 0).to(device);
}

Tensor SoftTokens::join_prompt_mask(const Tensor& mask, std::int64_t batch, std::int64_t T, const torch::Device& device) const {
  const Tensor tokens = mask.defined() ? mask : torch::ones({batch, T}, torch::TensorOptions().dtype(torch::kLong).device(device));
  const Tensor attended = (1 - prompt_filler(tokens.device())).to(tokens.scalar_type());  // (B,prompt)
  if (prompt_on_left) return torch::cat({attended, tokens}, 1);
  // [prompt][mask][filler]: the attended columns of the prompt part come first.
  std::vector<Tensor> rows;
  std::int64_t begin = 0;
  for (const auto& g : groups) {
    const Tensor part = tokens.slice(0, begin, begin + g.rows);
    rows.push_back(torch::cat({attended.slice(0, begin, begin + g.rows).slice(1, 0, g.prompt_length), part,
                               torch::zeros({g.rows, prompt - g.prompt_length}, part.options())},
                              1));
    begin += g.rows;
  }
  return torch::cat(rows, 0);
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
