// SentencePiece's precompiled character map (HF tokenizers' Precompiled normalizer, the
// spm_precompiled crate): a u32 little-endian trie size, a darts-clone double-array trie of that
// many bytes, then the NUL-separated replacement strings the trie's values point into.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "components.h"

namespace adapters::tokenizer {

class CharsMap {
 public:
  // Parses the blob; errors name `where` and what is wrong.
  CharsMap(std::string_view blob, const std::string& where);

  // The replacement of the shortest key that is a prefix of `chunk` (the crate's `transform`:
  // the first result of a common-prefix search), or nullopt.
  std::optional<std::string_view> transform(std::string_view chunk) const;

 private:
  std::optional<std::string_view> replacement_at(uint32_t index) const;

  std::vector<uint32_t> units_;
  std::string replacements_;
};

// The Precompiled normalizer of tokenizer.json: {"type": "Precompiled", "precompiled_charsmap": base64}.
std::shared_ptr<const Normalizer> make_precompiled(const json& config);

}  // namespace adapters::tokenizer
