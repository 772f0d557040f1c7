// AdapterFusion: attention over the outputs of several adapters at one residual site (the
// reference's BertFusion), and its configuration ("static", "dynamic" or explicit keys).
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/modules/dropout.h>
#include <torch/nn/modules/linear.h>

#include <nlohmann/json.hpp>
#include <string>

namespace adapters::nn {

struct FusionConfig {
  bool key = true;
  bool query = true;
  bool value = true;
  bool query_before_ln = false;
  bool regularization = true;
  bool residual_before = false;
  bool temperature = false;
  bool value_before_softmax = true;
  bool value_initialized = true;

  // "static", "dynamic", or an object with any of the keys above (missing keys: dynamic's value).
  // Errors name `source` and the key.
  static FusionConfig from_json(const nlohmann::json& spec, const std::string& source);
  nlohmann::json to_json() const;
  bool operator==(const FusionConfig& o) const { return to_json() == o.to_json(); }
};

class BertFusionImpl : public torch::nn::Module {
 public:
  BertFusionImpl(const FusionConfig& config, std::int64_t hidden, double attention_dropout);

  // query (B,T,C), key = value = the adapters' up-projections (B,T,N,C), residual (B,T,C)
  // -> (B,T,C); `scores` receives the attention over the N adapters (B,T,N) when given.
  torch::Tensor forward(const torch::Tensor& query, const torch::Tensor& key, torch::Tensor value,
                        const torch::Tensor& residual, torch::Tensor* scores = nullptr);

  const FusionConfig& config() const { return config_; }
  // 0.01 * ||I - W_value||^2, the reference's regularisation term (0 without a value matrix).
  torch::Tensor regularization_loss() const;

  torch::nn::Linear query{nullptr}, key{nullptr}, value{nullptr}, dense{nullptr};

 private:
  FusionConfig config_;
  torch::nn::Dropout dropout_{nullptr};
  double temperature_;  // 50 -> 1 over training steps when config.temperature, else 1
  double reduction_;
};
TORCH_MODULE(BertFusion);

}  // namespace adapters::nn
