// Hook point 1: residual sites. A model calls
//     h = site.forward(h, residual, layer_norm, ctx)
// after its attention output and after its feed-forward output. With nothing active it is
// exactly layer_norm(h + residual) (or h + residual without a norm); otherwise the active setup's
// bottleneck-style adapters act here as adapter-transformers' adapter_layer_forward does, every
// block through the composition driver (nn/composer.h), Fuse through this site's fusion layers.
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include <memory>
#include <string>

#include "adapters/nn/context.h"
#include "adapters/nn/fusion.h"
#include "adapters/nn/module_dict.h"

namespace adapters::nn {

// Where a residual site sits: its layer and its location key, as the reference names them.
namespace location {
inline constexpr const char* kAttention = "mh_adapter";
inline constexpr const char* kCrossAttention = "cross_adapter";
inline constexpr const char* kOutput = "output_adapter";
}  // namespace location

struct PreForward {
  torch::Tensor hidden;    // what the adapter transforms
  torch::Tensor query;     // the fusion query (undefined unless asked for)
  torch::Tensor residual;  // what the adapter adds back
};

struct AdapterOutput {
  torch::Tensor output;  // adapter output with its residual
  torch::Tensor down;    // bottleneck activations
  torch::Tensor up;      // up-projection (scaled), before the residual
  torch::Tensor gate;    // gating scores (undefined unless the adapter gates)
};

// A module that acts at residual sites (bottleneck adapters, Compacter): the reference's
// pre_forward / forward / post_forward triple.
class ResidualAdapter : public torch::nn::Module {
 public:
  virtual PreForward pre_forward(const torch::Tensor& hidden, const torch::Tensor& input, const Norm& norm,
                                 bool want_query, bool query_before_ln) = 0;
  virtual AdapterOutput forward(const torch::Tensor& x, const torch::Tensor& residual) = 0;
  virtual torch::Tensor post_forward(const torch::Tensor& hidden, const torch::Tensor& input_hidden,
                                     const torch::Tensor& input, const Norm& norm) = 0;
};

class ResidualSite;

// A residual site's "adapters" container; it knows its site, so that a model finds its residual
// sites by walking its module tree.
class ResidualAdapterDictImpl : public AdapterDictImpl<ResidualAdapter> {
 public:
  ResidualSite* site = nullptr;
};

class ResidualSite {
 public:
  ResidualSite(std::int64_t layer, std::string location);
  ResidualSite(const ResidualSite&) = delete;  // its container points back at it
  ResidualSite& operator=(const ResidualSite&) = delete;

  // Registers this site's containers in `owner` under the reference's names ("adapters",
  // "adapter_fusion_layer").
  void register_in(torch::nn::Module& owner);

  torch::Tensor forward(const torch::Tensor& hidden, const torch::Tensor& input, const Norm& norm,
                        ForwardContext& ctx) const;

  void add_adapter(const std::string& name, std::shared_ptr<ResidualAdapter> adapter);
  void delete_adapter(const std::string& name);
  ResidualAdapter* adapter(const std::string& name) const;
  bool holds(const std::string& name) const { return adapters_->contains(name); }

  // Fusion layers, by fusion name ("a,b").
  void add_fusion(const std::string& name, std::shared_ptr<BertFusionImpl> fusion);
  void delete_fusion(const std::string& name);
  BertFusionImpl* fusion(const std::string& name) const { return fusions_->find(name); }
  const AdapterDict<BertFusionImpl>& fusions() const { return fusions_; }

  std::int64_t layer() const { return layer_; }
  const std::string& location() const { return location_; }

 private:
  // The active setup if any of its adapters lives here, else null.
  const composition::Block* active_setup(const ForwardContext& ctx) const;
  // The reference's adapter_layer_forward of `setup` (some of whose adapters live here).
  torch::Tensor forward_setup(const composition::Block& setup, const torch::Tensor& hidden, const torch::Tensor& input,
                              const Norm& norm, ForwardContext& ctx) const;
  bool holds_any(const composition::Block& setup) const;
  friend class ResidualComposable;
  void store_gating_score(ForwardContext& ctx, const std::string& name, const torch::Tensor& gate) const;

  std::int64_t layer_;
  std::string location_;
  std::shared_ptr<ResidualAdapterDictImpl> adapters_;
  AdapterDict<BertFusionImpl> fusions_;
};

// The reference's standalone adapter-layer module ("attention_adapters", "output_adapters"): a
// module holding one residual site, for architectures whose adapters live in such a module.
class AdapterLayerImpl : public torch::nn::Module {
 public:
  AdapterLayerImpl(std::int64_t layer, const char* location) : site(layer, location) { site.register_in(*this); }
  // h, residual (B,T,C) -> (B,T,C); an empty norm for pre-norm models
  torch::Tensor forward(const torch::Tensor& h, const torch::Tensor& residual, const Norm& norm, ForwardContext& ctx) {
    return site.forward(h, residual, norm, ctx);
  }
  ResidualSite site;
};
TORCH_MODULE(AdapterLayer);

// Parallel blocks replicate the batch: a tensor whose batch is a divisor of the other's is
// repeated to match (the reference's adjust_tensors_for_parallel).
torch::Tensor match_batch(const torch::Tensor& t, const torch::Tensor& reference);

}  // namespace adapters::nn
