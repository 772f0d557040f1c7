// Benchmark: text generation at GPT-2-small shapes (124M parameters) and T5-small shapes, random
// weights. For B1 and B8: prefill of 128 tokens, then decode of 64 tokens (greedy, every step
// forced to run all 64: no EOS), tokens/s with no adapter, LoRA (unmerged and merged), seq_bn and
// prefix tuning, interleaved so that the machine's drift hits every variant alike. Then decode
// with the cache against recomputing the whole sequence every step (B1).
// Goals (printed as ratios of this run): one unmerged adapter costs <= 5% of decode throughput;
// the cache makes decoding 64 tokens >= 10x faster than recomputing.
// Usage: generation_bench [repetitions] [cpu|cuda] [--quick]   (--quick: 16 new tokens, B1 only)
#include <cstring>
#include <thread>

#include "adapters/generate.h"
#include "bench_util.h"

using namespace adapters;
using torch::Tensor;

namespace {

models::ModelConfig gpt2_small() {
  json raw = {{"model_type", "gpt2"}, {"vocab_size", 50257}, {"n_embd", 768},  {"n_layer", 12},
              {"n_head", 12},         {"n_positions", 1024}, {"bos_token_id", 50256}, {"eos_token_id", 50256},
              {"activation_function", "gelu_new"}};
  return models::parse_model_config(raw, "gpt2-small (benchmark)");
}

models::ModelConfig t5_small() {
  json raw = {{"model_type", "t5"},       {"vocab_size", 32128},  {"d_model", 512},        {"num_layers", 6},
              {"num_decoder_layers", 6},  {"num_heads", 8},       {"d_kv", 64},            {"d_ff", 2048},
              {"feed_forward_proj", "relu"}, {"relative_attention_num_buckets", 32}, {"pad_token_id", 0},
              {"eos_token_id", 1},        {"decoder_start_token_id", 0}, {"is_encoder_decoder", true}};
  return models::parse_model_config(raw, "t5-small (benchmark)");
}

struct Setup {
  std::string name;
  std::string method;  // "" = none
  bool merge = false;
};

AdapterModel build(const models::ModelConfig& c, const Setup& s, const torch::Device& device) {
  torch::manual_seed(0);
  AdapterModel model(c);
  model->add_head("lm", c.is_encoder_decoder ? "seq2seq_lm" : "causal_lm");
  if (!s.method.empty()) {
    model->add_adapter("a", s.method, false, true);
    torch::NoGradGuard no_grad;
    for (auto& [key, t] : model->adapter_state_dict("a")) t.normal_(0.0, 0.02);
    if (s.merge) model->merge_adapter("a");
  }
  model->to(device);
  model->eval();
  return model;
}

generation::GenerationConfig decode_config(std::int64_t new_tokens, bool use_cache) {
  generation::GenerationConfig g;
  g.max_new_tokens = new_tokens;
  g.min_new_tokens = new_tokens;  // no early EOS: every variant decodes the same number of steps
  g.eos_token_id = {1};
  g.pad_token_id = 0;
  g.use_cache = use_cache;
  return g;
}

void throughput(const std::string& title, const models::ModelConfig& c, std::int64_t batch, std::int64_t new_tokens,
                int reps, const torch::Device& device, bool cuda) {
  const std::vector<Setup> setups = {{"no adapter", ""},
                                     {"lora (unmerged)", "lora"},
                                     {"lora (merged)", "lora", true},
                                     {"seq_bn", "seq_bn"},
                                     {"prefix_tuning", "prefix_tuning"}};
  std::vector<AdapterModel> models;
  for (const auto& s : setups) models.push_back(build(c, s, device));
  const Tensor prompt = torch::randint(2, c.vocab_size, {batch, 128}, torch::kLong).to(device);
  std::vector<bench::Variant> prefill, whole;
  for (std::size_t i = 0; i < setups.size(); ++i) {
    AdapterModel m = models[i];
    // Prefill: one forward over the 128-token prompt (T5: the encoder's), giving the first token.
    prefill.push_back({setups[i].name, [=]() mutable { generate(*m, prompt, Tensor(), decode_config(1, true)); bench::synchronize(cuda); }});
    // Prefill and then `new_tokens` more steps: decode time = whole - prefill.
    whole.push_back({setups[i].name,
                     [=]() mutable { generate(*m, prompt, Tensor(), decode_config(new_tokens + 1, true)); bench::synchronize(cuda); }});
  }
  std::vector<bench::Variant> all = prefill;
  all.insert(all.end(), whole.begin(), whole.end());
  const auto t = bench::time_interleaved(all, reps);
  const std::size_t n = setups.size();
  std::printf("\n%s B%lld: prefill of 128 tokens, then decode of %lld tokens with the cache (fastest of the runs)\n", title.c_str(),
              static_cast<long long>(batch), static_cast<long long>(new_tokens));
  std::printf("%-20s %12s %14s %12s %14s %14s\n", "variant", "prefill ms", "prefill tok/s", "decode ms", "decode tok/s",
              "decode cost");
  // The fastest of the repetitions: on a shared machine interference only ever adds time.
  const double base_decode = t[n].min_ms - t[0].min_ms;
  for (std::size_t i = 0; i < n; ++i) {
    const double decode_ms = t[n + i].min_ms - t[i].min_ms;
    std::printf("%-20s %12.1f %14.0f %12.1f %14.0f %13.1f%%\n", setups[i].name.c_str(), t[i].min_ms,
                1000.0 * static_cast<double>(batch * 128) / t[i].min_ms, decode_ms,
                1000.0 * static_cast<double>(batch * new_tokens) / decode_ms, 100.0 * (decode_ms / base_decode - 1.0));
  }
}

void cache_speedup(const std::string& title, const models::ModelConfig& c, std::int64_t new_tokens, int reps,
                   const torch::Device& device, bool cuda) {
  for (const Setup& s : {Setup{"no adapter", ""}, Setup{"prefix_tuning", "prefix_tuning"}}) {
    AdapterModel m = build(c, s, device);
    const Tensor prompt = torch::randint(2, c.vocab_size, {1, 128}, torch::kLong).to(device);
    std::vector<bench::Variant> v = {
        {"with the cache", [=]() mutable { generate(*m, prompt, Tensor(), decode_config(new_tokens, true)); bench::synchronize(cuda); }},
        {"recomputing", [=]() mutable { generate(*m, prompt, Tensor(), decode_config(new_tokens, false)); bench::synchronize(cuda); }}};
    const auto t = bench::time_interleaved(v, reps);
    bench::print_table(str(title, " B1, ", s.name, ": ", new_tokens, " new tokens after 128"), v, t);
    std::printf("cache speed-up: %.1fx (goal >= 10x)\n", t[1].min_ms / t[0].min_ms);
  }
}

}  // namespace

