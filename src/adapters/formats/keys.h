// Every key rename between on-disk formats and this library's module tree, in one place:
// base-model prefixes ("bert.", "roberta.", "distilbert.", none), adapter renames (load_as), and
// the duplicate names the reference writes for shared modules (aliases).
#pragma once

#include <string>
#include <utility>
#include <vector>

namespace adapters::formats {

// The containers under which adapter modules are registered in the module tree.
const std::vector<std::string>& adapter_containers();

// True when `key` belongs to the adapter `name` (".adapters.<name>." and friends).
bool key_belongs_to_adapter(const std::string& key, const std::string& name);

// True for the model-level parameters an adapter shares across layers (Compacter's
// "shared_parameters.<name>."), which the reference saves apart in shared_parameters.safetensors.
bool is_shared_parameter(const std::string& key);

// Whether `key` is a parameter of the fusion layers named `fusion` ("a,b"):
// "...adapter_fusion_layer.a,b.query.weight".
bool key_belongs_to_fusion(const std::string& key, const std::string& fusion);
bool is_fusion_key(const std::string& key);

// Heads live at the model's top level: "heads.<name>.<...>".
inline constexpr const char* kHeadsPrefix = "heads.";
bool key_belongs_to_head(const std::string& key, const std::string& head);
// Renames the head in a head key: heads.<from>.x -> heads.<to>.x (other keys unchanged).
std::string rename_head(const std::string& key, const std::string& from, const std::string& to);

// Renames the adapter `from` to `to` inside a key (the reference's load_as).
std::string rename_adapter(const std::string& key, const std::string& from, const std::string& to);

// A checkpoint key with its base-model prefix replaced by `prefix`: "bert.x" -> "roberta.x" when
// asked, and a bare "encoder.x" (saved from a base model) gets the prefix. Keys outside the base
// model (heads) are returned unchanged; `is_base` tells which.
std::string to_base_prefix(const std::string& key, const std::string& prefix, bool* is_base = nullptr);

// Applies alias renames {alias fragment -> canonical fragment} to a key.
std::string resolve_alias(const std::string& key, const std::vector<std::pair<std::string, std::string>>& aliases);

}  // namespace adapters::formats
