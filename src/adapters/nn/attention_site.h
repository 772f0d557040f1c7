// Hook point 3: the prefix hook inside attention. After the q/k/v projections and before the
// scores, a model calls
//     AttentionState s = site.forward({q, k, v, mask, hidden}, ctx)
// with q, k, v (B,H,T,D), mask (B,1,1,T) additive (or undefined) and hidden (B,T,C) the attention
// input, and computes attention from s.query, s.key, s.value, s.mask. Active attention adapters
// (prefix tuning) prepend keys and values and extend the mask, composed by the driver
// (Stack, Parallel, BatchSplit); q, k, v and the mask come back with one batch size (a Parallel
// block replicates the batch). With nothing active the inputs come back untouched.
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
  torch::Tensor query;   // (B,H,Tq,D)
  torch::Tensor key;     // (B,H,T,D)
  torch::Tensor value;   // (B,H,T,D)
  torch::Tensor mask;    // (B,1,1,T) additive, or undefined
  torch::Tensor hidden;  // (B,Tq,C) the attention input
  // The row of the model's input batch that this state's first row belongs to (BatchSplit).
  std::int64_t row_offset = 0;
};

// An adapter acting inside attention at one site (prefix tuning). Its own parameters (a gate)
// are registered under the reference's "prefix_gates.<adapter>".
class AttentionAdapter : public torch::nn::Module {
 public:
  virtual AttentionState apply(const AttentionState& state, std::int64_t layer, const std::string& location,
                               ForwardContext& ctx) = 0;
};

class AttentionSite;

// The module an attention site registers as "prefix_tuning"; it knows its site, so that a model
// finds its attention sites by walking its module tree.
class AttentionSiteModule : public torch::nn::Module {
 public:
  AttentionSite* site = nullptr;
};

class AttentionSite {
 public:
  // `invert_mask`: the reference's flag for how its model passes the mask to the prefix hook.
  // It decides how Parallel/BatchSplit pad shorter prefixes: true (BERT family) pads the mask with
  // +1.0, as the reference does (the padded positions are attended, not masked); false
  // (DistilBERT) masks them.
  AttentionSite(std::int64_t layer, std::string location, bool invert_mask = true);
  AttentionSite(const AttentionSite&) = delete;  // its module points back at it
  AttentionSite& operator=(const AttentionSite&) = delete;

  // Registers this site's module in `owner` as "prefix_tuning" (the reference's attribute), its
  // adapters below it as "prefix_gates".
  void register_in(torch::nn::Module& owner);

  // Applies the active setup's adapters of this site (Stack, Parallel, BatchSplit; other blocks
  // cannot hold prefixes) and matches the batch sizes of q, k, v and the mask.
  AttentionState forward(AttentionState state, ForwardContext& ctx) const;

  void add_adapter(const std::string& name, std::shared_ptr<AttentionAdapter> adapter);
  void delete_adapter(const std::string& name);
  AttentionAdapter* adapter(const std::string& name) const { return adapters_->find(name); }

  std::int64_t layer() const { return layer_; }
  const std::string& location() const { return location_; }
  // The module registered as "prefix_tuning" (to find this site's path in the module tree).
  const torch::nn::Module* module() const { return module_.get(); }
  bool invert_mask() const { return invert_mask_; }

 private:
  bool holds_any(const composition::Block& setup) const;
  friend class AttentionComposable;

  std::int64_t layer_;
  std::string location_;
  bool invert_mask_;
  std::shared_ptr<AttentionSiteModule> module_;
  AdapterDict<AttentionAdapter> adapters_;
};

}  // namespace adapters::nn
