// Unicode helpers: UTF-8 decoding and encoding, invalid-input repair, character classes with the
// meaning HF tokenizers gives them (Rust's char methods), case mapping and normalisation forms
// through utf8proc.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace adapters::tokenizer::unicode {

// Decodes the code point starting at s[i] (s must be valid UTF-8) and advances i past it.
char32_t next(std::string_view s, size_t& i);
// Length in bytes of the UTF-8 sequence whose first byte is `lead`.
size_t sequence_length(unsigned char lead);
void append(std::string& out, char32_t c);
size_t encoded_length(char32_t c);
size_t count_chars(std::string_view s);
// End (byte index) of the extended grapheme cluster (UAX #29) that starts at s[start].
size_t grapheme_end(std::string_view s, size_t start);

// Returns `s` with every invalid UTF-8 sequence replaced by U+FFFD (as Rust's from_utf8_lossy).
std::string repair(std::string_view s);
bool is_valid(std::string_view s);

bool is_whitespace(char32_t c);     // Unicode White_Space (Rust char::is_whitespace)
bool is_punctuation(char32_t c);    // ASCII punctuation or general category P*
bool is_numeric(char32_t c);        // general category N*
bool is_control_or_other(char32_t c);  // general category C*
bool is_nonspacing_mark(char32_t c);   // general category Mn
bool is_mark(char32_t c);              // general category M*
bool is_word(char32_t c);           // regex \w: letters, marks, decimal digits, connectors
bool is_chinese(char32_t c);        // CJK ideograph blocks as BERT defines them

// Appends the lowercase mapping of c (one or more code points).
void to_lower(char32_t c, std::vector<char32_t>& out);

enum class Form { NFC, NFD, NFKC, NFKD };
// A normalised code point with its alignment change (see NormalizedString::transform_range).
struct Normalized {
  char32_t c;
  int change;
};
// Normalises one cluster (a starter and its combining marks) the way HF's alignment-keeping
// normalisation does: each character's decomposition (0 for its first code point, 1 for the
// others), canonical reordering carrying the changes, then composition, where a composed
// character removes the original characters it absorbed.
std::vector<Normalized> normalize_cluster(const std::vector<char32_t>& cluster, Form form);
// Whether c starts a new cluster for normalisation: its (compatibility) decomposition starts with
// a character of combining class 0 that is not a Hangul vowel or trailing jamo.
bool starts_cluster(char32_t c, bool compatibility);

}  // namespace adapters::tokenizer::unicode
