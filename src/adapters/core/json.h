// Typed access to JSON configs with errors that name the source, the key, the expected type and
// the value found: the one place where config values are read and checked.
#pragma once

#include <nlohmann/json.hpp>

#include <optional>
#include <set>
#include <string>
#include <vector>

#include "adapters/core/error.h"
#include "adapters/core/json_parse.h"

namespace adapters {

using json = nlohmann::json;

// A JSON object being read, with the name of where it came from ("config.json", "adapter 'a'").
class JsonReader {
 public:
  JsonReader(const json& object, std::string source);

  bool has(const std::string& key) const;
  const json& raw(const std::string& key) const;

  bool get_bool(const std::string& key) const;
  std::int64_t get_int(const std::string& key) const;
  double get_double(const std::string& key) const;
  std::string get_string(const std::string& key) const;
  std::vector<std::int64_t> get_int_list(const std::string& key) const;
  std::vector<std::string> get_string_list(const std::string& key) const;

  // Optional keys: the fallback when the key is missing or null.
  bool get_bool(const std::string& key, bool fallback) const;
  std::int64_t get_int(const std::string& key, std::int64_t fallback) const;
  double get_double(const std::string& key, double fallback) const;
  std::string get_string(const std::string& key, const std::string& fallback) const;

  // Throws naming every key of the object that is not in `known`.
  void reject_unknown(const std::set<std::string>& known) const;

  const std::string& source() const { return source_; }
  [[noreturn]] void fail(const std::string& key, const std::string& expected) const;

 private:
  const json& object_;
  std::string source_;
};

// Short human text for a JSON value in error messages: `"gelu"`, `3`, `[1, 2]`, `null`.
std::string describe(const json& value);

// parse_json_file_text, try_parse_json: core/json_parse.h (header-only, for the libraries
// without torch too).

}  // namespace adapters
