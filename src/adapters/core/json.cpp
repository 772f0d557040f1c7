// Implementation of JsonReader: type checks with messages naming source, key, expectation and value.
#include "adapters/core/json.h"

#include <cmath>

namespace adapters {

std::string describe(const json& value) {
  std::string text = value.dump();
  if (text.size() > 80) text = text.substr(0, 77) + "...";
  return text;
}

JsonReader::JsonReader(const json& object, std::string source) : object_(object), source_(std::move(source)) {
  ADAPTERS_CHECK(object_.is_object(), source_, ": expected a JSON object, found ", describe(object_));
}

bool JsonReader::has(const std::string& key) const {
  auto it = object_.find(key);
  return it != object_.end() && !it->is_null();
}

const json& JsonReader::raw(const std::string& key) const {
  auto it = object_.find(key);
  if (it == object_.end()) throw Error(str(source_, ": missing key '", key, "'"));
  return *it;
}

void JsonReader::fail(const std::string& key, const std::string& expected) const {
  auto it = object_.find(key);
  std::string found = it == object_.end() ? std::string("nothing") : describe(*it);
  throw Error(str(source_, ": key '", key, "' expects ", expected, ", found ", found));
}

bool JsonReader::get_bool(const std::string& key) const {
  const json& v = raw(key);
  if (!v.is_boolean()) fail(key, "a boolean");
  return v.get<bool>();
}

std::int64_t JsonReader::get_int(const std::string& key) const {
  const json& v = raw(key);
  if (v.is_number_integer()) return v.get<std::int64_t>();
  if (v.is_number_float()) {
    double d = v.get<double>();
    if (std::floor(d) == d && std::abs(d) < 9e15) return static_cast<std::int64_t>(d);
  }
  fail(key, "an integer");
}

double JsonReader::get_double(const std::string& key) const {
  const json& v = raw(key);
  if (!v.is_number()) fail(key, "a number");
  return v.get<double>();
}

std::string JsonReader::get_string(const std::string& key) const {
  const json& v = raw(key);
  if (!v.is_string()) fail(key, "a string");
  return v.get<std::string>();
}

std::vector<std::int64_t> JsonReader::get_int_list(const std::string& key) const {
  const json& v = raw(key);
  if (!v.is_array()) fail(key, "a list of integers");
  std::vector<std::int64_t> out;
  for (const auto& item : v) {
    if (!item.is_number_integer()) fail(key, "a list of integers");
    out.push_back(item.get<std::int64_t>());
  }
  return out;
}

std::vector<std::string> JsonReader::get_string_list(const std::string& key) const {
  const json& v = raw(key);
  if (!v.is_array()) fail(key, "a list of strings");
  std::vector<std::string> out;
  for (const auto& item : v) {
    if (!item.is_string()) fail(key, "a list of strings");
    out.push_back(item.get<std::string>());
  }
  return out;
}

bool JsonReader::get_bool(const std::string& key, bool fallback) const {
  return has(key) ? get_bool(key) : fallback;
}
std::int64_t JsonReader::get_int(const std::string& key, std::int64_t fallback) const {
  return has(key) ? get_int(key) : fallback;
}
double JsonReader::get_double(const std::string& key, double fallback) const {
  return has(key) ? get_double(key) : fallback;
}
std::string JsonReader::get_string(const std::string& key, const std::string& fallback) const {
  return has(key) ? get_string(key) : fallback;
}

void JsonReader::reject_unknown(const std::set<std::string>& known) const {
  for (auto it = object_.begin(); it != object_.end(); ++it) {
    if (known.count(it.key()) == 0) {
      std::string names;
      for (const auto& k : known) names += (names.empty() ? "" : ", ") + k;
      throw Error(str(source_, ": unknown key '", it.key(), "'"), "known keys: " + names);
    }
  }
}

}  // namespace adapters
