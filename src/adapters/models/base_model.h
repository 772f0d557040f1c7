// What every architecture provides: a base model (the HF *Model, e.g. BertModel) whose module tree
// mirrors HF's attribute names, a forward pass taking a ForwardContext, and the list of its hook
// sites. Methods find their places through HookSites; a model knows nothing about any method.
#pragma once

#include <torch/nn/module.h>

#include <vector>

#include "adapters/models/config.h"
#include "adapters/nn/adapted_linear.h"
#include "adapters/nn/attention_site.h"
#include "adapters/nn/context.h"
#include "adapters/nn/model_hooks.h"
#include "adapters/nn/residual_site.h"

namespace adapters::models {

struct ModelInputs {
  torch::Tensor input_ids;       // (B,T) int64
  torch::Tensor attention_mask;  // (B,T) 1 = attend, 0 = padding; undefined = all ones
  torch::Tensor token_type_ids;  // (B,T) or undefined
};

struct BaseModelOutput {
  torch::Tensor last_hidden_state;  // (B,T,C)
  torch::Tensor pooler_output;      // (B,C), undefined for models without a pooler
};

// Every hook site of a model, in layer order.
struct HookSites {
  std::vector<nn::ResidualSite*> residual;
  std::vector<nn::AdaptedLinearImpl*> linear;
  std::vector<nn::AttentionSite*> attention;
};

class BaseModelImpl : public torch::nn::Module {
 public:
  explicit BaseModelImpl(ModelConfig config) : config_(std::move(config)), hooks_(*this) {}

  virtual BaseModelOutput forward(const ModelInputs& inputs, nn::ForwardContext& ctx) = 0;

  const ModelConfig& config() const { return config_; }
  const HookSites& sites() const { return sites_; }
  // Model-level hooks (prefix pool, prompt tuning, invertible adapters, ReFT).
  nn::ModelHooks& hooks() { return hooks_; }

  // Removes the adapter from every hook site and model-level hook.
  void delete_adapter(const std::string& name);

 protected:
  ModelConfig config_;
  HookSites sites_;  // filled by the architecture's constructor
  nn::ModelHooks hooks_;
};

// The additive attention mask of HF: (B,T) 1/0 -> (B,1,1,T) with 0 where attended and the dtype's
// lowest value where masked.
torch::Tensor extended_attention_mask(const torch::Tensor& attention_mask, torch::ScalarType dtype);

}  // namespace adapters::models
