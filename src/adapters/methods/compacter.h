// Compacter: parameterized hypercomplex multiplication (PHM) layers that replace the bottleneck's
// down and up projections when phm_layer=true, and the parameters one Compacter adapter shares
// across all its layers (the reference's base_model.shared_parameters[<adapter>]).
#pragma once

#include <torch/nn/module.h>

#include <map>
#include <memory>
#include <string>

#include "adapters/methods/bottleneck.h"
#include "adapters/models/base_model.h"
#include "adapters/nn/model_hooks.h"

namespace adapters::methods {

// Kronecker product over the last two dimensions, leading dimensions broadcast:
// (...,p,q) x (...,r,s) -> (...,p*r,q*s).
torch::Tensor kronecker_product(const torch::Tensor& a, const torch::Tensor& b);

// The shared parameters of one Compacter adapter: the PHM rule (shared_phm_rule) and the
// down/up weights (shared_W_phm), named as the reference names them ("phm_rule", "W_down_left", ...).
class PhmSharedImpl : public torch::nn::Module {
 public:
  // `hidden` and `bottleneck` size the shared down (hidden -> bottleneck) and up weights.
  PhmSharedImpl(const BnConfig& config, std::int64_t hidden, std::int64_t bottleneck);

  torch::Tensor phm_rule() const;                       // (n,n,n)
  torch::Tensor weight(const std::string& position) const;  // "down"/"up": (n, in/n, out/n)
  std::int64_t bottleneck() const { return bottleneck_; }

 private:
  BnConfig config_;
  std::int64_t bottleneck_;
  std::map<std::string, torch::Tensor> params_;
};

// The model-level container registered as "shared_parameters": adapter name -> PhmSharedImpl.
class SharedParametersHook : public nn::ModelHook {
 public:
  void insert(const std::string& adapter, std::shared_ptr<PhmSharedImpl> shared);
  void delete_adapter(const std::string& name) override;

 private:
  std::map<std::string, std::shared_ptr<PhmSharedImpl>> items_;
};

// Creates the shared parameters of `adapter` in `model` (registered under "shared_parameters").
std::shared_ptr<PhmSharedImpl> add_phm_shared(const std::string& adapter, const BnConfig& config,
                                              models::BaseModelImpl& model, const std::string& source);

// A PHM layer: y = x H + b with H = sum_i kron(rule_i, W_i), (in, out). Holds its own W (and
// rule) unless they are shared; `position` ("down"/"up") picks the shared W.
class PHMLayerImpl : public torch::nn::Module {
 public:
  PHMLayerImpl(const BnConfig& config, std::int64_t in_features, std::int64_t out_features, std::string position,
               std::shared_ptr<PhmSharedImpl> shared, const std::string& source);

  torch::Tensor forward(const torch::Tensor& x);  // (..., in) -> (..., out)

 private:
  torch::Tensor weight() const;    // (n, in/n, out/n)
  torch::Tensor phm_rule() const;  // (n,n,n)

  BnConfig config_;
  std::string position_;
  std::shared_ptr<PhmSharedImpl> shared_;  // not registered: it lives under "shared_parameters"
  torch::Tensor W_, W_left_, W_right_, b_, rule_, rule_left_, rule_right_;
};

// Checks that a PHM layer of this config can map `in` to `out` features (both divisible by phm_dim).
void check_phm_sizes(const BnConfig& config, std::int64_t in, std::int64_t out, const std::string& source);

}  // namespace adapters::methods
