// Reading PEFT adapter folders: adapter_config.json -> this library's adapter config, PEFT's tensor
// keys -> this model's keys, the weights checked key for key and shape for shape.
#include "adapters/formats/peft.h"

#include <torch/torch.h>

#include "adapters/core/error.h"
#include "adapters/io/tensors.h"
#include "adapters/models/registry.h"

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

}  // namespace adapters::formats
