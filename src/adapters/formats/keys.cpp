// Key renames, all of them.
#include "adapters/formats/keys.h"

#include "adapters/models/registry.h"

#include <algorithm>

namespace adapters::formats {

const std::vector<std::string>& adapter_containers() {
  static const std::vector<std::string> containers = {
      "adapters", "loras", "adapter_fusion_layer", "invertible_adapters", "shared_parameters", "refts",
      "prefix_tunings", "prefix_gates", "prompt_tunings"};
  return containers;
}

bool key_belongs_to_adapter(const std::string& key, const std::string& name) {
  const std::string dotted = "." + key;
  for (const auto& c : adapter_containers()) {
    if (dotted.find("." + c + "." + name + ".") != std::string::npos) return true;
  }
  return false;
}

bool is_shared_parameter(const std::string& key) {
  return ("." + key).find(".shared_parameters.") != std::string::npos;
}

bool key_belongs_to_fusion(const std::string& key, const std::string& fusion) {
  return ("." + key).find(".adapter_fusion_layer." + fusion + ".") != std::string::npos;
}

bool is_fusion_key(const std::string& key) { return ("." + key).find(".adapter_fusion_layer.") != std::string::npos; }

bool key_belongs_to_head(const std::string& key, const std::string& head) {
  return key.rfind(std::string(kHeadsPrefix) + head + ".", 0) == 0;
}

std::string rename_head(const std::string& key, const std::string& from, const std::string& to) {
  const std::string old_prefix = std::string(kHeadsPrefix) + from + ".";
  if (key.rfind(old_prefix, 0) != 0) return key;
  return std::string(kHeadsPrefix) + to + "." + key.substr(old_prefix.size());
}

std::string rename_adapter(const std::string& key, const std::string& from, const std::string& to) {
  std::string out = "." + key;
  for (const auto& c : adapter_containers()) {
    const std::string old_part = "." + c + "." + from + ".";
    const std::string new_part = "." + c + "." + to + ".";
    for (std::size_t at = out.find(old_part); at != std::string::npos; at = out.find(old_part, at + new_part.size())) {
      out.replace(at, old_part.size(), new_part);
    }
  }
  return out.substr(1);
}

std::string to_base_prefix(const std::string& key, const std::string& prefix, bool* is_base) {
  // Top-level modules of the base models (what follows the prefix), from the architecture table,
  // and the model-level adapter hooks.
  static const std::vector<std::string> base_roots = [] {
    std::vector<std::string> roots = {"prefix_tuning.", "prompt_tuning.", "invertible_adapters."};
    for (const auto& spec : models::architectures()) {
      for (const auto& root : spec.base_roots) {
        if (std::find(roots.begin(), roots.end(), root + ".") == roots.end()) roots.push_back(root + ".");
      }
    }
    return roots;
  }();
  for (const auto& known : models::known_base_prefixes()) {
    if (key.rfind(known + ".", 0) == 0) {
      if (is_base) *is_base = true;
      return prefix + key.substr(known.size());
    }
  }
  for (const auto& root : base_roots) {
    if (key.rfind(root, 0) == 0) {
      if (is_base) *is_base = true;
      return prefix + "." + key;
    }
  }
  if (is_base) *is_base = false;
  return key;
}

std::string resolve_alias(const std::string& key, const std::vector<std::pair<std::string, std::string>>& aliases) {
  for (const auto& [alias, canonical] : aliases) {
    std::size_t at = key.find(alias);
    if (at != std::string::npos) return key.substr(0, at) + canonical + key.substr(at + alias.size());
  }
  return key;
}

}  // namespace adapters::formats
