// ReFT (loreft, noreft, direft; the adapters library's methods/reft.py): low-rank interventions
// on the hidden states of the first/last positions after each Transformer layer,
// h <- h + (act(W h + b) - R h) R with R (r,C) (orthonormal rows for LoReFT), through the
// layer-output hook.
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/modules/dropout.h>
#include <torch/nn/modules/linear.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "adapters/core/json.h"
#include "adapters/methods/registry.h"
#include "adapters/nn/activation.h"
#include "adapters/nn/model_hooks.h"

namespace adapters::methods {

struct ReftConfig {
  json layers = "all";  // "all" or a list of layer indices
  std::int64_t prefix_positions = 3;
  std::int64_t suffix_positions = 0;
  std::int64_t r = 1;
  bool orthogonality = true;
  bool tied_weights = false;
  bool subtract_projection = true;
  double dropout = 0.05;
  json non_linearity = nullptr;  // an activation name, or null for none
  json dtype = nullptr;
  bool output_reft = true;
  json init_weights_seed = nullptr;

  static ReftConfig from_json(const json& options, const std::string& source);
  json to_json() const;
  bool applies_to(std::int64_t layer) const;
};

// The rows of an (r,C) matrix kept orthonormal: torch's orthogonal parametrisation with the
// Householder map (parameter "parametrizations.weight.original"), without trivialisation.
class OrthogonalProjectionImpl : public torch::nn::Module {
 public:
  OrthogonalProjectionImpl(std::int64_t in_features, std::int64_t r);
  torch::Tensor weight() const;  // (r,C), R R^T = I
 private:
  torch::Tensor original_;  // (r,C)
};

// One intervention: x + (act(learned_source(x)) - projection(x)) @ R  (without the subtraction
// for DiReFT), then dropout. x: (B,P,C).
class ReftUnitImpl : public torch::nn::Module {
 public:
  ReftUnitImpl(const ReftConfig& config, std::int64_t in_features, const std::string& source);
  torch::Tensor forward(const torch::Tensor& x);
  torch::Tensor projection_weight() const;  // R: (r,C)

 private:
  bool subtract_projection_;
  nn::Activation activation_;
  torch::nn::Linear learned_source_{nullptr};
  torch::nn::Linear projection_{nullptr};                  // noreft, direft
  std::shared_ptr<OrthogonalProjectionImpl> orthogonal_;   // loreft
  torch::nn::Dropout dropout_{nullptr};
};

// The interventions of one adapter at one layer: "units.0" (prefix, or both when tied) and
// "units.1" (suffix).
class ReftModuleImpl : public torch::nn::Module {
 public:
  ReftModuleImpl(const ReftConfig& config, std::int64_t in_features, const std::string& source);
  torch::Tensor forward(const torch::Tensor& h);  // (B,T,C) -> (B,T,C)
  const std::vector<std::shared_ptr<ReftUnitImpl>>& units() const { return units_; }

 private:
  std::int64_t prefix_, suffix_;
  bool tied_;
  std::vector<std::shared_ptr<ReftUnitImpl>> units_;
};

// The model-level container registered as "refts": adapter -> layer index -> ReftModule. The
// active setup's first adapter intervenes after each of its layers.
class ReftHook : public nn::ModelHook {
 public:
  void insert(const std::string& adapter, std::int64_t layer, std::shared_ptr<ReftModuleImpl> module);
  ReftModuleImpl* find(const std::string& adapter, std::int64_t layer) const;
  void delete_adapter(const std::string& name) override;
  torch::Tensor layer_output(std::int64_t layer, const torch::Tensor& h, nn::ForwardContext& ctx) override;

 private:
  std::map<std::string, std::shared_ptr<torch::nn::Module>> adapters_;
  std::map<std::string, std::map<std::int64_t, std::shared_ptr<ReftModuleImpl>>> modules_;
};

MethodSpec reft_method();

}  // namespace adapters::methods
