// Benchmark: text generation at GPT-2-small shapes (124M parameters) and T5-small shapes, random
// weights. For B1 and B8: prefill of 128 tokens (generate() of one token), then decode of 64
// tokens (greedy, stepped in lockstep across the variants), tokens/s with no adapter, LoRA
// (unmerged and merged), seq_bn and prefix tuning, and each one's cost against no adapter: the
// median over every step of the ratio to no adapter's step in the same lockstep round. The
// unmerged adapters sit on one model and are switched per step, so that every variant streams the
// same base weights from the same memory; the merged LoRA is a second model, the plain computation
// on another copy of the weights, which shows the noise floor of the comparison. Then generate()
// with the cache against recomputing the whole sequence every step (B1).
// Goals (printed as ratios of this run): one unmerged adapter costs <= 5% of decode throughput;
// the cache makes decoding 64 tokens >= 10x faster than recomputing.
// Usage: generation_bench [repetitions] [cpu|cuda] [--quick]   (--quick: 16 new tokens, B1 only)
#include <algorithm>
#include <chrono>
#include <cstring>
#include <memory>
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

// The adapters of the decode comparison, all on one model, and a second model with the LoRA merged.
const char* const kAdapters[] = {"lora", "seq_bn", "prefix_tuning"};

AdapterModel build(const models::ModelConfig& c, bool merged_lora, const torch::Device& device) {
  torch::manual_seed(0);
  AdapterModel model(c);
  model->add_head("lm", c.is_encoder_decoder ? "seq2seq_lm" : "causal_lm");
  for (const char* method : kAdapters) {
    if (merged_lora && std::strcmp(method, "lora") != 0) continue;
    model->add_adapter(method, method);
    torch::NoGradGuard no_grad;
    for (auto& [key, t] : model->adapter_state_dict(method)) t.normal_(0.0, 0.02);
  }
  if (merged_lora) model->merge_adapter("lora");
  model->to(device);
  model->eval();
  return model;
}

// Activates `adapter` ("" = none) on the model.
void activate(AdapterModel& model, const std::string& adapter) {
  if (adapter.empty()) model->deactivate_adapters();
  else model->set_active_adapters(adapter);
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

// One variant's greedy decoding through the model's own step path (ModelStepper, as generate()
// drives it), with its own cache: the prompt's prefill gives the first token, step() one more.
struct Decoding {
  std::string name;
  AdapterModel model;
  std::string adapter;  // active for this variant's steps; "" = none
  std::unique_ptr<ModelStepper> stepper;
  Tensor sequences, mask;

  void start(const Tensor& prompt, std::int64_t new_tokens) {
    activate(model, adapter);
    stepper = std::make_unique<ModelStepper>(*model, 1, true, prompt.size(1) + new_tokens + 1);
    if (model->arch().kind == models::ArchKind::EncoderDecoder) {
      stepper->encode(prompt, torch::ones_like(prompt), 0);
      sequences = torch::zeros({prompt.size(0), 1}, prompt.options());
    } else {
      sequences = prompt;
      mask = torch::ones_like(prompt);
    }
    step();
  }

  void step() {
    activate(model, adapter);
    const Tensor next = stepper->next_logits(sequences, mask).argmax(-1, true);  // (B,1)
    sequences = torch::cat({sequences, next}, 1);
    if (mask.defined()) mask = torch::cat({mask, torch::ones_like(next)}, 1);
  }
};

void throughput(const std::string& title, const models::ModelConfig& c, std::int64_t batch, std::int64_t new_tokens,
                int reps, const torch::Device& device, bool cuda) {
  AdapterModel model = build(c, false, device), merged = build(c, true, device);
  std::vector<Decoding> runs;
  runs.push_back({"no adapter", model, ""});
  runs.push_back({"lora (unmerged)", model, "lora"});
  runs.push_back({"seq_bn", model, "seq_bn"});
  runs.push_back({"prefix_tuning", model, "prefix_tuning"});
  runs.push_back({"lora (merged)", merged, "lora"});
  const std::size_t n = runs.size();
  const Tensor prompt = torch::randint(2, c.vocab_size, {batch, 128}, torch::kLong).to(device);

  // Prefill: one forward over the 128-token prompt (T5: the encoder's), giving the first token.
  std::vector<bench::Variant> prefill;
  for (const Decoding& run : runs) {
    AdapterModel m = run.model;
    const std::string adapter = run.adapter;
    prefill.push_back({run.name, [=]() mutable {
                         activate(m, adapter);
                         generate(*m, prompt, Tensor(), decode_config(1, true));
                         bench::synchronize(cuda);
                       }});
  }
  const auto t = bench::time_interleaved(prefill, reps);

  // Decode in lockstep: after every variant's prefill, step s of every variant runs before step
  // s+1 of any (in an order rotated every step), so that the machine's drift hits all alike. A
  // variant's cost is the median over all steps of its step time over no adapter's in the same
  // round: robust to the bursts of a shared machine, which a ratio of sums is not.
  std::vector<std::vector<double>> decode_ms(n), ratios(n);
  for (int r = 0; r <= reps; ++r) {  // repetition 0 warms up
    for (auto& run : runs) run.start(prompt, new_tokens);
    std::vector<double> sum(n, 0.0);
    for (std::int64_t s = 0; s < new_tokens; ++s) {
      std::vector<double> step_ms(n);
      for (std::size_t k = 0; k < n; ++k) {
        const std::size_t i = (k + static_cast<std::size_t>(s)) % n;
        const auto begin = std::chrono::steady_clock::now();
        runs[i].step();
        bench::synchronize(cuda);
        step_ms[i] = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - begin).count();
      }
      for (std::size_t i = 0; i < n && r > 0; ++i) {
        sum[i] += step_ms[i];
        ratios[i].push_back(step_ms[i] / step_ms[0]);
      }
    }
    if (r == 0) continue;
    for (std::size_t i = 0; i < n; ++i) decode_ms[i].push_back(sum[i]);
  }
  auto median = [](std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
  };
  std::printf("\n%s B%lld: prefill of 128 tokens, then decode of %lld tokens with the cache\n", title.c_str(),
              static_cast<long long>(batch), static_cast<long long>(new_tokens));
  std::printf("%-20s %12s %14s %12s %14s %14s\n", "variant", "prefill ms", "prefill tok/s", "decode ms", "decode tok/s",
              "decode cost");
  for (std::size_t i = 0; i < n; ++i) {
    const double best = *std::min_element(decode_ms[i].begin(), decode_ms[i].end());
    std::printf("%-20s %12.1f %14.0f %12.1f %14.0f %13.1f%%%s\n", runs[i].name.c_str(), t[i].min_ms,
                1000.0 * static_cast<double>(batch * 128) / t[i].min_ms, best,
                1000.0 * static_cast<double>(batch * new_tokens) / best, 100.0 * (median(ratios[i]) - 1.0),
                i == 1 ? "  (goal <= 5%)" : i + 1 == n ? "  (plain math, second copy: noise floor)" : "");
  }
}

