// SentencePiece .model folders: a model trained here on the golden corpus, loaded through
// from_pretrained, gives libsentencepiece's own pieces and ids plus the configured <s>/</s>.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include <filesystem>
#include <fstream>

#include "adapters/tokenizer/tokenizer.h"

namespace fs = std::filesystem;

namespace {

const fs::path kGolden = ADAPTERS_TOKENIZER_GOLDEN_DIR;

std::vector<std::string> corpus_texts() {
  std::vector<std::string> texts;
  std::ifstream in(kGolden / "corpus.jsonl");
  std::string line;
  while (std::getline(in, line)) texts.push_back(nlohmann::json::parse(line)["text"]);
  return texts;
}

TEST(SentencePiece, ModelFolderMatchesLibsentencepiece) {
  const fs::path folder = fs::temp_directory_path() / "adapters_spm_model";
  fs::remove_all(folder);
  fs::create_directories(folder);
  const std::vector<std::string> texts = corpus_texts();
  {
    std::ofstream train(folder / "train.txt");
    for (const std::string& t : texts) train << t << '\n';
  }
  const auto status = sentencepiece::SentencePieceTrainer::Train(
      "--input=" + (folder / "train.txt").string() + " --model_prefix=" + (folder / "tokenizer").string() +
      " --vocab_size=2000 --model_type=unigram --byte_fallback=true --character_coverage=0.995 --minloglevel=2");
  ASSERT_TRUE(status.ok()) << status.ToString();
  std::ofstream(folder / "tokenizer_config.json") << R"({"bos_token": "<s>", "eos_token": "</s>", "add_bos_token": true, "add_eos_token": true})";

  const auto tokenizer = adapters::tokenizer::Tokenizer::from_pretrained(folder);
  sentencepiece::SentencePieceProcessor reference;
  ASSERT_TRUE(reference.Load((folder / "tokenizer.model").string()).ok());
  for (const std::string& text : texts) {
    // Like HF's fast tokenizers (and unlike plain libsentencepiece), control tokens written in
    // the text are matched as special tokens; such texts are left out of this comparison.
    if (text.find("<s>") != std::string::npos || text.find("</s>") != std::string::npos) continue;
    std::vector<int> ids;
    ASSERT_TRUE(reference.Encode(text, &ids).ok());
    ids.insert(ids.begin(), reference.bos_id());
    ids.push_back(reference.eos_id());
    const auto e = tokenizer.encode(text);
    ASSERT_EQ(std::vector<int>(e.ids.begin(), e.ids.end()), ids) << text;
  }
  fs::remove_all(folder);
}

}  // namespace
