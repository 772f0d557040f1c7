// AdapterModel: a base model of any supported architecture plus the reference's adapter verbs
// (add_adapter, set_active_adapters, train_adapter, save_adapter, ...). Its module tree is the
// reference's *AdapterModel: the base model under its HF prefix ("bert", "roberta", ...), so
// named_parameters() equals the checkpoint keys. With no adapter active it is the plain model.
//
// Where the verbs live: model.cpp (adapters: add/delete/activate/train, ownership, merging,
// averaging, ejection, loading HF folders), model_heads.cpp (heads, fusion, whole setups) and
// formats/adapterhub.cpp (the AdapterHub folder format). Method-specific work is reached through
// the method's spec (methods/registry.h: capabilities, average, eject), never by its name.
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "adapters/composition/setup.h"
#include "adapters/heads/heads.h"
#include "adapters/nn/fusion.h"
#include "adapters/io/tensors.h"
#include "adapters/methods/adapter_config.h"
#include "adapters/models/base_model.h"
#include "adapters/models/registry.h"

namespace adapters {

namespace fs = std::filesystem;
using composition::Block;
using models::ModelInputs;

using HeadTensors = std::map<std::string, torch::Tensor>;

struct ModelOutput {
  torch::Tensor last_hidden_state;  // (B,T,C); (n*B,T,C) under Parallel
  torch::Tensor pooler_output;      // (B,C) or undefined
  torch::Tensor encoder_last_hidden_state;  // encoder-decoder models: (B,Ts,C)
  // The head's outputs ("logits", "start_logits", ...) when one head ran; with several heads
  // (Parallel, BatchSplit) head_outputs[i] holds head i's outputs on its share of the batch.
  HeadTensors head;
  std::vector<HeadTensors> head_outputs;
  torch::Tensor loss;               // the head's loss (summed over heads) when targets were given
  nn::ScoreCache gating_scores;     // when asked for
  nn::ScoreCache fusion_attentions; // when asked for: fusion -> layer -> location -> (B,T,N)
};

struct ForwardOptions {
  const Block* setup = nullptr;  // overrides the active setup for this call (normalised like set_active)
  bool output_gating_scores = false;
  bool output_fusion_attentions = false;
  // Heads: `head` runs that head; otherwise the active head setup runs (none: no head).
  std::string head;
  bool skip_heads = false;
  // The inputs hold every Parallel branch's copy of the batch already (generation replicates once,
  // up front): no site replicates again, and branch i owns rows [i*B, (i+1)*B).
  bool inputs_replicated_for_parallel = false;
  // One adapter per batch row (names of loaded adapters, kNoAdapter = "__base__" for none): the rows
  // are grouped by adapter and run in this one forward, each as if alone (see per_row.h). Excludes
  // `setup`.
  std::vector<std::string> adapter_per_row;
  // The setup is a BatchSplit of row groups that each run as if alone (nn::ForwardContext); set by
  // the per-row path, which groups the rows.
  bool rows_independent = false;
  // Targets and extra head inputs by the reference's names: "labels", "start_positions",
  // "end_positions", "labels_arcs", "labels_rels", "word_starts".
  HeadTensors head_inputs;
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

  // Writes the adapter (and, with_head, the head of the same name when there is one) to `dir`.
  void save_adapter(const fs::path& dir, const std::string& name, bool with_head = true) const;
  // Loads an AdapterHub folder (and, with_head, the head saved beside it); returns the adapter's
  // name (load_as when given; the head takes the same name).
  std::string load_adapter(const fs::path& dir, const std::string& load_as = "",
                           WeightsPreference weights = WeightsPreference::Safetensors, bool set_active = false,
                           bool with_head = true);

  // Turns a reparametrised prefix-tuning adapter into a flat one with identical outputs (its
  // config becomes flat); the method's spec does the work (MethodSpec::eject).
  void eject_prefix_tuning(const std::string& name);

  // Folds a LoRA-family adapter (lora, ia3, vera, dora; not gated) into the base weights, so that
  // the plain model computes what the model with the adapter active computed; the merged adapter
  // is no longer applied on top. Merging an adapter that is merged already does nothing. A method
  // whose spec is not mergeable is an error naming the adapter and its method.
  void merge_adapter(const std::string& name);
  // Restores the base weights from before the first merge_adapter, bit for bit.
  void reset_adapter();
  // The merged adapters, in order of merging.
  std::vector<std::string> merged_adapters() const;

  // Adds `name` as the weighted combination of `sources` (all of one config). "linear" (every
  // method): the weighted sum of every parameter; the LoRA family also has
  // "lora_linear_only_negate_b" and "lora_delta_w_svd" (with svd_rank). Weights are divided by
  // their sum when normalize_weights (which must then not be zero); negative weights are allowed.
  // Methods with strategies of their own provide MethodSpec::average.
  void average_adapter(const std::string& name, const std::vector<std::string>& sources,
                       std::vector<double> weights = {}, const std::string& combine_strategy = "linear",
                       bool normalize_weights = true, std::int64_t svd_rank = 0);

  // Our parameter name -> the name PyTorch gives it in the reference, where they differ (modules
  // the reference registers under several paths, such as the prefix-tuning pool).
  std::map<std::string, std::string> reference_parameter_names() const;

