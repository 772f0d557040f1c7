// Tokenizer: reads tokenizer.json and runs the encode pipeline (added tokens, normalizer,
// pre-tokenizer, model, offsets, truncation, post-processor, padding) and decoding.
#include "adapters/tokenizer/tokenizer.h"

#include <algorithm>
#include <fstream>
#include <sstream>

#include "adapters/core/error.h"
#include "adapters/core/json_parse.h"
#include "added_vocabulary.h"
#include "components.h"

namespace adapters::tokenizer {

namespace {

Encoding::Direction parse_direction(const json& value, const char* where) {
  const std::string d = value.is_string() ? value.get<std::string>() : "";
  if (d == "Left" || d == "left") return Encoding::Direction::Left;
  if (d == "Right" || d == "right") return Encoding::Direction::Right;
  throw Error(str("tokenizer.json: ", where, " \"direction\" must be Left or Right, found ", value.dump()));
}

std::optional<TruncationParams> parse_truncation(const json& c) {
  if (c.is_null()) return std::nullopt;
  TruncationParams p;
  p.max_length = require(c, "max_length", "truncation").get<size_t>();
  p.stride = c.value("stride", size_t{0});
  if (c.contains("direction")) p.direction = parse_direction(c["direction"], "truncation");
  const std::string strategy = string_or(c, "strategy", "LongestFirst");
  if (strategy == "LongestFirst") p.strategy = TruncationParams::Strategy::LongestFirst;
  else if (strategy == "OnlyFirst") p.strategy = TruncationParams::Strategy::OnlyFirst;
  else if (strategy == "OnlySecond") p.strategy = TruncationParams::Strategy::OnlySecond;
  else throw Error(str("tokenizer.json: truncation \"strategy\" must be LongestFirst, OnlyFirst or OnlySecond, found \"", strategy, "\""));
  return p;
}

std::optional<PaddingParams> parse_padding(const json& c) {
  if (c.is_null()) return std::nullopt;
  PaddingParams p;
  const json& strategy = require(c, "strategy", "padding");
  if (strategy.is_object() && strategy.contains("Fixed")) p.fixed_length = strategy["Fixed"].get<size_t>();
  else if (strategy != "BatchLongest") throw Error(str("tokenizer.json: padding \"strategy\" must be \"BatchLongest\" or {\"Fixed\": n}, found ", strategy.dump()));
  if (c.contains("direction")) p.direction = parse_direction(c["direction"], "padding");
  if (c.contains("pad_to_multiple_of") && c["pad_to_multiple_of"].is_number()) p.pad_to_multiple_of = c["pad_to_multiple_of"].get<size_t>();
  p.pad_id = c.value("pad_id", 0u);
  p.pad_type_id = c.value("pad_type_id", 0u);
  p.pad_token = string_or(c, "pad_token", "[PAD]");
  return p;
}

std::vector<AddedToken> parse_added_tokens(const json& list) {
  std::vector<AddedToken> tokens;
  if (list.is_null()) return tokens;
  for (const json& t : list) {
    AddedToken a;
    a.content = require(t, "content", "added token").get<std::string>();
    a.id = require(t, "id", "added token").get<uint32_t>();
    a.single_word = bool_or(t, "single_word", false);
    a.lstrip = bool_or(t, "lstrip", false);
    a.rstrip = bool_or(t, "rstrip", false);
    a.special = bool_or(t, "special", false);
    a.normalized = bool_or(t, "normalized", !a.special);
    tokens.push_back(std::move(a));
  }
  return tokens;
}

template <typename Make>
auto optional_part(const json& doc, const char* key, Make make) -> decltype(make(doc)) {
  const auto it = doc.find(key);
  if (it == doc.end() || it->is_null()) return nullptr;
  return make(*it);
}

// Byte offsets of the whole input -> code point offsets (HF's BytesToCharOffsetConverter). It
// keeps the number of characters before every 64th byte and counts the rest, so it costs 1/8
// byte per input byte.
class CharOffsets {
 public:
  explicit CharOffsets(const std::string& text) : text_(text) {
    size_t chars = 0;
    for (size_t block = 0; block < text.size(); block += kBlock) {
      chars_before_.push_back(chars);
      chars += unicode::count_chars(std::string_view(text).substr(block, kBlock));
    }
  }
  Offsets convert(Offsets o) const {
    const size_t n = text_.size();
    if (o.first >= n) return o;
    if (o.second < n) return {char_of(o.first), char_of(o.second)};
    const size_t last = o.second >= 1 && o.second - 1 < n ? char_of(o.second - 1) : char_of(o.first);
    return {char_of(o.first), last + 1};
  }

