// NormalizedString: alignment-preserving edits of a piece of text; see normalized_string.h.
#include "normalized_string.h"

#include <algorithm>
#include <limits>

#include "adapters/core/error.h"

namespace adapters::tokenizer {

NormalizedString::NormalizedString(std::string original)
    : normalized_(std::move(original)), original_len_(normalized_.size()) {
  if (normalized_.size() > std::numeric_limits<uint32_t>::max()) {
    throw Error(str("cannot tokenize a text of ", normalized_.size(), " bytes: at most ", std::numeric_limits<uint32_t>::max(), " bytes"));
  }
  align_.resize(normalized_.size());
  for (size_t i = 0; i < normalized_.size();) {
    const auto start = static_cast<uint32_t>(i);
    i += unicode::sequence_length(static_cast<unsigned char>(normalized_[i]));
    for (size_t k = start; k < i; ++k) align_[k] = {start, static_cast<uint32_t>(i)};
  }
}

std::optional<Offsets> NormalizedString::convert_normalized(Offsets range) const {
  if (range.first == range.second) return range;
  if (range.first > range.second || range.second > align_.size()) return std::nullopt;
  return Offsets{align_[range.first].start, align_[range.second - 1].end};
}

NormalizedString NormalizedString::slice(Offsets range) const {
  const Offsets original = convert_normalized(range).value_or(Offsets{0, 0});
  NormalizedString piece;
  piece.normalized_ = normalized_.substr(range.first, range.second - range.first);
  piece.align_.reserve(range.second - range.first);
  const auto origin = static_cast<uint32_t>(original.first);
  for (size_t i = range.first; i < range.second; ++i) {
    const auto [s, e] = align_[i];
    piece.align_.push_back({s - std::min(s, origin), e - std::min(e, origin)});
  }
  piece.shift_ = shift_ + original.first;
  piece.original_len_ = original.second - original.first;
  return piece;
}

void NormalizedString::copy_range(size_t start, size_t end, std::string& text, std::vector<Alignment>& align) const {
  text.append(normalized_, start, end - start);
  align.insert(align.end(), align_.begin() + static_cast<std::ptrdiff_t>(start), align_.begin() + static_cast<std::ptrdiff_t>(end));
}

void NormalizedString::transform_range(size_t start, size_t end, const std::vector<Change>& dest,
                                       size_t initial_offset) {
  const std::string_view old(normalized_.data() + start, end - start);
  size_t cursor = 0;  // next replaced character in `old`
  auto skip_char = [&]() {
    if (cursor >= old.size()) return size_t{0};
    const size_t len = unicode::sequence_length(static_cast<unsigned char>(old[cursor]));
    cursor += len;
    return len;
  };
  size_t offset = start;
  for (size_t k = 0; k < initial_offset; ++k) offset += skip_char();

  size_t new_bytes = 0;
  for (const Change& change : dest) new_bytes += unicode::encoded_length(change.c);
  std::string text;
  std::vector<Alignment> align;
  const size_t total = start + new_bytes + normalized_.size() - end;
  text.reserve(total);
  align.reserve(total);
  copy_range(0, start, text, align);
  for (const Change& change : dest) {
    Alignment a{0, 0};
    if (change.change > 0) {
      if (offset >= 1) a = align_[std::min(offset, align_.size()) - 1];
    } else if (!align_.empty()) {
      a = align_[std::min(offset, align_.size() - 1)];
    }
    if (change.change <= 0) offset += skip_char();
    for (int r = 0; r < -change.change; ++r) offset += skip_char();
    unicode::append(text, change.c);
    align.resize(text.size(), a);
  }
  copy_range(end, normalized_.size(), text, align);
  normalized_ = std::move(text);
  align_ = std::move(align);
}

void NormalizedString::prepend(const std::string& s) {
  if (normalized_.empty()) return;
  size_t i = 0;
  const char32_t first = unicode::next(normalized_, i);
  std::vector<Change> dest;
  bool at_start = true;
  for (size_t k = 0; k < s.size();) {
    dest.push_back({unicode::next(s, k), at_start ? 0 : 1});
    at_start = false;
  }
  dest.push_back({first, 1});
  transform_range(0, i, dest, 0);
}

void NormalizedString::lowercase() {
  std::vector<Change> dest;
  dest.reserve(normalized_.size());
  std::vector<char32_t> lowered;
  bool changed = false;
  for (size_t i = 0; i < normalized_.size();) {
    const char32_t c = unicode::next(normalized_, i);
    lowered.clear();
    unicode::to_lower(c, lowered);
    changed = changed || lowered.size() != 1 || lowered[0] != c;
    for (size_t k = 0; k < lowered.size(); ++k) dest.push_back({lowered[k], k > 0 ? 1 : 0});
  }
  if (changed) transform(dest, 0);
}

void NormalizedString::normalize(int form) {
  if (std::all_of(normalized_.begin(), normalized_.end(), [](char b) { return static_cast<unsigned char>(b) < 0x80; })) return;
  std::vector<char32_t> chars;
  for (size_t i = 0; i < normalized_.size();) chars.push_back(unicode::next(normalized_, i));
  std::vector<Change> dest;
  dest.reserve(chars.size());
  bool changed = false;
  for (size_t begin = 0; begin < chars.size();) {
    size_t end = begin + 1;
    const bool compatibility = form == static_cast<int>(unicode::Form::NFKC) || form == static_cast<int>(unicode::Form::NFKD);
    while (end < chars.size() && !unicode::starts_cluster(chars[end], compatibility)) ++end;
    const std::vector<char32_t> cluster(chars.begin() + static_cast<std::ptrdiff_t>(begin), chars.begin() + static_cast<std::ptrdiff_t>(end));
    if (cluster.size() == 1 && cluster[0] < 0x80) {
      dest.push_back({cluster[0], 0});
    } else {
      const std::vector<unicode::Normalized> out = unicode::normalize_cluster(cluster, static_cast<unicode::Form>(form));
      changed = changed || out.size() != cluster.size() ||
                !std::equal(out.begin(), out.end(), cluster.begin(), [](const unicode::Normalized& n, char32_t c) { return n.c == c; });
      for (const unicode::Normalized& n : out) dest.push_back({n.c, n.change});
    }
    begin = end;
  }
  if (changed) transform(dest, 0);
}

// Stripping keeps a range of the text as it is: the alignment transform() would give.
void NormalizedString::strip(bool left, bool right) {
  size_t begin = 0, end = normalized_.size();
  if (left) {
    for (size_t i = 0; i < normalized_.size() && unicode::is_whitespace(unicode::next(normalized_, i));) begin = i;
  }
  if (right) {
    end = begin;  // end of the last character that is not whitespace
    for (size_t i = begin; i < normalized_.size();) {
      if (!unicode::is_whitespace(unicode::next(normalized_, i))) end = i;
    }
  }
  normalized_.erase(end).erase(0, begin);
  align_.erase(align_.begin() + static_cast<std::ptrdiff_t>(end), align_.end());
  align_.erase(align_.begin(), align_.begin() + static_cast<std::ptrdiff_t>(begin));
}

// What transform_range gives a match removed and `content` inserted after it: every byte of the
// content aligned with the last byte of the match.
void NormalizedString::replace(const std::vector<Match>& matches, const std::string& content) {
  size_t replaced = 0, matched_bytes = 0;
  for (const Match& m : matches) {
    if (!m.is_match) continue;
    ++replaced;
    matched_bytes += m.range.second - m.range.first;
  }
  if (replaced == 0) return;
  const size_t total = normalized_.size() - matched_bytes + replaced * content.size();
  std::string text;
  std::vector<Alignment> align;
  text.reserve(total);
  align.reserve(total);
  size_t copied = 0;
  for (const Match& m : matches) {
    if (!m.is_match) continue;
    const auto [start, end] = m.range;
    copy_range(copied, start, text, align);
    const Alignment a = end >= 1 ? align_[end - 1] : Alignment{0, 0};
    text += content;
    align.resize(text.size(), a);
    copied = end;
  }
  copy_range(copied, normalized_.size(), text, align);
  normalized_ = std::move(text);
  align_ = std::move(align);
}

namespace {

// Groups pattern matches into (range, keep) pieces according to the split behaviour.
std::vector<Match> apply_behavior(const std::vector<Match>& matches, SplitBehavior behavior) {
  std::vector<Match> out;  // here is_match means "remove"
  bool previous = false;
  switch (behavior) {
    case SplitBehavior::Isolated:
      for (const Match& m : matches) out.push_back({m.range, false});
      break;
    case SplitBehavior::Removed:
      out = matches;
      break;
    case SplitBehavior::Contiguous:
      for (const Match& m : matches) {
        if (m.is_match == previous && !out.empty()) out.back().range.second = m.range.second;
        else out.push_back({m.range, false});
        previous = m.is_match;
      }
      break;
    case SplitBehavior::MergedWithPrevious:
      for (const Match& m : matches) {
        if (m.is_match && !previous && !out.empty()) out.back().range.second = m.range.second;
        else out.push_back({m.range, false});
        previous = m.is_match;
      }
      break;
    case SplitBehavior::MergedWithNext:
      for (auto it = matches.rbegin(); it != matches.rend(); ++it) {
        if (it->is_match && !previous && !out.empty()) out.back().range.first = it->range.first;
        else out.push_back({it->range, false});
        previous = it->is_match;
      }
      std::reverse(out.begin(), out.end());
      break;
  }
  return out;
}

}  // namespace

std::vector<NormalizedString> NormalizedString::split(const std::vector<Match>& matches, SplitBehavior behavior) const {
  std::vector<NormalizedString> pieces;
  for (const Match& m : apply_behavior(matches, behavior)) {
    if (!m.is_match) pieces.push_back(slice(m.range));
  }
  return pieces;
}

}  // namespace adapters::tokenizer
