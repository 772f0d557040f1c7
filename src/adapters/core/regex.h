// Regular expressions from input (config fields, command-line options), bounded: at most
// kMaxRegexLength characters, compiled to match in polynomial time where the C++ library can
// (libstdc++'s breadth-first executor), so that a pattern like (a*)*b cannot make a match take
// exponential time; header-only.
#pragma once

#include <regex>
#include <string>

#include "adapters/core/error.h"

namespace adapters {

inline constexpr std::size_t kMaxRegexLength = 512;

// Compiles `pattern` (ECMAScript); throws adapters::Error naming `what` (e.g. "--only") and an
// excerpt of the pattern when it is too long or not a regular expression this engine runs.
inline std::regex bounded_regex(const std::string& pattern, const std::string& what) {
  ADAPTERS_CHECK(pattern.size() <= kMaxRegexLength, what, ": a regular expression of ", pattern.size(), " characters (at most ",
                 kMaxRegexLength, "): '", pattern.substr(0, 60), "...'");
  auto flags = std::regex::ECMAScript;
#ifdef __GLIBCXX__
  flags |= std::regex_constants::__polynomial;
#endif
  try {
    return std::regex(pattern, flags);
  } catch (const std::regex_error& e) {
    throw Error(str(what, ": '", pattern.substr(0, 60), "' is not a regular expression this engine runs (", e.what(), ")"));
  }
}

// Whether `text` matches all of `pattern` (bounded_regex); a pattern the polynomial-time engine
// cannot run (a back-reference) is an error naming `what`.
inline bool bounded_regex_match(const std::string& text, const std::string& pattern, const std::string& what) {
  try {
    return std::regex_match(text, bounded_regex(pattern, what));
  } catch (const std::regex_error& e) {
    throw Error(str(what, ": cannot match '", pattern.substr(0, 60), "' (", e.what(), ")"));
  }
}

}  // namespace adapters
