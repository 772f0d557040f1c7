// The architecture registry and the per-architecture table. Everything the shared code needs to
// know about an architecture (its base-model prefix, where its word embeddings and pooler are, the
// static HF heads it converts, checkpoint tensor transforms, the roles of its linear layers) is
// one ArchSpec, defined in the architecture's own file; the registry lists them, one line each.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "adapters/core/json.h"
#include "adapters/models/base_model.h"

namespace adapters::models {

// A static head class of HF (e.g. BertForSequenceClassification) and the flexible head it becomes:
// the head config and, per position of the flexible head's module list, the static module's key
// prefix ("" = a position without parameters).
struct StaticHeadSpec {
  std::string class_suffix;  // "ForSequenceClassification"
  std::string head_type;     // "classification"
  json config;               // head options; "activation_function": "hidden_act" takes the model's
  std::vector<std::string> layers;
};

enum class ArchKind { Encoder, Decoder, EncoderDecoder };
enum class InputKind { Text, Image };

struct ArchSpec {
  std::string model_type;   // config.json "model_type"
  std::string base_prefix;  // attribute of the base model in HF's model classes: "bert", "roberta", ...
  std::string model_class;  // the reference's flexible-head class, written into adapter_config.json
  std::function<std::shared_ptr<BaseModelImpl>(const ModelConfig&)> create;
  // Top-level modules of the base model: a checkpoint key starting with one of them belongs to the
  // base model even without the prefix (saved from a bare base model).
  std::vector<std::string> base_roots;
  std::string word_embeddings;  // the input embedding matrix (V,E) under the base model; "" = none
  std::string pooler;           // module path of the optional pooler; "" = none
  std::vector<StaticHeadSpec> static_heads;
  // HF module name of each linear layer -> its adapter role (nn::role): PEFT's target_modules.
  std::map<std::string, std::string> module_roles;
  // The q/k/v projections are hidden_size wide (heads x head_dim == hidden_size), as in BERT; a
  // config whose head_dim says otherwise is refused before any weight is read.
  bool heads_split_hidden = true;
  ArchKind kind = ArchKind::Encoder;
  InputKind input = InputKind::Text;
  // Methods (registry keys, "prompt_tuning") this architecture refuses -> why; add_adapter throws
  // NotSupported with the reason before anything is attached.
  std::map<std::string, std::string> unsupported_methods;
  // Checkpoint keys that HF writes for a tied weight (relative to the base model) -> the key of the
  // one parameter that holds it here (BART's encoder.embed_tokens.weight -> shared.weight). An
  // alias loads the parameter only when the checkpoint lacks the canonical key.
  std::map<std::string, std::string> tied_keys;
  // Encoder-decoder models: labels given without decoder inputs become the decoder inputs,
  // shifted right (T5, BART); otherwise the base model shifts input_ids.
  bool decoder_inputs_from_labels = false;
  // Decoder-only generation passes position ids counted over the attention mask (left padding
  // starts each row at 0), as HF's prepare_inputs_for_generation does; false where the
  // reference's model ignores them (GPT-J in transformers 4.26 rotates by absolute index).
  bool generation_positions_from_mask = true;
  // Optional: a checkpoint tensor as the module tree stores it (key relative to the base model).
  std::function<torch::Tensor(const std::string& key, const torch::Tensor& tensor)> load_transform;
};

const ArchSpec& arch_spec(const std::string& model_type);
const std::vector<ArchSpec>& architectures();

// Every base-model prefix any architecture uses (to recognise checkpoint keys).
std::vector<std::string> known_base_prefixes();

// The static head spec of an HF class name ("BertForMaskedLM") for this architecture, or null.
const StaticHeadSpec* find_static_head(const ArchSpec& spec, const std::string& hf_class);

// The BERT family's static heads with the given key prefixes (shared by ELECTRA, ALBERT, ...).
std::vector<StaticHeadSpec> bert_static_heads();

// The roles of BERT-style module names: query/key/value, attention output, intermediate, output.
std::map<std::string, std::string> bert_module_roles();

}  // namespace adapters::models
