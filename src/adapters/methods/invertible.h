// Invertible adapters (the +inv bottleneck configs): a NICE or GLOW coupling block applied to the
// embeddings of the setup's first adapter, and its exact inverse before an LM head. The blocks
// live under the base model as "invertible_adapters.<adapter>", as in the reference.
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/modules/container/sequential.h>

#include <map>
#include <memory>
#include <string>

#include "adapters/models/base_model.h"
#include "adapters/nn/model_hooks.h"

namespace adapters::methods {

// A coupling block over (B,T,C): the channels split into x1 (C//2) and x2 (the rest).
class InvertibleBlock : public torch::nn::Module {
 public:
  virtual torch::Tensor forward(const torch::Tensor& x) = 0;  // (B,T,C) -> (B,T,C)
  virtual torch::Tensor inverse(const torch::Tensor& y) = 0;  // forward's exact inverse
};

// NICE (additive coupling): y1 = x1 + F(x2), y2 = x2 + G(y1). Submodules "F" and "G".
class NiceCouplingBlockImpl : public InvertibleBlock {
 public:
  NiceCouplingBlockImpl(std::int64_t channels, const std::string& non_linearity, double reduction_factor,
                        const std::string& source);
  torch::Tensor forward(const torch::Tensor& x) override;
  torch::Tensor inverse(const torch::Tensor& y) override;

 private:
  std::int64_t len1_, len2_;
  torch::nn::Sequential F_{nullptr}, G_{nullptr};
};

// GLOW (affine coupling, FrEIA's GLOWCouplingBlock): [s2,t2] = s2(x2), y1 = e(s2) x1 + t2;
// [s1,t1] = s1(y1), y2 = e(s1) x2 + t1, with e(s) = exp(clamp * 0.636 * atan(s / clamp)).
// Submodules "s1" and "s2". (The 3.2.1 reference's forward slices the wrong dimension and fails;
// this is the block as designed, with the reference's inverse.)
class GlowCouplingBlockImpl : public InvertibleBlock {
 public:
  GlowCouplingBlockImpl(std::int64_t channels, const std::string& non_linearity, double reduction_factor,
                        const std::string& source, double clamp = 5.0);
  torch::Tensor forward(const torch::Tensor& x) override;
  torch::Tensor inverse(const torch::Tensor& y) override;

 private:
  torch::Tensor e(const torch::Tensor& s) const;
  std::int64_t len1_, len2_;
  double clamp_;
  torch::nn::Sequential s1_{nullptr}, s2_{nullptr};
};

// The model-level container registered as "invertible_adapters": it transforms the embeddings
// with the block of the active setup's first adapter, and inverts that before an LM head.
class InvertibleAdaptersHook : public nn::ModelHook {
 public:
  void insert(const std::string& adapter, std::shared_ptr<InvertibleBlock> block);
  InvertibleBlock* find(const std::string& adapter) const;
  void delete_adapter(const std::string& name) override;

  torch::Tensor embeddings(const torch::Tensor& h, torch::Tensor& attention_mask, nn::ForwardContext& ctx) override;
  torch::Tensor before_lm_head(const torch::Tensor& h, nn::ForwardContext& ctx) override;

 private:
  InvertibleBlock* active(const nn::ForwardContext& ctx) const;
  std::map<std::string, std::shared_ptr<InvertibleBlock>> items_;
};

// Adds the invertible adapter of `adapter` ("nice" or "glow") to `model`.
void add_invertible_adapter(const std::string& adapter, const std::string& type, const std::string& non_linearity,
                            double reduction_factor, models::BaseModelImpl& model, const std::string& source);

}  // namespace adapters::methods
