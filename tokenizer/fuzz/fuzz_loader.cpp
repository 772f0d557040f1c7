// Fuzz target: Tokenizer::from_json on arbitrary bytes must load or throw adapters::Error, and
// a loaded tokenizer must encode a fixed text without crashing.
#include "adapters/core/error.h"
#include "adapters/tokenizer/tokenizer.h"
#include "fuzz_target.h"

std::vector<std::string> fuzz_seeds() {
  return {
      R"({"model":{"type":"WordPiece","unk_token":"[UNK]","vocab":{"[UNK]":0,"a":1,"##b":2}},"normalizer":{"type":"BertNormalizer"},"pre_tokenizer":{"type":"BertPreTokenizer"}})",
      R"({"model":{"type":"BPE","vocab":{"a":0,"b":1,"ab":2},"merges":[["a","b"]],"byte_fallback":true},"pre_tokenizer":{"type":"ByteLevel"},"decoder":{"type":"ByteLevel"}})",
      R"({"model":{"type":"Unigram","unk_id":0,"vocab":[["<unk>",0],["a",-1.5],["ab",-2]]},"pre_tokenizer":{"type":"Metaspace","replacement":"_","prepend_scheme":"first"}})",
      R"({"model":{"type":"Unigram","unk_id":0,"vocab":[["<unk>",0],["x",-1]]},"normalizer":{"type":"Precompiled","precompiled_charsmap":"CAAAAAAAAABhAQAAeAAAAA=="}})",
      R"({"model":{"type":"WordLevel","vocab":{"<unk>":0,"x":1}},"pre_tokenizer":{"type":"Split","pattern":{"Regex":"\\s+"},"behavior":"Removed","invert":false},"post_processor":{"type":"TemplateProcessing","single":[{"Sequence":{"id":"A","type_id":0}}],"pair":[{"Sequence":{"id":"A","type_id":0}},{"Sequence":{"id":"B","type_id":1}}],"special_tokens":{}},"truncation":{"max_length":3,"strategy":"LongestFirst","stride":1},"padding":{"strategy":"BatchLongest","direction":"Left"}})",
  };
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const auto tokenizer = adapters::tokenizer::Tokenizer::from_json(std::string(reinterpret_cast<const char*>(data), size));
    tokenizer.encode_pair("ab a  b abab", "b a");
  } catch (const adapters::Error&) {
  }
  return 0;
}
