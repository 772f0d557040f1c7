// Unicode helpers on top of utf8proc; see unicode.h.
#include "unicode.h"

#include <utf8proc.h>

#include <algorithm>
#include <optional>

namespace adapters::tokenizer::unicode {

size_t sequence_length(unsigned char lead) {
  if (lead < 0x80) return 1;
  if (lead < 0xE0) return 2;
  if (lead < 0xF0) return 3;
  return 4;
}

char32_t next(std::string_view s, size_t& i) {
  const auto b0 = static_cast<unsigned char>(s[i]);
  if (b0 < 0x80) {
    ++i;
    return b0;
  }
  const size_t len = sequence_length(b0);
  char32_t c = b0 & (0xFF >> (len + 1));
  for (size_t k = 1; k < len; ++k) c = (c << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3F);
  i += len;
  return c;
}

size_t encoded_length(char32_t c) {
  if (c < 0x80) return 1;
  if (c < 0x800) return 2;
  if (c < 0x10000) return 3;
  return 4;
}

void append(std::string& out, char32_t c) {
  if (c < 0x80) {
    out.push_back(static_cast<char>(c));
  } else if (c < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (c >> 6)));
    out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
  } else if (c < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (c >> 12)));
    out.push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (c >> 18)));
    out.push_back(static_cast<char>(0x80 | ((c >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
  }
}

size_t count_chars(std::string_view s) {
  size_t n = 0;
  for (unsigned char b : s) n += (b & 0xC0) != 0x80;
  return n;
}

size_t grapheme_end(std::string_view s, size_t start) {
  utf8proc_int32_t state = 0;
  size_t i = start;
  char32_t previous = next(s, i);
  while (i < s.size()) {
    size_t after = i;
    const char32_t c = next(s, after);
    if (utf8proc_grapheme_break_stateful(static_cast<utf8proc_int32_t>(previous), static_cast<utf8proc_int32_t>(c), &state)) break;
    previous = c;
    i = after;
  }
  return i;
}

namespace {

// Number of bytes of a valid sequence at s[i], or 0 with `bad` set to the length of the maximal
// invalid prefix to replace (the Unicode "maximal subpart" rule, as Rust applies it).
size_t valid_sequence(std::string_view s, size_t i, size_t& bad) {
  const auto b0 = static_cast<unsigned char>(s[i]);
  if (b0 < 0x80) return 1;
  size_t len = 0;
  unsigned char lo = 0x80, hi = 0xBF;
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    len = 2;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    len = 3;
    if (b0 == 0xE0) lo = 0xA0;
    if (b0 == 0xED) hi = 0x9F;
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    len = 4;
    if (b0 == 0xF0) lo = 0x90;
    if (b0 == 0xF4) hi = 0x8F;
  } else {
    bad = 1;
    return 0;
  }
  for (size_t k = 1; k < len; ++k) {
    if (i + k >= s.size()) {
      bad = k;
      return 0;
    }
    const auto b = static_cast<unsigned char>(s[i + k]);
    const unsigned char low = k == 1 ? lo : 0x80, high = k == 1 ? hi : 0xBF;
    if (b < low || b > high) {
      bad = k;
      return 0;
    }
  }
  return len;
}

}  // namespace

bool is_valid(std::string_view s) {
  for (size_t i = 0; i < s.size();) {
    size_t bad = 0;
    const size_t len = valid_sequence(s, i, bad);
    if (len == 0) return false;
    i += len;
  }
  return true;
}

std::string repair(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    size_t bad = 0;
    const size_t len = valid_sequence(s, i, bad);
    if (len > 0) {
      out.append(s.substr(i, len));
      i += len;
    } else {
      append(out, 0xFFFD);
      i += bad;
    }
  }
  return out;
}

namespace {
utf8proc_category_t category(char32_t c) {
  return utf8proc_category(static_cast<utf8proc_int32_t>(c));
}
}  // namespace

bool is_whitespace(char32_t c) {
  if (c < 0x80) return c == ' ' || (c >= 0x09 && c <= 0x0D);
  switch (c) {
    case 0x85: case 0xA0: case 0x1680: case 0x2028: case 0x2029: case 0x202F: case 0x205F:
    case 0x3000:
      return true;
    default:
      return c >= 0x2000 && c <= 0x200A;
  }
}

bool is_punctuation(char32_t c) {
  if (c < 0x80) return (c >= 0x21 && c <= 0x2F) || (c >= 0x3A && c <= 0x40) || (c >= 0x5B && c <= 0x60) || (c >= 0x7B && c <= 0x7E);
  const auto cat = category(c);
  return cat >= UTF8PROC_CATEGORY_PC && cat <= UTF8PROC_CATEGORY_PO;
}

bool is_numeric(char32_t c) {
  if (c < 0x80) return c >= '0' && c <= '9';
  const auto cat = category(c);
  return cat >= UTF8PROC_CATEGORY_ND && cat <= UTF8PROC_CATEGORY_NO;
}

bool is_control_or_other(char32_t c) {
  const auto cat = category(c);
  return cat == UTF8PROC_CATEGORY_CN || cat >= UTF8PROC_CATEGORY_CC;
}

bool is_nonspacing_mark(char32_t c) { return c >= 0x300 && category(c) == UTF8PROC_CATEGORY_MN; }

bool is_mark(char32_t c) {
  if (c < 0x300) return false;
  const auto cat = category(c);
  return cat >= UTF8PROC_CATEGORY_MN && cat <= UTF8PROC_CATEGORY_ME;
}

