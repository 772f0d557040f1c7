// AddedVocabulary; see added_vocabulary.h.
#include "added_vocabulary.h"

namespace adapters::tokenizer {

void AddedVocabulary::Matcher::add(const std::string& pattern, size_t token_index) {
  if (pattern.empty()) return;
  first_byte_[static_cast<unsigned char>(pattern[0])] = true;
  uint32_t node = 0;
  for (unsigned char b : pattern) {
    const uint64_t key = (static_cast<uint64_t>(node) << 8) | b;
    auto it = edges_.find(key);
    if (it == edges_.end()) it = edges_.emplace(key, ++nodes_).first;
    node = it->second;
  }
  terminal_.emplace(node, token_index);
}

std::vector<std::tuple<size_t, size_t, size_t>> AddedVocabulary::Matcher::find(const std::string& text) const {
  std::vector<std::tuple<size_t, size_t, size_t>> matches;
  if (terminal_.empty()) return matches;
  for (size_t start = 0; start < text.size();) {
    if (!first_byte_[static_cast<unsigned char>(text[start])]) {
      ++start;
      continue;
    }
    uint32_t node = 0;
    std::optional<std::pair<size_t, size_t>> longest;  // end, token index
    for (size_t i = start; i < text.size(); ++i) {
      const auto it = edges_.find((static_cast<uint64_t>(node) << 8) | static_cast<unsigned char>(text[i]));
      if (it == edges_.end()) break;
      node = it->second;
      const auto term = terminal_.find(node);
      if (term != terminal_.end()) longest = std::make_pair(i + 1, term->second);
    }
    if (longest) {
      matches.emplace_back(start, longest->first, longest->second);
      start = longest->first;
    } else {
      ++start;
    }
  }
  return matches;
}

AddedVocabulary::AddedVocabulary(const std::vector<AddedToken>& tokens, const Normalizer* normalizer) : tokens_(tokens) {
  for (size_t i = 0; i < tokens_.size(); ++i) {
    const AddedToken& t = tokens_[i];
    by_content_[t.content] = t.id;
    by_id_[t.id] = t.content;
    if (t.special) special_.insert(t.content);
    if (!t.normalized) {
      raw_.add(t.content, i);
    } else {
      NormalizedString content(t.content);
      if (normalizer) normalizer->normalize(content);
      normalized_.add(content.get(), i);
    }
  }
}

std::optional<uint32_t> AddedVocabulary::token_to_id(const std::string& token) const {
  const auto it = by_content_.find(token);
  return it == by_content_.end() ? std::nullopt : std::optional<uint32_t>(it->second);
}

std::optional<std::string> AddedVocabulary::id_to_token(uint32_t id) const {
  const auto it = by_id_.find(id);
  return it == by_id_.end() ? std::nullopt : std::optional<std::string>(it->second);
}

namespace {

char32_t last_char(const std::string& s, size_t end) {
  size_t start = end;
  do --start; while (start > 0 && (static_cast<unsigned char>(s[start]) & 0xC0) == 0x80);
  return unicode::next(s, start);
}

// Start of the run of whitespace ending at `end`, no further back than `floor` (so that a run of
// matches inside one long run of whitespace is not scanned again for each of them).
size_t whitespace_run_start(const std::string& s, size_t end, size_t floor) {
  while (end > floor) {
    size_t start = end;
    do --start; while (start > 0 && (static_cast<unsigned char>(s[start]) & 0xC0) == 0x80);
    size_t i = start;
    if (!unicode::is_whitespace(unicode::next(s, i))) break;
    end = start;
  }
  return end;
}

// End of the run of whitespace starting at `start`.
size_t whitespace_run_end(const std::string& s, size_t start) {
  while (start < s.size()) {
    size_t i = start;
    if (!unicode::is_whitespace(unicode::next(s, i))) break;
    start = i;
  }
  return start;
}

}  // namespace

void AddedVocabulary::split_on(Split& split, const Matcher& matcher, std::vector<Split>& out) const {
  const std::string& text = split.normalized.get();
  size_t previous = 0;
  auto emit = [&](size_t start, size_t end, const AddedToken* token) {
    NormalizedString piece = split.normalized.slice({start, end});
    if (piece.empty()) return;
    std::optional<std::vector<Token>> tokens;
    if (token) tokens = std::vector<Token>{Token{token->id, piece.get(), {0, piece.len()}}};
    out.push_back({std::move(piece), std::move(tokens)});
  };
  for (auto [start, stop, index] : matcher.find(text)) {
    const AddedToken& token = tokens_[index];
    if (token.single_word) {
      const bool start_space = start == 0 || !unicode::is_word(last_char(text, start));
      size_t i = stop;
      const bool stop_space = stop == text.size() || !unicode::is_word(unicode::next(text, i));
      if (!start_space || !stop_space) continue;
    }
    if (token.lstrip) start = std::max(whitespace_run_start(text, start, previous), previous);
    if (token.rstrip) stop = whitespace_run_end(text, stop);
    if (previous < start) emit(previous, start, nullptr);
    emit(start, stop, &token);
    previous = stop;
  }
  if (previous == 0) {
    out.push_back(std::move(split));
    return;
  }
  if (previous < text.size()) emit(previous, text.size(), nullptr);
}

PreTokenizedString AddedVocabulary::extract_and_normalize(const std::string& text, const Normalizer* normalizer) const {
  PreTokenizedString pieces{NormalizedString(text)};
  auto split_all = [&](const Matcher& matcher, bool normalize) {
    std::vector<Split> result;
    for (Split& s : pieces.splits()) {
      if (s.tokens) {
        result.push_back(std::move(s));
        continue;
      }
      if (normalize && normalizer) normalizer->normalize(s.normalized);
      if (s.normalized.empty()) continue;
      split_on(s, matcher, result);
    }
    pieces.splits() = std::move(result);
  };
  split_all(raw_, false);
  split_all(normalized_, true);
  return pieces;
}

}  // namespace adapters::tokenizer
