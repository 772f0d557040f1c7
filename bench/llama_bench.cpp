// Benchmark: one adapter per batch row on a Llama decoder (TinyLlama-1.1B shapes, or a small Llama
// for quick runs), random weights, B8, prompt 128, greedy decoding with the cache. For LoRA (r 8 on
// q,k,v,o and r 64 on every linear layer), seq_bn and prefix tuning (AdapterHub's at the attention
// sites and PEFT's in the key/value cache): one adapter for the whole
// batch against 8 different adapters, one per row (generate()'s adapter_per_row path: the rows
// grouped by adapter, one BatchSplit in one forward). Prefill is timed as generate() of one token;
// decode steps run in lockstep across all variants (step s of every variant before step s+1 of any,
// the order rotated each step), each variant's per-step time taken as the median of its ratio to a
// reference variant in the same round. Then one training step (forward and backward, B8) of 8
// LoRAs one per row against one LoRA.
// Goals (ratios of this run): 8 adapters one per row reach >= 0.85x the decode throughput of one
// adapter for the batch; one unmerged LoRA costs <= 5% of decode throughput.
// Usage: llama_bench [tinyllama|small] [repetitions] [new_tokens] [train (the training step alone)]
#include <algorithm>
#include <chrono>
#include <cstring>
#include <memory>
#include <thread>

#include "adapters/generate.h"
#include "adapters/per_row.h"
#include "bench_util.h"

using namespace adapters;
using torch::Tensor;

namespace {

constexpr std::int64_t kBatch = 8, kPrompt = 128, kTrainTokens = 64;

models::ModelConfig llama_config(bool tiny_llama) {
  json raw = {{"model_type", "llama"}, {"hidden_act", "silu"}, {"rms_norm_eps", 1e-5},      {"rope_theta", 10000.0},
              {"bos_token_id", 1},     {"eos_token_id", 2},     {"max_position_embeddings", 2048}};
  if (tiny_llama) {  // TinyLlama-1.1B
    raw.update({{"vocab_size", 32000}, {"hidden_size", 2048}, {"intermediate_size", 5632}, {"num_hidden_layers", 22},
                {"num_attention_heads", 32}, {"num_key_value_heads", 4}});
  } else {
    raw.update({{"vocab_size", 1000}, {"hidden_size", 256}, {"intermediate_size", 688}, {"num_hidden_layers", 4},
                {"num_attention_heads", 8}, {"num_key_value_heads", 2}});
  }
  return models::parse_model_config(raw, tiny_llama ? "TinyLlama-1.1B shapes (benchmark)" : "small Llama (benchmark)");
}

struct Family {
  std::string name, config;
};

const Family kFamilies[] = {
    {"lora r8 qkvo", "lora[r=8,alpha=16,attn_matrices=['q','k','v','o']]"},
    {"lora r64 all", "lora[r=64,alpha=128,attn_matrices=['q','k','v','o'],intermediate_lora=true,output_lora=true]"},
    {"seq_bn", "seq_bn"},
    {"prefix", "prefix_tuning_flat[prefix_length=16]"},
    {"peft prefix", "prefix_tuning_flat[placement=past,prefix_length=16]"},  // PEFT's: in the cache
};

std::string adapter_name(std::size_t family, std::int64_t row) { return str("f", family, "_", row); }

AdapterModel build(const models::ModelConfig& c) {
  torch::manual_seed(0);
  AdapterModel model(c);
  {
    torch::NoGradGuard no_grad;
    for (auto& p : model->parameters()) p.normal_(0.0, 0.02);
  }
  model->add_head("lm", "causal_lm");
  for (std::size_t f = 0; f < std::size(kFamilies); ++f) {
    for (std::int64_t row = 0; row < kBatch; ++row) {
      const std::string name = adapter_name(f, row);
      model->add_adapter(name, kFamilies[f].config);
      torch::NoGradGuard no_grad;
      for (auto& [key, t] : model->adapter_state_dict(name)) t.normal_(0.0, 0.02);
    }
  }
  model->eval();
  return model;
}

// A variant: no adapter, one adapter for all rows, or one adapter per row.
struct Variant {
  std::string name;
  std::string adapter;                   // the whole batch's adapter ("" = none, or per row)
  std::vector<std::string> per_row;      // one adapter per row
  std::unique_ptr<ModelStepper> stepper;
  Tensor sequences, mask;

