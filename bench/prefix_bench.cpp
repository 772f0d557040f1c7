// Benchmark: inference cost of prefix tuning on BERT-base shapes (random weights).
// For batch x seq 1x128 and 8x128 it times the plain model and prefix_tuning (prefix_length 30,
// reparametrised: the pool runs once per forward), interleaved, and prints min / median
// milliseconds and the ratio to the plain model.
#include <cstdlib>

#include "bench_util.h"

using namespace adapters;

int main(int argc, char** argv) {
  const int scale = argc > 1 ? std::atoi(argv[1]) : 1;  // repetitions multiplier
  torch::manual_seed(0);
  c10::InferenceMode inference;
  AdapterModel model(bench::bert_base_config());
  model->eval();
  model->add_adapter("prefix", "prefix_tuning[prefix_length=30]");
  std::printf("BERT-base shapes, %d threads, libtorch %s\n", torch::get_num_threads(), TORCH_VERSION);
  std::printf("prefix_tuning: %lld parameters, base: %lld\n",
              static_cast<long long>(model->adapter_summary_rows()[0].parameters),
              static_cast<long long>(model->base_parameter_count()));

  const Block prefix = Block::adapter("prefix");
  for (auto [batch, len, reps] : {std::tuple{1, 128, 30}, std::tuple{8, 128, 6}}) {
    const auto inputs = bench::random_inputs(batch, len, model->config().vocab_size);
    std::vector<bench::Variant> variants = {
        {"base", [&] { model->forward(inputs); }},
        {"prefix_tuning (30)", [&] { model->forward(inputs, {&prefix}); }},
    };
    const auto t = bench::time_interleaved(variants, reps * scale);
    bench::print_table("batch " + std::to_string(batch) + " x seq " + std::to_string(len), variants, t);
  }
  return 0;
}
