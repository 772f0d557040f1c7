// Shared helpers of the benchmarks: BERT-base shaped models with random weights, interleaved
// timing of several variants, and the printed table of min / median / ratio to a baseline.
#pragma once

#include <torch/cuda.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include "adapters/model.h"

namespace adapters::bench {

inline models::ModelConfig bert_base_config() {
  json raw = {{"model_type", "bert"},         {"vocab_size", 30522},        {"hidden_size", 768},
              {"num_hidden_layers", 12},      {"num_attention_heads", 12},  {"intermediate_size", 3072},
              {"max_position_embeddings", 512}, {"type_vocab_size", 2},     {"hidden_act", "gelu"}};
  return models::parse_model_config(raw, "bert-base (benchmark)");
}

// Waits for the GPU's queued work, so that host timings cover it (a no-op on the CPU).
inline void synchronize(bool cuda) {
  if (cuda) torch::cuda::synchronize();
}

// The first line of every benchmark: where it runs and with what.
inline void print_header(bool cuda) {
  std::printf("BERT-base shapes on %s, %d CPU threads, libtorch %s\n", cuda ? "cuda" : "cpu", torch::get_num_threads(),
              TORCH_VERSION);
}

inline models::ModelInputs random_inputs(std::int64_t batch, std::int64_t seq, std::int64_t vocab) {
  return {torch::randint(1, vocab, {batch, seq}, torch::kLong), torch::ones({batch, seq}, torch::kLong), torch::Tensor()};
}

struct Variant {
  std::string name;
  std::function<void()> run;
};

struct Timing {
  double min_ms = 0, median_ms = 0;
};

// Runs every variant `reps` times, interleaved (a, b, c, a, b, c, ...) after one warm-up each,
// so that drifts of a noisy machine hit all variants alike.
inline std::vector<Timing> time_interleaved(const std::vector<Variant>& variants, int reps) {
  for (const auto& v : variants) v.run();
  std::vector<std::vector<double>> samples(variants.size());
  for (int r = 0; r < reps; ++r) {
    for (std::size_t i = 0; i < variants.size(); ++i) {
      const auto start = std::chrono::steady_clock::now();
      variants[i].run();
      samples[i].push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count());
    }
  }
  std::vector<Timing> out;
  for (auto& s : samples) {
    std::sort(s.begin(), s.end());
    out.push_back({s.front(), s[s.size() / 2]});
  }
  return out;
}

inline void print_table(const std::string& title, const std::vector<Variant>& variants, const std::vector<Timing>& t) {
  std::printf("\n%s\n%-28s %10s %10s %12s\n", title.c_str(), "variant", "min ms", "median ms", "vs first");
  for (std::size_t i = 0; i < variants.size(); ++i) {
    std::printf("%-28s %10.3f %10.3f %11.3fx\n", variants[i].name.c_str(), t[i].min_ms, t[i].median_ms,
                t[i].median_ms / t[0].median_ms);
  }
}

}  // namespace adapters::bench
