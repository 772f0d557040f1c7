// Template members of NormalizedString (filter, map) and the character-predicate pattern.
#pragma once

#include "unicode.h"

namespace adapters::tokenizer {

// A removed character is removed by the change of the last kept character before it, or by the
// initial offset when no character is kept before it.
template <typename Keep>
void NormalizedString::filter(Keep keep) {
  std::vector<Change> dest;
  dest.reserve(unicode::count_chars(normalized_));
  size_t removed_first = 0;
  bool removed = false;
  for (size_t i = 0; i < normalized_.size();) {
    const char32_t c = unicode::next(normalized_, i);
    if (keep(c)) {
      dest.push_back({c, 0});
      continue;
    }
    removed = true;
    if (dest.empty()) ++removed_first;
    else --dest.back().change;
  }
  if (removed) transform(dest, removed_first);
}

template <typename Map>
void NormalizedString::map(Map fn) {
  std::vector<Change> dest;
  dest.reserve(unicode::count_chars(normalized_));
  bool changed = false;
  for (size_t i = 0; i < normalized_.size();) {
    const char32_t c = unicode::next(normalized_, i);
    const char32_t m = fn(c);
    changed = changed || m != c;
    dest.push_back({m, 0});
  }
  if (changed) transform(dest, 0);
}

template <typename Pred>
std::vector<Match> find_char_matches(const std::string& s, Pred pred) {
  if (s.empty()) return {{{0, 0}, false}};
  std::vector<Match> matches;
  size_t last = 0;
  for (size_t i = 0; i < s.size();) {
    const size_t start = i;
    const char32_t c = unicode::next(s, i);
    if (!pred(c)) continue;
    if (last < start) matches.push_back({{last, start}, false});
    matches.push_back({{start, i}, true});
    last = i;
  }
  if (last < s.size()) matches.push_back({{last, s.size()}, false});
  return matches;
}

}  // namespace adapters::tokenizer
