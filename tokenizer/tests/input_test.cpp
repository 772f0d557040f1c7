// Bad and unusual input: invalid UTF-8, unknown component types, missing files, huge texts, and
// the public API around encoding (decode, batches, vocabulary look-ups).
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "adapters/core/error.h"
#include "adapters/tokenizer/tokenizer.h"

namespace fs = std::filesystem;
using adapters::tokenizer::Tokenizer;

namespace {

const fs::path kGolden = ADAPTERS_TOKENIZER_GOLDEN_DIR;

std::string error_of(const std::string& json_text) {
  try {
    Tokenizer::from_json(json_text);
  } catch (const adapters::Error& e) {
    return e.what();
  }
  return "no error";
}

const char* kModel = R"("model": {"type": "WordPiece", "unk_token": "[UNK]", "vocab": {"[UNK]": 0, "a": 1}})";

TEST(Input, InvalidUtf8IsReplacedAsRustDoes) {
  const Tokenizer t = Tokenizer::from_file(kGolden / "gpt2" / "tokenizer.json");
  const auto lossy = t.encode("a\xff" "b\xe2\x82" "c\xed\xa0\x80");
  const auto replaced = t.encode("a\xef\xbf\xbd" "b\xef\xbf\xbd" "c\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd");
  EXPECT_EQ(lossy.ids, replaced.ids);
}

TEST(Input, UnknownComponentTypesAreNamed) {
  EXPECT_NE(error_of(std::string("{") + kModel + R"(, "normalizer": {"type": "Fancy"}})").find("normalizer type \"Fancy\""), std::string::npos);
  EXPECT_NE(error_of(std::string("{") + kModel + R"(, "pre_tokenizer": {"type": "Odd"}})").find("pre_tokenizer type \"Odd\""), std::string::npos);
  EXPECT_NE(error_of(std::string("{") + kModel + R"(, "decoder": {"type": "Weird"}})").find("decoder type \"Weird\""), std::string::npos);
  EXPECT_NE(error_of(std::string("{") + kModel + R"(, "post_processor": {"type": "Rare"}})").find("post_processor type \"Rare\""), std::string::npos);
  EXPECT_NE(error_of(R"({"model": {"type": "Mystery"}})").find("model type \"Mystery\""), std::string::npos);
  EXPECT_NE(error_of("{}").find("\"model\""), std::string::npos);
  EXPECT_NE(error_of("not json").find("not a JSON object"), std::string::npos);
  EXPECT_NE(error_of(std::string("{") + kModel + R"(, "pre_tokenizer": {"type": "Split", "pattern": {"Regex": "("}, "behavior": "Isolated"}})")
                .find("invalid regular expression"), std::string::npos);
}

// A tokenizer.json nested past 128 levels (a Sequence of Sequences of ...) is refused while it
// is parsed, before anything walks it recursively.
TEST(Input, DeeplyNestedDocumentsAreRefused) {
  std::string normalizer;
  for (int i = 0; i < 200000; ++i) normalizer += R"({"type": "Sequence", "normalizers": [)";
  normalizer += R"({"type": "Lowercase"})";
  for (int i = 0; i < 200000; ++i) normalizer += "]}";
  const std::string e = error_of(std::string("{") + kModel + R"(, "normalizer": )" + normalizer + "}");
  EXPECT_NE(e.find("nested deeper than 128 levels"), std::string::npos) << e.substr(0, 300);
  EXPECT_LT(e.size(), 500u);
}

TEST(Input, MissingFilesAreReported) {
  const fs::path empty = fs::temp_directory_path() / "adapters_tokenizer_empty";
  fs::create_directories(empty);
  EXPECT_THROW(Tokenizer::from_pretrained(empty), adapters::Error);
  EXPECT_THROW(Tokenizer::from_pretrained(empty / "missing"), adapters::Error);
  EXPECT_THROW(Tokenizer::from_file(empty / "tokenizer.json"), adapters::Error);
  std::ofstream(empty / "merges.txt") << "#version: 0.2\na b\n";
  std::ofstream(empty / "vocab.json") << R"({"a": 0, "b": 1})";
  EXPECT_THROW(Tokenizer::from_pretrained(empty), adapters::Error);  // "ab" is missing from the vocabulary
  fs::remove_all(empty);
}

TEST(Input, ManyMegabyteTexts) {
  const Tokenizer t = Tokenizer::from_file(kGolden / "bert_uncased" / "tokenizer.json");
  std::string text;
  while (text.size() < (8u << 20)) text += "Tokenizers split long documents into pieces, 日本語 too. ";
  const auto e = t.encode(text);
  EXPECT_GT(e.size(), 1000000u);
  for (size_t i = 2; i + 1 < e.size(); ++i) ASSERT_LE(e.offsets[i - 1].second, e.offsets[i].first + 1) << "token " << i;
  const std::string word(3u << 20, 'x');  // one enormous word
  EXPECT_EQ(t.encode(word, false).tokens, std::vector<std::string>{"[UNK]"});
}

TEST(Api, BatchDecodeAndLookups) {
  const Tokenizer t = Tokenizer::from_file(kGolden / "bert_uncased" / "tokenizer.json");
  const auto batch = t.encode_batch({"Hello world", "A longer sentence, with punctuation!"});
  ASSERT_EQ(batch.size(), 2u);
  EXPECT_EQ(t.decode(batch[1].ids), "a longer sentence, with punctuation!");
  EXPECT_EQ(t.token_to_id("[CLS]"), batch[0].ids.front());
  EXPECT_EQ(t.id_to_token(batch[0].ids.back()), "[SEP]");
  EXPECT_GT(t.vocab_size(), 1000u);
}

}  // namespace
