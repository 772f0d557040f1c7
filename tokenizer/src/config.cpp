// Typed access to tokenizer.json objects with errors that name the key at fault.
#include "adapters/core/error.h"
#include "components.h"

namespace adapters::tokenizer {

const json& require(const json& object, const char* key, const char* where) {
  if (!object.is_object()) throw Error(str("tokenizer.json: ", where, " must be an object, found ", object.type_name()));
  const auto it = object.find(key);
  if (it == object.end()) throw Error(str("tokenizer.json: ", where, " is missing the key \"", key, "\""));
  return *it;
}

std::string string_or(const json& object, const char* key, const std::string& fallback) {
  const auto it = object.find(key);
  if (it == object.end() || it->is_null()) return fallback;
  if (!it->is_string()) throw Error(str("tokenizer.json: \"", key, "\" must be a string, found ", it->dump()));
  return it->get<std::string>();
}

bool bool_or(const json& object, const char* key, bool fallback) {
  const auto it = object.find(key);
  if (it == object.end() || it->is_null()) return fallback;
  if (!it->is_boolean()) throw Error(str("tokenizer.json: \"", key, "\" must be true or false, found ", it->dump()));
  return it->get<bool>();
}

}  // namespace adapters::tokenizer
