// BERT, RoBERTa and XLM-RoBERTa encoders (HF's BertModel / RobertaModel). Module and attribute
// names follow HF, so named_parameters() equals the checkpoint keys.
#pragma once

#include <memory>

#include "adapters/models/base_model.h"

namespace adapters::models {

// `roberta_positions`: position ids count from pad_token_id + 1 over non-padding tokens.
std::shared_ptr<BaseModelImpl> make_bert(const ModelConfig& config, bool roberta_positions);

}  // namespace adapters::models
