// The `adapters tokenize` subcommand: ids, tokens and offsets of texts with a model folder's
// tokenizer, one JSON object per text (or per line of a --jsonl file).
#pragma once

#include <CLI/CLI.hpp>

namespace adapters::tokenizer {

void add_tokenize_command(CLI::App& app);

}  // namespace adapters::tokenizer
