// Data-parallel training over torch.distributed's c10d (libtorch's own, no transport of ours): the
// torchrun environment (MASTER_ADDR, MASTER_PORT, WORLD_SIZE, RANK, LOCAL_RANK), a TCPStore
// rendezvous hosted by rank 0, a Gloo process group (NCCL for a CUDA model where libtorch was built
// with it), and what the trainer asks of it: the trainable gradients averaged in flat buckets while
// backward runs (GradientReducer), scalars summed, a barrier, and a failed collective turned into
// an error naming the lost ranks.
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

  // Element-wise sums of `values` over the ranks (one all-reduce, float64).
  std::vector<double> sum(const std::vector<double>& values);
  void barrier();

  // The largest and smallest flat buffer of gradients one all-reduce sends (GradientReducer).
  static constexpr std::int64_t kBucketBytes = 25 << 20, kMinBucketBytes = 1 << 20;

 private:
  friend class GradientReducer;
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Averages the gradients of `parameters` over the ranks while the backward pass still runs, as
// DDP's reducer does: the parameters are cut into buckets (a quarter of their bytes each, within
// [kMinBucketBytes, kBucketBytes], so that even a small adapter's reduction overlaps) in reverse order
// (the order backward reaches them); a hook on each parameter's gradient accumulator marks its
// gradient final, and a bucket whose gradients are all final is all-reduced at once, in the
// background, while backward goes on with earlier layers. Buckets start in one order on every rank
// (a bucket waits for the ones before it), as collectives must.
//
//   reducer.arm();       // before the backward pass of a step's last micro-batch
//   loss.backward();
//   reducer.finish();    // the averaged gradients are in place
class GradientReducer {
 public:
  GradientReducer(DataParallel& parallel, std::vector<torch::Tensor> parameters);
  ~GradientReducer();
  GradientReducer(const GradientReducer&) = delete;
  GradientReducer& operator=(const GradientReducer&) = delete;

  // The next backward pass is the last of the step: its gradients are reduced as they become final.
  void arm();
  // Starts the buckets backward did not complete (a parameter without a gradient on this rank
  // counts as zeros; one without a gradient on every rank keeps none, as in one process), waits for
  // all, and writes the averages into the gradients. Returns the bytes all-reduced.
  std::int64_t finish();

  // Of the buckets of the last step: how many there are, and how many started while backward ran.
  std::size_t buckets() const;
  std::size_t buckets_started_during_backward() const;

  struct State;  // shared with the hooks, which outlive nothing: they hold it weakly

 private:
  std::shared_ptr<State> state_;
};

}  // namespace adapters::train
