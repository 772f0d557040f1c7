// The pipeline stages of a tokenizer (normalizer, pre-tokenizer, model, post-processor,
// decoder), the PreTokenizedString they share, and the registries that build each stage from
// its tokenizer.json object by "type".
#pragma once

#include <nlohmann/json.hpp>

#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "adapters/tokenizer/tokenizer.h"
#include "normalized_string.h"
#include "regex.h"

namespace adapters::tokenizer {

using json = nlohmann::json;

struct Token {
  uint32_t id;
  std::string value;
  Offsets offsets;  // bytes of the normalised piece the model was given
};

// The input cut into pieces; a piece with tokens (an added token, or a tokenized piece) is
// final and no longer split or normalised.
struct Split {
  NormalizedString normalized;
  std::optional<std::vector<Token>> tokens;
};

class PreTokenizedString {
 public:
  explicit PreTokenizedString(NormalizedString whole) { splits_.push_back({std::move(whole), std::nullopt}); }

  // Replaces every piece without tokens by the pieces `fn` returns, dropping empty ones.
  template <typename Fn>
  void split(Fn fn);
  template <typename Fn>
  void normalize(Fn fn) {
    for (Split& s : splits_) if (!s.tokens) fn(s.normalized);
  }
  std::vector<Split>& splits() { return splits_; }

 private:
  std::vector<Split> splits_;
};

class Normalizer {
 public:
  virtual ~Normalizer() = default;
  virtual void normalize(NormalizedString& text) const = 0;
};

class PreTokenizer {
 public:
  virtual ~PreTokenizer() = default;
  virtual void pre_tokenize(PreTokenizedString& text) const = 0;
};

class Model {
 public:
  virtual ~Model() = default;
  virtual std::vector<Token> tokenize(const std::string& piece) const = 0;
  virtual std::optional<uint32_t> token_to_id(const std::string& token) const = 0;
  virtual std::optional<std::string> id_to_token(uint32_t id) const = 0;
  virtual size_t vocab_size() const = 0;
};

class PostProcessor {
 public:
  virtual ~PostProcessor() = default;
  virtual size_t added_tokens(bool is_pair) const = 0;
  // Adds special tokens etc. to the encodings of the sequences (one or two of them).
  virtual std::vector<Encoding> process_encodings(std::vector<Encoding> encodings, bool add_special_tokens) const = 0;
};

class Decoder {
 public:
  virtual ~Decoder() = default;
  virtual std::vector<std::string> decode_chain(std::vector<std::string> tokens) const = 0;
};

// Builders from tokenizer.json objects; each throws adapters::Error naming an unknown "type".
std::shared_ptr<const Normalizer> make_normalizer(const json& config);
std::shared_ptr<const PreTokenizer> make_pre_tokenizer(const json& config);
std::shared_ptr<const Model> make_model(const json& config);
std::shared_ptr<const PostProcessor> make_post_processor(const json& config);
std::shared_ptr<const Decoder> make_decoder(const json& config);

// Typed access to a tokenizer.json object; errors name the key, the expectation and the value.
const json& require(const json& object, const char* key, const char* where);
std::string string_or(const json& object, const char* key, const std::string& fallback);
bool bool_or(const json& object, const char* key, bool fallback);
SplitBehavior parse_behavior(const json& value);
// A Replace/Split pattern: {"String": literal} or {"Regex": pattern}.
Regex parse_pattern(const json& pattern);

// Inserts the tokens of `part` (every per-token field, not its overflowing parts or sequence
// ranges) into `e` before token `at`.
void insert_tokens(Encoding& e, size_t at, const Encoding& part);

// Pieces of the byte-level machinery shared by the pre-tokenizer, processor and decoder.
const std::string& byte_to_char(unsigned char byte);  // UTF-8 of the char standing for `byte`
std::optional<unsigned char> char_to_byte(char32_t c);
void trim_byte_level_offsets(Encoding& encoding, bool add_prefix_space);

template <typename Fn>
void PreTokenizedString::split(Fn fn) {
  std::vector<Split> result;
  result.reserve(splits_.size());
  for (Split& s : splits_) {
    if (s.tokens) {
      result.push_back(std::move(s));
      continue;
    }
    for (NormalizedString& piece : fn(std::move(s.normalized))) {
      if (!piece.empty()) result.push_back({std::move(piece), std::nullopt});
    }
  }
  splits_ = std::move(result);
}

}  // namespace adapters::tokenizer