 private:
  static constexpr size_t kBlock = 64;

  // Index of the character holding byte `i`: the characters starting at or before it, less one.
  size_t char_of(size_t i) const {
    const size_t block = i / kBlock * kBlock;
    return chars_before_[i / kBlock] + unicode::count_chars(std::string_view(text_).substr(block, i + 1 - block)) - 1;
  }

  const std::string& text_;
  std::vector<size_t> chars_before_;  // characters starting before each block of kBlock bytes
};

// Room for `more` tokens, growing geometrically: one allocation for one long piece, amortised
// constant time per token for many short ones.
void reserve_more(Encoding& e, size_t more) {
  const size_t needed = e.ids.size() + more;
  if (needed <= e.ids.capacity()) return;
  const size_t capacity = std::max(needed, 2 * e.ids.capacity());
  e.ids.reserve(capacity);
  e.tokens.reserve(capacity);
  e.offsets.reserve(capacity);
  e.words.reserve(capacity);
}

void truncate_pair(Encoding& first, std::optional<Encoding>& second, const TruncationParams& p) {
  using Strategy = TruncationParams::Strategy;
  if (p.max_length == 0) {
    first.truncate(0, p.stride, p.direction);
    if (second) second->truncate(0, p.stride, p.direction);
    return;
  }
  const size_t total = first.size() + (second ? second->size() : 0);
  if (total <= p.max_length) return;
  const size_t to_remove = total - p.max_length;
  if (p.strategy == Strategy::LongestFirst) {
    if (!second) {
      first.truncate(total - to_remove, p.stride, p.direction);
      return;
    }
    size_t n1 = first.size(), n2 = second->size();
    const bool swap = n1 > n2;
    if (swap) std::swap(n1, n2);
    n2 = n1 > p.max_length ? n1 : std::max(n1, p.max_length - n1);
    if (n1 + n2 > p.max_length) {
      n1 = p.max_length / 2;
      n2 = n1 + p.max_length % 2;
    }
    if (swap) std::swap(n1, n2);
    first.truncate(n1, p.stride, p.direction);
    second->truncate(n2, p.stride, p.direction);
    return;
  }
  if (p.strategy == Strategy::OnlySecond && !second) throw Error("Truncation error: Second sequence not provided");
  Encoding& target = p.strategy == Strategy::OnlyFirst ? first : *second;
  if (target.size() <= to_remove) throw Error("Truncation error: Sequence to truncate too short to respect the provided max_length");
  target.truncate(target.size() - to_remove, p.stride, p.direction);
}

void pad_all(std::vector<Encoding>& encodings, const PaddingParams& p) {
  if (encodings.empty()) return;
  size_t length = 0;
  if (p.fixed_length) length = *p.fixed_length;
  else for (const Encoding& e : encodings) length = std::max(length, e.size());
  if (p.pad_to_multiple_of && *p.pad_to_multiple_of > 0 && length % *p.pad_to_multiple_of > 0) {
    length += *p.pad_to_multiple_of - length % *p.pad_to_multiple_of;
  }
  for (Encoding& e : encodings) e.pad(length, p.pad_id, p.pad_type_id, p.pad_token, p.direction);
}

// The parts merged one after the other (Encoding::merge_with). Merging into an empty encoding gives
// the part itself, and without overflowing parts merging is concatenation: it is done into the
// longest part, moved, so that its tokens are not copied.
Encoding concatenate(std::vector<Encoding> parts) {
  if (parts.empty()) return Encoding();
  const bool overflowing = std::any_of(parts.begin(), parts.end(), [](const Encoding& e) { return !e.overflowing.empty(); });
  if (overflowing) {
    Encoding merged = std::move(parts[0]);
    for (size_t i = 1; i < parts.size(); ++i) merged.merge_with(parts[i], false);
    return merged;
  }
  const auto longest = static_cast<size_t>(
      std::max_element(parts.begin(), parts.end(), [](const Encoding& a, const Encoding& b) { return a.size() < b.size(); }) - parts.begin());
  Encoding before, after;
  for (size_t i = 0; i < longest; ++i) before.merge_with(parts[i], false);
  for (size_t i = longest + 1; i < parts.size(); ++i) after.merge_with(parts[i], false);
  Encoding merged = std::move(parts[longest]);
  auto ranges = before.sequence_ranges;
  for (const auto& [id, range] : merged.sequence_ranges) ranges[id] = {before.size() + range.first, before.size() + range.second};
  const size_t base = before.size() + merged.size();
  for (const auto& [id, range] : after.sequence_ranges) ranges[id] = {base + range.first, base + range.second};
  insert_tokens(merged, 0, before);
  insert_tokens(merged, merged.size(), after);
  merged.sequence_ranges = std::move(ranges);
  return merged;
}

}  // namespace

Pipeline parse_pipeline(const json& doc);

Tokenizer::Tokenizer(Pipeline pipeline)
    : pipeline_(std::move(pipeline)),
      added_(std::make_unique<AddedVocabulary>(pipeline_.added_tokens, pipeline_.normalizer.get())) {
  if (!pipeline_.model) throw Error("tokenizer: a model is required");
}

Tokenizer::~Tokenizer() = default;
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;

Tokenizer Tokenizer::from_json(const std::string& json_text) {
  std::string error;
  const std::optional<json> doc = try_parse_json(json_text, &error);  // nesting bounded (kMaxJsonDepth)
  if (!doc || !doc->is_object()) throw Error(str("tokenizer.json: not a JSON object", error.empty() ? "" : " (" + error + ")"));
  try {
    return Tokenizer(parse_pipeline(*doc));
  } catch (const json::exception& e) {
    throw Error(str("tokenizer.json: unexpected value: ", e.what()));
  }
}

Pipeline parse_pipeline(const json& doc) {
  Pipeline p;
  p.normalizer = optional_part(doc, "normalizer", make_normalizer);
  p.pre_tokenizer = optional_part(doc, "pre_tokenizer", make_pre_tokenizer);
  p.model = make_model(require(doc, "model", "the document"));
  p.post_processor = optional_part(doc, "post_processor", make_post_processor);
  p.decoder = optional_part(doc, "decoder", make_decoder);
  p.added_tokens = parse_added_tokens(doc.value("added_tokens", json()));
  p.truncation = parse_truncation(doc.value("truncation", json()));
  p.padding = parse_padding(doc.value("padding", json()));
  return p;
}

Tokenizer Tokenizer::from_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(str("cannot read tokenizer file ", path.string()));
  std::ostringstream content;
  content << in.rdbuf();
  try {
    return from_json(content.str());
  } catch (const std::exception& e) {
    throw Error(str(path.string(), ": ", e.what()));
  }
}

