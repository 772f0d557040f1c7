// Encoding operations: truncation with overflowing windows, merging, padding (as HF does them).
#include <algorithm>

#include "adapters/tokenizer/tokenizer.h"
#include "components.h"

namespace adapters::tokenizer {

namespace {

Encoding slice(const Encoding& e, size_t start, size_t stop) {
  auto part = [start, stop](const auto& v) { return std::decay_t<decltype(v)>(v.begin() + static_cast<std::ptrdiff_t>(start), v.begin() + static_cast<std::ptrdiff_t>(stop)); };
  Encoding out;
  out.ids = part(e.ids);
  out.type_ids = part(e.type_ids);
  out.tokens = part(e.tokens);
  out.words = part(e.words);
  out.offsets = part(e.offsets);
  out.special_tokens_mask = part(e.special_tokens_mask);
  out.attention_mask = part(e.attention_mask);
  return out;
}

template <typename T>
void insert_at(std::vector<T>& into, size_t at, const std::vector<T>& values) {
  into.insert(into.begin() + static_cast<std::ptrdiff_t>(at), values.begin(), values.end());
}

template <typename T>
void pad_vector(std::vector<T>& v, size_t count, const T& value, Encoding::Direction direction) {
  v.insert(direction == Encoding::Direction::Left ? v.begin() : v.end(), count, value);
}

}  // namespace

void Encoding::truncate(size_t max_length, size_t stride, Direction direction) {
  const size_t length = size();
  if (max_length >= length) return;
  if (max_length == 0) {
    Encoding whole = std::move(*this);
    *this = Encoding();
    overflowing.push_back(std::move(whole));
    return;
  }
  const size_t step = max_length - std::min(stride, max_length - 1);
  std::vector<std::pair<size_t, size_t>> parts;
  if (direction == Direction::Right) {
    for (size_t start = 0; start < length; start += step) {
      const size_t stop = std::min(start + max_length, length);
      parts.emplace_back(start, stop);
      if (stop == length) break;
    }
  } else {
    for (size_t k = 0; k < length; k += step) {
      const size_t stop = length - k;
      const size_t start = stop < max_length ? 0 : stop - max_length;
      parts.emplace_back(start, stop);
      if (start == 0) break;
    }
  }
  Encoding first = slice(*this, parts[0].first, parts[0].second);
  for (size_t i = 1; i < parts.size(); ++i) first.overflowing.push_back(slice(*this, parts[i].first, parts[i].second));
  *this = std::move(first);
}

void Encoding::merge_with(const Encoding& pair, bool growing_offsets) {
  std::vector<Encoding> combined;
  for (const Encoding& mine : overflowing) {
    Encoding n = mine;
    n.merge_with(pair, growing_offsets);
    combined.push_back(std::move(n));
    for (const Encoding& theirs : pair.overflowing) {
      Encoding m = mine;
      m.merge_with(theirs, growing_offsets);
      combined.push_back(std::move(m));
    }
  }
  for (const Encoding& theirs : pair.overflowing) {
    Encoding n = *this;
    n.overflowing.clear();
    n.merge_with(theirs, growing_offsets);
    combined.push_back(std::move(n));
  }
  const size_t base = size();
  for (const auto& [id, range] : pair.sequence_ranges) sequence_ranges[id] = {base + range.first, base + range.second};
  const size_t shift = growing_offsets && !offsets.empty() ? offsets.back().second : 0;
  ids.insert(ids.end(), pair.ids.begin(), pair.ids.end());
  type_ids.insert(type_ids.end(), pair.type_ids.begin(), pair.type_ids.end());
  tokens.insert(tokens.end(), pair.tokens.begin(), pair.tokens.end());
  words.insert(words.end(), pair.words.begin(), pair.words.end());
  for (const Offsets& o : pair.offsets) offsets.push_back({o.first + shift, o.second + shift});
  special_tokens_mask.insert(special_tokens_mask.end(), pair.special_tokens_mask.begin(), pair.special_tokens_mask.end());
  attention_mask.insert(attention_mask.end(), pair.attention_mask.begin(), pair.attention_mask.end());
  overflowing = std::move(combined);
}

void insert_tokens(Encoding& e, size_t at, const Encoding& part) {
  insert_at(e.ids, at, part.ids);
  insert_at(e.type_ids, at, part.type_ids);
  insert_at(e.tokens, at, part.tokens);
  insert_at(e.words, at, part.words);
  insert_at(e.offsets, at, part.offsets);
  insert_at(e.special_tokens_mask, at, part.special_tokens_mask);
  insert_at(e.attention_mask, at, part.attention_mask);
}

void Encoding::pad(size_t length, uint32_t pad_id, uint32_t pad_type_id, const std::string& pad_token, Direction direction) {
  for (Encoding& o : overflowing) o.pad(length, pad_id, pad_type_id, pad_token, direction);
  if (size() >= length) return;
  const size_t count = length - size();
  pad_vector(ids, count, pad_id, direction);
  pad_vector(type_ids, count, pad_type_id, direction);
  pad_vector(tokens, count, pad_token, direction);
  pad_vector(words, count, std::optional<uint32_t>(), direction);
  pad_vector(attention_mask, count, 0u, direction);
  pad_vector(special_tokens_mask, count, 1u, direction);
  pad_vector(offsets, count, Offsets{0, 0}, direction);
}

}  // namespace adapters::tokenizer
