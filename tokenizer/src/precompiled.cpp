// The Precompiled normalizer: SentencePiece's charsmap applied the way HF tokenizers applies it
// (per grapheme cluster shorter than 6 bytes, else per character), with its alignment changes.
#include "precompiled.h"

#include "adapters/core/error.h"
#include "base64.h"
#include "unicode.h"

namespace adapters::tokenizer {

namespace {

// Fields of a darts-clone double-array unit.
bool has_leaf(uint32_t unit) { return (unit >> 8) & 1; }
uint32_t value(uint32_t unit) { return unit & ((1u << 31) - 1); }
uint32_t label(uint32_t unit) { return unit & ((1u << 31) | 0xFF); }
size_t offset(uint32_t unit) { return static_cast<size_t>(unit >> 10) << ((unit & (1u << 9)) >> 6); }

uint32_t read_u32(std::string_view blob, size_t at) {
  uint32_t v = 0;
  for (size_t k = 0; k < 4; ++k) v |= static_cast<uint32_t>(static_cast<unsigned char>(blob[at + k])) << (8 * k);
  return v;
}

class Precompiled final : public Normalizer {
 public:
  explicit Precompiled(CharsMap map) : map_(std::move(map)) {}

  void normalize(NormalizedString& text) const override {
    const std::string& s = text.get();
    std::vector<Change> dest;
    dest.reserve(s.size());
    bool modified = false;
    for (size_t start = 0; start < s.size();) {
      const size_t end = unicode::grapheme_end(s, start);
      modified = apply(std::string_view(s).substr(start, end - start), dest) || modified;
      start = end;
    }
    if (modified) text.transform(dest, 0);
  }

 private:
  // Appends the changes for one grapheme cluster; true when the map changed something.
  bool apply(std::string_view grapheme, std::vector<Change>& dest) const {
    if (grapheme.size() < 6) {
      if (const auto norm = map_.transform(grapheme)) {
        replace(*norm, unicode::count_chars(grapheme), dest);
        return true;
      }
    }
    bool modified = false;
    for (size_t i = 0; i < grapheme.size();) {
      const size_t start = i;
      const char32_t c = unicode::next(grapheme, i);
      if (const auto norm = map_.transform(grapheme.substr(start, i - start))) {
        replace(*norm, 1, dest);
        modified = true;
      } else {
        dest.push_back({c, 0});
      }
    }
    return modified;
  }

  // HF's alignment changes for `norm` replacing `old_count` characters: each new character
  // replaces one, the last surplus ones are insertions (1), and a shortfall is removed by the
  // last change so far (-n), even one of an earlier cluster when `norm` is empty.
  static void replace(std::string_view norm, size_t old_count, std::vector<Change>& dest) {
    const size_t first = dest.size();
    for (size_t i = 0; i < norm.size();) dest.push_back({unicode::next(norm, i), 0});
    const int difference = static_cast<int>(dest.size() - first) - static_cast<int>(old_count);
    if (difference > 0) {
      for (size_t k = dest.size() - static_cast<size_t>(difference); k < dest.size(); ++k) dest[k].change = 1;
    } else if (difference < 0 && !dest.empty()) {
      dest.back().change += difference;
    }
  }

  CharsMap map_;
};

}  // namespace

CharsMap::CharsMap(std::string_view blob, const std::string& where) {
  if (blob.size() < 4) throw Error(str(where, ": precompiled_charsmap has ", blob.size(), " bytes, expected at least the 4-byte trie size"));
  const uint32_t trie_size = read_u32(blob, 0);
  if (trie_size == 0 || trie_size % 4 != 0 || trie_size > blob.size() - 4) {
    throw Error(str(where, ": precompiled_charsmap trie size ", trie_size, " must be a non-zero multiple of 4 within the ", blob.size() - 4,
                    " bytes that follow"));
  }
  units_.reserve(trie_size / 4);
  for (size_t at = 4; at < 4 + size_t{trie_size}; at += 4) units_.push_back(read_u32(blob, at));
  replacements_ = std::string(blob.substr(4 + size_t{trie_size}));
  if (!unicode::is_valid(replacements_)) throw Error(str(where, ": precompiled_charsmap replacement strings are not valid UTF-8"));
}

std::optional<std::string_view> CharsMap::transform(std::string_view chunk) const {
  size_t node = offset(units_[0]);
  for (const char byte : chunk) {
    const auto c = static_cast<unsigned char>(byte);
    if (c == 0) break;
    node ^= c;
    if (node >= units_.size()) return std::nullopt;
    const uint32_t unit = units_[node];
    if (label(unit) != c) return std::nullopt;
    node ^= offset(unit);
    if (has_leaf(unit)) return node < units_.size() ? replacement_at(value(units_[node])) : std::nullopt;
  }
  return std::nullopt;
}

// The NUL-terminated replacement starting at `index` (nullopt for an index outside the strings or
// inside a character).
std::optional<std::string_view> CharsMap::replacement_at(uint32_t index) const {
  const std::string_view all(replacements_);
  if (index > all.size() || (index < all.size() && (static_cast<unsigned char>(all[index]) & 0xC0) == 0x80)) return std::nullopt;
  const size_t end = all.find('\0', index);
  return all.substr(index, (end == std::string_view::npos ? all.size() : end) - index);
}

std::shared_ptr<const Normalizer> make_precompiled(const json& config) {
  const json& encoded = require(config, "precompiled_charsmap", "Precompiled");
  if (!encoded.is_string()) throw Error(str("tokenizer.json: Precompiled \"precompiled_charsmap\" must be a base64 string, found ", encoded.type_name()));
  const auto blob = base64::decode(encoded.get<std::string>());
  if (!blob) throw Error("tokenizer.json: Precompiled \"precompiled_charsmap\" is not valid base64");
  return std::make_shared<Precompiled>(CharsMap(*blob, "tokenizer.json: Precompiled"));
}

}  // namespace adapters::tokenizer
