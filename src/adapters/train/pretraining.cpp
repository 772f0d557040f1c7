// Pretraining pieces (see pretraining.h): initialisation and the corpus as features.
#include "adapters/train/pretraining.h"

#include <cmath>
#include <fstream>
#include <string>
#include <utility>
#include <vector>

#include "adapters/core/error.h"

namespace adapters::train {

namespace fs = std::filesystem;

namespace {

bool ends_with(const std::string& text, const std::string& suffix) {
  return text.size() >= suffix.size() && text.compare(text.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// A 1-D norm weight by its name: BERT's LayerNorm / layer_norm, GPT-2's ln_1 / ln_2 / ln_f, *norm.
bool is_norm_weight(const std::string& name) {
  const bool norm = name.find("LayerNorm") != std::string::npos || name.find("layer_norm") != std::string::npos ||
                    name.find("ln_") != std::string::npos || name.find("norm") != std::string::npos;
  return norm && ends_with(name, "weight");
}

// Calls `on_line` with the token ids of every non-empty corpus line (no special tokens).
template <typename OnLine>
void for_each_line(const tokenizer::Tokenizer& tokenizer, const fs::path& corpus, OnLine on_line) {
  std::ifstream in(corpus);
  ADAPTERS_CHECK(in.good(), corpus.string(), ": cannot read the corpus");
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    const auto ids = tokenizer.encode(line, /*add_special_tokens=*/false).ids;
    on_line(std::vector<int64_t>(ids.begin(), ids.end()));
  }
  ADAPTERS_CHECK(!in.bad(), corpus.string(), ": error while reading the corpus");
}

Feature text_row(std::vector<int64_t> ids, std::vector<int64_t> labels) {
  Feature f;
  f.rows.push_back({std::move(ids), {}});
  f.rows.back().token_type_ids.assign(f.rows.back().input_ids.size(), 0);
  f.token_labels = std::move(labels);
  return f;
}

}  // namespace

void init_weights(AdapterModelImpl& model, double std) {
  torch::NoGradGuard no_grad;
  const models::ModelConfig& c = model.config();
  const double residual_std = std / std::sqrt(2.0 * static_cast<double>(c.num_hidden_layers));
  for (auto& item : model.named_parameters()) {
    auto& t = item.value();
    if (t.dim() >= 2) t.normal_(0.0, c.model_type == "gpt2" && ends_with(item.key(), "c_proj.weight") ? residual_std : std);
    else t.fill_(is_norm_weight(item.key()) ? 1.0 : 0.0);
  }
}

FeatureSet masked_lm_corpus(const tokenizer::Tokenizer& tokenizer, const fs::path& corpus, const CorpusLayout& layout,
                            const MaskingOptions& masking) {
  ADAPTERS_CHECK(layout.max_length >= 6, "--max-length: expected at least 6 tokens for a masked-LM row, found ", layout.max_length);
  FeatureSet set;
  set.task = TaskKind::MaskedLM;
  set.pad_id = layout.pad;
  set.masking = masking;
  const size_t piece = layout.max_length - 2;
  for_each_line(tokenizer, corpus, [&](const std::vector<int64_t>& ids) {
    for (size_t at = 0; at < ids.size(); at += piece) {
      const size_t end = std::min(ids.size(), at + piece);
      if (end - at < 4) continue;
      std::vector<int64_t> row{layout.bos};
      row.insert(row.end(), ids.begin() + static_cast<std::ptrdiff_t>(at), ids.begin() + static_cast<std::ptrdiff_t>(end));
      row.push_back(layout.eos);
      std::vector<int64_t> labels = row;
      labels.front() = labels.back() = kIgnoreIndex;
      set.features.push_back(text_row(std::move(row), std::move(labels)));
      set.features.back().example = set.features.size() - 1;
    }
  });
  ADAPTERS_CHECK(!set.features.empty(), corpus.string(), ": no line of the corpus has 4 tokens or more");
  return set;
}

FeatureSet causal_lm_corpus(const tokenizer::Tokenizer& tokenizer, const fs::path& corpus, const CorpusLayout& layout) {
  ADAPTERS_CHECK(layout.max_length >= 2, "--max-length: expected at least 2 tokens for a causal-LM block, found ", layout.max_length);
  FeatureSet set;
  set.task = TaskKind::CausalLM;
  set.pad_id = layout.pad;
  std::vector<int64_t> block;
  auto push = [&](int64_t id) {
    block.push_back(id);
    if (block.size() < layout.max_length) return;
    std::vector<int64_t> labels = block;
    set.features.push_back(text_row(std::exchange(block, {}), std::move(labels)));
    set.features.back().example = set.features.size() - 1;
  };
  for_each_line(tokenizer, corpus, [&](const std::vector<int64_t>& ids) {
    push(layout.bos);
    for (const int64_t id : ids) push(id);
    push(layout.eos);
  });
  ADAPTERS_CHECK(!set.features.empty(), corpus.string(), ": fewer than --max-length ", layout.max_length, " tokens in the corpus");
  return set;
}

}  // namespace adapters::train
