// PCRE2-backed patterns; see regex.h.
#define PCRE2_CODE_UNIT_WIDTH 8
#include "regex.h"

#include <pcre2.h>

#include <algorithm>

#include "adapters/core/error.h"

namespace adapters::tokenizer {

namespace {

constexpr const char* kSpace = "\\t-\\r \\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}\\x{205F}\\x{3000}";
constexpr const char* kWord = "\\p{L}\\p{M}\\p{Nd}\\p{Nl}\\p{Pc}\\x{200C}\\x{200D}";

// JIT stack of a match run again after overflowing the default 32 KiB: a base plus this much per
// byte of text searched, at most kJitStackMax.
constexpr size_t kJitStackBase = size_t{1} << 20;
constexpr size_t kJitStackPerByte = 128;
constexpr size_t kJitStackMax = size_t{1} << 30;

std::string error_message(int code) {
  PCRE2_UCHAR message[256];
  pcre2_get_error_message(code, message, sizeof(message));
  return reinterpret_cast<const char*>(message);
}

// The pattern quoted for an error message, cut to its first 80 bytes (at a character boundary).
std::string excerpt(const std::string& pattern) {
  constexpr size_t kMax = 80;
  if (pattern.size() <= kMax) return "\"" + pattern + "\"";
  size_t cut = kMax;
  while (cut > 0 && (static_cast<unsigned char>(pattern[cut]) & 0xC0) == 0x80) --cut;
  return "\"" + pattern.substr(0, cut) + "\"... (" + std::to_string(pattern.size()) + " bytes)";
}

// Searches `text` from byte `start` into `data`; false when nothing more matches. A JIT match
// that overflows its stack (a repeated group keeps a frame per repetition, so a long text needs
// more) is run again with a larger one; any other failure is an error, never "no more matches",
// which would silently change the tokens.
bool search(const pcre2_code* code, const std::string& pattern, const std::string& text, size_t start, pcre2_match_data* data) {
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  int rc = pcre2_match(code, subject, text.size(), start, PCRE2_NO_UTF_CHECK, data, nullptr);
  if (rc == PCRE2_ERROR_JIT_STACKLIMIT) {
    const size_t max_stack = std::min(kJitStackMax, kJitStackBase + kJitStackPerByte * (text.size() - start));
    std::unique_ptr<pcre2_jit_stack, decltype(&pcre2_jit_stack_free)> stack(pcre2_jit_stack_create(32 * 1024, max_stack, nullptr),
                                                                             &pcre2_jit_stack_free);
    std::unique_ptr<pcre2_match_context, decltype(&pcre2_match_context_free)> context(pcre2_match_context_create(nullptr),
                                                                                     &pcre2_match_context_free);
    if (!stack || !context) throw Error(str("regular expression ", excerpt(pattern), ": cannot allocate a JIT stack of ", max_stack, " bytes"));
    pcre2_jit_stack_assign(context.get(), nullptr, stack.get());
    rc = pcre2_match(code, subject, text.size(), start, PCRE2_NO_UTF_CHECK, data, context.get());
  }
  if (rc == PCRE2_ERROR_NOMATCH) return false;
  if (rc < 0) {
    throw Error(str("regular expression ", excerpt(pattern), " failed on a text of ", text.size(), " bytes, searching from byte ", start,
                    ": ", error_message(rc)));
  }
  return true;  // rc == 0 is a match whose groups did not all fit in `data`
}

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
  std::string pattern;  // as written, for error messages
  ~Compiled() { pcre2_code_free(code); }
};

Regex::Regex(const std::string& pattern) {
  const std::string translated = translate_pattern(pattern);
  int error = 0;
  PCRE2_SIZE error_offset = 0;
  pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(translated.data()), translated.size(),
                                   PCRE2_UTF | PCRE2_UCP, &error, &error_offset, nullptr);
  if (code == nullptr) {
    throw Error(str("invalid regular expression \"", pattern, "\" at offset ", error_offset, ": ", error_message(error)));
  }
  pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);
  auto compiled = std::make_shared<Compiled>();
  compiled->code = code;
  compiled->pattern = pattern;
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
  size_t previous = 0, start = 0;
  while (start <= text.size()) {
    if (!search(compiled_->code, compiled_->pattern, text, start, data.get())) break;
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
