// The byte-level alphabet of GPT-2 (each byte stands for a printable character) and the offset
// trimming of byte-level post-processing.
#include <array>

#include "components.h"

namespace adapters::tokenizer {

namespace {

// GPT-2's bytes_to_unicode: printable Latin-1 bytes stand for themselves, the others for 256+n.
std::array<char32_t, 256> build_byte_chars() {
  std::array<char32_t, 256> chars{};
  char32_t next = 256;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    chars[b] = printable ? static_cast<char32_t>(b) : next++;
  }
  return chars;
}

const std::array<char32_t, 256>& byte_chars() {
  static const std::array<char32_t, 256> chars = build_byte_chars();
  return chars;
}

bool is_byte_level_space(char32_t c) { return c == byte_chars()[' '] || unicode::is_whitespace(c); }

}  // namespace

const std::string& byte_to_char(unsigned char byte) {
  static const std::array<std::string, 256> encoded = [] {
    std::array<std::string, 256> out;
    for (int b = 0; b < 256; ++b) unicode::append(out[b], byte_chars()[b]);
    return out;
  }();
  return encoded[byte];
}

std::optional<unsigned char> char_to_byte(char32_t c) {
  if (c < 0x80 && byte_chars()[c] == c) return static_cast<unsigned char>(c);
  for (int b = 0; b < 256; ++b) {
    if (byte_chars()[b] == c) return static_cast<unsigned char>(b);
  }
  return std::nullopt;
}

void trim_byte_level_offsets(Encoding& encoding, bool add_prefix_space) {
  for (size_t i = 0; i < encoding.size(); ++i) {
    std::vector<char32_t> chars;
    const std::string& token = encoding.tokens[i];
    for (size_t k = 0; k < token.size();) chars.push_back(unicode::next(token, k));
    size_t leading = 0, trailing = 0;
    while (leading < chars.size() && is_byte_level_space(chars[leading])) ++leading;
    while (trailing < chars.size() && is_byte_level_space(chars[chars.size() - 1 - trailing])) ++trailing;
    Offsets& offsets = encoding.offsets[i];
    if (leading > 0) {
      const bool is_first = i == 0 || offsets.first == 0;
      if (is_first && add_prefix_space && leading == 1) leading = 0;
      offsets.first = std::min(offsets.first + leading, offsets.second);
    }
    if (trailing > 0 && offsets.second >= trailing) offsets.second = std::max(offsets.second - trailing, offsets.first);
  }
}

}  // namespace adapters::tokenizer
