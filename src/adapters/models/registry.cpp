// The architecture registry and the helpers every architecture shares.
#include "adapters/models/registry.h"

#include <torch/torch.h>

#include "adapters/core/error.h"
#include "adapters/models/bert.h"
#include "adapters/models/distilbert.h"

namespace adapters::models {

const std::vector<ArchSpec>& architectures() {
  // clang-format off
  static const std::vector<ArchSpec> specs = {
    {"bert",        "bert",       "BertAdapterModel",       [](const ModelConfig& c) { return make_bert(c, false); }},
    {"roberta",     "roberta",    "RobertaAdapterModel",    [](const ModelConfig& c) { return make_bert(c, true); }},
    {"xlm-roberta", "roberta",    "XLMRobertaAdapterModel", [](const ModelConfig& c) { return make_bert(c, true); }},
    {"distilbert",  "distilbert", "DistilBertAdapterModel", [](const ModelConfig& c) { return make_distilbert(c); }},
  };
  // clang-format on
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

void BaseModelImpl::delete_adapter(const std::string& name) {
  for (auto* site : sites_.residual) site->delete_adapter(name);
  for (auto* site : sites_.attention) site->delete_adapter(name);
  for (auto* linear : sites_.linear) linear->delete_adapter(name);
  hooks_.delete_adapter(name);
}

torch::Tensor extended_attention_mask(const torch::Tensor& attention_mask, torch::ScalarType dtype) {
  const double lowest = dtype == torch::kFloat64 ? std::numeric_limits<double>::lowest()
                        : dtype == torch::kFloat16 ? -65504.0
                        : dtype == torch::kBFloat16 ? -3.3895313892515355e38
                                                    : static_cast<double>(std::numeric_limits<float>::lowest());
  torch::Tensor m = attention_mask.unsqueeze(1).unsqueeze(2).to(dtype);  // (B,1,1,T)
  return (1.0 - m) * lowest;
}

}  // namespace adapters::models
