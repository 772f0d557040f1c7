// Golden tests: every tokenizer under tests/golden/ must reproduce, exactly, the encodings the HF
// `tokenizers` library recorded for the shared corpus (see tools/make_goldens.js), for every
// variant (special tokens on/off, truncation strategies with stride, padding, batches), and the
// legacy files of a folder must reproduce the tokenizer.json encodings.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <zlib.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "adapters/tokenizer/tokenizer.h"

namespace fs = std::filesystem;
using adapters::tokenizer::Encoding;
using adapters::tokenizer::PaddingParams;
using adapters::tokenizer::Tokenizer;
using adapters::tokenizer::TruncationParams;
using json = nlohmann::json;

namespace {

const fs::path kGolden = ADAPTERS_TOKENIZER_GOLDEN_DIR;

std::vector<json> read_jsonl(const fs::path& path) {
  std::string text;
  if (path.extension() == ".gz") {
    gzFile f = gzopen(path.c_str(), "rb");
    if (f == nullptr) throw std::runtime_error("cannot open " + path.string());
    char buffer[1 << 16];
    int n = 0;
    while ((n = gzread(f, buffer, sizeof(buffer))) > 0) text.append(buffer, static_cast<size_t>(n));
    gzclose(f);
  } else {
    std::ifstream in(path, std::ios::binary);
    std::ostringstream s;
    s << in.rdbuf();
    text = s.str();
  }
  std::vector<json> out;
  std::istringstream lines(text);
  std::string line;
  while (std::getline(lines, line)) if (!line.empty()) out.push_back(json::parse(line));
  return out;
}

Encoding::Direction direction(const json& v) { return v == "Left" ? Encoding::Direction::Left : Encoding::Direction::Right; }

std::optional<TruncationParams> truncation(const json& v) {
  if (v.is_null()) return std::nullopt;
  TruncationParams p;
  p.max_length = v["max_length"];
  p.stride = v["stride"];
  p.direction = direction(v["direction"]);
  const std::string s = v["strategy"];
  p.strategy = s == "OnlyFirst" ? TruncationParams::Strategy::OnlyFirst
               : s == "OnlySecond" ? TruncationParams::Strategy::OnlySecond : TruncationParams::Strategy::LongestFirst;
  return p;
}

std::optional<PaddingParams> padding(const json& v) {
  if (v.is_null()) return std::nullopt;
  PaddingParams p;
  if (v["strategy"].is_object()) p.fixed_length = v["strategy"]["Fixed"].get<size_t>();
  p.direction = direction(v["direction"]);
  if (v["pad_to_multiple_of"].is_number()) p.pad_to_multiple_of = v["pad_to_multiple_of"].get<size_t>();
  p.pad_id = v["pad_id"];
  p.pad_type_id = v["pad_type_id"];
  p.pad_token = v["pad_token"];
  return p;
}

json offsets_json(const Encoding& e) {
  json out = json::array();
  for (const auto& [s, t] : e.offsets) out.push_back({s, t});
  return out;
}

// Returns "" when `e` matches the recorded encoding, else a description of the first difference.
std::string compare(const Encoding& e, const json& expected, const Tokenizer& tokenizer) {
  auto check = [](const char* field, const json& got, const json& want) {
    return got == want ? std::string() : std::string(field) + ": got " + got.dump() + " want " + want.dump();
  };
  for (const std::string& diff : {check("ids", e.ids, expected["ids"]), check("offsets", offsets_json(e), expected["offsets"]),
                                  check("type_ids", e.type_ids, expected["type_ids"]), check("special", e.special_tokens_mask, expected["special"]),
                                  check("mask", e.attention_mask, expected["mask"])}) {
    if (!diff.empty()) return diff;
  }
  if (expected.contains("tokens")) {
    const std::string d = check("tokens", e.tokens, expected["tokens"]);
    if (!d.empty()) return d;
  }
  if (expected.contains("decoded")) {
    const std::string d = check("decoded", tokenizer.decode(e.ids, true), expected["decoded"]);
    if (!d.empty()) return d;
  }
  json overflow = json::array();
  for (const Encoding& o : e.overflowing) overflow.push_back(o.ids);
  return check("overflow", overflow, expected.value("overflow", json::array()));
}

struct Entry {
  std::string text;
  std::optional<std::string> pair;
};

std::vector<Entry> corpus() {
  std::vector<Entry> out;
  for (const json& j : read_jsonl(kGolden / "corpus.jsonl")) {
    out.push_back({j["text"], j.contains("pair") ? std::optional<std::string>(j["pair"].get<std::string>()) : std::nullopt});
  }
  return out;
}

// Encodes one recorded line the way the generator did for its variant.
std::vector<std::string> run_variant(Tokenizer& tokenizer, const std::vector<Entry>& entries, const json& variant,
                                     const std::vector<json>& records, size_t& checked) {
  if (!variant.value("keep_config", false)) {
    tokenizer.set_truncation(truncation(variant["truncation"]));
    tokenizer.set_padding(padding(variant["padding"]));
  }
  const bool add = variant["add_special_tokens"];
  const bool single = variant.value("single", false);
  std::vector<std::string> failures;
  auto report = [&](const json& r, const std::string& diff) {
    if (!diff.empty() && failures.size() < 5) failures.push_back("line " + std::to_string(r["i"].get<int>()) + ": " + diff);
    ++checked;
  };
  if (variant.contains("batch_size")) {
    const size_t size = variant["batch_size"];
    for (size_t start = 0; start < records.size(); start += size) {
      std::vector<std::string> texts;
      for (size_t k = start; k < std::min(records.size(), start + size); ++k) texts.push_back(entries[records[k]["i"]].text);
      const std::vector<Encoding> encodings = tokenizer.encode_batch(texts, add);
      for (size_t k = 0; k < encodings.size(); ++k) report(records[start + k], compare(encodings[k], records[start + k], tokenizer));
    }
    return failures;
  }
  for (const json& r : records) {
    const Entry& entry = entries[r["i"]];
    try {
      const Encoding e = entry.pair && !single ? tokenizer.encode_pair(entry.text, *entry.pair, add) : tokenizer.encode(entry.text, add);
      report(r, r.contains("error") ? "expected the error " + r["error"].get<std::string>() : compare(e, r, tokenizer));
    } catch (const std::exception& ex) {
      report(r, r.contains("error") ? "" : std::string("unexpected error: ") + ex.what());
    }
  }
  return failures;
}

class Golden : public ::testing::TestWithParam<std::string> {};

TEST_P(Golden, MatchesTheReferenceLibrary) {
  const std::vector<Entry> entries = corpus();
  const json variants = json::parse(std::ifstream(kGolden / "variants.json"));
  const std::vector<json> records = read_jsonl(kGolden / (GetParam() + ".golden.jsonl.gz"));
  size_t checked = 0;
  for (const auto& [name, variant] : variants.items()) {
    Tokenizer tokenizer = Tokenizer::from_file(kGolden / GetParam() / "tokenizer.json");
    std::vector<json> mine;
    for (const json& r : records) if (r["v"] == name) mine.push_back(r);
    for (const std::string& failure : run_variant(tokenizer, entries, variant, mine, checked)) ADD_FAILURE() << name << " " << failure;
  }
  EXPECT_EQ(checked, records.size());
}

INSTANTIATE_TEST_SUITE_P(Tokenizers, Golden,
                         ::testing::Values("bert_uncased", "bert_cased", "roberta", "gpt2", "llama3_bpe", "llama_bpe", "t5_unigram",
                                           "unigram_byte_fallback", "misc_a", "misc_b", "misc_c", "spm_precompiled"));

// Legacy files (vocab.txt, vocab.json + merges.txt with tokenizer_config.json) in a folder
// without tokenizer.json give the same default encodings.
class Legacy : public ::testing::TestWithParam<std::string> {};

TEST_P(Legacy, MatchesTheTokenizerJsonGoldens) {
  const fs::path folder = fs::temp_directory_path() / ("adapters_legacy_" + GetParam());
  fs::remove_all(folder);
  fs::create_directories(folder);
  for (const auto& file : fs::directory_iterator(kGolden / GetParam())) {
    if (file.path().filename() != "tokenizer.json") fs::copy_file(file.path(), folder / file.path().filename());
  }
  Tokenizer tokenizer = Tokenizer::from_pretrained(folder);
  const std::vector<Entry> entries = corpus();
  const json variants = json::parse(std::ifstream(kGolden / "variants.json"));
  std::vector<json> records;
  for (const json& r : read_jsonl(kGolden / (GetParam() + ".golden.jsonl.gz"))) if (r["v"] == "default") records.push_back(r);
  size_t checked = 0;
  for (const std::string& failure : run_variant(tokenizer, entries, variants["default"], records, checked)) ADD_FAILURE() << failure;
  EXPECT_EQ(checked, records.size());
  fs::remove_all(folder);
}

INSTANTIATE_TEST_SUITE_P(Folders, Legacy, ::testing::Values("bert_uncased", "roberta", "gpt2"));

}  // namespace
