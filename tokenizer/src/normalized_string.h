// NormalizedString: a piece of the input text being normalised, with the alignment of every byte
// of the normalised text to a byte range of the original, so that token offsets can be reported
// in the original text. Mirrors HF tokenizers' NormalizedString, alignment rules included.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace adapters::tokenizer {

using Offsets = std::pair<size_t, size_t>;

// How the matches of a split pattern are kept (HF's SplitDelimiterBehavior).
enum class SplitBehavior { Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous };

// One piece of a pattern search: a byte range and whether the pattern matched it.
struct Match {
  Offsets range;
  bool is_match;
};

// A new character of a transformation and its change: 1 inserted, 0 replacing, -n replacing and
// removing the n characters that follow.
struct Change {
  char32_t c;
  int change;
};

class NormalizedString {
 public:
  NormalizedString() = default;
  explicit NormalizedString(std::string original);

  const std::string& get() const { return normalized_; }
  size_t len() const { return normalized_.size(); }
  bool empty() const { return normalized_.empty(); }
  // Range of the original text this piece covers, in bytes of the whole input.
  Offsets offsets_original() const { return {shift_, shift_ + original_len_}; }

  // Maps a byte range of the normalised text to a byte range of this piece's original text.
  std::optional<Offsets> convert_normalized(Offsets range) const;
  // A sub-piece covering the given byte range of the normalised text.
  NormalizedString slice(Offsets normalized_range) const;

  // Replaces the normalised bytes [start, end) by `dest`, `initial_offset` characters of that
  // range being removed before the first new character. Every edit below rebuilds the text and
  // its alignments once, in time linear in their length.
  void transform_range(size_t start, size_t end, const std::vector<Change>& dest, size_t initial_offset);
  void transform(const std::vector<Change>& dest, size_t initial_offset) {
    transform_range(0, normalized_.size(), dest, initial_offset);
  }

  template <typename Keep>
  void filter(Keep keep);
  template <typename Map>
  void map(Map fn);
  void prepend(const std::string& s);
  void lowercase();
  void normalize(int form);  // a unicode::Form
  void strip(bool left, bool right);
  // Replaces every match by `content`, all in one pass.
  void replace(const std::vector<Match>& matches, const std::string& content);

  // Splits on the pattern matches according to `behavior`.
  std::vector<NormalizedString> split(const std::vector<Match>& matches, SplitBehavior behavior) const;

 private:
  // The byte range of this piece's original text a normalised byte comes from. 32 bits keep it at
  // 8 bytes per byte, so an input is at most 4 GiB (checked by the constructor).
  struct Alignment {
    uint32_t start, end;
  };

  // Appends the normalised bytes [start, end) and their alignments to `text` and `align`.
  void copy_range(size_t start, size_t end, std::string& text, std::vector<Alignment>& align) const;

  std::string normalized_;
  std::vector<Alignment> align_;  // per normalised byte, relative to this piece's original text
  size_t shift_ = 0;              // start of this piece in the whole original input
  size_t original_len_ = 0;
};

// Matches of a character predicate: every matching character is one match.
template <typename Pred>
std::vector<Match> find_char_matches(const std::string& s, Pred pred);

}  // namespace adapters::tokenizer

#include "normalized_string_inl.h"
