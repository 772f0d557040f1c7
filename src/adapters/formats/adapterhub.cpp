// The AdapterHub folder format: adapter_config.json as the reference writes it, weights in
// adapter.safetensors (written; read first) or pytorch_adapter.bin (read). Saving is atomic:
// a failed save leaves no half-written folder and no half-written file behind.
#include <torch/torch.h>

#include "adapters/core/log.h"
#include "adapters/formats/folder.h"
#include "adapters/formats/keys.h"
#include "adapters/formats/peft.h"
#include "adapters/methods/registry.h"
#include "adapters/model.h"

namespace adapters {

namespace {

constexpr const char* kConfigFile = "adapter_config.json";
constexpr const char* kSafetensorsFile = "adapter.safetensors";
constexpr const char* kBinFile = "pytorch_adapter.bin";
constexpr const char* kSharedFile = "shared_parameters.safetensors";  // Compacter's shared parameters
constexpr const char* kHeadConfigFile = "head_config.json";
constexpr const char* kHeadSafetensorsFile = "head.safetensors";
constexpr const char* kHeadBinFile = "pytorch_model_head.bin";
constexpr const char* kFusionConfigFile = "adapter_fusion_config.json";
constexpr const char* kFusionSafetensorsFile = "adapter_fusion.safetensors";
constexpr const char* kFusionBinFile = "pytorch_model_adapter_fusion.bin";
constexpr const char* kSetupFile = "adapter_setup.json";
constexpr const char* kFormatVersion = "3.2.1";  // the reference version whose format we write

json read_json_file(const fs::path& path) {
  ADAPTERS_CHECK(fs::exists(path), path.string(), ": file not found");
  return parse_json_file_text(io::read_text_file(path), path.string());
}

fs::path choose_weights(const fs::path& dir, WeightsPreference preference, const char* safetensors_file = kSafetensorsFile,
                        const char* bin_file = kBinFile, const char* what = "adapter") {
  const fs::path st = dir / safetensors_file, bin = dir / bin_file;
  const bool has_st = fs::exists(st), has_bin = fs::exists(bin);
  ADAPTERS_CHECK(has_st || has_bin, dir.string(), ": no ", what, " weights (expected ", safetensors_file, " or ", bin_file, ")");
  if (has_st && has_bin) return preference == WeightsPreference::Bin ? bin : st;
  return has_st ? st : bin;
}

using FileWriters = std::vector<formats::FolderFile>;

// The common part of the reference's *_config.json files.
json file_header(const AdapterModelImpl& model, const std::string& name, json config) {
  return {{"config", std::move(config)},         {"hidden_size", model.config().hidden_size},
          {"model_class", model.arch().model_class}, {"model_name", nullptr},
          {"model_type", model.config().model_type}, {"name", name},
          {"version", kFormatVersion}};
}

void check_hidden_size(const AdapterModelImpl& model, const JsonReader& reader, const fs::path& path, const char* what) {
  if (!reader.has("hidden_size")) return;
  const std::int64_t hidden = reader.get_int("hidden_size");
  ADAPTERS_CHECK(hidden == model.config().hidden_size, path.string(), ": the ", what, " was trained for hidden size ",
                 hidden, ", this model has ", model.config().hidden_size);
}

// The files of a head: head_config.json and head.safetensors (the .bin of an earlier save is removed).
FileWriters head_files(const AdapterModelImpl& model, const std::string& name, json& file, io::TensorMap& tensors) {
  file = file_header(model, name, model.head(name).config());
  for (const auto& [key, t] : model.head_state_dict(name)) tensors[key] = t.detach();
  return {{kHeadConfigFile, [&file](const fs::path& p) { io::write_file_atomic(p, file.dump(2)); }},
          {kHeadSafetensorsFile, [&tensors](const fs::path& p) { io::write_safetensors(p, tensors, io::Metadata{{"format", "pt"}}); }}};
}

void remove_outdated(const fs::path& dir, const char* file) {
  std::error_code ignored;
  if (fs::remove(dir / file, ignored)) log::info(str(dir.string(), ": removed the outdated ", file));
}

// Adds Compacter's shared parameters of adapter `name` (saved as `saved_name`) to `renamed`, read
// from shared_parameters.safetensors beside the adapter; without that file (the reference's
// save_adapter does not write it) they keep their initial values, with a warning.
void add_shared_parameters(const AdapterModelImpl& model, const fs::path& dir, const std::string& saved_name,
                           const std::string& name, io::TensorMap& renamed) {
  io::TensorMap current;
  for (const auto& [key, t] : model.adapter_state_dict(name)) {
    if (formats::is_shared_parameter(key)) current[key] = t;
  }
  if (current.empty()) return;
  const fs::path path = dir / kSharedFile;
  if (!fs::exists(path)) {
    log::warn(str(dir.string(), ": no ", kSharedFile, " beside the adapter: the ", current.size(), " shared parameters of '",
                  name, "' keep their random initialisation"));
    for (const auto& [key, t] : current) renamed[key] = t.detach().clone();
    return;
  }
  for (const auto& [key, t] : io::read_checkpoint(path)) {
    renamed[formats::rename_adapter(formats::to_base_prefix(key, model.arch().base_prefix), saved_name, name)] = t;
  }
}

// The method's alias renames {alias fragment -> stored fragment}, model-dependent ones included.
std::vector<std::pair<std::string, std::string>> key_aliases(const methods::AdapterConfig& config,
                                                             const models::BaseModelImpl& model) {
  const methods::MethodSpec& spec = methods::method_spec(config.method);
  auto aliases = spec.key_aliases(config.values);
  if (spec.model_key_aliases) {
    for (auto& pair : spec.model_key_aliases(config.values, model)) aliases.push_back(std::move(pair));
  }
  return aliases;
}

}  // namespace

void AdapterModelImpl::save_adapter(const fs::path& dir, const std::string& name, bool with_head) const {
  const methods::AdapterConfig& config = adapter_config(name);
  json file = {{"config", config.values},         {"hidden_size", this->config().hidden_size},
               {"model_class", arch().model_class}, {"model_name", nullptr},
               {"model_type", this->config().model_type}, {"name", name},
               {"version", kFormatVersion}};

  io::TensorMap tensors, shared;
  for (const auto& [key, t] : adapter_state_dict(name)) (formats::is_shared_parameter(key) ? shared : tensors)[key] = t.detach();
  // The reference stores modules registered under two names twice; list the second names as aliases.
  json aliases = json::object();
  for (const auto& [alias, canonical] : key_aliases(config, base())) {
    for (const auto& [key, t] : tensors) {
      const std::size_t at = key.find(canonical);
      if (at != std::string::npos) aliases[key.substr(0, at) + alias + key.substr(at + canonical.size())] = key;
    }
  }
  io::Metadata metadata = {{"format", "pt"}};
  if (!aliases.empty()) metadata["aliases"] = aliases.dump();

  FileWriters files = {
      {kConfigFile, [&](const fs::path& p) { io::write_file_atomic(p, file.dump(2)); }},
      {kSafetensorsFile, [&](const fs::path& p) { io::write_safetensors(p, tensors, metadata); }},
  };
  if (!shared.empty()) files.emplace_back(kSharedFile, [&](const fs::path& p) { io::write_safetensors(p, shared, io::Metadata{{"format", "pt"}}); });
  json head_file;
  io::TensorMap head_tensors;
  const bool head = with_head && has_head(name);
  if (head) {
    for (auto& f : head_files(*this, name, head_file, head_tensors)) files.push_back(std::move(f));
  }
  formats::write_folder_atomically(dir, files);
  if (head) remove_outdated(dir, kHeadBinFile);
  // A .bin from an earlier save would now disagree with the safetensors: remove it.
  std::error_code ignored;
  if (fs::remove(dir / kBinFile, ignored)) log::info(str(dir.string(), ": removed the outdated ", kBinFile));
  if (shared.empty() && fs::remove(dir / kSharedFile, ignored)) {
    log::info(str(dir.string(), ": removed the outdated ", kSharedFile));
  }
}

std::string AdapterModelImpl::load_adapter(const fs::path& dir, const std::string& load_as, WeightsPreference weights,
                                           bool set_active, bool with_head) {
  if (formats::is_peft_folder(dir)) {
    const std::string name = load_as.empty() ? "default" : load_as;  // PEFT's name for a lone adapter
    ADAPTERS_CHECK(!has_adapter(name), "load_adapter: an adapter named '", name, "' already exists (pass load_as)");
    formats::load_peft_adapter(*this, dir, name, weights);
    if (set_active) set_active_adapters(Block::adapter(name));
    return name;
  }
  const fs::path config_path = dir / kConfigFile;
  const json file = read_json_file(config_path);
  JsonReader reader(file, config_path.string());
  const std::string saved_name = reader.get_string("name");
  const std::string name = load_as.empty() ? saved_name : load_as;
  if (reader.has("hidden_size")) {
    const std::int64_t hidden = reader.get_int("hidden_size");
    ADAPTERS_CHECK(hidden == config().hidden_size, config_path.string(), ": the adapter was trained for hidden size ",
                   hidden, ", this model has ", config().hidden_size);
  }
  const std::string saved_type = reader.get_string("model_type", config().model_type);
  if (saved_type != config().model_type) {
    log::warn(str(config_path.string(), ": adapter saved from a ", saved_type, " model, loading into ", config().model_type));
  }
  const methods::AdapterConfig config = methods::AdapterConfig::from_json(reader.raw("config"), config_path.string() + ": config");
  ADAPTERS_CHECK(!has_adapter(name), "load_adapter: an adapter named '", name, "' already exists (pass load_as)");

  const fs::path weights_path = choose_weights(dir, weights);
  const io::TensorMap saved = io::read_checkpoint(weights_path);
  const auto aliases = key_aliases(config, base());
  io::TensorMap renamed;
  for (const auto& [key, tensor] : saved) {
    const std::string canonical = formats::resolve_alias(key, aliases);
    if (canonical != key && saved.count(canonical)) continue;  // a duplicate name of a stored tensor
    const std::string ours = formats::rename_adapter(formats::to_base_prefix(canonical, arch().base_prefix), saved_name, name);
    renamed[ours] = tensor;
  }

  const bool head = with_head && fs::exists(dir / kHeadConfigFile);
  ADAPTERS_CHECK(!head || !has_head(name), "load_adapter: ", dir.string(), " holds a head and a head named '", name,
                 "' already exists (delete it, pass load_as or with_head=false)");
  add_adapter(name, config);
  try {
    add_shared_parameters(*this, dir, saved_name, name, renamed);
    load_adapter_state_dict(name, renamed, weights_path.string());
    if (head) load_head(dir, name, weights);
  } catch (...) {
    delete_adapter(name);
    throw;
  }
  if (set_active) set_active_adapters(Block::adapter(name));
  return name;
}

std::map<std::string, std::string> AdapterModelImpl::reference_parameter_names() const {
  // A module registered under several paths (the prefix-tuning pool, shared by every layer) is
  // named by PyTorch after its first path in module order: the first alias (aliases come in the
  // order of the attention sites, which is module order).
  std::map<std::string, std::string> names;
  for (const auto& name : adapter_names()) {
    for (const auto& [alias, canonical] : key_aliases(adapter_config(name), base())) {
      for (const auto& [key, t] : adapter_state_dict(name)) {
        const std::size_t at = key.find(canonical);
        if (at == std::string::npos) continue;
        const std::string aliased = key.substr(0, at) + alias + key.substr(at + canonical.size());
        names.emplace(key, aliased);
      }
    }
  }
  return names;
}

// ---- heads ----------------------------------------------------------------------------------

void AdapterModelImpl::save_head(const fs::path& dir, const std::string& name) const {
  json file;
  io::TensorMap tensors;
  formats::write_folder_atomically(dir, head_files(*this, name, file, tensors));
  remove_outdated(dir, kHeadBinFile);
}

std::string AdapterModelImpl::load_head(const fs::path& dir, const std::string& load_as, WeightsPreference weights) {
  const fs::path config_path = dir / kHeadConfigFile;
  const json file = read_json_file(config_path);
  JsonReader reader(file, config_path.string());
  const std::string saved_name = reader.get_string("name");
  const std::string name = load_as.empty() ? saved_name : load_as;
  check_hidden_size(*this, reader, config_path, "head");
  ADAPTERS_CHECK(!has_head(name), "load_head: a head named '", name, "' already exists (pass load_as)");
  const json& config = reader.raw("config");
  ADAPTERS_CHECK(config.is_object() && config.contains("head_type"), config_path.string(),
                 ": 'config' must be an object with 'head_type', found ", describe(config));
  const fs::path weights_path = choose_weights(dir, weights, kHeadSafetensorsFile, kHeadBinFile, "head");
  io::TensorMap renamed;
  for (const auto& [key, t] : io::read_checkpoint(weights_path)) renamed[formats::rename_head(key, saved_name, name)] = t;

  add_head(name, config["head_type"].get<std::string>(), config, false, false);
  try {
    io::copy_checked(head_state_dict(name), renamed, weights_path.string(), "head '" + name + "'");
  } catch (...) {
    delete_head(name);
    throw;
  }
  set_active_head(Block::adapter(name));
  return name;
}

// ---- fusion ---------------------------------------------------------------------------------

void AdapterModelImpl::save_adapter_fusion(const fs::path& dir, const std::string& name) const {
  const json file = file_header(*this, name, adapter_fusion_config(name).to_json());
  io::TensorMap tensors;
  for (const auto& [key, t] : adapter_fusion_state_dict(name)) tensors[key] = t.detach();
  formats::write_folder_atomically(dir, {{kFusionConfigFile, [&](const fs::path& p) { io::write_file_atomic(p, file.dump(2)); }},
                            {kFusionSafetensorsFile, [&](const fs::path& p) {
                               io::write_safetensors(p, tensors, io::Metadata{{"format", "pt"}});
                             }}});
  remove_outdated(dir, kFusionBinFile);
}

std::string AdapterModelImpl::load_adapter_fusion(const fs::path& dir, WeightsPreference weights, bool set_active) {
  const fs::path config_path = dir / kFusionConfigFile;
  const json file = read_json_file(config_path);
  JsonReader reader(file, config_path.string());
  const std::string name = reader.get_string("name");
  check_hidden_size(*this, reader, config_path, "fusion");
  const Block fuse = composition::parse("Fuse(" + name + ")");
  const fs::path weights_path = choose_weights(dir, weights, kFusionSafetensorsFile, kFusionBinFile, "fusion");
  io::TensorMap renamed;
  for (const auto& [key, t] : io::read_checkpoint(weights_path)) renamed[formats::to_base_prefix(key, arch().base_prefix)] = t;
  add_adapter_fusion(fuse, reader.raw("config"));
  try {
    io::copy_checked(adapter_fusion_state_dict(name), renamed, weights_path.string(),
                     "fusion '" + name + "' (do the fused adapters exist with the same placement?)");
  } catch (...) {
    delete_adapter_fusion(name);
    throw;
  }
  if (set_active) set_active_adapters(fuse);
  return name;
}

// ---- whole setups ---------------------------------------------------------------------------

void AdapterModelImpl::save_adapter_setup(const fs::path& dir, const Block& setup,
                                          const std::optional<Block>& head_setup) const {
  check_setup(setup);
  formats::make_real_folder(dir);
  for (const auto& name : setup.flatten()) save_adapter(dir / name, name, /*with_head=*/false);
  std::function<void(const Block&)> save_fusions = [&](const Block& b) {
    if (b.type == composition::BlockType::Fuse) save_adapter_fusion(dir / b.fusion_name(), b.fusion_name());
    for (const auto& c : b.children) save_fusions(c);
  };
  save_fusions(setup);
  json heads_json = nullptr;
  if (head_setup) {
    for (const auto& name : head_setup->flatten()) save_head(dir / name, name);
    heads_json = json::parse(composition::to_json(*head_setup));
  }
  const json file = {{"adapter_setup", json::parse(composition::to_json(setup))}, {"head_setup", heads_json}};
  io::write_file_atomic(dir / kSetupFile, file.dump(2));
}

Block AdapterModelImpl::load_adapter_setup(const fs::path& dir, WeightsPreference weights) {
  const fs::path path = dir / kSetupFile;
  const json file = read_json_file(path);
  ADAPTERS_CHECK(file.is_object() && file.contains("adapter_setup"), path.string(), ": expected an object with 'adapter_setup'");
  const Block setup = composition::from_json(file["adapter_setup"].dump(), path.string() + ": adapter_setup");
  std::optional<Block> head_setup;
  if (file.contains("head_setup") && !file["head_setup"].is_null()) {
    head_setup = composition::from_json(file["head_setup"].dump(), path.string() + ": head_setup");
  }
  for (const auto& name : setup.flatten()) {
    if (!has_adapter(name)) load_adapter(dir / name, name, weights, false, /*with_head=*/false);
  }
  std::function<void(const Block&)> load_fusions = [&](const Block& b) {
    if (b.type == composition::BlockType::Fuse && !has_adapter_fusion(b.fusion_name())) {
      load_adapter_fusion(dir / b.fusion_name(), weights);
    }
    for (const auto& c : b.children) load_fusions(c);
  };
  load_fusions(setup);
  if (head_setup) {
    for (const auto& name : head_setup->flatten()) {
      if (!has_head(name)) load_head(dir / name, name, weights);
    }
  }
  set_active_adapters(setup);
  if (head_setup) set_active_head(*head_setup);
  return setup;
}

}  // namespace adapters
