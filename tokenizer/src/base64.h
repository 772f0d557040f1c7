// Standard base64 (RFC 4648, with padding), as tokenizer.json stores a Precompiled charsmap.
#pragma once

#include <optional>
#include <string>
#include <string_view>

namespace adapters::tokenizer::base64 {

std::string encode(std::string_view bytes);
// nullopt when `text` is not padded standard base64.
std::optional<std::string> decode(std::string_view text);

}  // namespace adapters::tokenizer::base64
