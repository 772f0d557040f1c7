// Parsing the JSON documents we read (configs, states, setups, data records, server replies) with
// one bound on their nesting; header-only, so the libraries without torch (data, hub) use it too.
#pragma once

#include <nlohmann/json.hpp>

#include <optional>
#include <string>

#include "adapters/core/error.h"

namespace adapters {

// Deepest nesting of objects and arrays a JSON document we read may have. Deeper documents (no
// config, state or setup needs more than a few levels) are refused while parsing, before anything
// that walks them recursively (copies, dumps, comparisons) could overflow the stack.
inline constexpr int kMaxJsonDepth = 128;

namespace detail {

struct JsonTooDeep {};

// Parses, stopping at the first object or array nested past kMaxJsonDepth.
inline nlohmann::json parse_bounded_json(const std::string& text) {
  const nlohmann::json::parser_callback_t bounded = [](int depth, nlohmann::json::parse_event_t event, nlohmann::json&) {
    const bool opens = event == nlohmann::json::parse_event_t::object_start || event == nlohmann::json::parse_event_t::array_start;
    if (opens && depth >= kMaxJsonDepth) throw JsonTooDeep{};
    return true;
  };
  return nlohmann::json::parse(text, bounded);
}

}  // namespace detail

// Parses a JSON document read from `source` (a file, "file:line"); throws adapters::Error naming
// the source on invalid JSON (quoting a bounded excerpt of the parser's message) or on nesting
// past kMaxJsonDepth.
inline nlohmann::json parse_json_file_text(const std::string& text, const std::string& source) {
  try {
    return detail::parse_bounded_json(text);
  } catch (const nlohmann::json::parse_error& e) {
    throw Error(str(source, ": invalid JSON: ", std::string(e.what()).substr(0, 300)));
  } catch (const detail::JsonTooDeep&) {
    throw Error(str(source, ": JSON nested deeper than ", kMaxJsonDepth, " levels of objects and arrays"),
                "no config needs that: the file is damaged or not what it claims to be");
  }
}

// The same without throwing: nullopt for invalid or too deeply nested text (a server's error
// body, a data record), with what was wrong in `error` when given.
inline std::optional<nlohmann::json> try_parse_json(const std::string& text, std::string* error = nullptr) {
  try {
    return detail::parse_bounded_json(text);
  } catch (const nlohmann::json::parse_error& e) {
    if (error != nullptr) *error = std::string(e.what()).substr(0, 300);
  } catch (const detail::JsonTooDeep&) {
    if (error != nullptr) *error = str("nested deeper than ", kMaxJsonDepth, " levels of objects and arrays");
  }
  return std::nullopt;
}

}  // namespace adapters
