// Long inputs: encoding time grows linearly with the length of a line (normalizers, Metaspace,
// Replace, BPE, WordPiece and Unigram on one long line or word), memory stays within a fixed
// number of bytes per input byte, a long line gives the tokens of its pieces, and a regular
// expression PCRE2 cannot finish is an error, never the silent end of the matches.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <random>

#include "adapters/core/error.h"
#include "adapters/tokenizer/tokenizer.h"

namespace fs = std::filesystem;
using adapters::tokenizer::Encoding;
using adapters::tokenizer::Tokenizer;
using json = nlohmann::json;

namespace {

const fs::path kGolden = ADAPTERS_TOKENIZER_GOLDEN_DIR;

Tokenizer golden(const std::string& name) {
  Tokenizer t = Tokenizer::from_file(kGolden / name / "tokenizer.json");
  t.set_truncation(std::nullopt);
  t.set_padding(std::nullopt);
  return t;
}

// ---- texts of about `bytes` bytes, the same for the same length ---------------------------------

using MakeText = std::function<std::string(size_t bytes)>;

// Words of 1 to 9 lowercase letters separated by single spaces.
std::string ascii_words(size_t bytes) {
  std::mt19937 rng(7);
  std::string s;
  while (s.size() < bytes) {
    for (size_t n = 1 + rng() % 9; n > 0; --n) s += static_cast<char>('a' + rng() % 26);
    s += ' ';
  }
  s.resize(bytes);
  return s;
}

// Words of Latin, Cyrillic, Greek, CJK and accented letters, digits and punctuation.
std::string mixed_words(size_t bytes) {
  static const char* pieces[] = {"a", "é", "ö", "ж", "д", "λ", "日", "本", "中", "ß", "7", "42", ",", "!", "-"};
  std::mt19937 rng(11);
  std::string s;
  while (s.size() < bytes) {
    for (size_t n = 1 + rng() % 6; n > 0; --n) s += pieces[rng() % std::size(pieces)];
    s += ' ';
  }
  return s;
}

// Every other character a space: a replacement (Replace, Metaspace) for every second byte.
std::string spaced_letters(size_t bytes) {
  std::string s;
  while (s.size() < bytes) s += "x ";
  return s;
}

// Private-use characters, in no vocabulary: one long run of unknown characters.
std::string private_use(size_t bytes) {
  std::string s;
  for (size_t i = 0; s.size() + 3 <= bytes; ++i) s += std::string("\xEE\x80") + static_cast<char>(0x80 + i % 64);
  return s;
}

// ---- measurements -------------------------------------------------------------------------------

// Wall-clock seconds for encoding every text of `texts`.
double encode_seconds(const Tokenizer& t, const std::vector<std::string>& texts) {
  const auto start = std::chrono::steady_clock::now();
  for (const std::string& text : texts) t.encode(text, false);
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// `text` cut into pieces of about `bytes` bytes, at character boundaries.
std::vector<std::string> cut(const std::string& text, size_t bytes) {
  std::vector<std::string> pieces;
  for (size_t start = 0; start < text.size();) {
    size_t end = std::min(start + bytes, text.size());
    while (end < text.size() && (static_cast<unsigned char>(text[end]) & 0xC0) == 0x80) ++end;
    pieces.push_back(text.substr(start, end - start));
    start = end;
  }
  return pieces;
}

// A line (256 KiB unless said) must take about as long as the same text cut into 4 KiB lines: a
// few times as long at most in linear time (its work does not fit in the caches), about a hundred
// times in quadratic time. The two are timed in turns, up to three times, keeping the best of
// each, so that a busy machine slows both.
void expect_linear_time(const Tokenizer& t, const MakeText& make, const std::string& what, size_t bytes = 256 << 10) {
  constexpr double kMaxRatio = 16;
  const std::string line = make(bytes);
  const std::vector<std::string> pieces = cut(line, 4096);
  double whole = encode_seconds(t, {line}), parts = std::max(encode_seconds(t, pieces), 1e-3);
  for (int round = 1; round < 3 && whole >= kMaxRatio * parts; ++round) {
    whole = std::min(whole, encode_seconds(t, {line}));
    parts = std::min(parts, std::max(encode_seconds(t, pieces), 1e-3));
  }
  EXPECT_LT(whole, kMaxRatio * parts) << what << ": " << line.size() << " bytes in " << whole << " s as one line, " << parts
                                      << " s as lines of 4 KiB";
}

// Peak resident memory in bytes (VmHWM, else getrusage's ru_maxrss, which also counts the peak of
// the process image before exec).
size_t peak_memory() {
  std::ifstream status("/proc/self/status");
  for (std::string line; std::getline(status, line);) {
    if (line.rfind("VmHWM:", 0) == 0) return std::stoul(line.substr(6)) * 1024;
  }
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<size_t>(usage.ru_maxrss) * 1024;
}

// Resets the peak to the current resident memory where Linux allows it, and returns it.
size_t reset_peak_memory() {
  std::ofstream("/proc/self/clear_refs") << "5";
  return peak_memory();
}

bool sanitized() {
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  return true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer) || __has_feature(memory_sanitizer)
  return true;
#endif
#endif
  return false;
}

// ---- tokenizers of our own ----------------------------------------------------------------------

// A byte-level BPE whose merges double runs of "a" up to 1024 of them: a long word of "a" is
// merged all the way, so its memory is that of the merging, not of the tokens.
Tokenizer doubling_bpe() {
  json vocab = json::object(), merges = json::array();
  std::string run = "a";
  vocab[run] = 0;
  for (int k = 1; k <= 10; ++k) {
    merges.push_back(run + " " + run);
    run += run;
    vocab[run] = k;
  }
  const json doc = {{"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", merges}}},
                    {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}}}};
  return Tokenizer::from_json(doc.dump());
}

