// Template members of NormalizedString (filter, map) and the character-predicate pattern.
#pragma once

#include "unicode.h"

namespace adapters::tokenizer {

template <typename Keep>
void NormalizedString::filter(Keep keep) {
  std::vector<char32_t> chars;
  for (size_t i = 0; i < normalized_.size();) chars.push_back(unicode::next(normalized_, i));
  std::vector<Change> kept;
  kept.reserve(chars.size());
  int removed = 0;
  for (auto it = chars.rbegin(); it != chars.rend(); ++it) {
    if (keep(*it)) {
      kept.push_back({*it, -removed});
      removed = 0;
    } else {
      ++removed;
    }
  }
  if (kept.size() == chars.size()) return;
  std::vector<Change> dest(kept.rbegin(), kept.rend());
  transform(dest, static_cast<size_t>(removed));
}

template <typename Map>
void NormalizedString::map(Map fn) {
  std::vector<Change> dest;
  dest.reserve(normalized_.size());
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