  void activate(AdapterModel& model) const {
    if (adapter.empty()) model->deactivate_adapters();
    else model->set_active_adapters(adapter);
  }
  void prefill(AdapterModel& model, const Tensor& prompt) const {
    activate(model);
    generation::GenerationConfig g;
    g.max_new_tokens = 1;
    g.pad_token_id = 0;
    generate(*model, prompt, Tensor(), g, {}, per_row);
  }
  void start(AdapterModel& model, const Tensor& prompt, std::int64_t new_tokens) {
    activate(model);
    stepper = std::make_unique<ModelStepper>(*model, 1, true, prompt.size(1) + new_tokens + 1);
    if (!per_row.empty()) stepper->set_row_adapters(per_row);
    sequences = prompt;
    mask = torch::ones_like(prompt);
    step(model);
  }
  void step(AdapterModel& model) {
    activate(model);
    const Tensor next = stepper->next_logits(sequences, mask).argmax(-1, true);  // (B,1)
    sequences = torch::cat({sequences, next}, 1);
    mask = torch::cat({mask, torch::ones_like(next)}, 1);
  }
};

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

double ms_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t).count();
}

void decode_table(AdapterModel& model, const models::ModelConfig& c, int reps, std::int64_t new_tokens) {
  torch::NoGradGuard no_grad;
  std::vector<Variant> runs;
  runs.push_back({"no adapter", ""});
  for (std::size_t f = 0; f < std::size(kFamilies); ++f) {
    runs.push_back({kFamilies[f].name + ", one for all", adapter_name(f, 0)});
    Variant per_row{kFamilies[f].name + ", 8 one per row", ""};
    for (std::int64_t row = 0; row < kBatch; ++row) per_row.per_row.push_back(adapter_name(f, row));
    runs.push_back(std::move(per_row));
  }
  const std::size_t n = runs.size();
  const Tensor prompt = torch::randint(3, c.vocab_size, {kBatch, kPrompt}, torch::kLong);

  runs[0].prefill(model, prompt);  // warm-up
  std::vector<std::vector<double>> prefill_ms(n);
  for (int r = 0; r < reps; ++r) {
    for (std::size_t i = 0; i < n; ++i) {
      const auto begin = std::chrono::steady_clock::now();
      runs[i].prefill(model, prompt);
      prefill_ms[i].push_back(ms_since(begin));
    }
  }

  // Lockstep decode: the ratio of each variant's step to no adapter's and to its family's one-for-all
  // variant in the same round.
  std::vector<std::vector<double>> step_ms(n), vs_base(n), vs_one(n);
  for (int r = 0; r < reps; ++r) {
    for (auto& run : runs) run.start(model, prompt, new_tokens);
    for (std::int64_t s = 0; s < new_tokens; ++s) {
      std::vector<double> t(n);
      for (std::size_t k = 0; k < n; ++k) {
        const std::size_t i = (k + static_cast<std::size_t>(s)) % n;
        const auto begin = std::chrono::steady_clock::now();
        runs[i].step(model);
        t[i] = ms_since(begin);
      }
      if (s == 0) continue;  // the first step after prefill warms the cache buffers
      for (std::size_t i = 0; i < n; ++i) {
        step_ms[i].push_back(t[i]);
        vs_base[i].push_back(t[i] / t[0]);
        const std::size_t one = i == 0 ? 0 : (i % 2 == 1 ? i : i - 1);
        vs_one[i].push_back(t[one] / t[i]);
      }
    }
  }
  std::printf("\nB%lld, prompt %lld, %lld new tokens (greedy, cached), %d repetition(s)\n",
              static_cast<long long>(kBatch), static_cast<long long>(kPrompt), static_cast<long long>(new_tokens), reps);
  std::printf("%-30s %12s %14s %13s %14s %12s %16s\n", "variant", "prefill ms", "prefill tok/s", "step ms",
              "decode tok/s", "decode cost", "vs one for all");
  for (std::size_t i = 0; i < n; ++i) {
    const double prefill = *std::min_element(prefill_ms[i].begin(), prefill_ms[i].end());
    const double step = median(step_ms[i]);
    std::printf("%-30s %12.1f %14.0f %13.2f %14.1f %11.1f%% ", runs[i].name.c_str(), prefill,
                1000.0 * static_cast<double>(kBatch * kPrompt) / prefill, step, 1000.0 * static_cast<double>(kBatch) / step,
                100.0 * (median(vs_base[i]) - 1.0));
    if (i % 2 == 0 && i > 0) std::printf("%15.3fx  (goal >= 0.85x)", median(vs_one[i]));
    if (i == 1) std::printf("%16s  (cost goal <= 5%%)", "");
    std::printf("\n");
  }
}

