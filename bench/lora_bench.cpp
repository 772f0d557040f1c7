// Benchmark: inference cost of the LoRA family on BERT-base shapes (random weights). For batch x
// seq 1x128 and 8x128 it times the plain model, LoRA r=8 on q and v (unmerged), the same LoRA
// merged into the weights (a second model with identical weights), and IA3 (k, v, intermediate),
// interleaved, and prints min / median milliseconds and the ratio to the plain model.
// Goals (issue 3): merged within 1% of base, unmerged LoRA <= 3% over base.
// Usage: lora_bench [repetition scale] [cpu|cuda]
#include <torch/cuda.h>

#include <cstdlib>
#include <cstring>

#include "bench_util.h"

using namespace adapters;

namespace {

AdapterModel make_model() {
  torch::manual_seed(0);
  AdapterModel model(bench::bert_base_config());
  model->eval();
  return model;
}

void randomize(AdapterModel& model, const std::string& name) {
  torch::NoGradGuard no_grad;
  for (auto& [key, t] : model->adapter_state_dict(name)) t.normal_(0.0, 0.02);
}

}  // namespace

int main(int argc, char** argv) {
  const int scale = argc > 1 ? std::max(1, std::atoi(argv[1])) : 1;  // repetitions multiplier
  const bool cuda = argc > 2 && std::strcmp(argv[2], "cuda") == 0;
  c10::InferenceMode inference;
  AdapterModel model = make_model();
  model->add_adapter("lora", "lora[r=8,alpha=16,attn_matrices=['q','v']]");
  model->add_adapter("ia3", "ia3");
  randomize(model, "lora");
  randomize(model, "ia3");

  // The same base weights with the same LoRA folded in.
  AdapterModel merged = make_model();
  merged->add_adapter("lora", "lora[r=8,alpha=16,attn_matrices=['q','v']]");
  {
    torch::NoGradGuard no_grad;
    const auto source = model->adapter_state_dict("lora");
    for (auto& [key, t] : merged->adapter_state_dict("lora")) t.copy_(source.at(key));
  }
  if (cuda) {
    model->to(torch::kCUDA);
    merged->to(torch::kCUDA);
  }
  merged->merge_adapter("lora");
  merged->set_active_adapters("lora");
  auto sync = [cuda] { bench::synchronize(cuda); };

  bench::print_header(cuda);
  std::printf("lora r8 q,v: %lld parameters, ia3: %lld, base: %lld\n",
              static_cast<long long>(model->adapter_summary_rows()[0].parameters),
              static_cast<long long>(model->adapter_summary_rows()[1].parameters),
              static_cast<long long>(model->base_parameter_count()));

  const Block lora = Block::adapter("lora"), ia3 = Block::adapter("ia3");
  for (auto [batch, len, reps] : {std::tuple{1, 128, 30}, std::tuple{8, 128, 8}}) {
    const auto inputs = bench::random_inputs(batch, len, model->config().vocab_size);
    {
      // The merged model computes what the unmerged one does.
      const torch::Tensor a = model->forward(inputs, {&lora}).last_hidden_state.cpu();
      const torch::Tensor b = merged->forward(inputs).last_hidden_state.cpu();
      std::printf("\nbatch %d x seq %d: max |merged - unmerged| = %.3g\n", batch, len,
                  (a - b).abs().max().item<double>());
    }
    std::vector<bench::Variant> variants = {
        {"base", [&] { model->forward(inputs); sync(); }},
        {"lora r8 q,v (unmerged)", [&] { model->forward(inputs, {&lora}); sync(); }},
        {"lora r8 q,v (merged)", [&] { merged->forward(inputs); sync(); }},
        {"ia3 k,v,intermediate", [&] { model->forward(inputs, {&ia3}); sync(); }},
    };
    const auto t = bench::time_interleaved(variants, (cuda ? 10 * reps : reps) * scale);
    bench::print_table("batch " + std::to_string(batch) + " x seq " + std::to_string(len), variants, t);
  }
  return 0;
}
