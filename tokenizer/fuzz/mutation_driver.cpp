// A bounded random-mutation fuzzer for builds without libFuzzer: mutates the target's seeds
// (byte flips, insertions, deletions, splices) for --seconds seconds with a fixed --seed, and
// reports how many inputs ran. A crash or an escaping exception fails the run.
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <random>

#include "fuzz_target.h"

namespace {

std::string mutate(std::string input, const std::vector<std::string>& seeds, std::mt19937& rng) {
  const int steps = 1 + static_cast<int>(rng() % 4);
  for (int s = 0; s < steps; ++s) {
    const size_t pos = input.empty() ? 0 : rng() % input.size();
    switch (rng() % 5) {
      case 0: if (!input.empty()) input[pos] = static_cast<char>(rng()); break;
      case 1: input.insert(pos, 1, static_cast<char>(rng())); break;
      case 2: if (!input.empty()) input.erase(pos, 1 + rng() % 8); break;
      case 3: {
        const std::string& other = seeds[rng() % seeds.size()];
        const size_t from = other.empty() ? 0 : rng() % other.size();
        input.insert(pos, other.substr(from, 1 + rng() % 16));
        break;
      }
      default: if (!input.empty()) input.insert(pos, input.substr(pos, 1 + rng() % 32)); break;
    }
  }
  return input;
}

}  // namespace

int main(int argc, char** argv) {
  double seconds = 3;
  unsigned seed = 1;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (std::strcmp(argv[i], "--seconds") == 0) seconds = std::atof(argv[i + 1]);
    else if (std::strcmp(argv[i], "--seed") == 0) seed = static_cast<unsigned>(std::atoi(argv[i + 1]));
  }
  const std::vector<std::string> seeds = fuzz_seeds();
  std::mt19937 rng(seed);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  size_t runs = 0;
  for (const std::string& s : seeds) LLVMFuzzerTestOneInput(reinterpret_cast<const uint8_t*>(s.data()), s.size()), ++runs;
  while (std::chrono::steady_clock::now() < deadline) {
    const std::string input = mutate(seeds[rng() % seeds.size()], seeds, rng);
    LLVMFuzzerTestOneInput(reinterpret_cast<const uint8_t*>(input.data()), input.size());
    ++runs;
  }
  std::cout << runs << " inputs, no crash\n";
  return 0;
}