// A WordPiece that looks at words of any length (max_input_chars_per_word of a billion).
Tokenizer unbounded_wordpiece() {
  const json doc = {{"model", {{"type", "WordPiece"}, {"unk_token", "[UNK]"}, {"max_input_chars_per_word", 1000000000},
                               {"vocab", {{"[UNK]", 0}, {"a", 1}, {"##a", 2}, {"##aa", 3}, {"b", 4}, {"##b", 5}}}}},
                    {"pre_tokenizer", {{"type", "WhitespaceSplit"}}}};
  return Tokenizer::from_json(doc.dump());
}

// A Split pre-tokenizer on `pattern` (pieces isolated) and a WordLevel model knowing only " ", so
// the ids show how the text was cut: 0 for each piece but a single space, 1 for that.
Tokenizer split_on(const std::string& pattern) {
  const json doc = {{"model", {{"type", "WordLevel"}, {"unk_token", "[UNK]"}, {"vocab", {{"[UNK]", 0}, {" ", 1}}}}},
                    {"pre_tokenizer", {{"type", "Split"}, {"pattern", {{"Regex", pattern}}}, {"behavior", "Isolated"}, {"invert", false}}}};
  return Tokenizer::from_json(doc.dump());
}

// ---- linear time --------------------------------------------------------------------------------

TEST(TokenizerLinearTime, ReplaceAndPrependOnOneLongLine) {
  const Tokenizer llama = golden("llama_bpe");  // Prepend "▁", Replace " " -> "▁", no pre-tokenizer
  expect_linear_time(llama, ascii_words, "llama_bpe, ASCII words");
  expect_linear_time(llama, spaced_letters, "llama_bpe, every other byte a space");
  expect_linear_time(golden("misc_a"), [](size_t n) {  // NFKC, Lowercase, Strip, Replace \d{3,} -> #
    std::string s;
    while (s.size() < n) s += "Ab 1234 ";
    return s;
  }, "misc_a, numbers replaced");
}

TEST(TokenizerLinearTime, MetaspaceOnOneLongLine) {
  expect_linear_time(golden("unigram_byte_fallback"), ascii_words, "unigram_byte_fallback (Metaspace, no split), ASCII words");
  expect_linear_time(golden("spm_precompiled"), spaced_letters, "spm_precompiled (Precompiled, Strip, Replace, Metaspace)");
}

TEST(TokenizerLinearTime, NormalizersOnMixedScripts) {
  expect_linear_time(golden("bert_uncased"), mixed_words, "bert_uncased (BertNormalizer), mixed scripts");
  expect_linear_time(golden("misc_b"), mixed_words, "misc_b (NFD, StripAccents, NFC, Lowercase, Replace), mixed scripts");
}

TEST(TokenizerLinearTime, UnigramRunOfUnknownCharacters) {
  // Fusing unknown pieces by prepending each to a string is quadratic with a small constant.
  expect_linear_time(golden("t5_unigram"), private_use, "t5_unigram, unknown characters", 1 << 20);
}

TEST(TokenizerLinearTime, ByteLevelBpeOnOneLongWord) {
  expect_linear_time(golden("gpt2"), [](size_t n) { return std::string(n, 'q'); }, "gpt2, one word");
  expect_linear_time(doubling_bpe(), [](size_t n) { return std::string(n, 'a'); }, "doubling BPE, one word");
}

