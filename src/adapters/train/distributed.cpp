// Data-parallel training over c10d: the torchrun environment, the rendezvous, the process group and
// the collectives the trainer runs (see distributed.h).
#include "adapters/train/distributed.h"

#include <torch/torch.h>

#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#ifdef ADAPTERS_WITH_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/variable.h>

#include <algorithm>
#include <cstdlib>
#include <mutex>
#include <thread>

#include "adapters/core/error.h"

namespace adapters::train {

using torch::Tensor;

namespace {

std::optional<std::string> env(const char* name) {
  const char* value = std::getenv(name);
  if (value == nullptr || *value == '\0') return std::nullopt;
  return std::string(value);
}

// An integer environment variable in [lo, hi]; `fallback` when unset.
long env_int(const char* name, long lo, long hi, std::optional<long> fallback) {
  const auto text = env(name);
  if (!text) {
    ADAPTERS_CHECK(fallback.has_value(), "distributed training: environment variable ", name,
                   " is not set (torchrun's MASTER_ADDR, MASTER_PORT, WORLD_SIZE, RANK, LOCAL_RANK)");
    return *fallback;
  }
  char* end = nullptr;
  const long value = std::strtol(text->c_str(), &end, 10);
  ADAPTERS_CHECK(end != text->c_str() && *end == '\0' && value >= lo && value <= hi, "distributed training: environment ",
                 "variable ", name, " must be an integer in [", lo, ", ", hi, "], found '", text->substr(0, 40), "'");
  return value;
}

}  // namespace

std::optional<WorldEnv> world_from_environment() {
  const long world = env_int("WORLD_SIZE", 1, 4096, 1);
  if (world == 1) return std::nullopt;
  WorldEnv w;
  w.world_size = static_cast<int>(world);
  w.rank = static_cast<int>(env_int("RANK", 0, world - 1, std::nullopt));
  w.local_rank = static_cast<int>(env_int("LOCAL_RANK", 0, world - 1, w.rank));
  w.master_addr = env("MASTER_ADDR").value_or("127.0.0.1");
  w.master_port = static_cast<int>(env_int("MASTER_PORT", 1, 65535, std::nullopt));
  w.timeout = std::chrono::seconds(env_int("ADAPTERS_DIST_TIMEOUT", 1, 86400, 300));
  return w;
}

struct DataParallel::Impl {
  WorldEnv env;
  c10::intrusive_ptr<c10d::TCPStore> store;
  c10::intrusive_ptr<c10d::ProcessGroup> group;
  torch::Device device = torch::kCPU;
  std::int64_t failures = 0;

  // The ranks that do not answer on the store within a few seconds, as text ("rank 1", ...).
  std::string lost_ranks() {
    try {
      const std::string round = std::to_string(++failures);
      store->set("present/" + round + "/" + std::to_string(env.rank), std::vector<uint8_t>{1});
      std::vector<int> missing;
      for (int attempt = 0; attempt < 50; ++attempt) {
        missing.clear();
        for (int r = 0; r < env.world_size; ++r) {
          if (!store->check({"present/" + round + "/" + std::to_string(r)})) missing.push_back(r);
        }
        if (missing.empty()) break;
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
      }
      if (missing.empty()) return "no rank is lost (every rank still answers)";
      std::string text;
      for (int r : missing) text += (text.empty() ? "rank " : ", rank ") + std::to_string(r);
      return text + (missing.size() == 1 ? " is lost" : " are lost");
    } catch (const std::exception&) {
      return "rank 0 is lost (it hosts the rendezvous store, which no longer answers)";
    }
  }

