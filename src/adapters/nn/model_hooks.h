// Hook points 4 and 5, and the model-level containers. A model calls, once per forward:
//     hooks.prepare(batch_size, ctx)             before anything (e.g. the prefix pool computes
//                                                its key/value states once for every layer)
//     h = hooks.embeddings(h, attention_mask, ctx)   after the embeddings (prompt tuning prepends
//                                                soft tokens and extends the (B,T) mask;
//                                                invertible adapters transform h)
//     h = hooks.layer_output(layer, h, ctx)      after each Transformer layer (ReFT)
// and a head over the vocabulary calls hooks.before_lm_head(h, ctx) (invertible adapters' inverse).
// Methods that need model-level modules register a ModelHook under the base model by name
// ("prefix_tuning", "invertible_adapters", ...), created on first use; with none registered
// every call returns its input.
#pragma once

#include <torch/nn/module.h>

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "adapters/nn/context.h"

namespace adapters::nn {

class ModelHook : public torch::nn::Module {
 public:
  virtual void prepare(std::int64_t batch_size, ForwardContext& ctx) {}
  virtual torch::Tensor embeddings(const torch::Tensor& h, torch::Tensor& attention_mask, ForwardContext& ctx) {
    return h;
  }
  virtual torch::Tensor layer_output(std::int64_t layer, const torch::Tensor& h, ForwardContext& ctx) { return h; }
  virtual torch::Tensor before_lm_head(const torch::Tensor& h, ForwardContext& ctx) { return h; }
  virtual void delete_adapter(const std::string& name) = 0;
};

class ModelHooks {
 public:
  explicit ModelHooks(torch::nn::Module& owner) : owner_(owner) {}

  // The hook registered as `name` under the base model, created by `make` on first use.
  template <typename T>
  std::shared_ptr<T> get_or_create(const std::string& name, const std::function<std::shared_ptr<T>()>& make) {
    for (auto& [n, hook] : hooks_) {
      if (n == name) return std::dynamic_pointer_cast<T>(hook);
    }
    auto placed = placements_.find(name);
    torch::nn::Module& owner = placed == placements_.end() ? owner_ : *placed->second;
    std::shared_ptr<T> hook = owner.register_module(name, make());
    hooks_.emplace_back(name, hook);
    return hook;
  }
  // Registers the hook `name` under `owner` (a submodule of the model) instead of the model itself,
  // where the reference keeps it there (BART's and T5's invertible adapters live in the encoder).
  void place(const std::string& name, torch::nn::Module& owner) { placements_[name] = &owner; }

  template <typename T>
  std::shared_ptr<T> find(const std::string& name) const {
    for (const auto& [n, hook] : hooks_) {
      if (n == name) return std::dynamic_pointer_cast<T>(hook);
    }
    return nullptr;
  }

  void prepare(std::int64_t batch_size, ForwardContext& ctx) {
    for (auto& [n, hook] : hooks_) hook->prepare(batch_size, ctx);
  }
  torch::Tensor embeddings(torch::Tensor h, torch::Tensor& attention_mask, ForwardContext& ctx) {
    for (auto& [n, hook] : hooks_) h = hook->embeddings(h, attention_mask, ctx);
    return h;
  }
  torch::Tensor layer_output(std::int64_t layer, torch::Tensor h, ForwardContext& ctx) {
    for (auto& [n, hook] : hooks_) h = hook->layer_output(layer, h, ctx);
    return h;
  }
  torch::Tensor before_lm_head(torch::Tensor h, ForwardContext& ctx) {
    for (auto& [n, hook] : hooks_) h = hook->before_lm_head(h, ctx);
    return h;
  }
  void delete_adapter(const std::string& name) {
    for (auto& [n, hook] : hooks_) hook->delete_adapter(name);
  }

 private:
  torch::nn::Module& owner_;
  std::map<std::string, torch::nn::Module*> placements_;
  std::vector<std::pair<std::string, std::shared_ptr<ModelHook>>> hooks_;
};

}  // namespace adapters::nn
