// Benchmark: one training step (forward + backward + AdamW step) on BERT-base shapes (random
// weights), batch 8 x seq 128, a 2-label classification head, for full fine-tuning, seq_bn, LoRA
// r=8, prefix tuning and IA3. Prints:
//   - step milliseconds, timed interleaved in one process, and the ratio to full fine-tuning;
//   - peak memory per variant: each variant runs alone in a forked child process, which reports
//     its peak resident set (VmHWM of /proc/self/status) after a few steps (CPU only);
//   - resident memory of one variant (LoRA) at step 10 and step 200, to catch growth (the growth
//     check runs at batch 2 x seq 32 on the CPU, so that 200 steps take seconds, not minutes).
// Usage: train_step_bench [steps scale] [cpu|cuda]
#include <sys/wait.h>
#include <unistd.h>

#include <torch/optim/adamw.h>

#include <cstdlib>
#include <cstring>
#include <fstream>
#include <optional>

#include "bench_util.h"

using namespace adapters;

namespace {

constexpr int64_t kBatch = 8, kSeq = 128, kLabels = 2;

// The variants: a name and the adapter config (empty: full fine-tuning without adapters).
struct Method {
  std::string name, config;
};
const std::vector<Method> kMethods = {
    {"full fine-tuning", ""},       {"seq_bn", "seq_bn"},  {"lora r8", "lora[r=8]"},
    {"prefix_tuning", "prefix_tuning"}, {"ia3", "ia3"},
};

std::string adapter_name(size_t i) { return "a" + std::to_string(i); }

// A value of /proc/self/status ("VmRSS", "VmHWM") in MiB.
double proc_status_mib(const std::string& field) {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind(field + ":", 0) == 0) return std::atof(line.c_str() + field.size() + 1) / 1024.0;
  }
  return 0;
}

// One method's training step on a shared model: its trainable tensors, its optimizer and the
// setup it activates.
class TrainStep {
 public:
  TrainStep(AdapterModel model, size_t index, const Method& method, torch::Device device) : model_(std::move(model)) {
    std::vector<torch::Tensor> trainable;
    if (method.config.empty()) {
      for (auto& p : model_->base().parameters()) trainable.push_back(p);
    } else {
      setup_ = Block::adapter(adapter_name(index));
      for (auto& [key, t] : model_->adapter_state_dict(adapter_name(index))) trainable.push_back(t);
    }
    for (auto& p : model_->head("cls").parameters()) trainable.push_back(p);
    optimizer_ = std::make_unique<torch::optim::AdamW>(trainable, torch::optim::AdamWOptions(1e-4));
    full_ = method.config.empty();
  }

  // Freezes everything but this method's tensors (other methods' steps change the flags).
  void select() {
    for (auto& p : model_->parameters()) p.set_requires_grad(false);
    for (auto& group : optimizer_->param_groups()) {
      for (auto& p : group.params()) p.set_requires_grad(true);
    }
  }

  void run(const ModelInputs& inputs, const torch::Tensor& labels) {
    select();
    ForwardOptions options;
    options.setup = setup_ ? &*setup_ : nullptr;
    options.head = "cls";
    options.head_inputs = {{"labels", labels}};
    optimizer_->zero_grad();
    if (full_) model_->deactivate_adapters();
    model_->forward(inputs, options).loss.backward();
    optimizer_->step();
  }

 private:
  AdapterModel model_;
  std::optional<Block> setup_;
  std::unique_ptr<torch::optim::AdamW> optimizer_;
  bool full_ = false;
};

AdapterModel make_model(const std::vector<size_t>& methods, torch::Device device) {
  torch::manual_seed(0);
  AdapterModel model(bench::bert_base_config());
  for (size_t i : methods) {
    if (!kMethods[i].config.empty()) model->add_adapter(adapter_name(i), kMethods[i].config);
  }
  model->add_classification_head("cls", kLabels);
  model->to(device);
  model->train();
  return model;
}

torch::Tensor random_labels(int64_t batch, torch::Device device) {
  return torch::randint(0, kLabels, {batch}, torch::kLong).to(device);
}

ModelInputs inputs_on(ModelInputs inputs, torch::Device device) {
  inputs.input_ids = inputs.input_ids.to(device);
  inputs.attention_mask = inputs.attention_mask.to(device);
  return inputs;
}

