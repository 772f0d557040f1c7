// Bottleneck adapters (seq_bn / pfeiffer, double_seq_bn / houlsby, par_bn / parallel,
// scaled_par_bn / scaled_parallel): a down-projection, a non-linearity and an up-projection at the
// residual sites, with every option of the reference's bottleneck config.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "adapters/core/json.h"
#include "adapters/methods/registry.h"
#include "adapters/nn/activation.h"
#include "adapters/nn/residual_site.h"

namespace adapters::methods {

class PHMLayerImpl;
class PhmSharedImpl;

struct BnConfig {
  bool mh_adapter = false;
  bool output_adapter = true;
  json reduction_factor = 16;  // a number, or {"<layer>": number, ..., "default": number}
  std::string non_linearity = "relu";
  bool original_ln_before = true;
  bool original_ln_after = true;
  json residual_before_ln = true;  // true, false or "post_add"
  bool adapter_residual_before_ln = false;
  bool ln_before = false;
  bool ln_after = false;
  std::string init_weights = "bert";  // "bert" or "mam_adapter"
  bool is_parallel = false;
  json scaling = 1.0;  // a number, "learned" (one scalar) or "channel" (one per feature)
  bool use_gating = false;
  double dropout = 0.0;
  json inv_adapter = nullptr;
  json inv_adapter_reduction_factor = nullptr;
  bool cross_adapter = false;
  std::vector<std::int64_t> leave_out;
  // Compacter: PHM layers replace the Linear projections when phm_layer (methods/compacter.h).
  bool phm_layer = false;
  std::int64_t phm_dim = 4;
  bool factorized_phm_W = true;
  bool shared_W_phm = false;
  bool shared_phm_rule = true;
  bool factorized_phm_rule = false;
  std::string phm_c_init = "normal";
  double phm_init_range = 0.0001;
  bool learn_phm = true;
  std::string hypercomplex_nonlinearity = "glorot-uniform";
  std::int64_t phm_rank = 1;
  bool phm_bias = true;

  static BnConfig from_json(const json& options, const std::string& source);
  json to_json() const;

  // The bottleneck width at `layer` for a model of width `hidden`: int(hidden // factor).
  std::int64_t bottleneck_size(std::int64_t hidden, std::int64_t layer, const std::string& source) const;
  bool places_at(const std::string& location, std::int64_t layer) const;
};

// One bottleneck adapter at one residual site: the reference's Adapter / ParallelAdapter.
// With phm_layer its projections are PHM layers using the adapter's shared parameters.
class BottleneckAdapterImpl : public nn::ResidualAdapter {
 public:
  BottleneckAdapterImpl(const BnConfig& config, std::int64_t input_size, std::int64_t bottleneck,
                        const std::string& source, std::shared_ptr<PhmSharedImpl> phm_shared = nullptr);

  nn::PreForward pre_forward(const torch::Tensor& hidden, const torch::Tensor& input, const nn::Norm& norm,
                             bool want_query, bool query_before_ln) override;
  nn::AdapterOutput forward(const torch::Tensor& x, const torch::Tensor& residual) override;
  torch::Tensor post_forward(const torch::Tensor& hidden, const torch::Tensor& input_hidden,
                             const torch::Tensor& input, const nn::Norm& norm) override;

 private:
  void init_weights(const std::string& scheme);
  torch::Tensor down_project(const torch::Tensor& x);
  torch::Tensor up_project(const torch::Tensor& x);

  BnConfig config_;
  nn::Activation activation_;
  torch::nn::LayerNorm norm_before_{nullptr};  // adapter_down.0 when ln_before
  torch::nn::Linear down_{nullptr};            // adapter_down.0 or .1
  torch::nn::Linear up_{nullptr};              // adapter_up
  std::shared_ptr<PHMLayerImpl> phm_down_;     // adapter_down.0 or .1 when phm_layer
  std::shared_ptr<PHMLayerImpl> phm_up_;       // adapter_up when phm_layer
  torch::nn::LayerNorm norm_after_{nullptr};   // adapter_norm_after
  torch::nn::Linear gate_{nullptr};            // gate
  torch::nn::Dropout dropout_{nullptr};
  torch::Tensor scaling_param_;                // "scaling" when learned / channel
  double scaling_value_ = 1.0;
};

MethodSpec bottleneck_method();

}  // namespace adapters::methods
