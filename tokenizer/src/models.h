// Helpers of the models shared with the legacy-file loader.
#pragma once

#include <string>
#include <utility>

namespace adapters::tokenizer {

// Splits a merges.txt line "a b" into its two tokens.
std::pair<std::string, std::string> split_merge_line(const std::string& line);

}  // namespace adapters::tokenizer