// Runs method `i` alone for a few steps in a forked child; returns its peak RSS in MiB.
double peak_mib_in_child(size_t i) {
  int fds[2];
  if (pipe(fds) != 0) return 0;
  const pid_t pid = fork();
  if (pid == 0) {
    close(fds[0]);
    AdapterModel model = make_model({i}, torch::kCPU);
    TrainStep step(model, i, kMethods[i], torch::kCPU);
    const auto inputs = bench::random_inputs(kBatch, kSeq, model->config().vocab_size);
    const auto labels = random_labels(kBatch, torch::kCPU);
    for (int s = 0; s < 3; ++s) step.run(inputs, labels);
    const double peak = proc_status_mib("VmHWM");
    if (write(fds[1], &peak, sizeof peak) != sizeof peak) _exit(1);
    _exit(0);
  }
  close(fds[1]);
  double peak = 0;
  if (read(fds[0], &peak, sizeof peak) != sizeof peak) peak = 0;
  close(fds[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  return peak;
}

void print_memory_table() {
  std::printf("\npeak resident memory, batch %lld x seq %lld, each variant alone in a child process\n",
              static_cast<long long>(kBatch), static_cast<long long>(kSeq));
  std::printf("%-28s %10s %12s\n", "variant", "peak MiB", "vs first");
  std::vector<double> peaks;
  for (size_t i = 0; i < kMethods.size(); ++i) {
    peaks.push_back(peak_mib_in_child(i));
    std::printf("%-28s %10.1f %11.3fx\n", kMethods[i].name.c_str(), peaks[i], peaks[i] / peaks[0]);
    std::fflush(stdout);
  }
}

// Resident memory of the LoRA step at step 10 and step 200: it should not grow.
void print_memory_growth(torch::Device device) {
  const size_t lora = 2;
  AdapterModel model = make_model({lora}, device);
  TrainStep step(model, lora, kMethods[lora], device);
  const int64_t batch = device.is_cuda() ? kBatch : 2, seq = device.is_cuda() ? kSeq : 32;
  const auto inputs = inputs_on(bench::random_inputs(batch, seq, model->config().vocab_size), device);
  const auto labels = random_labels(batch, device);
  double at10 = 0;
  for (int s = 1; s <= 200; ++s) {
    step.run(inputs, labels);
    if (s == 10) at10 = proc_status_mib("VmRSS");
  }
  const double at200 = proc_status_mib("VmRSS");
  std::printf("\nmemory growth, %s, batch %lld x seq %lld: RSS %.1f MiB at step 10, %.1f MiB at step 200 (%+.1f MiB)\n",
              kMethods[lora].name.c_str(), static_cast<long long>(batch), static_cast<long long>(seq), at10, at200,
              at200 - at10);
}

}  // namespace

int main(int argc, char** argv) {
  const int scale = argc > 1 ? std::max(1, std::atoi(argv[1])) : 1;
  const bool cuda = argc > 2 && std::strcmp(argv[2], "cuda") == 0;
  const torch::Device device = cuda ? torch::kCUDA : torch::kCPU;

  // Children fork before this process runs any torch work (thread pools do not survive fork).
  if (!cuda) print_memory_table();

  bench::print_header(cuda);
  std::vector<size_t> all(kMethods.size());
  for (size_t i = 0; i < all.size(); ++i) all[i] = i;
  AdapterModel model = make_model(all, device);
  std::vector<std::unique_ptr<TrainStep>> steps;
  for (size_t i : all) steps.push_back(std::make_unique<TrainStep>(model, i, kMethods[i], device));
  const auto inputs = inputs_on(bench::random_inputs(kBatch, kSeq, model->config().vocab_size), device);
  const auto labels = random_labels(kBatch, device);

  std::vector<bench::Variant> variants;
  for (size_t i : all) {
    variants.push_back({kMethods[i].name, [&, i] {
                          steps[i]->run(inputs, labels);
                          bench::synchronize(cuda);
                        }});
  }
  const auto timings = bench::time_interleaved(variants, (cuda ? 10 : 2) * scale);
  bench::print_table("training step (forward + backward + AdamW), batch 8 x seq 128", variants, timings);
  if (cuda) std::printf("\npeak memory: not measured on cuda\n");

  steps.clear();
  print_memory_growth(device);
  return 0;
}