  // Waits for a collective; a failure (a rank died, hung past the timeout) becomes an error naming
  // the lost ranks.
  void wait(const c10::intrusive_ptr<c10d::Work>& work, const char* what) {
    try {
      work->wait();
    } catch (const std::exception& e) {
      const std::string cause = std::string(e.what()).substr(0, 300);
      throw Error(str("distributed training: ", what, " failed on rank ", env.rank, " of ", env.world_size, ": ",
                      lost_ranks(), " (", cause, ")"),
                      "the other ranks stop too; resume from the last checkpoint, with the same or another --nproc");
    }
  }
};

DataParallel::DataParallel(const WorldEnv& env, torch::Device device) : impl_(std::make_unique<Impl>()) {
  impl_->env = env;
  impl_->device = device;
  c10d::TCPStoreOptions store_options;
  store_options.port = static_cast<std::uint16_t>(env.master_port);
  store_options.isServer = env.rank == 0;
  store_options.numWorkers = env.world_size;
  store_options.waitWorkers = true;
  store_options.timeout = env.timeout;
  try {
    impl_->store = c10::make_intrusive<c10d::TCPStore>(env.master_addr, store_options);
  } catch (const std::exception& e) {
    throw Error(str("distributed training: rank ", env.rank, " could not join the rendezvous at ", env.master_addr, ":",
                    env.master_port, " within ", env.timeout.count(), " s (", std::string(e.what()).substr(0, 300), ")"),
                "start every rank with the same MASTER_ADDR, MASTER_PORT and WORLD_SIZE, and a free port on rank 0");
  }
  if (device.is_cuda()) {
#ifdef ADAPTERS_WITH_NCCL
    auto options = c10d::ProcessGroupNCCL::Options::create();
    options->timeout = env.timeout;
    impl_->group = c10::make_intrusive<c10d::ProcessGroupNCCL>(impl_->store, env.rank, env.world_size, options);
    return;
#else
    throw NotSupported("distributed training on CUDA needs libtorch built with NCCL; this build has only Gloo",
                       "train on the CPU, or build against a CUDA libtorch with NCCL");
#endif
  }
  auto options = c10d::ProcessGroupGloo::Options::create();
  options->timeout = env.timeout;
  options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname(env.master_addr));
  impl_->group = c10::make_intrusive<c10d::ProcessGroupGloo>(impl_->store, env.rank, env.world_size, options);
}

DataParallel::~DataParallel() = default;

int DataParallel::rank() const { return impl_->env.rank; }
int DataParallel::world_size() const { return impl_->env.world_size; }

std::vector<double> DataParallel::sum(const std::vector<double>& values) {
  std::vector<Tensor> t = {torch::tensor(values, torch::kFloat64).to(impl_->device)};
  impl_->wait(impl_->group->allreduce(t), "summing over the ranks");
  const Tensor cpu = t[0].cpu();
  return std::vector<double>(cpu.data_ptr<double>(), cpu.data_ptr<double>() + cpu.numel());
}

void DataParallel::barrier() {
  // An all-reduce of one value: Gloo's barrier does not name what it waited for.
  sum({0.0});
}

// ---- GradientReducer ----------------------------------------------------------------------------

struct GradientReducer::State {
  struct Bucket {
    std::vector<std::size_t> members;  // indices into parameters
    std::size_t pending = 0;           // members whose gradient is not final yet
    Tensor flat;                       // the members' gradients, then one presence flag per member
    c10::intrusive_ptr<c10d::Work> work;
  };

  DataParallel::Impl* parallel = nullptr;
  std::vector<Tensor> parameters;
  std::vector<std::size_t> bucket_of;
  std::vector<bool> final_grad;
  std::vector<Bucket> buckets;
  std::size_t launched = 0;  // buckets [0, launched) are under way
  std::size_t launched_during_backward = 0;
  bool armed = false;
  std::mutex mutex;
  // Held here: autograd keeps an accumulator (and so its hook) only while a graph refers to it.
  std::vector<std::pair<std::shared_ptr<torch::autograd::Node>, std::uintptr_t>> hooks;

  // No gradient is final yet, no bucket under way.
  void reset() {
    launched = 0;
    launched_during_backward = 0;
    std::fill(final_grad.begin(), final_grad.end(), false);
    for (auto& bucket : buckets) bucket.pending = bucket.members.size();
  }

  // Flattens a bucket's gradients (zeros where this rank has none) and starts its all-reduce.
  void launch(Bucket& bucket) {
    torch::NoGradGuard no_grad;
    std::vector<Tensor> parts;
    std::vector<double> present;
    for (const std::size_t i : bucket.members) {
      const Tensor& g = parameters[i].grad();
      parts.push_back(g.defined() ? g.reshape({-1}) : torch::zeros({parameters[i].numel()}, parameters[i].options()));
      present.push_back(g.defined() ? 1.0 : 0.0);
    }
    parts.push_back(torch::tensor(present, parameters[bucket.members.front()].options()));
    bucket.flat = torch::cat(parts);
    std::vector<Tensor> tensors{bucket.flat};
    bucket.work = parallel->group->allreduce(tensors);
  }

  // Starts every bucket, in order, whose gradients are all final (or all, when `all`).
  void launch_ready(bool all) {
    while (launched < buckets.size() && (all || buckets[launched].pending == 0)) launch(buckets[launched++]);
  }

  void on_final_gradient(std::size_t i) {
    std::lock_guard<std::mutex> lock(mutex);
    if (!armed || final_grad[i]) return;
    final_grad[i] = true;
    --buckets[bucket_of[i]].pending;
    launch_ready(false);
    launched_during_backward = launched;
  }
};

