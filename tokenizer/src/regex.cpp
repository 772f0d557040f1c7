// PCRE2-backed patterns; see regex.h.
#define PCRE2_CODE_UNIT_WIDTH 8
#include "regex.h"

#include <pcre2.h>

#include "adapters/core/error.h"

namespace adapters::tokenizer {

namespace {

constexpr const char* kSpace = "\\t-\\r \\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}\\x{205F}\\x{3000}";
constexpr const char* kWord = "\\p{L}\\p{M}\\p{Nd}\\p{Nl}\\p{Pc}\\x{200C}\\x{200D}";

std::string class_for(char escape, bool inside_class) {
  const bool space = escape == 's' || escape == 'S';
  const bool negated = escape == 'S' || escape == 'W';
  const std::string body = space ? kSpace : kWord;
  if (inside_class && !negated) return body;
  return std::string(negated ? "[^" : "[") + body + "]";
}

}  // namespace

std::string translate_pattern(const std::string& pattern) {
  std::string out;
  bool in_class = false;
  for (size_t i = 0; i < pattern.size(); ++i) {
    const char c = pattern[i];
    if (c == '\\' && i + 1 < pattern.size()) {
      const char e = pattern[i + 1];
      const bool rewritable = e == 's' || e == 'w' || ((e == 'S' || e == 'W') && !in_class);
      out += rewritable ? class_for(e, in_class) : pattern.substr(i, 2);
      ++i;
      continue;
    }
    if (c == '[' && !in_class) {
      in_class = true;
      out += c;
      if (i + 1 < pattern.size() && pattern[i + 1] == '^') out += pattern[++i];
      if (i + 1 < pattern.size() && pattern[i + 1] == ']') out += pattern[++i];
      continue;
    }
    if (c == ']' && in_class) in_class = false;
    out += c;
  }
  return out;
}

struct Regex::Compiled {
  pcre2_code* code = nullptr;
  ~Compiled() { pcre2_code_free(code); }
};

Regex::Regex(const std::string& pattern) {
  const std::string translated = translate_pattern(pattern);
  int error = 0;
  PCRE2_SIZE error_offset = 0;
  pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(translated.data()), translated.size(),
                                   PCRE2_UTF | PCRE2_UCP, &error, &error_offset, nullptr);
  if (code == nullptr) {
    PCRE2_UCHAR message[256];
    pcre2_get_error_message(error, message, sizeof(message));
    throw Error(str("invalid regular expression \"", pattern, "\" at offset ", error_offset, ": ",
                    reinterpret_cast<const char*>(message)));
  }
  pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);
  auto compiled = std::make_shared<Compiled>();
  compiled->code = code;
  compiled_ = std::move(compiled);
}

Regex Regex::literal(const std::string& text) {
  std::string quoted = "\\Q";
  for (size_t i = 0; i < text.size(); ++i) {
    quoted += text[i];
    if (text[i] == '\\' && i + 1 < text.size() && text[i + 1] == 'E') quoted += "E\\\\\\Q";
  }
  return Regex(quoted + "\\E");
}

std::vector<Match> Regex::find_matches(const std::string& text) const {
  if (text.empty()) return {{{0, 0}, false}};
  thread_local std::unique_ptr<pcre2_match_data, decltype(&pcre2_match_data_free)> data(
      pcre2_match_data_create(4, nullptr), &pcre2_match_data_free);
  std::vector<Match> matches;
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  size_t previous = 0, start = 0;
  while (start <= text.size()) {
    const int rc = pcre2_match(compiled_->code, subject, text.size(), start, PCRE2_NO_UTF_CHECK, data.get(), nullptr);
    if (rc < 0) break;
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(data.get());
    const size_t begin = ov[0], end = ov[1];
    if (begin == end) {  // empty matches split nothing: step over one character
      if (begin >= text.size()) break;
      start = begin + unicode::sequence_length(static_cast<unsigned char>(text[begin]));
      continue;
    }
    if (previous != begin) matches.push_back({{previous, begin}, false});
    matches.push_back({{begin, end}, true});
    previous = start = end;
  }
  if (previous != text.size()) matches.push_back({{previous, text.size()}, false});
  return matches;
}

}  // namespace adapters::tokenizer