int main(int argc, char** argv) {
  int reps = 3;
  bool cuda = false, quick = false;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "cuda") == 0) cuda = true;
    else if (std::strcmp(argv[i], "--quick") == 0) quick = true;
    else if (std::strcmp(argv[i], "cpu") != 0) reps = std::max(1, std::atoi(argv[i]));
  }
  cuda = cuda && torch::cuda::is_available();
  torch::set_num_threads(static_cast<int>(std::max(1u, std::thread::hardware_concurrency())));  // every core
  const torch::Device device = cuda ? torch::kCUDA : torch::kCPU;
  torch::NoGradGuard no_grad;
  std::printf("generation at GPT-2-small / T5-small shapes on %s, %d CPU threads, libtorch %s\n", cuda ? "cuda" : "cpu",
              torch::get_num_threads(), TORCH_VERSION);
  const std::int64_t new_tokens = quick ? 16 : 64;
  for (std::int64_t batch : quick ? std::vector<std::int64_t>{1} : std::vector<std::int64_t>{1, 8}) {
    throughput("GPT-2-small", gpt2_small(), batch, new_tokens, reps, device, cuda);
    throughput("T5-small", t5_small(), batch, new_tokens, reps, device, cuda);
  }
  cache_speedup("GPT-2-small", gpt2_small(), new_tokens, 1, device, cuda);
  cache_speedup("T5-small", t5_small(), new_tokens, 1, device, cuda);
  return 0;
}
