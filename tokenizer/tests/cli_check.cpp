// End-to-end check of `adapters tokenize --jsonl`: runs the built binary on a model folder that
// holds only a golden tokenizer.json and compares every output line with the recorded encoding.
//
//   tokenizer_cli_check ADAPTERS_BINARY GOLDEN_DIR NAME
#include <nlohmann/json.hpp>
#include <zlib.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

std::vector<json> read_gzip_jsonl(const fs::path& path) {
  gzFile f = gzopen(path.c_str(), "rb");
  if (f == nullptr) throw std::runtime_error("cannot open " + path.string());
  std::string text;
  char buffer[1 << 16];
  int n = 0;
  while ((n = gzread(f, buffer, sizeof(buffer))) > 0) text.append(buffer, static_cast<size_t>(n));
  gzclose(f);
  std::vector<json> out;
  std::istringstream lines(text);
  std::string line;
  while (std::getline(lines, line)) if (!line.empty()) out.push_back(json::parse(line));
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 4) {
    std::cerr << "usage: tokenizer_cli_check ADAPTERS_BINARY GOLDEN_DIR NAME\n";
    return 2;
  }
  const fs::path binary = argv[1], golden = argv[2];
  const std::string name = argv[3];
  const fs::path work = fs::temp_directory_path() / ("adapters_cli_check_" + name);
  fs::remove_all(work);
  fs::create_directories(work / "model");
  fs::copy_file(golden / name / "tokenizer.json", work / "model" / "tokenizer.json");

  std::vector<json> expected;
  for (const json& r : read_gzip_jsonl(golden / (name + ".golden.jsonl.gz"))) if (r["v"] == "default") expected.push_back(r);
  {
    std::ifstream corpus(golden / "corpus.jsonl");
    std::ofstream input(work / "input.jsonl");
    std::string line;
    while (std::getline(corpus, line)) input << line << '\n';
  }
  const std::string command = "'" + binary.string() + "' tokenize --model '" + (work / "model").string() + "' --jsonl '" +
                              (work / "input.jsonl").string() + "'";
  FILE* pipe = popen(command.c_str(), "r");
  if (pipe == nullptr) return 1;
  std::string output;
  char buffer[1 << 16];
  size_t n = 0;
  while ((n = fread(buffer, 1, sizeof(buffer), pipe)) > 0) output.append(buffer, n);
  const int status = pclose(pipe);
  size_t passed = 0, failed = 0, index = 0;
  std::istringstream lines(output);
  std::string line;
  while (std::getline(lines, line) && index < expected.size()) {
    const json got = json::parse(line);
    const json& want = expected[index++];
    if (got["ids"] == want["ids"] && got["tokens"] == want["tokens"] && got["offsets"] == want["offsets"]) {
      ++passed;
    } else {
      ++failed;
      if (failed <= 3) std::cerr << "line " << want["i"] << ": got " << line.substr(0, 300) << "\n";
    }
  }
  failed += expected.size() - index;
  fs::remove_all(work);
  std::cout << "cli: " << passed << " passed, " << failed << " failed\n";
  return status == 0 && failed == 0 ? 0 : 1;
}
