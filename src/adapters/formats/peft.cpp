// Reading PEFT adapter folders: adapter_config.json -> this library's adapter config, PEFT's tensor
// keys -> this model's keys, the weights checked key for key and shape for shape. Writing them: the
// inverse, with the placement of an AdapterHub-style adapter derived from where it sits.
#include "adapters/formats/peft.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <regex>
#include <set>

#include "adapters/core/error.h"
#include "adapters/core/log.h"
#include "adapters/formats/folder.h"
#include "adapters/formats/hf_model.h"
#include "adapters/io/tensors.h"
#include "adapters/methods/lora.h"
#include "adapters/models/registry.h"
#include "adapters/nn/adapted_linear.h"

namespace adapters::formats {

namespace {

constexpr const char* kConfigFile = "adapter_config.json";
constexpr const char* kSafetensorsFile = "adapter_model.safetensors";
constexpr const char* kBinFile = "adapter_model.bin";
constexpr const char* kModelPrefix = "base_model.model.";

json read_config(const fs::path& dir) {
  const fs::path path = dir / kConfigFile;
  ADAPTERS_CHECK(fs::exists(path), path.string(), ": file not found");
  return parse_json_file_text(io::read_text_file(path), path.string());
}

bool is_set(const json& peft, const char* key) {
  if (!peft.contains(key)) return false;
  const json& v = peft[key];
  return !(v.is_null() || (v.is_boolean() && !v.get<bool>()) || (v.is_array() && v.empty()) ||
           (v.is_object() && v.empty()) || (v.is_string() && v.get<std::string>().empty()));
}

// Fields of a PEFT LoRA config that change the math and that this library does not implement:
// refused by name rather than ignored.
void refuse_unsupported_lora_fields(const json& peft, const std::string& source) {
  const std::string bias = peft.value("bias", std::string("none"));
  if (bias != "none") {
    throw NotSupported(str(source, ": bias \"", bias, "\" (LoRA that trains the base model's biases) is not supported"),
                       "train with bias=\"none\"");
  }
  const std::pair<const char*, const char*> refused[] = {
      {"modules_to_save", "fully trained copies of base modules"},
      {"layers_pattern", "a custom layer-name pattern for layers_to_transform"},
      {"layer_replication", "replicated layers"},
      {"target_parameters", "LoRA on parameters (MoE experts)"},
      {"trainable_token_indices", "trainable token embeddings"},
      {"lora_bias", "a bias on lora_B"},
      {"use_qalora", "QA-LoRA"},
      {"alora_invocation_tokens", "activated LoRA"},
      {"megatron_config", "Megatron parallel layers"},
      {"arrow_config", "Arrow routing"},
  };
  for (const auto& [key, what] : refused) {
    if (is_set(peft, key)) throw NotSupported(str(source, ": '", key, "' (", what, ") is not supported"));
  }
}

// The placement fields every PEFT tuner of the LoRA family shares.
void copy_placement(const json& peft, json& c) {
  c["target_modules"] = peft["target_modules"];
  if (is_set(peft, "exclude_modules")) c["exclude_modules"] = peft["exclude_modules"];
  if (is_set(peft, "layers_to_transform")) {
    const json& layers = peft["layers_to_transform"];
    c["layers_to_transform"] = layers.is_number_integer() ? json::array({layers}) : layers;
  }
}

void require_targets(const JsonReader& r, const std::string& source) {
  ADAPTERS_CHECK(r.has("target_modules"), source,
                 ": 'target_modules' is missing (PEFT fills it in from the model type when saving; this file has none)");
}

methods::AdapterConfig lora_config(const json& peft, const std::string& source) {
  refuse_unsupported_lora_fields(peft, source);
  JsonReader r(peft, source);
  require_targets(r, source);
  json c = {{"architecture", "lora"},
            {"r", r.get_int("r", 8)},
            {"alpha", r.has("lora_alpha") ? r.raw("lora_alpha") : json(8)},
            {"dropout", r.get_double("lora_dropout", 0.0)},
            {"use_rslora", r.get_bool("use_rslora", false)},
            {"use_dora", r.get_bool("use_dora", false)}};
  copy_placement(peft, c);
  if (is_set(peft, "rank_pattern")) c["rank_pattern"] = peft["rank_pattern"];
  if (is_set(peft, "alpha_pattern")) c["alpha_pattern"] = peft["alpha_pattern"];
  return methods::AdapterConfig::from_json(c, source);
}

methods::AdapterConfig ia3_config(const json& peft, const std::string& source) {
  for (const char* key : {"modules_to_save", "layers_pattern"}) {
    if (is_set(peft, key)) throw NotSupported(str(source, ": '", key, "' is not supported"));
  }
  JsonReader r(peft, source);
  require_targets(r, source);
  json c = {{"architecture", "lora"}, {"composition_mode", "scale"}, {"r", 1}, {"alpha", 1}, {"init_weights", "ia3"}};
  copy_placement(peft, c);
  if (is_set(peft, "feedforward_modules")) c["feedforward_modules"] = peft["feedforward_modules"];
  return methods::AdapterConfig::from_json(c, source);
}

methods::AdapterConfig vera_config(const json& peft, const std::string& source) {
  const std::string bias = peft.value("bias", std::string("none"));
  if (bias != "none") throw NotSupported(str(source, ": bias \"", bias, "\" is not supported"));
  for (const char* key : {"modules_to_save", "layers_pattern"}) {
    if (is_set(peft, key)) throw NotSupported(str(source, ": '", key, "' is not supported"));
  }
  JsonReader r(peft, source);
  require_targets(r, source);
  json c = {{"architecture", "lora"},
            {"init_weights", "vera"},
            {"r", r.get_int("r", 256)},
            {"dropout", r.get_double("vera_dropout", 0.0)},
            {"vera_d", r.get_double("d_initial", 0.1)},
            {"projection_prng_key", r.get_int("projection_prng_key", 0)}};
  copy_placement(peft, c);
  return methods::AdapterConfig::from_json(c, source);
}

// VeRA's shared projections saved beside the layers (save_projection): "base_model.vera_A" / "vera_B".
bool is_vera_projection(const std::string& key) { return key == "base_model.vera_A" || key == "base_model.vera_B"; }

// Copies the saved projections over the ones the adapter generated from its seed (checked shapes).
void load_vera_projections(AdapterModelImpl& model, const std::string& name, const io::TensorMap& saved,
                           const std::string& source) {
  for (const char* which : {"vera_A", "vera_B"}) {
    auto it = saved.find(std::string("base_model.") + which);
    if (it == saved.end()) continue;  // not saved: PEFT regenerates them from projection_prng_key, as we did
    const std::string suffix = str("vera.", name, ".", which);
    torch::Tensor target;  // a handle on the buffer's storage
    for (const auto& item : model.named_buffers()) {
      const std::string& key = item.key();
      if (key.size() >= suffix.size() && key.compare(key.size() - suffix.size(), suffix.size(), suffix) == 0) {
        target = item.value();
      }
    }
    ADAPTERS_CHECK(target.defined(), source, ": the model has no VeRA projection ", suffix);
    ADAPTERS_CHECK(target.sizes() == it->second.sizes(), source, ": base_model.", which, " has shape ", it->second.sizes(),
                   ", the adapter's targets need ", target.sizes());
    torch::NoGradGuard no_grad;
    target.copy_(it->second);
  }
}

// PEFT's prompt_embeddings (num_virtual_tokens x submodules, token_dim): its first rows are the prompt.
void load_prompt(AdapterModelImpl& model, const std::string& name, const methods::AdapterConfig& config,
                 const io::TensorMap& saved, const std::string& source) {
  ADAPTERS_CHECK(saved.size() == 1 && saved.count("prompt_embeddings"), source,
                 ": a PEFT prompt-tuning adapter holds exactly one tensor, 'prompt_embeddings'");
  const torch::Tensor& rows = saved.at("prompt_embeddings");
  const std::int64_t P = config.values.at("prompt_length").get<std::int64_t>();
  ADAPTERS_CHECK(rows.dim() == 2 && rows.size(0) >= P && rows.size(0) % P == 0, source, ": prompt_embeddings has shape ",
                 rows.sizes(), ", expected (k x ", P, ", token_dim)");
  model.add_adapter(name, config);
  try {
    io::TensorMap state = model.adapter_state_dict(name);
    ADAPTERS_CHECK(state.size() == 1, source, ": unexpected prompt-tuning parameters");
    model.load_adapter_state_dict(name, {{state.begin()->first, rows.narrow(0, 0, P)}}, source);
  } catch (...) {
    model.delete_adapter(name);
    throw;
  }
}

// PEFT's prefix: prompt_embeddings (num_virtual_tokens, num_layers*2*token_dim), viewed as
// (P, 2L, num_attention_heads, token_dim / num_attention_heads): the heads and widths must be the
// model's key/value heads (PEFT stores num_key_value_heads there for grouped-query models).
void load_prefix(AdapterModelImpl& model, const std::string& name, const methods::AdapterConfig& config,
                 const json& peft, const std::string& config_source, const io::TensorMap& saved,
                 const std::string& source) {
  JsonReader r(peft, config_source);
  const models::ModelConfig& c = model.config();
  const std::int64_t heads = r.get_int("num_attention_heads"), token_dim = r.get_int("token_dim");
  ADAPTERS_CHECK(heads == c.num_key_value_heads && token_dim == c.num_key_value_heads * c.head_dim(), config_source,
                 ": num_attention_heads ", heads, " and token_dim ", token_dim, " do not match the model's key/value heads (",
                 c.num_key_value_heads, " heads of ", c.head_dim(), ")");
  ADAPTERS_CHECK(saved.size() == 1 && saved.count("prompt_embeddings"), source,
                 ": a PEFT prefix-tuning adapter holds exactly one tensor, 'prompt_embeddings'");
  const torch::Tensor& table = saved.at("prompt_embeddings");
  const std::int64_t P = config.values.at("prefix_length").get<std::int64_t>();
  const std::int64_t L = config.values.at("num_layers").get<std::int64_t>();
  ADAPTERS_CHECK(table.dim() == 2 && table.size(0) == P && table.size(1) == L * 2 * token_dim, source,
                 ": prompt_embeddings has shape ", table.sizes(), ", expected (", P, ", ", L * 2 * token_dim,
                 ") = (num_virtual_tokens, num_layers*2*token_dim)");
  model.add_adapter(name, config);
  try {
    io::TensorMap state = model.adapter_state_dict(name);
    ADAPTERS_CHECK(state.size() == 1, source, ": unexpected prefix-tuning parameters");
    model.load_adapter_state_dict(name, {{state.begin()->first, table.reshape({-1})}}, source);
  } catch (...) {
    model.delete_adapter(name);
    throw;
  }
}

}  // namespace

bool is_peft_folder(const fs::path& dir) {
  const fs::path path = dir / kConfigFile;
  if (!fs::is_regular_file(path)) return false;
  const json config = parse_json_file_text(io::read_text_file(path), path.string());
  return config.is_object() && config.contains("peft_type");
}

methods::AdapterConfig from_peft_config(const json& peft, const std::string& source) {
  ADAPTERS_CHECK(peft.is_object(), source, ": expected a JSON object");
  JsonReader r(peft, source);
  const std::string type = r.get_string("peft_type");
  if (type == "LORA") return lora_config(peft, source);
  if (type == "IA3") return ia3_config(peft, source);
  if (type == "VERA") return vera_config(peft, source);
  if (type == "PROMPT_TUNING") {
    // The soft tokens join the encoder's (or the decoder-only model's) input embeddings; a seq2seq
    // adapter's second block of num_virtual_tokens rows is not used by PEFT's prompt tuning forward.
    return methods::AdapterConfig::from_json(
        {{"architecture", "prompt_tuning"}, {"prompt_length", r.get_int("num_virtual_tokens")}, {"combine", "input"}}, source);
  }
  if (type == "PREFIX_TUNING") {
    // The saved prompt_embeddings are the prefix's key/value states (prefix_projection, when the
    // adapter was trained with it, is already applied): a flat table, filled in as past key/values.
    const std::int64_t submodules = r.get_int("num_transformer_submodules", 1);
    return methods::AdapterConfig::from_json({{"architecture", "prefix_tuning"},
                                              {"placement", "past"},
                                              {"flat", true},
                                              {"prefix_length", r.get_int("num_virtual_tokens")},
                                              {"num_layers", r.get_int("num_layers")},
                                              {"num_transformer_submodules", submodules}},
                                             source);
  }
  throw Error(str(source, ": unknown peft_type '", type, "'"),
              "expected LORA, IA3, VERA, PREFIX_TUNING or PROMPT_TUNING");
}

std::string from_peft_key(const std::string& key, const std::string& base_prefix, const std::string& name) {
  ADAPTERS_CHECK(key.rfind(kModelPrefix, 0) == 0, "PEFT tensor '", key, "' does not start with '", kModelPrefix, "'");
  std::string path = key.substr(std::string(kModelPrefix).size());
  if (path.rfind(base_prefix + ".", 0) != 0) path = base_prefix + "." + path;  // saved from a bare base model
  static const std::pair<const char*, const char*> params[] = {
      {".lora_A.weight", "lora_A"},
      {".lora_B.weight", "lora_B"},
      {".lora_magnitude_vector.weight", "lora_magnitude_vector"},
      {".lora_magnitude_vector", "lora_magnitude_vector"},
      {".ia3_l", "lora_B"},  // (out, 1), or (1, in) on a feedforward module
      {".vera_lambda_b", "vera_lambda_b"},
      {".vera_lambda_d", "vera_lambda_d"},
  };
  for (const auto& [suffix, param] : params) {
    const std::string s = suffix;
    if (path.size() > s.size() && path.compare(path.size() - s.size(), s.size(), s) == 0) {
      return path.substr(0, path.size() - s.size()) + ".loras." + name + "." + param;
    }
  }
  throw Error(str("PEFT tensor '", key, "' is not a tensor of a LoRA, DoRA, IA3 or VeRA layer (expected .lora_A.weight, "
                  ".lora_B.weight, .lora_magnitude_vector, .ia3_l, .vera_lambda_b or .vera_lambda_d)"));
}

void load_peft_adapter(AdapterModelImpl& model, const fs::path& dir, const std::string& name, WeightsPreference weights) {
  const std::string source = (dir / kConfigFile).string();
  const json peft = read_config(dir);
  const methods::AdapterConfig config = from_peft_config(peft, source);
  const fs::path st = dir / kSafetensorsFile, bin = dir / kBinFile;
  ADAPTERS_CHECK(fs::exists(st) || fs::exists(bin), dir.string(), ": no adapter weights (expected ", kSafetensorsFile,
                 " or ", kBinFile, ")");
  const fs::path weights_path =
      fs::exists(st) && fs::exists(bin) ? (weights == WeightsPreference::Bin ? bin : st) : fs::exists(st) ? st : bin;
  const io::TensorMap saved = io::read_checkpoint(weights_path);
  if (config.method == "prompt_tuning") {
    load_prompt(model, name, config, saved, weights_path.string());
    return;
  }
  if (config.method == "prefix_tuning") {
    load_prefix(model, name, config, peft, source, saved, weights_path.string());
    return;
  }
  const std::string& prefix = model.arch().base_prefix;
  io::TensorMap renamed;
  for (const auto& [key, tensor] : saved) {
    if (is_vera_projection(key)) continue;
    std::string ours;
    try {
      ours = from_peft_key(key, prefix, name);
    } catch (const Error& e) {
      throw Error(str(weights_path.string(), ": ", e.what()));
    }
    renamed[ours] = tensor;
  }
  model.add_adapter(name, config);
  try {
    model.load_adapter_state_dict(name, renamed, weights_path.string());
    load_vera_projections(model, name, saved, weights_path.string());
  } catch (...) {
    model.delete_adapter(name);
    throw;
  }
}


// ==== writing ===================================================================================

namespace {

constexpr const char* kPeftVersion = "0.21.0";  // the PEFT version whose format we write (the fixtures')
constexpr const char* kAdapterHubWeights[] = {"adapter.safetensors", "pytorch_adapter.bin"};

std::string adapter_source(const std::string& name) { return str("save_peft_adapter: adapter '", name, "'"); }

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// PEFT's task_type for the prompt-learning methods, by the kind of model.
std::string peft_task_type(const AdapterModelImpl& model) {
  switch (model.arch().kind) {
    case models::ArchKind::Decoder: return "CAUSAL_LM";
    case models::ArchKind::EncoderDecoder: return "SEQ_2_SEQ_LM";
    default: return "FEATURE_EXTRACTION";
  }
}

// What every PEFT config written here holds besides the method's own fields.
json common_fields(const std::string& base_model_name_or_path) {
  return {{"base_model_name_or_path", base_model_name_or_path.empty() ? json() : json(base_model_name_or_path)},
          {"revision", nullptr},
          {"inference_mode", true},
          {"modules_to_save", nullptr},
          {"peft_version", kPeftVersion}};
}

// The single tensor of a prompt-learning adapter (its table).
torch::Tensor only_tensor(const AdapterModelImpl& model, const std::string& name) {
  const io::TensorMap state = model.adapter_state_dict(name);
  ADAPTERS_CHECK(state.size() == 1, adapter_source(name), ": expected one tensor, found ", state.size());
  return state.begin()->second.detach();
}

// ---- the LoRA family: where the adapter sits, as PEFT's target_modules -------------------------

// One adapted linear layer: its module path under the base model, PEFT's module path, and the
// name PEFT users give it (the longest HF module name of the architecture's table it ends in).
struct LinearModule {
  std::size_t site = 0;
  std::string path;       // under the base model: sites.linear_paths[site]
  std::string peft_path;  // after "base_model.model."
  std::string name;
  bool adapted = false;
};

bool names_module(const std::string& path, const std::string& name) {
  return path == name || (path.size() > name.size() && ends_with(path, name) && path[path.size() - name.size() - 1] == '.');
}

std::string module_name(const models::ArchSpec& arch, const std::string& peft_path) {
  std::string best;
  for (const auto& item : arch.module_roles) {
    if (names_module(peft_path, item.first) && item.first.size() > best.size()) best = item.first;
  }
  return best.empty() ? peft_path : best;
}

std::vector<LinearModule> linear_modules(const AdapterModelImpl& model, const std::string& name) {
  const models::HookSites& sites = model.base().sites();
  const std::string hf = hf_base_prefix(model);
  std::vector<LinearModule> out;
  for (std::size_t i = 0; i < sites.linear.size(); ++i) {
    LinearModule m;
    m.site = i;
    m.path = sites.linear_paths[i];
    m.peft_path = hf.empty() ? m.path : hf + "." + m.path;
    m.name = module_name(model.arch(), m.peft_path);
    m.adapted = sites.linear[i]->adapter(name) != nullptr;
    out.push_back(std::move(m));
  }
  return out;
}

// A PEFT placement: target_modules (names), layers_to_transform, exclude_modules (names or null).
struct PeftPlacement {
  std::vector<std::string> targets;
  std::vector<std::int64_t> layers;
  std::vector<std::string> exclude;
};

// PEFT's layer index of a module path: the number in its last ".<name>.<i>." (none: -1).
std::int64_t layer_index(const std::string& path) {
  static const std::regex layer(R"(.*\.[^.]*\.(\d+)\..*)");
  std::smatch m;
  return std::regex_match(path, m, layer) ? std::stoll(m[1].str()) : -1;
}

bool any_names(const std::vector<std::string>& names, const std::string& path) {
  return std::any_of(names.begin(), names.end(), [&](const std::string& n) { return names_module(path, n); });
}

// Whether PEFT adapts the module at `peft_path` under this placement (its check_target_module_exists).
bool peft_selects(const PeftPlacement& p, const std::string& peft_path) {
  if (any_names(p.exclude, peft_path) || !any_names(p.targets, peft_path)) return false;
  if (p.layers.empty()) return true;
  const std::int64_t i = layer_index(peft_path);
  return std::find(p.layers.begin(), p.layers.end(), i) != p.layers.end();
}

// Whether this library's reader adapts the module under this placement.
bool reader_selects(const PeftPlacement& p, const LinearModule& m, const std::string& base_prefix) {
  json c = {{"target_modules", p.targets}, {"layers_to_transform", p.layers}};
  if (!p.exclude.empty()) c["exclude_modules"] = p.exclude;
  const methods::LoRAConfig config = methods::LoRAConfig::from_json(c, "placement");
  return config.targets({m.path, base_prefix + "." + m.path});
}

// Whether PEFT and this library's reader both adapt exactly the adapted modules.
bool selects_exactly(const PeftPlacement& p, const std::vector<LinearModule>& modules, const std::string& base_prefix) {
  for (const auto& m : modules) {
    if (peft_selects(p, m.peft_path) != m.adapted || reader_selects(p, m, base_prefix) != m.adapted) return false;
  }
  return true;
}

std::vector<std::string> sorted_unique(std::vector<std::string> v) {
  std::sort(v.begin(), v.end());
  v.erase(std::unique(v.begin(), v.end()), v.end());
  return v;
}

// The layer indices of the adapted modules; empty when one has none.
std::vector<std::int64_t> adapted_layers(const std::vector<LinearModule>& modules) {
  std::set<std::int64_t> layers;
  for (const auto& m : modules) {
    if (!m.adapted) continue;
    const std::int64_t i = layer_index(m.peft_path);
    if (i < 0) return {};
    layers.insert(i);
  }
  return {layers.begin(), layers.end()};
}

// The names of the modules a placement adapts beyond the adapted ones.
std::vector<std::string> over_selected(const PeftPlacement& p, const std::vector<LinearModule>& modules,
                                       const std::string& base_prefix) {
  std::vector<std::string> names;
  for (const auto& m : modules) {
    if (!m.adapted && (peft_selects(p, m.peft_path) || reader_selects(p, m, base_prefix))) names.push_back(m.name);
  }
  return sorted_unique(names);
}

// The shortest PEFT placement that adapts exactly the modules the adapter sits on: their HF module
// names, then with layers_to_transform (when the method has it), each also with exclude_modules
// for what the names catch beyond (when the method has it); else the modules' full paths.
PeftPlacement derive_placement(const std::vector<LinearModule>& modules, const std::string& base_prefix,
                               bool has_layers, bool has_exclude) {
  std::vector<std::string> names;
  for (const auto& m : modules) {
    if (m.adapted) names.push_back(m.name);
  }
  names = sorted_unique(names);
  std::vector<std::vector<std::int64_t>> layer_choices = {{}};
  if (has_layers) {
    if (auto layers = adapted_layers(modules); !layers.empty()) layer_choices.push_back(layers);
  }
  for (const auto& layers : layer_choices) {
    PeftPlacement p{names, layers, {}};
    if (selects_exactly(p, modules, base_prefix)) return p;
    if (!has_exclude) continue;
    p.exclude = over_selected(p, modules, base_prefix);
    if (!p.exclude.empty() && selects_exactly(p, modules, base_prefix)) return p;
  }
  PeftPlacement full;
  for (const auto& m : modules) {
    if (m.adapted) full.targets.push_back(m.peft_path);
  }
  ADAPTERS_CHECK(selects_exactly(full, modules, base_prefix), "save_peft_adapter: the full module paths do not select "
                 "the adapted modules exactly (a module path that is a suffix of another)");
  return full;
}

// The placement fields of PEFT's config of the method (IA3Config has no layers_to_transform,
// VeraConfig no exclude_modules): only those are written.
struct PlacementFields {
  bool layers = true;
  bool exclude = true;
};

void put_placement(const json& targets, const std::vector<std::int64_t>& layers, const json& exclude,
                   const PlacementFields& fields, json& j) {
  j["target_modules"] = targets;
  if (fields.layers) j["layers_to_transform"] = layers.empty() ? json() : json(layers);
  if (fields.exclude) j["exclude_modules"] = exclude;
}

void put_placement(const PeftPlacement& p, const PlacementFields& fields, json& j) {
  put_placement(p.targets, p.layers, p.exclude.empty() ? json() : json(p.exclude), fields, j);
}

// The adapter's own target_modules placement, when PEFT's config of the method can hold all of it.
bool copy_placement_if_expressible(const methods::LoRAConfig& c, const PlacementFields& fields, json& j) {
  if (!c.targets_modules()) return false;
  if (!fields.layers && !c.layers_to_transform.empty()) return false;
  if (!fields.exclude && !c.exclude_modules.is_null()) return false;
  put_placement(c.target_modules, c.layers_to_transform, c.exclude_modules, fields, j);
  return true;
}

// ---- the LoRA family: tensors ------------------------------------------------------------------

// The slices of a layer the adapter covers: all with target_modules, else those of its roles.
std::vector<nn::OutputSlice> covered_slices(const methods::LoRAConfig& c, const nn::AdaptedLinearImpl& site) {
  if (c.targets_modules()) return {nn::OutputSlice{"module", 0, site.out_features()}};  // the layer as a whole
  std::vector<nn::OutputSlice> chosen;
  for (const auto& s : site.slices()) {
    if (c.places_at(s.role, site.layer())) chosen.push_back(s);
  }
  return chosen;
}

// lora_B (rows, n*r) over the chosen slices -> (out, n*r) over the whole layer: slice i's rows use
// columns [i r, (i+1) r] (the grouped layout of a fused layer written as one LoRA of rank n r).
torch::Tensor whole_layer_b(const torch::Tensor& b, const std::vector<nn::OutputSlice>& chosen, std::int64_t out,
                            std::int64_t r) {
  const auto n = static_cast<std::int64_t>(chosen.size());
  if (n == 1 && chosen[0].size == out) return b;
  torch::Tensor whole = torch::zeros({out, n * r}, b.options());
  std::int64_t row = 0;
  for (std::int64_t i = 0; i < n; ++i) {
    const auto& s = chosen[static_cast<std::size_t>(i)];
    whole.narrow(0, s.offset, s.size).narrow(1, i * r, r).copy_(b.narrow(0, row, s.size).narrow(1, 0, r));
    row += s.size;
  }
  return whole;
}

// (IA)^3's (rows, 1) over the chosen slices -> (out, 1), ones on the other rows.
torch::Tensor whole_layer_scale(const torch::Tensor& l, const std::vector<nn::OutputSlice>& chosen, std::int64_t out) {
  if (chosen.size() == 1 && chosen[0].size == out) return l;
  torch::Tensor whole = torch::ones({out, 1}, l.options());
  std::int64_t row = 0;
  for (const auto& s : chosen) {
    whole.narrow(0, s.offset, s.size).copy_(l.narrow(0, row, s.size));
    row += s.size;
  }
  return whole;
}

// lora_alpha giving scale `config.scaling()` at `rank` (the config's own alpha at its own rank).
json alpha_at(const methods::LoRAConfig& config, std::int64_t rank) {
  if (rank == config.r) return config.alpha;
  const double s = config.scaling();
  const double alpha = config.use_rslora ? s * std::sqrt(static_cast<double>(rank)) : s * static_cast<double>(rank);
  if (std::abs(alpha - std::round(alpha)) < 1e-9) return static_cast<std::int64_t>(std::llround(alpha));
  return alpha;
}

// One adapted module as PEFT holds it: its rank and lora_alpha (LoRA, DoRA).
struct ModuleRank {
  std::string peft_path;
  std::int64_t rank;
  json alpha;
};

// The adapter's tensors under PEFT's keys; `ranks` gets each LoRA / DoRA module's rank and alpha.
io::TensorMap lora_family_tensors(const AdapterModelImpl& model, const std::string& name, const methods::LoRAConfig& c,
                                  const std::vector<LinearModule>& modules, std::vector<ModuleRank>& ranks) {
  const io::TensorMap state = model.adapter_state_dict(name);
  const models::HookSites& sites = model.base().sites();
  const std::string& base_prefix = model.arch().base_prefix;
  const std::string hf = hf_base_prefix(model);
  io::TensorMap out;
  for (const auto& m : modules) {
    if (!m.adapted) continue;
    const nn::AdaptedLinearImpl& site = *sites.linear[m.site];
    const std::vector<std::string> paths = {m.path, base_prefix + "." + m.path};
    const methods::LoRAConfig mc = c.for_module(paths);
    const std::vector<nn::OutputSlice> chosen = covered_slices(c, site);
    auto param = [&](const std::string& p) {
      const std::string key = str(base_prefix, ".", m.path, ".loras.", name, ".", p);
      auto it = state.find(key);
      ADAPTERS_CHECK(it != state.end(), adapter_source(name), ": parameter '", key, "' is missing");
      return std::make_pair(key, it->second.detach());
    };
    auto put = [&](const std::pair<std::string, torch::Tensor>& kt) {
      out[to_peft_key(kt.first, base_prefix, hf, name, c.is_ia3())] = kt.second.contiguous();
    };
    if (c.is_ia3()) {
      auto [key, l] = param("lora_B");
      const double s = mc.scaling();
      if (s != 1.0) l = l * s;  // PEFT's (IA)^3 has no scale: folded into the vector
      if (!c.scales_input(paths)) l = whole_layer_scale(l, chosen, site.out_features());
      put({key, l});
    } else if (c.is_vera()) {
      put(param("vera_lambda_b"));
      put(param("vera_lambda_d"));
    } else {
      auto a = param("lora_A");
      auto [b_key, b] = param("lora_B");
      const std::int64_t r = a.second.size(0) / static_cast<std::int64_t>(chosen.size());
      put(a);
      put({b_key, whole_layer_b(b, chosen, site.out_features(), r)});
      if (c.is_dora()) put(param("lora_magnitude_vector"));
      ranks.push_back({m.peft_path, a.second.size(0), alpha_at(mc, a.second.size(0))});
    }
  }
  return out;
}

// r and lora_alpha: the most common pair of the modules; the others in rank_pattern / alpha_pattern.
void put_ranks(const std::vector<ModuleRank>& ranks, json& j) {
  std::map<std::pair<std::int64_t, std::string>, std::size_t> counts;
  for (const auto& m : ranks) ++counts[{m.rank, m.alpha.dump()}];
  const ModuleRank* common = &ranks.front();
  std::size_t best = 0;
  for (const auto& m : ranks) {
    const std::size_t n = counts[{m.rank, m.alpha.dump()}];
    if (n > best) best = n, common = &m;
  }
  json rank_pattern = json::object(), alpha_pattern = json::object();
  for (const auto& m : ranks) {
    if (m.rank != common->rank) rank_pattern[m.peft_path] = m.rank;
    if (m.alpha != common->alpha) alpha_pattern[m.peft_path] = m.alpha;
  }
  j["r"] = common->rank;
  j["lora_alpha"] = common->alpha;
  j["rank_pattern"] = rank_pattern;
  j["alpha_pattern"] = alpha_pattern;
}

// Options of the LoRA family that PEFT has no counterpart for.
void refuse_lora_options(const methods::LoRAConfig& c, const std::string& name) {
  if (c.use_gating) {
    throw NotSupported(str(adapter_source(name), ": use_gating (a learned gate per layer scaling the ", c.variant(),
                           " delta, as in UniPELT) has no PEFT counterpart: PEFT's output would differ"));
  }
  if (c.is_vera() && (!c.rank_pattern.empty() || !c.alpha_pattern.empty())) {
    throw NotSupported(str(adapter_source(name), ": VeRA with rank_pattern / alpha_pattern has no PEFT counterpart "
                           "(PEFT's VeraConfig has one r)"));
  }
}

// Whether any adapted layer keeps its weight as (in, out) (GPT-2's Conv1D): PEFT's fan_in_fan_out.
bool conv1d_layers(const AdapterModelImpl& model, const std::vector<LinearModule>& modules) {
  for (const auto& m : modules) {
    const nn::AdaptedLinearImpl& site = *model.base().sites().linear[m.site];
    if (m.adapted && !site.weight_out_in().is_same(site.weight)) return true;
  }
  return false;
}

// VeRA's shared projections of the adapter, as PEFT saves them with save_projection.
void add_vera_projections(const AdapterModelImpl& model, const std::string& name, io::TensorMap& out) {
  for (const char* which : {"vera_A", "vera_B"}) {
    const std::string suffix = str("vera.", name, ".", which);
    for (const auto& item : model.named_buffers()) {
      if (ends_with(item.key(), suffix)) out[std::string("base_model.") + which] = item.value().detach().contiguous();
    }
    ADAPTERS_CHECK(out.count(std::string("base_model.") + which), adapter_source(name), ": no VeRA projection ", suffix);
  }
}

struct PeftFiles {
  json config;
  io::TensorMap tensors;
};

PeftFiles lora_family_files(const AdapterModelImpl& model, const std::string& name, const methods::AdapterConfig& config) {
  const methods::LoRAConfig c = methods::LoRAConfig::from_json(config.values, adapter_source(name));
  refuse_lora_options(c, name);
  const std::vector<LinearModule> modules = linear_modules(model, name);
  ADAPTERS_CHECK(std::any_of(modules.begin(), modules.end(), [](const LinearModule& m) { return m.adapted; }),
                 adapter_source(name), ": the adapter sits on no linear layer");
  const std::string& base_prefix = model.arch().base_prefix;
  PeftFiles f;
  std::vector<ModuleRank> ranks;
  f.tensors = lora_family_tensors(model, name, c, modules, ranks);
  json& j = f.config;
  const PlacementFields fields{!c.is_ia3(), !c.is_vera()};
  const bool copied = copy_placement_if_expressible(c, fields, j);
  if (!copied) put_placement(derive_placement(modules, base_prefix, fields.layers, fields.exclude), fields, j);
  j["task_type"] = nullptr;
  j["fan_in_fan_out"] = conv1d_layers(model, modules);
  if (c.is_ia3()) {
    j["peft_type"] = "IA3";
    j["feedforward_modules"] = c.feedforward_modules.is_null() ? json::array() : c.feedforward_modules;
    j["init_ia3_weights"] = true;
    return f;
  }
  j["bias"] = "none";
  j["layers_pattern"] = nullptr;
  if (c.is_vera()) {
    j.update({{"peft_type", "VERA"}, {"r", c.r}, {"vera_dropout", c.dropout}, {"d_initial", c.vera_d},
              {"projection_prng_key", c.projection_prng_key}, {"save_projection", true}, {"init_weights", true}});
    add_vera_projections(model, name, f.tensors);
    return f;
  }
  j.update({{"peft_type", "LORA"}, {"lora_dropout", c.dropout}, {"use_rslora", c.use_rslora}, {"use_dora", c.use_dora},
            {"init_lora_weights", true}, {"lora_bias", false}});
  if (copied) {  // the adapter's own r, alpha and patterns hold for the modules it names
    j.update({{"r", c.r}, {"lora_alpha", c.alpha}, {"rank_pattern", c.rank_pattern}, {"alpha_pattern", c.alpha_pattern}});
  } else {
    put_ranks(ranks, j);
  }
  return f;
}

// ---- prompt learning ---------------------------------------------------------------------------

PeftFiles prefix_files(const AdapterModelImpl& model, const std::string& name, const methods::AdapterConfig& config) {
  const json& v = config.values;
  if (v.value("placement", std::string("attention")) != "past") {
    throw NotSupported(str(adapter_source(name), ": AdapterHub prefix tuning (placement \"attention\") prepends its keys "
                           "and values inside each attention and leaves the tokens' positions as they are; PEFT's "
                           "prefix is past key/values, after which the positions start at num_virtual_tokens: the "
                           "outputs would differ"),
                       "prefix_tuning[placement=past,flat=true] is PEFT's prefix tuning");
  }
  if (v.value("dropout", 0.0) != 0.0) {
    throw NotSupported(str(adapter_source(name), ": prefix dropout ", v.value("dropout", 0.0),
                           " has no PEFT counterpart (PEFT's prefix tuning has none)"));
  }
  const models::ModelConfig& c = model.config();
  const std::int64_t P = v.at("prefix_length").get<std::int64_t>();
  const std::int64_t token_dim = c.num_key_value_heads * c.head_dim();
  const torch::Tensor table = only_tensor(model, name).reshape({P, -1});
  ADAPTERS_CHECK(table.size(1) % (2 * token_dim) == 0, adapter_source(name), ": a prefix table of width ", table.size(1),
                 " is not 2 x layers x ", token_dim);
  PeftFiles f;
  f.config = {{"peft_type", "PREFIX_TUNING"},
              {"task_type", peft_task_type(model)},
              {"num_virtual_tokens", P},
              {"num_layers", table.size(1) / (2 * token_dim)},
              {"token_dim", token_dim},
              {"num_attention_heads", c.num_key_value_heads},
              {"encoder_hidden_size", token_dim},
              {"num_transformer_submodules", v.value("num_transformer_submodules", 1)},
              {"prefix_projection", false}};
  f.tensors["prompt_embeddings"] = table.contiguous();
  return f;
}

// One submodule's rows: PEFT then joins the prompt to the encoder's (or decoder-only model's)
// input only, as this library's combine "input" does, also on encoder-decoder models.
PeftFiles prompt_files(const AdapterModelImpl& model, const std::string& name, const methods::AdapterConfig& config) {
  const std::string combine = config.values.value("combine", std::string("prefix"));
  if (combine != "input") {
    throw NotSupported(str(adapter_source(name), ": prompt tuning with combine \"", combine, "\" joins the soft tokens "
                           "after the embedding layer (position and token-type embeddings and its norm do not cover "
                           "them); PEFT joins them before it: the outputs would differ"),
                       "prompt_tuning[combine=input] is PEFT's prompt tuning");
  }
  const models::ModelConfig& c = model.config();
  const torch::Tensor rows = only_tensor(model, name);
  PeftFiles f;
  f.config = {{"peft_type", "PROMPT_TUNING"},
              {"task_type", peft_task_type(model)},
              {"num_virtual_tokens", rows.size(0)},
              {"token_dim", rows.size(1)},
              {"num_transformer_submodules", 1},
              {"num_attention_heads", c.num_attention_heads},
              {"num_layers", c.num_hidden_layers},
              {"prompt_tuning_init", "RANDOM"},
              {"prompt_tuning_init_text", nullptr},
              {"tokenizer_name_or_path", nullptr}};
  f.tensors["prompt_embeddings"] = rows.contiguous();
  return f;
}

// The methods PEFT has no counterpart of, refused by name with the reason.
[[noreturn]] void refuse_method(const std::string& name, const methods::AdapterConfig& config) {
  const std::string& m = config.method;
  std::string what;
  if (m == "bottleneck") {
    what = config.values.value("phm_layer", false) ? "Compacter (PHM bottleneck adapters)"
                                                   : "bottleneck adapters (seq_bn, double_seq_bn, par_bn, ...)";
  } else if (m == "reft") {
    what = "ReFT (interventions on hidden states)";
  } else if (m == "union") {
    what = "config unions (mam, unipelt, \"a|b\": several methods in one adapter)";
  } else {
    what = "'" + m + "' adapters";
  }
  throw NotSupported(str(adapter_source(name), ": ", what, " have no PEFT counterpart"),
                     "PEFT folders hold LoRA, rsLoRA, DoRA, (IA)^3, VeRA, prefix tuning (placement past) and prompt "
                     "tuning (combine input); save_adapter writes the AdapterHub format");
}

PeftFiles peft_files(const AdapterModelImpl& model, const std::string& name) {
  const methods::AdapterConfig& config = model.adapter_config(name);
  if (config.method == "lora") return lora_family_files(model, name, config);
  if (config.method == "prefix_tuning") return prefix_files(model, name, config);
  if (config.method == "prompt_tuning") return prompt_files(model, name, config);
  refuse_method(name, config);
}

void refuse_adapterhub_folder(const fs::path& dir) {
  for (const char* file : kAdapterHubWeights) {
    ADAPTERS_CHECK(!fs::exists(dir / file), "save_peft_adapter: ", dir.string(), " holds an AdapterHub adapter (", file,
                   "), whose adapter_config.json the PEFT one would replace; write into another folder");
  }
}

}  // namespace

std::string to_peft_key(const std::string& key, const std::string& base_prefix, const std::string& hf_prefix,
                        const std::string& name, bool ia3) {
  const std::string marker = ".loras." + name + ".";
  const auto at = key.find(marker);
  ADAPTERS_CHECK(at != std::string::npos && key.rfind(base_prefix + ".", 0) == 0, "'", key,
                 "' is not a LoRA-family parameter of adapter '", name, "' under '", base_prefix, "'");
  const std::string module = key.substr(base_prefix.size() + 1, at - base_prefix.size() - 1);
  const std::string param = key.substr(at + marker.size());
  std::string suffix;
  if (param == "lora_A") suffix = ".lora_A.weight";
  else if (param == "lora_B") suffix = ia3 ? ".ia3_l" : ".lora_B.weight";
  else if (param == "lora_magnitude_vector" || param == "vera_lambda_b" || param == "vera_lambda_d") suffix = "." + param;
  ADAPTERS_CHECK(!suffix.empty(), "'", key, "': parameter '", param, "' has no PEFT counterpart (expected lora_A, "
                 "lora_B, lora_magnitude_vector, vera_lambda_b or vera_lambda_d)");
  return kModelPrefix + (hf_prefix.empty() ? module : hf_prefix + "." + module) + suffix;
}

void save_peft_adapter(const AdapterModelImpl& model, const std::string& name, const fs::path& dir,
                       const std::string& base_model_name_or_path) {
  PeftFiles f = peft_files(model, name);
  f.config.update(common_fields(base_model_name_or_path));
  if (fs::exists(dir)) refuse_adapterhub_folder(dir);
  const std::string text = f.config.dump(2);
  write_folder_atomically(dir, {{kConfigFile, [&](const fs::path& p) { io::write_file_atomic(p, text); }},
                                {kSafetensorsFile, [&](const fs::path& p) {
                                   io::write_safetensors(p, f.tensors, io::Metadata{{"format", "pt"}});
                                 }}});
  std::error_code ignored;
  if (fs::remove(dir / kBinFile, ignored)) log::info(str(dir.string(), ": removed the outdated ", kBinFile));
}

}  // namespace adapters::formats
