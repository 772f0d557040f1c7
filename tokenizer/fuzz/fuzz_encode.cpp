// Fuzz target: encoding arbitrary bytes (as a text and as a pair) with every golden tokenizer
// must never crash; invalid UTF-8 is repaired, nothing throws.
#include <filesystem>
#include <memory>

#include "adapters/tokenizer/tokenizer.h"
#include "fuzz_target.h"

namespace {

const std::vector<adapters::tokenizer::Tokenizer>& tokenizers() {
  static const auto all = [] {
    std::vector<adapters::tokenizer::Tokenizer> out;
    for (const char* name : {"bert_uncased", "roberta", "llama3_bpe", "llama_bpe", "t5_unigram", "unigram_byte_fallback", "misc_a", "misc_b", "misc_c"}) {
      out.push_back(adapters::tokenizer::Tokenizer::from_file(std::filesystem::path(ADAPTERS_TOKENIZER_GOLDEN_DIR) / name / "tokenizer.json"));
    }
    return out;
  }();
  return all;
}

}  // namespace

std::vector<std::string> fuzz_seeds() {
  return {"Hello world!", "  x <mask> y", "e\xcc\x81 \xf0\x9f\x91\xa8\xe2\x80\x8d\xf0\x9f\x91\xa9", "\xff\xfe\xed\xa0\x80 bad",
          "\xe4\xb8\xad\xe6\x96\x87 123 ABC-def", "[CLS] [SEP] </s> <s>", "\t\n\r\x0b\x0c  \xc2\xa0"};
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  for (const auto& t : tokenizers()) {
    const auto e = t.encode(text);
    t.decode(e.ids);
    t.encode_pair(text, text.substr(0, text.size() / 2), false);
  }
  return 0;
}
