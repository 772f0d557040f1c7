// Encode throughput (MB/s and lines/s, one thread) of adapters_tokenizer and of the HF library
// through Node on the same lines, in one run, with the ratio. The Node side installs
// @anush008/tokenizers into the build folder when missing and is skipped if npm cannot.
//
//   tokenizer_bench [--repeat N] [NAME...]   (NAME: a folder of tests/golden, default: several)
#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>

#include "adapters/tokenizer/tokenizer.h"

namespace fs = std::filesystem;
using adapters::tokenizer::Tokenizer;

namespace {

const fs::path kGolden = ADAPTERS_TOKENIZER_GOLDEN_DIR;
const fs::path kNodeDir = ADAPTERS_TOKENIZER_NODE_DIR;

std::vector<std::string> bench_lines(int repeat) {
  std::vector<std::string> lines;
  std::ifstream in(kGolden / "corpus.jsonl");
  std::string line;
  std::vector<std::string> corpus;
  while (std::getline(in, line)) {
    const auto j = nlohmann::json::parse(line);
    std::string text = j["text"];
    for (char& c : text) if (c == '\n' || c == '\r') c = ' ';
    corpus.push_back(text);
  }
  for (int r = 0; r < repeat; ++r) lines.insert(lines.end(), corpus.begin(), corpus.end());
  return lines;
}

double best_seconds(const Tokenizer& tokenizer, const std::vector<std::string>& lines) {
  double best = 1e30;
  for (int pass = 0; pass < 3; ++pass) {
    const auto start = std::chrono::steady_clock::now();
    size_t tokens = 0;
    for (const std::string& l : lines) tokens += tokenizer.encode(l).size();
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (tokens > 0) best = std::min(best, s);
  }
  return best;
}

bool node_ready() {
  if (fs::exists(kNodeDir / "node_modules" / "@anush008" / "tokenizers")) return true;
  const std::string install = "npm install --silent --no-audit --no-fund --prefix '" + kNodeDir.string() + "' @anush008/tokenizers@0.6.0 >/dev/null 2>&1";
  return std::system(install.c_str()) == 0;
}

std::optional<double> node_seconds(const fs::path& tokenizer_json, const fs::path& lines_file) {
  const std::string command = "NODE_PATH='" + (kNodeDir / "node_modules").string() + "' node '" ADAPTERS_TOKENIZER_NODE_SCRIPT "' '" +
                              tokenizer_json.string() + "' '" + lines_file.string() + "'";
  FILE* pipe = popen(command.c_str(), "r");
  if (pipe == nullptr) return std::nullopt;
  std::string output;
  char buffer[256];
  while (fgets(buffer, sizeof(buffer), pipe) != nullptr) output += buffer;
  if (pclose(pipe) != 0) return std::nullopt;
  const auto j = nlohmann::json::parse(output, nullptr, false);
  return j.is_object() ? std::optional<double>(j["seconds"].get<double>()) : std::nullopt;
}

}  // namespace

int main(int argc, char** argv) {
  int repeat = 10;
  std::vector<std::string> names;
  for (int i = 1; i < argc; ++i) {
    if (std::string(argv[i]) == "--repeat" && i + 1 < argc) repeat = std::atoi(argv[++i]);
    else names.push_back(argv[i]);
  }
  if (names.empty()) names = {"bert_uncased", "roberta", "llama3_bpe", "llama_bpe", "t5_unigram"};
  const std::vector<std::string> lines = bench_lines(repeat);
  size_t bytes = 0;
  for (const std::string& l : lines) bytes += l.size();
  const fs::path lines_file = fs::temp_directory_path() / "adapters_tokenizer_bench_lines.txt";
  {
    std::ofstream out(lines_file, std::ios::binary);
    for (size_t i = 0; i < lines.size(); ++i) out << lines[i] << (i + 1 < lines.size() ? "\n" : "");
  }
  const bool node = node_ready();
  if (!node) std::cout << "(Node reference skipped: npm could not install @anush008/tokenizers)\n";
  std::printf("%zu lines, %.2f MB, one thread, best of 3\n", lines.size(), bytes / 1e6);
  std::printf("%-24s %10s %12s %10s %12s %7s\n", "tokenizer", "ours MB/s", "ours lines/s", "HF MB/s", "HF lines/s", "ratio");
  for (const std::string& name : names) {
    const fs::path file = kGolden / name / "tokenizer.json";
    const double ours = best_seconds(Tokenizer::from_file(file), lines);
    const std::optional<double> theirs = node ? node_seconds(file, lines_file) : std::nullopt;
    std::printf("%-24s %10.2f %12.0f", name.c_str(), bytes / 1e6 / ours, lines.size() / ours);
    if (theirs) std::printf(" %10.2f %12.0f %6.2fx\n", bytes / 1e6 / *theirs, lines.size() / *theirs, *theirs / ours);
    else std::printf(" %10s %12s %7s\n", "-", "-", "-");
  }
  fs::remove(lines_file);
  return 0;
}
