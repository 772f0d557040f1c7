// AddedVocabulary: finds the user's added and special tokens in the text (before or after
// normalisation, with their single-word and strip options) and maps them to ids.
#pragma once

#include <optional>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "components.h"

namespace adapters::tokenizer {

class AddedVocabulary {
 public:
  AddedVocabulary(const std::vector<AddedToken>& tokens, const Normalizer* normalizer);

  // Splits the input on added tokens, normalising the other pieces (HF's extract_and_normalize).
  PreTokenizedString extract_and_normalize(const std::string& text, const Normalizer* normalizer) const;

  std::optional<uint32_t> token_to_id(const std::string& token) const;
  std::optional<std::string> id_to_token(uint32_t id) const;
  bool is_special(const std::string& token) const { return special_.count(token) > 0; }
  size_t size() const { return by_content_.size(); }

 private:
  // A byte trie over the contents to match, for leftmost-longest search.
  class Matcher {
   public:
    void add(const std::string& pattern, size_t token_index);
    // Non-overlapping leftmost-longest matches: (start, end, token index).
    std::vector<std::tuple<size_t, size_t, size_t>> find(const std::string& text) const;

   private:
    std::unordered_map<uint64_t, uint32_t> edges_;      // (node << 8 | byte) -> node
    std::unordered_map<uint32_t, size_t> terminal_;     // node -> token index
    bool first_byte_[256] = {};
    uint32_t nodes_ = 0;
  };

  void split_on(Split& split, const Matcher& matcher, std::vector<Split>& out) const;

  std::vector<AddedToken> tokens_;
  std::unordered_map<std::string, uint32_t> by_content_;
  std::unordered_map<uint32_t, std::string> by_id_;
  std::unordered_set<std::string> special_;
  Matcher raw_, normalized_;
};

}  // namespace adapters::tokenizer
