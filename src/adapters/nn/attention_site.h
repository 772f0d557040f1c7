// Hook point 3: the prefix hook inside attention. After the q/k/v projections and before the
// scores, a model calls
//     std::tie(k, v, mask) = site.forward(k, v, hidden, mask, ctx)
// with k, v (B,H,T,D), hidden (B,T,C) the attention input and mask (B,1,1,T) additive (or
// undefined). Active attention adapters (prefix tuning) prepend keys and values and extend the
// mask; with none active the inputs come back untouched.
#pragma once

#include <torch/nn/module.h>

#include <string>
#include <tuple>

#include "adapters/nn/context.h"
#include "adapters/nn/module_dict.h"

namespace adapters::nn {

// Which attention of a layer a site belongs to, as the reference names prefix locations (its
// location_key). A location starting with "cross" takes prefixes only with cross_prefix, one
// starting with "encoder" only with encoder_prefix; any other takes them always.
namespace attention_location {
inline constexpr const char* kSelf = "self_prefix";
inline constexpr const char* kCross = "cross_prefix";
inline constexpr const char* kSelfBare = "self";  // DistilBERT's name for its self-attention
}  // namespace attention_location

struct AttentionState {
  torch::Tensor key;    // (B,H,T,D)
  torch::Tensor value;  // (B,H,T,D)
  torch::Tensor mask;   // (B,1,1,T) additive, or undefined
};

// An adapter acting inside attention at one site (prefix tuning). Its own parameters (a gate)
// are registered under the reference's "prefix_gates.<adapter>".
class AttentionAdapter : public torch::nn::Module {
 public:
  virtual AttentionState apply(const AttentionState& state, const torch::Tensor& hidden, std::int64_t layer,
                               const std::string& location, ForwardContext& ctx) = 0;
};

class AttentionSite {
 public:
  AttentionSite(std::int64_t layer, std::string location);

  // Registers this site's module in `owner` as "prefix_tuning" (the reference's attribute), its
  // adapters below it as "prefix_gates".
  void register_in(torch::nn::Module& owner);

  // Applies the active setup's adapters of this site: a Stack in order; Parallel and BatchSplit
  // are not supported yet; other blocks cannot hold prefixes.
  AttentionState forward(AttentionState state, const torch::Tensor& hidden, ForwardContext& ctx) const;

  void add_adapter(const std::string& name, std::shared_ptr<AttentionAdapter> adapter);
  void delete_adapter(const std::string& name);
  AttentionAdapter* adapter(const std::string& name) const { return adapters_->find(name); }

  std::int64_t layer() const { return layer_; }
  const std::string& location() const { return location_; }
  // The module registered as "prefix_tuning" (to find this site's path in the module tree).
  const torch::nn::Module* module() const { return module_.get(); }

 private:
  bool holds_any(const composition::Block& setup) const;

  std::int64_t layer_;
  std::string location_;
  std::shared_ptr<torch::nn::Module> module_;
  AdapterDict<AttentionAdapter> adapters_;
};

}  // namespace adapters::nn
