// Prompt tuning (Lester et al. 2021), as the adapters library (adapter-hub/adapters) has it:
// prompt_length learned soft tokens (prompt_tunings.<adapter>.prompt_embedding, (P,C)) joined to
// the embedded input at the embedding hook, before the first token ("prefix") or after it
// ("prefix_after_bos"); the (B,T) attention mask grows by P attended positions. Acts when the
// active setup's first adapter is a prompt-tuning adapter; the output sequence is T+P long.
// combine "input" (PEFT's placement, an extension) joins the soft tokens before the word embeddings
// instead, as inputs_embeds, so that the model's embedding layer covers them (AdapterModel does it).
#pragma once

#include <torch/nn/modules/embedding.h>

#include <string>
#include <vector>

#include "adapters/core/json.h"
#include "adapters/methods/registry.h"
#include "adapters/nn/model_hooks.h"
#include "adapters/nn/module_dict.h"

namespace adapters::methods {

struct PromptTuningConfig {
  std::int64_t prompt_length = 10;
  std::string prompt_init = "random_uniform";  // or "from_string"
  // from_string: the text (needs the model's tokenizer, not available to the library: refused)
  // or, as an extension of this library, the token ids themselves, e.g. [101, 2023, 102].
  json prompt_init_text = nullptr;
  std::string combine = "prefix";  // or "prefix_after_bos", or "input" (before the embedding layer, PEFT)

  static PromptTuningConfig from_json(const json& options, const std::string& source);
  json to_json() const;
};

// One adapter's soft prompt.
class PromptTuningImpl : public torch::nn::Module {
 public:
  PromptTuningImpl(const PromptTuningConfig& config, const models::BaseModelImpl& model, const std::string& source);
  // h (B,T,C), attention_mask (B,T) or undefined -> (B,T+P,C), mask (B,T+P)
  torch::Tensor forward(const torch::Tensor& h, torch::Tensor& attention_mask);
  bool at_input() const { return at_input_; }

 private:
  bool after_bos_;
  bool at_input_;
  torch::nn::Embedding prompt_embedding_{nullptr};
};

// The model-level layer: "prompt_tunings.<adapter>.prompt_embedding.weight".
class PromptTuningLayerImpl : public nn::ModelHook {
 public:
  PromptTuningLayerImpl();
  torch::Tensor embeddings(const torch::Tensor& h, torch::Tensor& attention_mask, nn::ForwardContext& ctx) override;
  void delete_adapter(const std::string& name) override;
  void add(const std::string& name, std::shared_ptr<PromptTuningImpl> prompt);

 private:
  torch::Tensor per_row_groups(const composition::Block& groups, const torch::Tensor& h, torch::Tensor& attention_mask);
  nn::AdapterDict<PromptTuningImpl> prompts_;
};

MethodSpec prompt_tuning_method();

}  // namespace adapters::methods
