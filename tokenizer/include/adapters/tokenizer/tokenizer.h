// Public API of the tokenizer: load a HF tokenizer (tokenizer.json, or the older vocab.txt,
// vocab.json + merges.txt and SentencePiece .model files) and turn text into the exact ids,
// tokens and offsets HF's `tokenizers` library gives.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace adapters::tokenizer {

using Offsets = std::pair<size_t, size_t>;

// The result of encoding one text (or pair of texts). Offsets count Unicode code points of the
// input text (as HF's Python and Node bindings report them).
struct Encoding {
  std::vector<uint32_t> ids;
  std::vector<uint32_t> type_ids;
  std::vector<std::string> tokens;
  std::vector<std::optional<uint32_t>> words;
  std::vector<Offsets> offsets;
  std::vector<uint32_t> special_tokens_mask;
  std::vector<uint32_t> attention_mask;
  std::vector<Encoding> overflowing;
  std::map<size_t, std::pair<size_t, size_t>> sequence_ranges;  // sequence id -> token range

  size_t size() const { return ids.size(); }
  void set_sequence_id(size_t id) { sequence_ranges[id] = {0, size()}; }
  void set_type_ids(uint32_t type_id) { type_ids.assign(size(), type_id); }

  enum class Direction { Left, Right };
  // Keeps `max_length` tokens; the rest go to `overflowing`, windows overlapping by `stride`.
  void truncate(size_t max_length, size_t stride, Direction direction);
  // Appends `other` (and combines the overflowing parts as HF does).
  void merge_with(const Encoding& other, bool growing_offsets);
  void pad(size_t length, uint32_t pad_id, uint32_t pad_type_id, const std::string& pad_token, Direction direction);
};

struct TruncationParams {
  enum class Strategy { LongestFirst, OnlyFirst, OnlySecond };
  size_t max_length = 512;
  Strategy strategy = Strategy::LongestFirst;
  size_t stride = 0;
  Encoding::Direction direction = Encoding::Direction::Right;
};

struct PaddingParams {
  std::optional<size_t> fixed_length;  // none: pad to the longest of the batch
  Encoding::Direction direction = Encoding::Direction::Right;
  std::optional<size_t> pad_to_multiple_of;
  uint32_t pad_id = 0;
  uint32_t pad_type_id = 0;
  std::string pad_token = "[PAD]";
};

// A token the user added on top of the model vocabulary (HF's AddedToken).
struct AddedToken {
  std::string content;
  uint32_t id = 0;
  bool single_word = false;
  bool lstrip = false;
  bool rstrip = false;
  bool normalized = true;
  bool special = false;
};

class Normalizer;
class PreTokenizer;
class Model;
class PostProcessor;
class Decoder;
class AddedVocabulary;

// The pipeline parts of a tokenizer, as read from tokenizer.json or built from legacy files.
struct Pipeline {
  std::shared_ptr<const Normalizer> normalizer;
  std::shared_ptr<const PreTokenizer> pre_tokenizer;
  std::shared_ptr<const Model> model;
  std::shared_ptr<const PostProcessor> post_processor;
  std::shared_ptr<const Decoder> decoder;
  std::vector<AddedToken> added_tokens;
  std::optional<TruncationParams> truncation;
  std::optional<PaddingParams> padding;
};

class Tokenizer {
 public:
  explicit Tokenizer(Pipeline pipeline);
  ~Tokenizer();
  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;

  // Parses the contents of a tokenizer.json; errors name the key or type at fault.
  static Tokenizer from_json(const std::string& json_text);
  static Tokenizer from_file(const std::filesystem::path& tokenizer_json);
  // AutoTokenizer-style: a model folder with tokenizer.json, or vocab.txt, or vocab.json and
  // merges.txt, or a SentencePiece .model (with tokenizer_config.json / special_tokens_map.json).
  static Tokenizer from_pretrained(const std::filesystem::path& folder);

  // Invalid UTF-8 in the inputs is replaced by U+FFFD, as Rust's from_utf8_lossy does.
  Encoding encode(const std::string& text, bool add_special_tokens = true) const;
  Encoding encode_pair(const std::string& text, const std::string& pair, bool add_special_tokens = true) const;
  std::vector<Encoding> encode_batch(const std::vector<std::string>& texts, bool add_special_tokens = true) const;
  std::string decode(const std::vector<uint32_t>& ids, bool skip_special_tokens = true) const;

  void set_truncation(std::optional<TruncationParams> params) { pipeline_.truncation = std::move(params); }
  void set_padding(std::optional<PaddingParams> params) { pipeline_.padding = std::move(params); }
  const std::optional<TruncationParams>& truncation() const { return pipeline_.truncation; }
  const std::optional<PaddingParams>& padding() const { return pipeline_.padding; }

  std::optional<uint32_t> token_to_id(const std::string& token) const;
  std::optional<std::string> id_to_token(uint32_t id) const;
  size_t vocab_size() const;

 private:
  Encoding encode_sequence(const std::string& text, uint32_t type_id) const;
  Encoding post_process(Encoding encoding, std::optional<Encoding> pair, bool add_special_tokens) const;

  Pipeline pipeline_;
  std::unique_ptr<AddedVocabulary> added_;
};

}  // namespace adapters::tokenizer
