// Benchmark: data-parallel adapter training with 1 and 2 processes on this machine (Gloo on
// loopback), BERT-base shapes with random weights, a global batch of 16 x 128 tokens, seq_bn and
// LoRA r8: examples/s of each run side by side, and the gradient bytes all-reduced per optimizer
// step against what full fine-tuning would send, and how many of the step's all-reduces started while
// backward still ran (the overlap). Two processes on two cores each get one thread.
// Usage: distributed_bench [steps]
#include <unistd.h>
#include <sys/wait.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <thread>

#include "adapters/train/trainer.h"
#include "bench_util.h"

using namespace adapters;
namespace fs = std::filesystem;

namespace {

constexpr std::int64_t kBatch = 16, kTokens = 128;

train::FeatureSet random_features(std::int64_t vocab) {
  std::mt19937_64 rng(3);
  train::FeatureSet set;
  set.task = train::TaskKind::SequenceClassification;
  set.num_labels = 2;
  for (std::int64_t i = 0; i < 4 * kBatch; ++i) {
    std::vector<int64_t> ids(kTokens);
    for (auto& id : ids) id = 1000 + static_cast<int64_t>(rng() % static_cast<std::uint64_t>(vocab - 1000));
    train::Feature f;
    f.example = static_cast<std::size_t>(i);
    f.rows.push_back({ids, std::vector<int64_t>(ids.size(), 0)});
    f.label = i % 2;
    set.features.push_back(std::move(f));
  }
  return set;
}

struct Measured {
  double examples_per_second = 0;
  std::int64_t reduced_bytes = 0, full_bytes = 0;
  std::int64_t buckets = 0, overlapped = 0;  // all-reduces per step, and those started during backward
};

// Trains `steps` steps of `method` in this process (a rank when options.parallel is set); the
// examples/s of the steps after the first.
Measured train_steps(const std::string& method, int steps, std::shared_ptr<train::DataParallel> parallel) {
  const models::ModelConfig config = bench::bert_base_config();
  torch::manual_seed(0);
  AdapterModel model(config);
  model->add_adapter("a", method);
  model->add_classification_head("a", 2);
  model->train_adapter("a");
  Measured m;
  for (const auto& p : model->parameters()) m.full_bytes += static_cast<std::int64_t>(p.nbytes());
  train::TrainerOptions o;
  o.output_dir = fs::temp_directory_path() / ("distributed_bench_" + std::to_string(::getpid()));
  o.overwrite = true;
  o.batch_size = kBatch;
  o.max_steps = steps;
  o.show_progress = false;
  o.handle_sigint = false;
  o.eval_every_steps = steps + 1;
  o.parallel = std::move(parallel);
  std::vector<std::chrono::steady_clock::time_point> times;
  o.on_step = [&](std::int64_t) { times.push_back(std::chrono::steady_clock::now()); };
  const train::FeatureSet features = random_features(config.vocab_size);
  const train::TrainResult result = train::Trainer(o).train(model, features);
  fs::remove_all(o.output_dir);
  const double seconds = std::chrono::duration<double>(times.back() - times.front()).count();
  m.examples_per_second = kBatch * static_cast<double>(times.size() - 1) / seconds;
  m.reduced_bytes = result.reduced_bytes_per_step;
  m.buckets = result.gradient_buckets;
  m.overlapped = result.buckets_during_backward;
  return m;
}

// Two workers of this program (torchrun's variables on loopback); rank 0's measurement.
Measured two_processes(const std::string& method, int steps) {
  const fs::path result = fs::temp_directory_path() / ("distributed_bench_result_" + std::to_string(::getpid()));
  const std::string port = std::to_string(20000 + ::getpid() % 20000);
  std::vector<pid_t> workers;
  for (int rank = 0; rank < 2; ++rank) {
    const pid_t pid = ::fork();
    if (pid == 0) {
      ::setenv("MASTER_ADDR", "127.0.0.1", 1);
      ::setenv("MASTER_PORT", port.c_str(), 1);
      ::setenv("WORLD_SIZE", "2", 1);
      ::setenv("RANK", std::to_string(rank).c_str(), 1);
      ::setenv("BENCH_RESULT", result.c_str(), 1);
      const std::string steps_text = std::to_string(steps);
      ::execl("/proc/self/exe", "distributed_bench", steps_text.c_str(), method.c_str(), static_cast<char*>(nullptr));
      ::_exit(127);
    }
    workers.push_back(pid);
  }
  for (pid_t pid : workers) ::waitpid(pid, nullptr, 0);
  Measured m;
  std::ifstream in(result);
  in >> m.examples_per_second >> m.reduced_bytes >> m.full_bytes >> m.buckets >> m.overlapped;
  fs::remove(result);
  return m;
}

}  // namespace

int main(int argc, char** argv) {
  const int steps = argc > 1 ? std::max(2, std::atoi(argv[1])) : 4;
  if (const auto env = train::world_from_environment()) {  // a worker
    torch::set_num_threads(1);
    auto parallel = std::make_shared<train::DataParallel>(*env, torch::kCPU);
    const Measured m = train_steps(argv[2], steps, parallel);
    if (parallel->is_main()) std::ofstream(std::getenv("BENCH_RESULT")) << m.examples_per_second << ' ' << m.reduced_bytes << ' ' << m.full_bytes
                                                       << ' ' << m.buckets << ' ' << m.overlapped;
    return 0;
  }
  torch::set_num_threads(2);
  std::printf("BERT-base shapes, global batch %lld x %lld tokens, %d steps (the first not timed), libtorch %s, %u cores\n\n",
              static_cast<long long>(kBatch), static_cast<long long>(kTokens), steps, TORCH_VERSION,
              std::thread::hardware_concurrency());
  std::printf("%-10s %16s %16s %8s %20s %20s %24s\n", "method", "1 proc ex/s", "2 procs ex/s", "ratio", "all-reduced B/step",
              "full model B/step", "buckets (during backward)");
  for (const std::string method : {"seq_bn", "lora[r=8]"}) {
    const Measured one = train_steps(method, steps, nullptr);
    const Measured two = two_processes(method, steps);
    std::printf("%-10s %16.2f %16.2f %7.2fx %20lld %20lld %18lld (%lld)\n", method.c_str(), one.examples_per_second,
                two.examples_per_second, two.examples_per_second / one.examples_per_second,
                static_cast<long long>(two.reduced_bytes), static_cast<long long>(two.full_bytes),
                static_cast<long long>(two.buckets), static_cast<long long>(two.overlapped));
  }
  return 0;
}
