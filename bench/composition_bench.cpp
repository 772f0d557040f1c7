// Benchmark: composition blocks on BERT-base shapes (random weights), CPU or CUDA.
//   Parallel of 2, 4 and 8 seq_bn adapters in one forward at batch 1 vs running the adapters one
//   by one (n forwards of batch 1), interleaved; the ratio below 1 is the gain of sharing the
//   embeddings and batching the n copies through the Transformer.
//   Fuse of 3 seq_bn adapters vs the plain model and one adapter.
// Usage: composition_bench [repetition scale] [cpu|cuda] [sequence length]
#include <cstdlib>
#include <cstring>

#include "bench_util.h"

using namespace adapters;

int main(int argc, char** argv) {
  const int scale = argc > 1 ? std::max(1, std::atoi(argv[1])) : 1;
  const bool cuda = argc > 2 && std::strcmp(argv[2], "cuda") == 0;
  const std::int64_t seq = argc > 3 ? std::max(1, std::atoi(argv[3])) : 128;
  torch::manual_seed(0);
  c10::InferenceMode inference;
  AdapterModel model(bench::bert_base_config());
  model->eval();
  std::vector<std::string> names;
  for (int i = 0; i < 8; ++i) {
    names.push_back("a" + std::to_string(i));
    model->add_adapter(names.back(), "seq_bn");
  }
  model->add_adapter_fusion(composition::parse("Fuse(a0, a1, a2)"));
  if (cuda) model->to(torch::kCUDA);
  auto sync = [cuda] { bench::synchronize(cuda); };
  bench::print_header(cuda);
  const auto inputs = bench::random_inputs(1, seq, model->config().vocab_size);
  const int reps = (cuda ? 50 : 8) * scale;

  std::printf("\nParallel(n adapters) in one forward vs n forwards one adapter at a time (batch 1 x seq %lld)\n",
              static_cast<long long>(seq));
  std::printf("%-6s %14s %14s %10s\n", "n", "one by one ms", "Parallel ms", "ratio");
  for (int n : {2, 4, 8}) {
    std::vector<Block> members, singles;
    for (int i = 0; i < n; ++i) {
      members.push_back(Block::adapter(names[static_cast<std::size_t>(i)]));
      singles.push_back(Block::adapter(names[static_cast<std::size_t>(i)]));
    }
    const Block parallel = Block::of(composition::BlockType::Parallel, members);
    std::vector<bench::Variant> variants = {
        {"one by one",
         [&] {
           for (const auto& s : singles) model->forward(inputs, {&s});
           sync();
         }},
        {"Parallel", [&] { model->forward(inputs, {&parallel}); sync(); }},
    };
    const auto t = bench::time_interleaved(variants, reps);
    std::printf("%-6d %14.3f %14.3f %9.3fx\n", n, t[0].median_ms, t[1].median_ms, t[1].median_ms / t[0].median_ms);
  }

  const Block single = Block::adapter("a0");
  const Block fuse = composition::parse("Fuse(a0, a1, a2)");
  for (std::int64_t batch : {1, 8}) {
    const auto in = bench::random_inputs(batch, seq, model->config().vocab_size);
    std::vector<bench::Variant> variants = {
        {"base", [&] { model->forward(in); sync(); }},
        {"seq_bn (one adapter)", [&] { model->forward(in, {&single}); sync(); }},
        {"Fuse(a0, a1, a2)", [&] { model->forward(in, {&fuse}); sync(); }},
    };
    const auto t = bench::time_interleaved(variants, reps);
    bench::print_table("Fuse of 3, batch " + std::to_string(batch) + " x seq " + std::to_string(seq), variants, t);
  }
  return 0;
}