// The floor of any cached decoding step at batch 1: one matrix-vector product over every weight
// matrix a step reads (the decoder's, with the cross-attention keys/values cached and the encoder
// not run; the LM head), i.e. streaming those weights from memory once.
double streaming_floor_ms(const AdapterModel& model, bool cuda) {
  std::vector<Tensor> weights;
  for (const auto& p : model->named_parameters()) {
    const std::string& k = p.key();
    const bool unread = k.find("encoder.") != std::string::npos || k.find("EncDecAttention.k.") != std::string::npos ||
                        k.find("EncDecAttention.v.") != std::string::npos || k.find("wpe.") != std::string::npos ||
                        k.find("relative_attention_bias") != std::string::npos || k.find("heads.") == 0;
    if (p.value().dim() == 2 && !unread) weights.push_back(p.value());
  }
  auto stream = [&] {
    for (const Tensor& w : weights) torch::mv(w, torch::ones({w.size(1)}, w.options()));
    bench::synchronize(cuda);
  };
  const auto t = bench::time_interleaved({{"stream", stream}}, 5);
  return t[0].min_ms;
}

void cache_speedup(const std::string& title, const models::ModelConfig& c, std::int64_t new_tokens, int reps,
                   const torch::Device& device, bool cuda) {
  AdapterModel model = build(c, false, device);
  double cached_step_ms = 0.0;
  for (const std::string adapter : {"", "prefix_tuning"}) {
    const Tensor prompt = torch::randint(2, c.vocab_size, {1, 128}, torch::kLong).to(device);
    auto run = [=](bool use_cache) mutable {
      activate(model, adapter);
      generate(*model, prompt, Tensor(), decode_config(new_tokens, use_cache));
      bench::synchronize(cuda);
    };
    std::vector<bench::Variant> v = {{"with the cache", [=]() mutable { run(true); }},
                                     {"recomputing", [=]() mutable { run(false); }}};
    const auto t = bench::time_interleaved(v, reps);
    if (adapter.empty()) {  // a cached step: (the whole run - its prefill) / the steps after the first token
      AdapterModel m = model;
      const auto prefill = bench::time_interleaved({{"prefill", [=]() mutable {
                                                      activate(m, "");
                                                      generate(*m, prompt, Tensor(), decode_config(1, true));
                                                      bench::synchronize(cuda);
                                                    }}},
                                                   3);
      cached_step_ms = (t[0].min_ms - prefill[0].min_ms) / static_cast<double>(new_tokens - 1);
    }
    bench::print_table(str(title, " B1, ", adapter.empty() ? "no adapter" : adapter, ": ", new_tokens,
                           " new tokens after 128"), v, t);
    std::printf("cache speed-up: %.1fx (goal >= 10x)\n", t[1].min_ms / t[0].min_ms);
  }
  const double floor_ms = streaming_floor_ms(model, cuda);
  std::printf("streaming the weights a cached step reads, once: %.2f ms; a cached step took %.2f ms (%.2fx that floor)\n",
              floor_ms, cached_step_ms, cached_step_ms / floor_ms);
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