TEST(TokenizerLinearTime, WordPieceOnOneLongWord) {
  const Tokenizer t = unbounded_wordpiece();
  const Encoding e = t.encode(std::string(64 << 10, 'a') + " b", false);
  ASSERT_EQ(e.size(), (32u << 10) + 2);  // "a", 32767 "##aa", "##a", "b"
  EXPECT_EQ(e.tokens.front(), "a");
  EXPECT_EQ(e.tokens[1], "##aa");
  EXPECT_EQ(e.tokens.back(), "b");
  expect_linear_time(t, [](size_t n) { return std::string(n, 'a'); }, "WordPiece, one word");
}

// ---- bounded memory -----------------------------------------------------------------------------

// Merging keeps 16 bytes per symbol and 12 per pending merge, the text 9 bytes per byte: about
// 45 bytes per byte at the peak (94 with the 32-byte symbols, 24-byte merges and 16-byte
// alignments of before).
TEST(TokenizerBoundedMemory, ByteLevelBpeOnOneLongWord) {
  if (sanitized()) GTEST_SKIP() << "sanitizers change memory use";
  const Tokenizer t = doubling_bpe();
  const std::string word(2 << 20, 'a');
  const size_t before = reset_peak_memory();
  const Encoding e = t.encode(word, false);
  const double per_byte = static_cast<double>(peak_memory() - before) / word.size();
  ASSERT_EQ(e.size(), word.size() / 1024);
  EXPECT_EQ(e.tokens.back(), std::string(1024, 'a'));
  EXPECT_EQ(e.offsets.back(), (adapters::tokenizer::Offsets{word.size() - 1024, word.size()}));
  EXPECT_LT(per_byte, 64.0) << "peak memory grew by " << per_byte << " bytes per byte of a 2 MiB word";
}

// ---- a long line is its pieces ------------------------------------------------------------------

// Where pre-tokenization cuts at spaces, a long line gives the tokens of its pieces cut before
// a space, offsets moved by the characters before each piece.
TEST(TokenizerLongLine, GivesTheTokensOfItsPieces) {
  const std::string line = mixed_words(256 << 10);
  for (const char* name : {"bert_uncased", "gpt2", "t5_unigram", "spm_precompiled", "misc_b"}) {
    const Tokenizer t = golden(name);
    const Encoding whole = t.encode(line, false);
    std::vector<uint32_t> ids;
    std::vector<adapters::tokenizer::Offsets> offsets;
    size_t chars_before = 0;
    for (size_t start = 0; start < line.size();) {
      const size_t space = line.find(' ', std::min(start + 4096, line.size()));
      const size_t end = space == std::string::npos ? line.size() : space;
      const std::string piece = line.substr(start, end - start);
      const Encoding part = t.encode(piece, false);
      ids.insert(ids.end(), part.ids.begin(), part.ids.end());
      for (const auto& [s, e] : part.offsets) offsets.push_back({s + chars_before, e + chars_before});
      chars_before += static_cast<size_t>(std::count_if(piece.begin(), piece.end(), [](char c) { return (static_cast<unsigned char>(c) & 0xC0) != 0x80; }));
      start = end;
    }
    EXPECT_EQ(whole.ids, ids) << name;
    EXPECT_EQ(whole.offsets, offsets) << name;
  }
}

// ---- regular expressions that PCRE2 cannot finish -----------------------------------------------

// A repeated group keeps a JIT stack frame per repetition: over 1 MiB it overflows PCRE2's
// default JIT stack, and the match is retried with a larger one instead of ending the matches.
TEST(TokenizerRegexLimits, DeepRepetitionOnALongLineStillMatches) {
  const Tokenizer t = split_on("(?:a|b)+");
  std::string line;
  while (line.size() < (1 << 20)) line += "ab";
  line += " ab";
  const Encoding e = t.encode(line, false);
  EXPECT_EQ(e.ids, (std::vector<uint32_t>{0, 1, 0}));
  ASSERT_EQ(e.size(), 3u);
  EXPECT_EQ(e.offsets[0], (adapters::tokenizer::Offsets{0, line.size() - 3}));
}

// Catastrophic backtracking reaches PCRE2's match limit: an error naming the pattern and the
// reason, not a text left unsplit.
TEST(TokenizerRegexLimits, MatchLimitIsAnError) {
  const Tokenizer t = split_on("(a+)+b");
  const std::string line = std::string(40, 'a') + "c b";
  try {
    const Encoding e = t.encode(line, false);
    FAIL() << "no error; " << e.size() << " tokens";
  } catch (const adapters::Error& error) {
    const std::string message = error.what();
    EXPECT_NE(message.find("\"(a+)+b\""), std::string::npos) << message;
    EXPECT_NE(message.find("match limit"), std::string::npos) << message;
  }
}

}  // namespace
