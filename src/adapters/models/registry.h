// The architecture registry: one explicit line per supported model_type.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "adapters/models/base_model.h"

namespace adapters::models {

struct ArchSpec {
  std::string model_type;   // config.json "model_type"
  std::string base_prefix;  // attribute of the base model in HF's model classes: "bert", "roberta", ...
  std::string model_class;  // the reference's flexible-head class, written into adapter_config.json
  std::function<std::shared_ptr<BaseModelImpl>(const ModelConfig&)> create;
};

const ArchSpec& arch_spec(const std::string& model_type);
const std::vector<ArchSpec>& architectures();

// Every base-model prefix any architecture uses (to recognise checkpoint keys).
std::vector<std::string> known_base_prefixes();

}  // namespace adapters::models
