// Hook point 2: adapted linear layers (q, k, v, o, feed-forward in/out). Computes x W^T + b, then
// lets every active LoRA-family adapter of this layer (registered under "loras", as in the
// reference) transform the result. With none active it is exactly torch::nn::Linear.
#pragma once

#include <torch/nn/module.h>

#include <string>

#include "adapters/nn/context.h"
#include "adapters/nn/module_dict.h"

namespace adapters::nn {

// Which linear layer of a Transformer block: the names LoRA-family configs select by.
namespace role {
inline constexpr const char* kQuery = "q";
inline constexpr const char* kKey = "k";
inline constexpr const char* kValue = "v";
inline constexpr const char* kAttentionOut = "o";
inline constexpr const char* kIntermediate = "intermediate";
inline constexpr const char* kOutput = "output";
}  // namespace role

// A LoRA-family adapter on one linear layer.
class LinearDelta : public torch::nn::Module {
 public:
  // `x` is the layer input, `y` the output so far; returns the adapted output.
  virtual torch::Tensor apply(const torch::Tensor& x, const torch::Tensor& y) = 0;
};

class AdaptedLinearImpl : public torch::nn::Module {
 public:
  AdaptedLinearImpl(std::int64_t in_features, std::int64_t out_features, bool with_bias, std::int64_t layer,
                    std::string role);

  torch::Tensor forward(const torch::Tensor& x, const ForwardContext& ctx);

  void add_adapter(const std::string& name, std::shared_ptr<LinearDelta> delta);
  void delete_adapter(const std::string& name);
  LinearDelta* adapter(const std::string& name) const { return loras->find(name); }

  std::int64_t layer() const { return layer_; }
  const std::string& role() const { return role_; }
  std::int64_t in_features() const { return weight.size(1); }
  std::int64_t out_features() const { return weight.size(0); }

  torch::Tensor weight;  // (out, in)
  torch::Tensor bias;    // (out) or undefined
  AdapterDict<LinearDelta> loras;

 private:
  std::int64_t layer_;
  std::string role_;
};
TORCH_MODULE(AdaptedLinear);

}  // namespace adapters::nn