Encoding Tokenizer::encode_sequence(const std::string& raw, uint32_t type_id) const {
  std::string repaired;
  const bool valid = unicode::is_valid(raw);
  if (!valid) repaired = unicode::repair(raw);
  const std::string& text = valid ? raw : repaired;
  PreTokenizedString pieces = added_->extract_and_normalize(text, pipeline_.normalizer.get());
  if (pipeline_.pre_tokenizer) pipeline_.pre_tokenizer->pre_tokenize(pieces);
  const CharOffsets chars(text);
  Encoding e;
  uint32_t word = 0;
  for (Split& split : pieces.splits()) {
    std::vector<Token> tokens = split.tokens ? std::move(*split.tokens) : pipeline_.model->tokenize(split.normalized.get());
    const size_t shift = split.normalized.offsets_original().first;
    reserve_more(e, tokens.size());
    for (Token& t : tokens) {
      const auto converted = split.normalized.convert_normalized(t.offsets);
      const Offsets bytes = converted ? Offsets{shift + converted->first, shift + converted->second} : t.offsets;
      e.ids.push_back(t.id);
      e.tokens.push_back(std::move(t.value));
      e.offsets.push_back(chars.convert(bytes));
      e.words.push_back(word);
    }
    ++word;
  }
  e.type_ids.assign(e.size(), type_id);
  e.special_tokens_mask.assign(e.size(), 0);
  e.attention_mask.assign(e.size(), 1);
  return e;
}

