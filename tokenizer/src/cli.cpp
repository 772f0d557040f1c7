// `adapters tokenize`; see cli.h.
#include "adapters/tokenizer/cli.h"

#include <nlohmann/json.hpp>

#include <fstream>
#include <iostream>
#include <memory>

#include "adapters/core/error.h"
#include "adapters/core/json_parse.h"
#include "adapters/tokenizer/tokenizer.h"

namespace adapters::tokenizer {

namespace {

struct TokenizeOptions {
  std::string model;
  std::string pair;
  std::string jsonl;
  std::vector<std::string> texts;
  bool no_special_tokens = false;
};

nlohmann::json to_json(const Encoding& e) {
  nlohmann::json offsets = nlohmann::json::array();
  for (const auto& [start, end] : e.offsets) offsets.push_back({start, end});
  return {{"ids", e.ids}, {"tokens", e.tokens}, {"offsets", offsets}};
}

void print(const nlohmann::json& j) {
  std::cout << j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << '\n';
}

void run_jsonl(const Tokenizer& tokenizer, const TokenizeOptions& options) {
  std::ifstream in(options.jsonl, std::ios::binary);
  if (!in) throw Error(str("cannot read --jsonl file ", options.jsonl));
  std::string line;
  for (size_t number = 1; std::getline(in, line); ++number) {
    if (line.empty()) continue;
    const nlohmann::json input = try_parse_json(line).value_or(nlohmann::json());
    if (!input.is_object() || !input.contains("text") || !input["text"].is_string()) {
      throw Error(str(options.jsonl, ":", number, ": expected {\"text\": ..., \"pair\": ...}, found ", line.substr(0, 80)));
    }
    const std::string text = input["text"].get<std::string>();
    const bool add = !options.no_special_tokens;
    if (input.contains("pair") && input["pair"].is_string()) print(to_json(tokenizer.encode_pair(text, input["pair"].get<std::string>(), add)));
    else print(to_json(tokenizer.encode(text, add)));
  }
}

void run(const TokenizeOptions& options) {
  const Tokenizer tokenizer = Tokenizer::from_pretrained(options.model);
  if (!options.jsonl.empty()) run_jsonl(tokenizer, options);
  const bool add = !options.no_special_tokens;
  for (const std::string& text : options.texts) {
    print(to_json(options.pair.empty() ? tokenizer.encode(text, add) : tokenizer.encode_pair(text, options.pair, add)));
  }
}

}  // namespace

void add_tokenize_command(CLI::App& app) {
  auto options = std::make_shared<TokenizeOptions>();
  CLI::App* cmd = app.add_subcommand("tokenize", "Print the ids, tokens and offsets of texts, one JSON object per text");
  cmd->add_option("--model", options->model, "Model folder (tokenizer.json, vocab.txt, vocab.json + merges.txt or a .model)")->required();
  cmd->add_option("--pair", options->pair, "Second text of a pair, encoded with every TEXT");
  cmd->add_option("--jsonl", options->jsonl, "File of {\"text\": ..., \"pair\": ...} lines, one output line each");
  cmd->add_flag("--no-special-tokens", options->no_special_tokens, "Do not add the post-processor's special tokens");
  cmd->add_option("texts", options->texts, "Texts to tokenize");
  cmd->callback([options]() { run(*options); });
}

}  // namespace adapters::tokenizer
