// Hook point 2: adapted linear layers (q, k, v, o, feed-forward in/out). Computes x W^T + b, then
// lets the active LoRA-family adapters of this layer (registered under "loras", as in the
// reference) transform the result as the active setup composes them (Stack, Parallel, BatchSplit,
// Split, Average; see nn/composer.h). With none active it is exactly torch::nn::Linear.
//
// Fused projections. A layer may produce several roles at once (GPT-2's c_attn: q, k and v from
// one matmul). Such a layer is built with one OutputSlice per role, in output order; an ordinary
// layer has a single slice covering its whole output. A method decides per slice whether it adapts
// it (e.g. LoRA's attn_matrices) and creates ONE delta for the layer that covers the chosen
// slices, with its parameters grouped slice by slice (the reference's MergedLinear layout: lora_A
// stacks r rows per chosen slice, lora_B stacks the chosen slices' output rows). The delta is
// handed the slices it covers and writes only those output columns. The same delta classes serve
// ordinary layers (one slice) and fused ones (several), so nothing else changes for fused layers.
//
// Weight layout. HF's Conv1D (GPT-2) stores its weight transposed, (in, out); a layer built with
// WeightLayout::InOut keeps that layout (and the checkpoint's key) and computes x W + b as Conv1D
// does. Deltas always see the weight as (out, in) (a transposed view), so no method cares.
//
// Merging. merge_adapter(name) folds an adapter's delta into weight and bias (the first merge
// keeps a copy of the original tensors); reset_merged() copies the originals back, bit for bit.
// While merged, the adapter is skipped in forward, so it never applies twice.
#pragma once

#include <torch/nn/module.h>

#include <string>
#include <vector>

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
inline constexpr const char* kGate = "gate";  // the gate of a gated MLP (Llama's gate_proj): PEFT targets it by name
inline constexpr const char* kOutput = "output";
}  // namespace role

// The output columns [offset, offset + size) of a layer, which play one role.
struct OutputSlice {
  std::string role;
  std::int64_t offset = 0;
  std::int64_t size = 0;
};

// What a delta sees of its layer during one forward pass.
struct LinearCall {
  const torch::Tensor& x;       // the layer input (..., in)
  const torch::Tensor& weight;  // the layer's current weight (out, in)
  const torch::Tensor& bias;    // (out) or undefined
  const torch::Tensor& base;    // x W^T + b, before any delta
  ForwardContext& ctx;
};

enum class WeightLayout { OutIn, InOut };

// A LoRA-family adapter on one linear layer.
class LinearDelta : public torch::nn::Module {
 public:
  // Returns the output with this adapter applied to `y`, the output so far (the layer's base
  // output with the deltas before this one in the active Stack).
  virtual torch::Tensor apply(const LinearCall& call, const torch::Tensor& y) = 0;
  // Why the delta cannot be folded into the weights; empty when it can.
  virtual std::string merge_blocker() const { return "this adapter type cannot be merged"; }
  // Folds the delta into `weight` (out, in) and `bias` (out, or undefined), in place, so that the
  // plain layer computes what the layer with this delta computed (in eval mode).
  virtual void merge_into(torch::Tensor& weight, torch::Tensor& bias) const;
};

class AdaptedLinearImpl : public torch::nn::Module {
 public:
  // An ordinary layer with one role.
  AdaptedLinearImpl(std::int64_t in_features, std::int64_t out_features, bool with_bias, std::int64_t layer,
                    std::string role, WeightLayout layout = WeightLayout::OutIn);
  // A fused layer: the slices partition [0, out_features) in order.
  AdaptedLinearImpl(std::int64_t in_features, std::int64_t out_features, bool with_bias, std::int64_t layer,
                    std::vector<OutputSlice> slices, WeightLayout layout = WeightLayout::OutIn);

  torch::Tensor forward(const torch::Tensor& x, ForwardContext& ctx);

  void add_adapter(const std::string& name, std::shared_ptr<LinearDelta> delta);
  // Removes the adapter (unmerging it first when it is merged).
  void delete_adapter(const std::string& name);
  LinearDelta* adapter(const std::string& name) const { return loras->find(name); }

  // Folds the adapter into weight and bias; a second call for the same adapter does nothing.
  // Throws when the adapter is not here or its delta cannot be merged.
  void merge_adapter(const std::string& name);
  // Restores the weights from before the first merge, bit for bit, and forgets the merges.
  void reset_merged();
  const std::vector<std::string>& merged() const { return merged_; }
  bool is_merged(const std::string& name) const;

  std::int64_t layer() const { return layer_; }
  // The role of an ordinary layer; the roles joined by ',' for a fused one ("q,k,v").
  const std::string& role() const { return role_; }
  const std::vector<OutputSlice>& slices() const { return slices_; }
  bool is_fused() const { return slices_.size() > 1; }
  std::int64_t in_features() const { return layout_ == WeightLayout::InOut ? weight.size(0) : weight.size(1); }
  std::int64_t out_features() const { return layout_ == WeightLayout::InOut ? weight.size(1) : weight.size(0); }
  // The weight as (out, in), whatever its stored layout (a view: writes go to the parameter).
  torch::Tensor weight_out_in() const { return layout_ == WeightLayout::InOut ? weight.t() : weight; }
  // "<layer>.<role>", for messages.
  std::string describe() const;

  torch::Tensor weight;  // (out, in), or (in, out) with WeightLayout::InOut
  torch::Tensor bias;    // (out) or undefined
  AdapterDict<LinearDelta> loras;

 private:
  void init(std::int64_t in_features, std::int64_t out_features, bool with_bias);
  // Whether an unmerged adapter of this layer is in the setup.
  bool any_active(const composition::Block& setup) const;

  std::int64_t layer_;
  WeightLayout layout_;
  std::vector<OutputSlice> slices_;
  std::string role_;
  std::vector<std::string> merged_;  // merged adapters, in order of merging
  torch::Tensor original_weight_;    // copies from before the first merge
  torch::Tensor original_bias_;
};
TORCH_MODULE(AdaptedLinear);

}  // namespace adapters::nn
