// Benchmark: inference cost of bottleneck adapters on BERT-base shapes (random weights).
// For batch x seq 1x8, 1x128 and 8x128 it times the plain model, seq_bn and double_seq_bn,
// interleaved, and prints min / median milliseconds and the ratio to the plain model.
// Goal (issue 2): bottleneck overhead <= 4% over base.
// Usage: bottleneck_bench [repetition scale] [cpu|cuda]
#include <torch/cuda.h>

#include <cstdlib>
#include <cstring>

#include "bench_util.h"

using namespace adapters;

int main(int argc, char** argv) {
  const int scale = argc > 1 ? std::max(1, std::atoi(argv[1])) : 1;  // repetitions multiplier
  const bool cuda = argc > 2 && std::strcmp(argv[2], "cuda") == 0;
  torch::manual_seed(0);
  c10::InferenceMode inference;
  AdapterModel model(bench::bert_base_config());
  model->eval();
  model->add_adapter("seq", "seq_bn");
  model->add_adapter("double", "double_seq_bn");
  if (cuda) model->to(torch::kCUDA);
  auto sync = [cuda] { bench::synchronize(cuda); };
  bench::print_header(cuda);
  std::printf("seq_bn: %lld parameters, double_seq_bn: %lld, base: %lld\n",
              static_cast<long long>(model->adapter_summary_rows()[0].parameters),
              static_cast<long long>(model->adapter_summary_rows()[1].parameters),
              static_cast<long long>(model->base_parameter_count()));

  const Block seq = Block::adapter("seq"), dbl = Block::adapter("double");
  for (auto [batch, len, reps] : {std::tuple{1, 8, 200}, std::tuple{1, 128, 30}, std::tuple{8, 128, 6}}) {
    const auto inputs = bench::random_inputs(batch, len, model->config().vocab_size);
    std::vector<bench::Variant> variants = {
        {"base", [&] { model->forward(inputs); sync(); }},
        {"seq_bn", [&] { model->forward(inputs, {&seq}); sync(); }},
        {"double_seq_bn", [&] { model->forward(inputs, {&dbl}); sync(); }},
    };
    const auto t = bench::time_interleaved(variants, (cuda ? 10 * reps : reps) * scale);
    bench::print_table("batch " + std::to_string(batch) + " x seq " + std::to_string(len), variants, t);
  }
  return 0;
}
