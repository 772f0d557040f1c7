// DistilBERT encoder (HF's DistilBertModel), with HF's attribute names.
#pragma once

#include <memory>

#include "adapters/models/base_model.h"

namespace adapters::models {

std::shared_ptr<BaseModelImpl> make_distilbert(const ModelConfig& config);

}  // namespace adapters::models
