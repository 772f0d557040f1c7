// The architecture registry: one explicit line per supported model_type, and the table lookups.
#include "adapters/models/registry.h"

#include <torch/torch.h>

#include "adapters/core/error.h"
#include "adapters/models/architectures.h"
#include "adapters/nn/adapted_linear.h"

namespace adapters::models {

const std::vector<ArchSpec>& architectures() {
  static const std::vector<ArchSpec> specs = [] {
    std::vector<ArchSpec> all = {
      bert_arch(),
      roberta_arch(),
      xlm_roberta_arch(),
      electra_arch(),
      distilbert_arch(),
      vit_arch(),
      beit_arch(),
      albert_arch(),
      deberta_arch(),
      deberta_v2_arch(),
      gpt2_arch(),
      gptj_arch(),
      bart_arch(),
      mbart_arch(),
      t5_arch(),
      mt5_arch(),
    };
    for (auto& spec : llama_style_archs()) all.push_back(std::move(spec));
    return all;
  }();
  return specs;
}

const ArchSpec& arch_spec(const std::string& model_type) {
  for (const auto& spec : architectures()) {
    if (spec.model_type == model_type) return spec;
  }
  std::string known;
  for (const auto& spec : architectures()) known += (known.empty() ? "" : ", ") + spec.model_type;
  throw NotSupported(str("model_type '", model_type, "' is not supported"), "supported: " + known);
}

std::vector<std::string> known_base_prefixes() {
  std::vector<std::string> prefixes;
  for (const auto& spec : architectures()) {
    if (std::find(prefixes.begin(), prefixes.end(), spec.base_prefix) == prefixes.end()) prefixes.push_back(spec.base_prefix);
  }
  return prefixes;
}

const StaticHeadSpec* find_static_head(const ArchSpec& spec, const std::string& hf_class) {
  for (const auto& head : spec.static_heads) {
    const auto& suffix = head.class_suffix;
    if (hf_class.size() >= suffix.size() && hf_class.compare(hf_class.size() - suffix.size(), suffix.size(), suffix) == 0) {
      return &head;
    }
  }
  return nullptr;
}

std::vector<StaticHeadSpec> bert_static_heads() {
  const json lm = {{"layers", 2}, {"activation_function", "hidden_act"}, {"layer_norm", true}, {"bias", true}};
  return {
      {"ForSequenceClassification", "classification",
       {{"layers", 1}, {"activation_function", nullptr}, {"use_pooler", true}}, {"", "classifier"}},
      {"ForTokenClassification", "tagging", {{"layers", 1}, {"activation_function", nullptr}}, {"", "classifier"}},
      {"ForQuestionAnswering", "question_answering",
       {{"layers", 1}, {"activation_function", nullptr}, {"num_labels", 2}}, {"", "qa_outputs"}},
      {"ForMaskedLM", "masked_lm", lm,
       {"cls.predictions.transform.dense", "", "cls.predictions.transform.LayerNorm", "cls.predictions.decoder"}},
  };
}

std::map<std::string, std::string> bert_module_roles() {
  return {{"query", nn::role::kQuery},
          {"key", nn::role::kKey},
          {"value", nn::role::kValue},
          {"attention.output.dense", nn::role::kAttentionOut},
          {"intermediate.dense", nn::role::kIntermediate},
          {"output.dense", nn::role::kOutput}};
}

}  // namespace adapters::models
