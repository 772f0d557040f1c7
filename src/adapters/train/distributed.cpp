// Data-parallel training over c10d: the torchrun environment, the rendezvous, the process group and
// the collectives the trainer runs (see distributed.h).
#include "adapters/train/distributed.h"

#include <torch/torch.h>

#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#ifdef ADAPTERS_WITH_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include <cstdlib>
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

std::int64_t DataParallel::average_gradients(const std::vector<Tensor>& parameters) {
  torch::NoGradGuard no_grad;
  std::int64_t reduced = 0;
  const double scale = 1.0 / impl_->env.world_size;
  std::size_t begin = 0;
  while (begin < parameters.size()) {
    // One bucket: consecutive parameters of one dtype up to kBucketBytes (at least one).
    std::size_t end = begin;
    std::int64_t bytes = 0;
    while (end < parameters.size() && (end == begin || (bytes + parameters[end].nbytes() <= kBucketBytes &&
                                                        parameters[end].scalar_type() == parameters[begin].scalar_type()))) {
      bytes += static_cast<std::int64_t>(parameters[end].nbytes());
      ++end;
    }
    std::vector<Tensor> grads;
    for (std::size_t i = begin; i < end; ++i) {
      Tensor p = parameters[i];
      if (!p.grad().defined()) p.mutable_grad() = torch::zeros_like(p);
      grads.push_back(p.grad().reshape({-1}));
    }
    std::vector<Tensor> flat = {torch::cat(grads)};
    impl_->wait(impl_->group->allreduce(flat), "averaging the gradients");
    flat[0].mul_(scale);
    std::int64_t offset = 0;
    for (std::size_t i = begin; i < end; ++i) {
      Tensor g = parameters[i].grad();
      g.copy_(flat[0].narrow(0, offset, g.numel()).view_as(g));
      offset += g.numel();
    }
    reduced += static_cast<std::int64_t>(flat[0].nbytes());
    begin = end;
  }
  return reduced;
}

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

}  // namespace adapters::train
