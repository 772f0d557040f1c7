// AdapterModel: a base model of any supported architecture plus the reference's adapter verbs
// (add_adapter, set_active_adapters, train_adapter, save_adapter, ...). Its module tree is the
// reference's *AdapterModel: the base model under its HF prefix ("bert", "roberta", ...), so
// named_parameters() equals the checkpoint keys. With no adapter active it is the plain model.
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "adapters/composition/setup.h"
#include "adapters/io/tensors.h"
#include "adapters/methods/adapter_config.h"
#include "adapters/models/base_model.h"
#include "adapters/models/registry.h"

namespace adapters {

namespace fs = std::filesystem;
using composition::Block;
using models::ModelInputs;

struct ModelOutput {
  torch::Tensor last_hidden_state;  // (B,T,C)
  torch::Tensor pooler_output;      // (B,C) or undefined
  nn::ScoreCache gating_scores;     // when asked for
};

struct ForwardOptions {
  const Block* setup = nullptr;  // overrides the active setup for this call (normalised like set_active)
  bool output_gating_scores = false;
};

struct AdapterSummaryRow {
  std::string name;
  std::string method;
  std::int64_t parameters = 0;
  double percent_of_base = 0.0;
  bool active = false;
  bool train = false;  // any parameter requires grad
};

// Which weight file of a saved folder to read when both exist.
enum class WeightsPreference { Safetensors, Bin };

class AdapterModelImpl : public torch::nn::Module {
 public:
  explicit AdapterModelImpl(const models::ModelConfig& config);

  ModelOutput forward(const ModelInputs& inputs, const ForwardOptions& options = {});

  // ---- adapters ----
  void add_adapter(const std::string& name, const methods::AdapterConfig& config, bool overwrite_ok = false,
                   bool set_active = false);
  void add_adapter(const std::string& name, const std::string& config_spec, bool overwrite_ok = false,
                   bool set_active = false);
  void delete_adapter(const std::string& name);
  bool has_adapter(const std::string& name) const;
  std::vector<std::string> adapter_names() const;
  const methods::AdapterConfig& adapter_config(const std::string& name) const;

  void set_active_adapters(const Block& setup);
  void set_active_adapters(const std::string& setup);
  void deactivate_adapters();
  const std::optional<Block>& active_setup() const { return active_; }

  // Freezes the base model, unfreezes the setup's adapters, activates them, train mode.
  void train_adapter(const Block& setup);
  void train_adapter(const std::string& setup);
  // Freezes (or unfreezes) every base-model parameter.
  void freeze_model(bool freeze = true);

  std::vector<AdapterSummaryRow> adapter_summary_rows() const;
  std::string adapter_summary() const;  // a table as the reference prints it

  // The adapter's parameters by the reference's key names.
  io::TensorMap adapter_state_dict(const std::string& name) const;
  void load_adapter_state_dict(const std::string& name, const io::TensorMap& tensors, const std::string& source);

  void save_adapter(const fs::path& dir, const std::string& name) const;
  // Loads an AdapterHub folder; returns the adapter's name (load_as when given).
  std::string load_adapter(const fs::path& dir, const std::string& load_as = "",
                           WeightsPreference weights = WeightsPreference::Safetensors, bool set_active = false);

  // Turns a reparametrised prefix-tuning adapter into a flat one with identical outputs (its
  // config becomes flat). Implemented in methods/prefix_tuning.cpp.
  void eject_prefix_tuning(const std::string& name);

  // Folds a LoRA-family adapter (lora, ia3, vera, dora; not gated) into the base weights, so that
  // the plain model computes what the model with the adapter active computed; the merged adapter
  // is no longer applied on top. Merging an adapter that is merged already does nothing. Any other
  // method is an error naming the adapter and its method. Implemented in methods/merge.cpp.
  void merge_adapter(const std::string& name);
  // Restores the base weights from before the first merge_adapter, bit for bit.
  void reset_adapter();
  // The merged adapters, in order of merging.
  std::vector<std::string> merged_adapters() const;

  // Adds `name` as the weighted combination of `sources` (all of one config). "linear" (every
  // method): the weighted sum of every parameter; the LoRA family also has
  // "lora_linear_only_negate_b" and "lora_delta_w_svd" (with svd_rank). Weights are divided by
  // their sum when normalize_weights (which must then not be zero); negative weights are allowed.
  // Implemented in methods/average.cpp.
  void average_adapter(const std::string& name, const std::vector<std::string>& sources,
                       std::vector<double> weights = {}, const std::string& combine_strategy = "linear",
                       bool normalize_weights = true, std::int64_t svd_rank = 0);

  // ---- the base model ----
  models::BaseModelImpl& base() const { return *base_; }
  const models::ModelConfig& config() const { return base_->config(); }
  const models::ArchSpec& arch() const { return *arch_; }
  std::int64_t base_parameter_count() const;

 private:
  std::vector<std::string> adapter_parameter_names(const std::string& name) const;
  void check_setup(const Block& setup) const;

  const models::ArchSpec* arch_;
  std::shared_ptr<models::BaseModelImpl> base_;
  std::vector<std::pair<std::string, methods::AdapterConfig>> adapters_;  // in order of adding
  std::optional<Block> active_;
};
TORCH_MODULE(AdapterModel);

// Loads an HF model folder (config.json + model.safetensors / pytorch_model.bin / sharded index).
// Base-model keys load with or without their prefix; missing base weights are an error naming
// them, keys outside the base model (heads) are reported and skipped.
AdapterModel load_pretrained(const fs::path& dir);

}  // namespace adapters
