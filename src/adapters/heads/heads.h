// Flexible prediction heads, as adapter-transformers' heads: a head is a named module under the
// model's "heads" dict, built from a config dict (head_config.json's "config"), so a head's keys
// read "heads.<name>.<i>.weight" exactly as the reference writes them. Types: classification,
// multilabel_classification, tagging, multiple_choice, question_answering, dependency_parsing,
// masked_lm, causal_lm, seq2seq_lm, image_classification; more can be registered by name.
#pragma once

#include <torch/nn/module.h>

#include <functional>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "adapters/models/config.h"

namespace adapters::heads {

// What a head reads of the base model, for its rows of the batch.
struct HeadInputs {
  torch::Tensor hidden;          // (B,T,C) the last hidden state
  torch::Tensor pooled;          // (B,C) the pooler output, or undefined
  // (B,C) the architecture's sequence representation (GPT-2: last real token, BART: last EOS);
  // when defined, sequence-level heads read it instead of the pooler or the first token.
  torch::Tensor summary;
  torch::Tensor attention_mask;  // (B,T) 1/0, or undefined
  // Targets and extra inputs by the reference's argument names: "labels", "start_positions",
  // "end_positions", "labels_arcs", "labels_rels", "word_starts".
  std::map<std::string, torch::Tensor> extra;
  // Applied to the hidden state before a head over the vocabulary (invertible adapters' inverse).
  std::function<torch::Tensor(const torch::Tensor&)> before_lm_head;
};

struct HeadOutput {
  std::map<std::string, torch::Tensor> tensors;  // "logits", "start_logits", "end_logits", ...
  torch::Tensor loss;                            // undefined without targets
};

class PredictionHead : public torch::nn::Module {
 public:
  explicit PredictionHead(nlohmann::json config) : config_(std::move(config)) {}
  virtual HeadOutput forward(const HeadInputs& in) = 0;

  // The config as head_config.json's "config" holds it (head_type first among its keys).
  const nlohmann::json& config() const { return config_; }
  std::string type() const { return config_.at("head_type").get<std::string>(); }
  // How many classes the head predicts (num_labels, num_choices, vocab_size), 0 if none.
  std::int64_t num_outputs() const;

 protected:
  nlohmann::json config_;
};

// What a head is built against: the model's config and its input embeddings (LM heads tie their
// output weight to them when the config's tie_word_embeddings is true, as the reference does).
struct HeadContext {
  const models::ModelConfig& model;
  torch::Tensor input_embeddings;  // (V,C)
  bool tie_word_embeddings = true;
};

// Makes a head of one type from its (complete) config.
using HeadFactory = std::function<std::shared_ptr<PredictionHead>(const nlohmann::json& config, const HeadContext& ctx)>;

// Registers a custom head type (an explicit call; the built-in types are always known). A type
// registered twice replaces the first.
void register_head_type(const std::string& type, HeadFactory make);
std::vector<std::string> head_types();

// The complete config of a head of `type` from the options given (the reference's add_*_head
// keyword arguments: num_labels, layers, activation_function, id2label/label2id, use_pooler,
// bias, multilabel, num_choices, vocab_size, ...), with the reference's defaults filled in.
nlohmann::json complete_config(const std::string& type, const nlohmann::json& options,
                               const models::ModelConfig& model);

// Builds a head from a complete config (validated; errors name `source`).
std::shared_ptr<PredictionHead> make_head(const nlohmann::json& config, const HeadContext& ctx,
                                          const std::string& source);

}  // namespace adapters::heads
