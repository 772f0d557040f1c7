// NormalizedString: alignment-preserving edits of a piece of text; see normalized_string.h.
#include "normalized_string.h"

#include <algorithm>

namespace adapters::tokenizer {

NormalizedString::NormalizedString(std::string original)
    : normalized_(std::move(original)), original_len_(normalized_.size()) {
  align_.resize(normalized_.size());
  for (size_t i = 0; i < normalized_.size();) {
    const size_t start = i;
    i += unicode::sequence_length(static_cast<unsigned char>(normalized_[i]));
    for (size_t k = start; k < i; ++k) align_[k] = {start, i};
  }
}

std::optional<Offsets> NormalizedString::convert_normalized(Offsets range) const {
  if (range.first == range.second) return range;
  if (range.first > range.second || range.second > align_.size()) return std::nullopt;
  return Offsets{align_[range.first].first, align_[range.second - 1].second};
}

NormalizedString NormalizedString::slice(Offsets range) const {
  const Offsets original = convert_normalized(range).value_or(Offsets{0, 0});
  NormalizedString piece;
  piece.normalized_ = normalized_.substr(range.first, range.second - range.first);
  piece.align_.reserve(range.second - range.first);
  for (size_t i = range.first; i < range.second; ++i) {
    const auto [s, e] = align_[i];
    piece.align_.push_back({s - std::min(s, original.first), e - std::min(e, original.first)});
  }
  piece.shift_ = shift_ + original.first;
  piece.original_len_ = original.second - original.first;
  return piece;
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

  std::string text;
  std::vector<Offsets> align;
  text.reserve(end - start);
  align.reserve(end - start);
  for (const Change& change : dest) {
    Offsets a{0, 0};
    if (change.change > 0) {
      if (offset >= 1) a = align_[std::min(offset, align_.size()) - 1];
    } else if (!align_.empty()) {
      a = align_[std::min(offset, align_.size() - 1)];
    }
    if (change.change <= 0) offset += skip_char();
    for (int r = 0; r < -change.change; ++r) offset += skip_char();
    const size_t before = text.size();
    unicode::append(text, change.c);
    align.insert(align.end(), text.size() - before, a);
  }
  normalized_.replace(start, end - start, text);
  align_.erase(align_.begin() + static_cast<std::ptrdiff_t>(start), align_.begin() + static_cast<std::ptrdiff_t>(end));
  align_.insert(align_.begin() + static_cast<std::ptrdiff_t>(start), align.begin(), align.end());
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

void NormalizedString::strip(bool left, bool right) {
  std::vector<char32_t> chars;
  for (size_t i = 0; i < normalized_.size();) chars.push_back(unicode::next(normalized_, i));
  size_t leading = 0, trailing = 0;
  if (left) while (leading < chars.size() && unicode::is_whitespace(chars[leading])) ++leading;
  if (right) while (trailing < chars.size() - leading && unicode::is_whitespace(chars[chars.size() - 1 - trailing])) ++trailing;
  if (leading == 0 && trailing == 0) return;
  std::vector<Change> dest;
  for (size_t i = leading; i + trailing < chars.size(); ++i) {
    const bool last = i + trailing + 1 == chars.size();
    dest.push_back({chars[i], last ? -static_cast<int>(trailing) : 0});
  }
  transform(dest, leading);
}

void NormalizedString::replace(const std::vector<Match>& matches, const std::string& content) {
  std::vector<Change> dest;
  for (size_t k = 0; k < content.size();) dest.push_back({unicode::next(content, k), 1});
  long shift = 0;
  for (const Match& m : matches) {
    if (!m.is_match) continue;
    const size_t start = static_cast<size_t>(static_cast<long>(m.range.first) + shift);
    const size_t end = static_cast<size_t>(static_cast<long>(m.range.second) + shift);
    const size_t removed = unicode::count_chars(std::string_view(normalized_).substr(start, end - start));
    transform_range(start, end, dest, removed);
    shift += static_cast<long>(content.size()) - static_cast<long>(m.range.second - m.range.first);
  }
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
