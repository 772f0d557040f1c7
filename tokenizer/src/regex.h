// Regex: a PCRE2 (UTF, Unicode properties, JIT) pattern with the matching rules HF tokenizers
// uses for its Oniguruma patterns: \s, \S, \w and \W are rewritten to the Unicode classes
// Oniguruma gives them, and the whole text is searched for non-overlapping matches.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "normalized_string.h"

namespace adapters::tokenizer {

class Regex {
 public:
  // Compiles `pattern`; throws adapters::Error naming the pattern and PCRE2's message.
  explicit Regex(const std::string& pattern);
  // Literal text, escaped.
  static Regex literal(const std::string& text);

  // The text cut into matched and unmatched pieces covering all of it (HF's find_matches). A
  // match PCRE2 cannot finish (match or depth limit, too deep for the JIT stack) throws
  // adapters::Error naming the pattern and PCRE2's message.
  std::vector<Match> find_matches(const std::string& text) const;

 private:
  struct Compiled;
  std::shared_ptr<const Compiled> compiled_;
};

// Rewrites Oniguruma-style class escapes into explicit Unicode classes for PCRE2.
std::string translate_pattern(const std::string& pattern);

}  // namespace adapters::tokenizer