namespace {

// Called by autograd after a parameter's gradient accumulator has added this pass's gradient.
class FinalGradientHook : public torch::autograd::FunctionPostHook {
 public:
  FinalGradientHook(std::weak_ptr<GradientReducer::State> state, std::size_t index) : state_(std::move(state)), index_(index) {}
  torch::autograd::variable_list operator()(const torch::autograd::variable_list& outputs,
                                            const torch::autograd::variable_list&) override {
    if (auto state = state_.lock()) state->on_final_gradient(index_);
    return outputs;
  }

 private:
  std::weak_ptr<GradientReducer::State> state_;
  std::size_t index_;
};

}  // namespace

GradientReducer::GradientReducer(DataParallel& parallel, std::vector<Tensor> parameters) : state_(std::make_shared<State>()) {
  State& s = *state_;
  s.parallel = parallel.impl_.get();
  s.parameters = std::move(parameters);
  s.bucket_of.resize(s.parameters.size());
  s.final_grad.assign(s.parameters.size(), false);
  std::int64_t total = 0, bytes = 0;
  for (const Tensor& p : s.parameters) total += static_cast<std::int64_t>(p.nbytes());
  const std::int64_t cap = std::clamp(total / 4, DataParallel::kMinBucketBytes, DataParallel::kBucketBytes);
  for (std::size_t k = s.parameters.size(); k-- > 0;) {  // backward reaches the last parameters first
    const Tensor& p = s.parameters[k];
    const bool fits = !s.buckets.empty() && bytes + static_cast<std::int64_t>(p.nbytes()) <= cap &&
                      p.scalar_type() == s.parameters[s.buckets.back().members.front()].scalar_type();
    if (!fits) {
      s.buckets.emplace_back();
      bytes = 0;
    }
    s.buckets.back().members.push_back(k);
    bytes += static_cast<std::int64_t>(p.nbytes());
    s.bucket_of[k] = s.buckets.size() - 1;
  }
  for (std::size_t k = 0; k < s.parameters.size(); ++k) {
    auto accumulator = torch::autograd::impl::grad_accumulator(s.parameters[k]);
    ADAPTERS_CHECK(accumulator != nullptr, "GradientReducer: parameter ", k, " is not a leaf that requires grad");
    const std::uintptr_t key = accumulator->add_post_hook(std::make_unique<FinalGradientHook>(state_, k));
    s.hooks.emplace_back(std::move(accumulator), key);
  }
}

std::size_t GradientReducer::buckets() const { return state_->buckets.size(); }
std::size_t GradientReducer::buckets_started_during_backward() const { return state_->launched_during_backward; }

GradientReducer::~GradientReducer() {
  for (auto& [accumulator, key] : state_->hooks) accumulator->del_post_hook(key);
}

void GradientReducer::arm() {
  std::lock_guard<std::mutex> lock(state_->mutex);
  state_->reset();
  state_->armed = true;
}

std::int64_t GradientReducer::finish() {
  std::lock_guard<std::mutex> lock(state_->mutex);
  State& s = *state_;
  torch::NoGradGuard no_grad;
  if (!s.armed) s.reset();  // not armed: nothing was started during backward
  s.launch_ready(/*all=*/true);
  s.armed = false;
  std::int64_t reduced = 0;
  const double scale = 1.0 / s.parallel->env.world_size;
  for (auto& bucket : s.buckets) {
    s.parallel->wait(bucket.work, "averaging the gradients");
    bucket.work.reset();
    const auto n = static_cast<std::int64_t>(bucket.members.size());
    const Tensor present = bucket.flat.narrow(0, bucket.flat.numel() - n, n).to(torch::kCPU, torch::kDouble);
    const auto on_some_rank = present.accessor<double, 1>();
    std::int64_t offset = 0;
    for (std::int64_t m = 0; m < n; ++m) {
      Tensor p = s.parameters[bucket.members[static_cast<std::size_t>(m)]];
      const Tensor average = bucket.flat.narrow(0, offset, p.numel()).view_as(p).mul_(scale);
      offset += p.numel();
      if (on_some_rank[m] == 0) continue;  // no rank has a gradient: none, as in one process
      if (p.grad().defined()) p.mutable_grad().copy_(average);
      else p.mutable_grad() = average.clone();
    }
    reduced += static_cast<std::int64_t>(bucket.flat.nbytes());
    bucket.flat = Tensor();
  }
  return reduced;
}

}  // namespace adapters::train