  // ---- prediction heads (model_heads.cpp) ----
  // Adds a head of a registered type with the reference's options (num_labels, layers,
  // activation_function, use_pooler, bias, id2label/label2id, num_choices, multilabel, ...).
  void add_head(const std::string& name, const std::string& type, const nlohmann::json& options = nlohmann::json::object(),
                bool overwrite_ok = false, bool set_active = true);
  void add_classification_head(const std::string& name, std::int64_t num_labels, bool multilabel = false,
                               bool overwrite_ok = false);
  void delete_head(const std::string& name);
  bool has_head(const std::string& name) const;
  std::vector<std::string> head_names() const;
  heads::PredictionHead& head(const std::string& name) const;
  // "name", or a Parallel / BatchSplit of head names: one head per branch.
  void set_active_head(const Block& head_setup);
  void set_active_head(const std::string& head_setup);
  const std::optional<Block>& active_head() const { return active_head_; }
  io::TensorMap head_state_dict(const std::string& name) const;
  void save_head(const fs::path& dir, const std::string& name) const;
  std::string load_head(const fs::path& dir, const std::string& load_as = "",
                        WeightsPreference weights = WeightsPreference::Safetensors);

  // ---- AdapterFusion (model_heads.cpp) ----
  // Adds fusion layers for a Fuse block ("Fuse(a, b)" or its adapters "a,b") with the config
  // "static", "dynamic" or an object of options.
  void add_adapter_fusion(const Block& fuse, const nlohmann::json& config = "dynamic", bool overwrite_ok = false,
                          bool set_active = false);
  void delete_adapter_fusion(const std::string& fusion_name);
  bool has_adapter_fusion(const std::string& fusion_name) const;
  std::vector<std::string> adapter_fusion_names() const;
  const nn::FusionConfig& adapter_fusion_config(const std::string& fusion_name) const;
  // Freezes the base model (and the fused adapters unless unfreeze_adapters), unfreezes the
  // setup's fusion layers, activates the setup, train mode.
  void train_adapter_fusion(const Block& setup, bool unfreeze_adapters = false);
  io::TensorMap adapter_fusion_state_dict(const std::string& fusion_name) const;
  void save_adapter_fusion(const fs::path& dir, const std::string& fusion_name) const;
  // Loads a fusion folder (adapter_fusion_config.json + weights); returns the fusion's name.
  std::string load_adapter_fusion(const fs::path& dir, WeightsPreference weights = WeightsPreference::Safetensors,
                                  bool set_active = false);
  // Sum over fusion layers with a value matrix and regularization on of 0.01 * ||I - W_value||^2.
  torch::Tensor fusion_regularization_loss() const;

  // ---- whole setups (model_heads.cpp) ----
  // Saves every adapter of `setup` (dir/<adapter>), its fusions (dir/<a,b>), the heads of
  // `head_setup` (dir/<head>) and adapter_setup.json describing both.
  void save_adapter_setup(const fs::path& dir, const Block& setup, const std::optional<Block>& head_setup = {}) const;
  // Loads what save_adapter_setup wrote and activates it; returns the setup.
  Block load_adapter_setup(const fs::path& dir, WeightsPreference weights = WeightsPreference::Safetensors);

  // ---- the base model ----
  models::BaseModelImpl& base() const { return *base_; }
  const models::ModelConfig& config() const { return base_->config(); }
  const models::ArchSpec& arch() const { return *arch_; }
  std::int64_t base_parameter_count() const;

 private:
  std::vector<std::string> adapter_parameter_names(const std::string& name) const;
  // The parameters whose names satisfy `selects`, by name.
  io::TensorMap parameters_where(const std::function<bool(const std::string&)>& selects) const;
  void check_setup(const Block& setup) const;
  ModelInputs with_decoder_inputs(const ModelInputs& inputs, const ForwardOptions& options) const;
  // The head setup the reference derives from an adapter setup (its last adapter, or one head
  // per branch of a final Parallel / BatchSplit), when those heads exist.
  std::optional<Block> heads_from_setup(const Block& setup) const;
  void run_heads(const models::BaseModelOutput& base, const ModelInputs& inputs, const ForwardOptions& options,
                 nn::ForwardContext& ctx, ModelOutput& out);
  heads::HeadContext head_context() const;

  const models::ArchSpec* arch_;
  std::shared_ptr<models::BaseModelImpl> base_;
  std::vector<std::pair<std::string, methods::AdapterConfig>> adapters_;  // in order of adding
  // The parameters each adapter's method attached, recorded when it attached them.
  std::map<std::string, std::vector<std::string>> owned_parameters_;
  std::optional<Block> active_;
  nn::AdapterDict<heads::PredictionHead> heads_;
  std::optional<Block> active_head_;
  std::vector<std::pair<std::string, nn::FusionConfig>> fusions_;  // by fusion name, in order of adding
};
TORCH_MODULE(AdapterModel);

// Loads an HF model folder (config.json + model.safetensors / pytorch_model.bin / sharded index).
// Base-model keys load with or without their prefix; missing base weights are an error naming
// them. A checkpoint of a model class with a static head (config "architectures", e.g.
// BertForSequenceClassification with classifier.*) gets that head as a flexible head named
// `static_head_name` with identical outputs; other keys outside the base model are reported and
// skipped.
AdapterModel load_pretrained(const fs::path& dir, const std::string& static_head_name = "default");

namespace detail {
// Converts the static head of the checkpoint's architecture (config "architectures") into a
// flexible head named `head_name`; returns the checkpoint keys it used (empty: no static head).
std::set<std::string> convert_static_head(AdapterModelImpl& model, const io::TensorMap& checkpoint,
                                          const std::string& head_name, const std::string& source);
}  // namespace detail

}  // namespace adapters