void training_table(AdapterModel& model, const models::ModelConfig& c, int reps) {
  std::vector<std::string> per_row;
  for (std::int64_t row = 0; row < kBatch; ++row) per_row.push_back(adapter_name(0, row));
  model->train_adapter(composition::parse(str("Stack(", [&] {
    std::string s;
    for (const auto& n : per_row) s += (s.empty() ? "" : ",") + n;
    return s;
  }(), ")")));
  model->eval();  // no dropout: the two variants do the same arithmetic
  models::ModelInputs in = bench::random_inputs(kBatch, kTrainTokens, c.vocab_size);
  ForwardOptions one_options;
  const Block one = Block::adapter(per_row[0]);
  one_options.setup = &one;
  ForwardOptions row_options;
  row_options.adapter_per_row = per_row;
  auto step = [&](const ForwardOptions& options) {
    model->zero_grad();
    model->forward(in, options).last_hidden_state.pow(2).mean().backward();
  };
  std::vector<bench::Variant> variants = {{"one lora r8 for all rows", [&] { step(one_options); }},
                                          {"8 lora r8, one per row", [&] { step(row_options); }}};
  const auto t = bench::time_interleaved(variants, reps);
  bench::print_table(str("Training step (forward + backward of the trainable LoRAs), B", kBatch, " x ", kTrainTokens,
                         " tokens"),
                     variants, t);
  std::printf("8 one per row: %.3fx the throughput of one for all (goal >= 0.85x)\n", t[0].median_ms / t[1].median_ms);
}

}  // namespace

int main(int argc, char** argv) {
  const bool tiny_llama = argc < 2 || std::strcmp(argv[1], "small") != 0;
  const int reps = argc > 2 ? std::max(1, std::atoi(argv[2])) : (tiny_llama ? 1 : 3);
  const std::int64_t new_tokens = argc > 3 ? std::max(2, std::atoi(argv[3])) : 64;
  torch::set_num_threads(static_cast<int>(std::max(1u, std::thread::hardware_concurrency())));  // every core
  const models::ModelConfig c = llama_config(tiny_llama);
  std::printf("%s on cpu, %d CPU threads, libtorch %s\n", tiny_llama ? "TinyLlama-1.1B shapes" : "small Llama shapes",
              torch::get_num_threads(), TORCH_VERSION);
  AdapterModel model = build(c);
  const bool training_only = argc > 4 && std::strcmp(argv[4], "train") == 0;
  if (!training_only) decode_table(model, c, reps, new_tokens);
  training_table(model, c, reps);
  return 0;
}