Encoding Tokenizer::post_process(Encoding encoding, std::optional<Encoding> pair, bool add_special_tokens) const {
  if (pipeline_.truncation) {
    TruncationParams params = *pipeline_.truncation;
    const size_t added = pipeline_.post_processor ? pipeline_.post_processor->added_tokens(pair.has_value()) : 0;
    if (add_special_tokens && added > 0) params.max_length -= std::min(added, params.max_length);
    truncate_pair(encoding, pair, params);
  }
  std::vector<Encoding> parts;
  parts.push_back(std::move(encoding));
  if (pair) parts.push_back(std::move(*pair));
  if (pipeline_.post_processor) {
    for (size_t i = 0; i < parts.size(); ++i) {
      parts[i].set_sequence_id(i);
      parts[i].set_type_ids(static_cast<uint32_t>(i));
      for (Encoding& o : parts[i].overflowing) o.set_sequence_id(i), o.set_type_ids(static_cast<uint32_t>(i));
    }
    parts = pipeline_.post_processor->process_encodings(std::move(parts), add_special_tokens);
  } else if (parts.size() > 1) {
    for (size_t i = 0; i < parts.size(); ++i) parts[i].set_sequence_id(i);
  }
  Encoding merged = concatenate(std::move(parts));
  if (pipeline_.padding) {
    std::vector<Encoding> one{std::move(merged)};
    pad_all(one, *pipeline_.padding);
    merged = std::move(one[0]);
  }
  return merged;
}

Encoding Tokenizer::encode(const std::string& text, bool add_special_tokens) const {
  return post_process(encode_sequence(text, 0), std::nullopt, add_special_tokens);
}

Encoding Tokenizer::encode_pair(const std::string& text, const std::string& pair, bool add_special_tokens) const {
  return post_process(encode_sequence(text, 0), encode_sequence(pair, 1), add_special_tokens);
}

std::vector<Encoding> Tokenizer::encode_batch(const std::vector<std::string>& texts, bool add_special_tokens) const {
  std::vector<Encoding> out;
  out.reserve(texts.size());
  for (const std::string& t : texts) out.push_back(encode(t, add_special_tokens));
  if (pipeline_.padding) pad_all(out, *pipeline_.padding);
  return out;
}

std::string Tokenizer::decode(const std::vector<uint32_t>& ids, bool skip_special_tokens) const {
  std::vector<std::string> tokens;
  for (uint32_t id : ids) {
    std::optional<std::string> token = id_to_token(id);
    if (!token || (skip_special_tokens && added_->is_special(*token))) continue;
    tokens.push_back(std::move(*token));
  }
  if (pipeline_.decoder) tokens = pipeline_.decoder->decode_chain(std::move(tokens));
  std::string out;
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (i > 0 && !pipeline_.decoder) out += ' ';
    out += tokens[i];
  }
  return out;
}

std::optional<uint32_t> Tokenizer::token_to_id(const std::string& token) const {
  if (const auto id = added_->token_to_id(token)) return id;
  return pipeline_.model->token_to_id(token);
}

std::optional<std::string> Tokenizer::id_to_token(uint32_t id) const {
  if (auto token = added_->id_to_token(id)) return token;
  return pipeline_.model->id_to_token(id);
}

size_t Tokenizer::vocab_size() const { return pipeline_.model->vocab_size() + added_->size(); }

}  // namespace adapters::tokenizer
