// Data-parallel training over torch.distributed's c10d (libtorch's own, no transport of ours): the
// torchrun environment (MASTER_ADDR, MASTER_PORT, WORLD_SIZE, RANK, LOCAL_RANK), a TCPStore
// rendezvous hosted by rank 0, a Gloo process group (NCCL for a CUDA model where libtorch was built
// with it), and what the trainer asks of it: the trainable gradients averaged in flat buckets,
// scalars summed, a barrier, and a failed collective turned into an error naming the lost ranks.
//
//   if (auto env = world_from_environment()) options.parallel = std::make_shared<DataParallel>(*env, device);
#pragma once

#include <torch/types.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace adapters::train {

struct WorldEnv {
  int rank = 0;
  int world_size = 1;
  int local_rank = 0;
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
  // How long the rendezvous and every collective may wait for the other ranks
  // (ADAPTERS_DIST_TIMEOUT, seconds).
  std::chrono::seconds timeout{300};
};

// The torchrun variables of this process, or nullopt when WORLD_SIZE is unset or 1. Throws naming
// the variable when one is malformed or missing (RANK, MASTER_PORT with WORLD_SIZE > 1).
std::optional<WorldEnv> world_from_environment();

class DataParallel {
 public:
  // Joins the process group: blocks until every rank has joined, or throws after the timeout.
  DataParallel(const WorldEnv& env, torch::Device device);
  ~DataParallel();
  DataParallel(const DataParallel&) = delete;
  DataParallel& operator=(const DataParallel&) = delete;

  int rank() const;
  int world_size() const;
  // Rank 0: the one process that writes checkpoints, logs and results.
  bool is_main() const { return rank() == 0; }

  // Averages the gradients of `parameters` over the ranks in place, in flat buffers of at most
  // kBucketBytes (a parameter without a gradient counts as zeros, and gets one). Returns the bytes
  // all-reduced.
  std::int64_t average_gradients(const std::vector<torch::Tensor>& parameters);
  // Element-wise sums of `values` over the ranks (one all-reduce, float64).
  std::vector<double> sum(const std::vector<double>& values);
  void barrier();

  static constexpr std::int64_t kBucketBytes = 25 << 20;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace adapters::train