bool is_word(char32_t c) {
  if (c < 0x80) return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
  if (c == 0x200C || c == 0x200D) return true;
  const auto cat = category(c);
  return (cat >= UTF8PROC_CATEGORY_LU && cat <= UTF8PROC_CATEGORY_ME) || cat == UTF8PROC_CATEGORY_ND ||
         cat == UTF8PROC_CATEGORY_NL || cat == UTF8PROC_CATEGORY_PC;
}

bool is_chinese(char32_t c) {
  return (c >= 0x4E00 && c <= 0x9FFF) || (c >= 0x3400 && c <= 0x4DBF) || (c >= 0x20000 && c <= 0x2A6DF) ||
         (c >= 0x2A700 && c <= 0x2B73F) || (c >= 0x2B740 && c <= 0x2B81F) || (c >= 0x2B920 && c <= 0x2CEAF) ||
         (c >= 0xF900 && c <= 0xFAFF) || (c >= 0x2F800 && c <= 0x2FA1F);
}

void to_lower(char32_t c, std::vector<char32_t>& out) {
  if (c < 0x80) {
    out.push_back(c >= 'A' && c <= 'Z' ? c + 32 : c);
  } else if (c == 0x130) {  // the one unconditional multi-character lowercase mapping
    out.push_back('i');
    out.push_back(0x307);
  } else {
    out.push_back(static_cast<char32_t>(utf8proc_tolower(static_cast<utf8proc_int32_t>(c))));
  }
}

bool starts_cluster(char32_t c, bool compatibility) {
  if (c < 0x300) return true;
  utf8proc_int32_t decomposed[32];
  int boundclass = 0;
  const int options = UTF8PROC_DECOMPOSE | (compatibility ? UTF8PROC_COMPAT : 0);
  const utf8proc_ssize_t n = utf8proc_decompose_char(static_cast<utf8proc_int32_t>(c), decomposed, 32,
                                                     static_cast<utf8proc_option_t>(options), &boundclass);
  const utf8proc_int32_t first = n > 0 ? decomposed[0] : static_cast<utf8proc_int32_t>(c);
  if (first >= 0x1160 && first <= 0x11FF) return false;  // Hangul vowel and trailing jamo compose backwards
  return utf8proc_get_property(first)->combining_class == 0;
}

namespace {

int combining_class(char32_t c) { return utf8proc_get_property(static_cast<utf8proc_int32_t>(c))->combining_class; }

std::optional<char32_t> compose_pair(char32_t a, char32_t b) {
  utf8proc_int32_t pair[2] = {static_cast<utf8proc_int32_t>(a), static_cast<utf8proc_int32_t>(b)};
  const utf8proc_ssize_t n = utf8proc_normalize_utf32(pair, 2, static_cast<utf8proc_option_t>(UTF8PROC_COMPOSE | UTF8PROC_STABLE));
  return n == 1 ? std::optional<char32_t>(static_cast<char32_t>(pair[0])) : std::nullopt;
}

// Number of original characters a normalised character stands for.
int consumed(int change) { return change > 0 ? 0 : 1 - change; }

}  // namespace

std::vector<Normalized> normalize_cluster(const std::vector<char32_t>& cluster, Form form) {
  const bool compat = form == Form::NFKC || form == Form::NFKD;
  const bool compose = form == Form::NFC || form == Form::NFKC;
  std::vector<Normalized> items;
  for (char32_t c : cluster) {
    utf8proc_int32_t decomposed[64];
    int boundclass = 0;
    const int options = UTF8PROC_DECOMPOSE | (compat ? UTF8PROC_COMPAT : 0);
    const utf8proc_ssize_t n = utf8proc_decompose_char(static_cast<utf8proc_int32_t>(c), decomposed, 64,
                                                       static_cast<utf8proc_option_t>(options), &boundclass);
    for (utf8proc_ssize_t k = 0; k < n; ++k) items.push_back({static_cast<char32_t>(decomposed[k]), k == 0 ? 0 : 1});
  }
  // Canonical ordering: stable sort of each run of non-starters by combining class.
  for (size_t i = 0; i < items.size();) {
    size_t j = i;
    while (j < items.size() && combining_class(items[j].c) != 0) ++j;
    std::stable_sort(items.begin() + static_cast<std::ptrdiff_t>(i), items.begin() + static_cast<std::ptrdiff_t>(j),
                     [](const Normalized& a, const Normalized& b) { return combining_class(a.c) < combining_class(b.c); });
    i = j == i ? i + 1 : j;
  }
  if (!compose || items.empty()) return items;
  std::vector<Normalized> out;
  long starter = -1;
  int last_class = -1;  // combining class of the last character kept after the starter
  for (const Normalized& item : items) {
    const int cc = combining_class(item.c);
    if (starter >= 0 && (last_class < cc || (last_class == -1 && cc == 0)) && (last_class != 0)) {
      Normalized& s = out[static_cast<size_t>(starter)];
      if (const auto composed = compose_pair(s.c, item.c)) {
        const int total = consumed(s.change) + consumed(item.change);
        s = {*composed, total == 0 ? 1 : 1 - total};
        continue;
      }
    }
    if (cc == 0) {
      starter = static_cast<long>(out.size());
      last_class = -1;
    } else {
      last_class = cc;
    }
    out.push_back(item);
  }
  return out;
}

}  // namespace adapters::tokenizer::unicode
