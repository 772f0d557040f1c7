// Prefix tuning (prefix_tuning / prefix_tuning_flat): learned key and value prefixes prepended
// inside every attention layer. A model-level pool (the reference's PrefixTuningPool, registered
// as "prefix_tuning" under the base model) computes the prefixes of all layers once per forward:
// reparametrised as control_trans(wte(0..P-1)) = Linear(C, bottleneck) -> non_linearity ->
// Linear(bottleneck, n_layers*2*C), or flat as one parameter of that size. Each attention site
// gets a small per-layer module that prepends its layer's slice (optionally gated).
// PEFT's prefix tuning is placement "past": the prefix is the past key/values of every
// self-attention layer (a key/value cache filled before the forward), so the tokens' positions
// start after it, as HF models count positions after past_key_values.
#pragma once

#include <torch/nn/modules/dropout.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/linear.h>

#include <map>
#include <string>
#include <vector>

#include "adapters/core/json.h"
#include "adapters/methods/registry.h"
#include "adapters/nn/activation.h"
#include "adapters/nn/attention_site.h"
#include "adapters/nn/model_hooks.h"

namespace adapters::methods {

struct PrefixTuningConfig {
  bool encoder_prefix = true;
  bool cross_prefix = true;
  std::vector<std::int64_t> leave_out;
  bool flat = false;
  std::int64_t prefix_length = 30;
  std::int64_t bottleneck_size = 512;
  std::string non_linearity = "tanh";
  double dropout = 0.0;
  bool use_gating = false;
  bool shared_gating = true;
  // "attention" (AdapterHub: keys prepended inside the attention, positions unchanged) or "past"
  // (PEFT: the prefix fills the key/value cache before the tokens, whose positions follow it).
  std::string placement = "attention";
  // "past": layers in the prefix table (PEFT's num_layers; 0 = the model's self-attention layers)
  // and PEFT's num_transformer_submodules (2: an encoder-decoder model's table, which PEFT
  // duplicates and reads decoder layer i's key/value from its rows 4i and 4i+1, modulo 2 x layers).
  std::int64_t num_layers = 0;
  std::int64_t num_transformer_submodules = 1;

  static PrefixTuningConfig from_json(const json& options, const std::string& source);
  json to_json() const;
  // Whether an attention site at (location, layer) gets a prefix (the reference's config match).
  bool places_at(const std::string& location, std::int64_t layer) const;
};

// The prefix of one adapter at one location for all its layers: states() is (P, n_layers*2*C),
// laid out as the reference's view (P, n_layers*2, H, D).
class PrefixModuleImpl : public torch::nn::Module {
 public:
  virtual torch::Tensor states() = 0;
};

// Reparametrised prefix: wte (P,C), control_trans.0 Linear(C,N), non_linearity, control_trans.2
// Linear(N, L*2*K) with K = kv_heads*head_dim (= C without grouped-query attention).
class PrefixTuningImpl : public PrefixModuleImpl {
 public:
  PrefixTuningImpl(const PrefixTuningConfig& config, std::int64_t n_layers, std::int64_t hidden, std::int64_t kv_width,
                   const std::string& source);
  torch::Tensor states() override;

 private:
  torch::nn::Embedding wte_{nullptr};
  torch::nn::Linear down_{nullptr}, up_{nullptr};
  nn::Activation activation_;
};

// Flat prefix: control_trans, one parameter of P*L*2*K values.
class FlatPrefixTuningImpl : public PrefixModuleImpl {
 public:
  FlatPrefixTuningImpl(const PrefixTuningConfig& config, std::int64_t n_layers, std::int64_t kv_width);
  explicit FlatPrefixTuningImpl(const torch::Tensor& values, std::int64_t prefix_length);
  torch::Tensor states() override;

 private:
  std::int64_t prefix_length_;
  torch::Tensor control_trans_;
};

// One adapter's prefixes by location ("self_prefix", ...): the reference's PrefixTuningGroup.
class PrefixTuningGroupImpl : public torch::nn::Module {
 public:
  struct Location {
    std::shared_ptr<PrefixModuleImpl> module;
    std::int64_t n_layers = 0;
  };
  // Prefixes of kv_heads x head_dim per position (the attention's key/value shape).
  PrefixTuningGroupImpl(const PrefixTuningConfig& config, const std::map<std::string, std::int64_t>& layer_counts,
                        std::int64_t kv_heads, std::int64_t head_dim, std::int64_t hidden, const std::string& source);

  // Prefix key/value states for a batch of `batch` rows: location -> one entry per layer. Without
  // autograd and dropout (inference, every generation step) the states are computed once and
  // reused until a parameter changes (in place or replaced).
  std::map<std::string, std::vector<nn::PrefixKV>> forward(std::int64_t batch);
  // Replaces every reparametrised prefix by a flat one with the same states.
  void eject();
  // Placement "past": filled into the key/value cache by prefill_past_prefix, not by the pool.
  bool past = false;
  std::int64_t submodules = 1;
  std::int64_t prefix_length() const { return prefix_length_; }  // PEFT's num_transformer_submodules (see PrefixTuningConfig)

 private:
  std::int64_t heads_, head_dim_;
  std::int64_t prefix_length_;
  torch::nn::Dropout dropout_{nullptr};
  std::map<std::string, Location> locations_;
  // (2L,H,P,D) states per location from the last inference call, and what they were computed from.
  std::map<std::string, torch::Tensor> cached_states_;
  std::vector<std::pair<const void*, std::uint32_t>> cached_from_;
  std::vector<std::pair<const void*, std::uint32_t>> parameter_versions() const;
};

// The model-level pool: "prefix_tunings.<adapter>.<location>...".
class PrefixTuningPoolImpl : public nn::ModelHook {
 public:
  PrefixTuningPoolImpl();
  void prepare(std::int64_t batch_size, nn::ForwardContext& ctx) override;
  void delete_adapter(const std::string& name) override;

  void add(const std::string& name, std::shared_ptr<PrefixTuningGroupImpl> group);
  PrefixTuningGroupImpl* group(const std::string& name) const { return groups_->find(name); }

 private:
  nn::AdapterDict<PrefixTuningGroupImpl> groups_;
};

// The per-layer part at one attention site: prepends the layer's prefix, gated when asked.
class PrefixTuningLayerImpl : public nn::AttentionAdapter {
 public:
  PrefixTuningLayerImpl(std::string adapter, std::int64_t prefix_id, const PrefixTuningConfig& config,
                        std::int64_t hidden);
  nn::AttentionState apply(const nn::AttentionState& state, std::int64_t layer, const std::string& location,
                           nn::ForwardContext& ctx) override;

 private:
  std::string adapter_;
  std::int64_t prefix_id_;  // this layer's index among the layers holding the prefix
  torch::Tensor gate_weight_, gate_bias_;  // "weight" (G,C), "bias" (G): G = 1 shared, 2 key/value
};

MethodSpec prefix_tuning_method();

// Placement "past": the rows of a batch in groups, each with its prefix adapter ("" = none).
struct PastPrefixRows {
  std::string adapter;
  std::int64_t rows = 0;
};
// Fills `cache` (empty) with each group's "past" prefix for its rows, in the model's cache layout
// (decoder self-attention slots of encoder-decoder models); a prefix shorter than `length` (or
// none) is left-filled with zero states, which the caller masks out (KVCache::filler).
// Differentiable.
void prefill_past_prefixes(models::BaseModelImpl& model, const std::vector<PastPrefixRows>& groups, std::int64_t length,
                           nn::KVCache& cache);

}  // namespace adapters::methods
