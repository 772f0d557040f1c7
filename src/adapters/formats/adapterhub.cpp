// The AdapterHub folder format: adapter_config.json as the reference writes it, weights in
// adapter.safetensors (written; read first) or pytorch_adapter.bin (read). Saving is atomic:
// a failed save leaves no half-written folder and no half-written file behind.
#include <torch/torch.h>

#include <atomic>
#include <unistd.h>

#include "adapters/core/log.h"
#include "adapters/formats/keys.h"
#include "adapters/methods/registry.h"
#include "adapters/model.h"

namespace adapters {

namespace {

constexpr const char* kConfigFile = "adapter_config.json";
constexpr const char* kSafetensorsFile = "adapter.safetensors";
constexpr const char* kBinFile = "pytorch_adapter.bin";
constexpr const char* kSharedFile = "shared_parameters.safetensors";  // Compacter's shared parameters
constexpr const char* kFormatVersion = "3.2.1";  // the reference version whose format we write

std::string unique_suffix() {
  static std::atomic<int> counter{0};
  return str(".tmp-", ::getpid(), "-", counter++);
}

// Writes `files` (name -> writer) into `dir` so that either all of them land or none does.
void write_folder_atomic(const fs::path& dir, const std::vector<std::pair<std::string, std::function<void(const fs::path&)>>>& files) {
  if (!fs::exists(dir)) {
    // Build the whole folder beside its final place, then rename it into place.
    const fs::path staging = dir.string() + unique_suffix();
    try {
      fs::create_directories(staging);
      for (const auto& [name, write] : files) write(staging / name);
      fs::rename(staging, dir);
    } catch (...) {
      io::remove_tree(staging);
      throw;
    }
    return;
  }
  // The folder exists: write every file under a temporary name first, then rename them all.
  ADAPTERS_CHECK(fs::is_directory(dir), dir.string(), ": exists and is not a folder");
  std::vector<std::pair<fs::path, fs::path>> staged;
  try {
    for (const auto& [name, write] : files) {
      fs::path tmp = dir / (name + unique_suffix());
      staged.emplace_back(tmp, dir / name);
      write(tmp);
    }
  } catch (...) {
    std::error_code ignored;
    for (const auto& [tmp, final_path] : staged) fs::remove(tmp, ignored);
    throw;
  }
  for (const auto& [tmp, final_path] : staged) fs::rename(tmp, final_path);
}

json read_json_file(const fs::path& path) {
  ADAPTERS_CHECK(fs::exists(path), path.string(), ": file not found");
  return parse_json_file_text(io::read_text_file(path), path.string());
}

fs::path choose_weights(const fs::path& dir, WeightsPreference preference) {
  const fs::path st = dir / kSafetensorsFile, bin = dir / kBinFile;
  const bool has_st = fs::exists(st), has_bin = fs::exists(bin);
  ADAPTERS_CHECK(has_st || has_bin, dir.string(), ": no adapter weights (expected ", kSafetensorsFile, " or ", kBinFile, ")");
  if (has_st && has_bin) return preference == WeightsPreference::Bin ? bin : st;
  return has_st ? st : bin;
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

void AdapterModelImpl::save_adapter(const fs::path& dir, const std::string& name) const {
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

  std::vector<std::pair<std::string, std::function<void(const fs::path&)>>> files = {
      {kConfigFile, [&](const fs::path& p) { io::write_file_atomic(p, file.dump(2)); }},
      {kSafetensorsFile, [&](const fs::path& p) { io::write_safetensors(p, tensors, metadata); }},
  };
  if (!shared.empty()) files.emplace_back(kSharedFile, [&](const fs::path& p) { io::write_safetensors(p, shared, io::Metadata{{"format", "pt"}}); });
  write_folder_atomic(dir, files);
  // A .bin from an earlier save would now disagree with the safetensors: remove it.
  std::error_code ignored;
  if (fs::remove(dir / kBinFile, ignored)) log::info(str(dir.string(), ": removed the outdated ", kBinFile));
  if (shared.empty() && fs::remove(dir / kSharedFile, ignored)) {
    log::info(str(dir.string(), ": removed the outdated ", kSharedFile));
  }
}

std::string AdapterModelImpl::load_adapter(const fs::path& dir, const std::string& load_as, WeightsPreference weights,
                                           bool set_active) {
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

  add_adapter(name, config);
  try {
    add_shared_parameters(*this, dir, saved_name, name, renamed);
    load_adapter_state_dict(name, renamed, weights_path.string());
  } catch (...) {
    delete_adapter(name);
    throw;
  }
  if (set_active) set_active_adapters(Block::adapter(name));
  return name;
}

}  // namespace adapters
