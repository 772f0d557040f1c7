// The training loop of adapters-cpp, as the reference's AdapterTrainer: AdamW over exactly the
// trainable parameters (no weight decay for biases and norms), a warm-up + decay learning-rate
// schedule, gradient clipping and accumulation, seeded data order, evaluation with a metrics log,
// a progress bar and an SVG chart, and checkpoints that hold only the trainable parameters and
// the optimizer state, from which a run resumes bit for bit. Ctrl-C saves a resumable checkpoint.
//
//   AdapterModel model = load_pretrained("bert-tiny");
//   model->add_adapter("sst2", "lora[r=8]");
//   model->add_classification_head("sst2", 2);
//   model->train_adapter("sst2");
//   TrainerOptions options; options.output_dir = "runs/sst2"; options.epochs = 3;
//   TrainResult result = Trainer(options).train(model, train_features, &validation_features);
#pragma once

#include <torch/optim/adamw.h>

#include <atomic>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "adapters/model.h"
#include "adapters/train/data.h"
#include "adapters/train/distributed.h"

namespace adapters::train {

// ---- batches as tensors -------------------------------------------------------------------------

// input_ids / attention_mask / token_type_ids of a batch; multiple-choice batches (B, C, T) are
// flattened to (B*C, T), as the multiple-choice head expects.
models::ModelInputs to_inputs(const Batch& batch, torch::Device device);
// The head's targets by the reference's names: "labels" ((B) class ids, (B, T) tags, (B) or
// (B, K) floats for regression / multilabel, (B, T) token ids for causal LM, shifted by the
// causal_lm head), or "start_positions" / "end_positions" (QA).
HeadTensors to_head_inputs(const Batch& batch, TaskKind task, torch::Device device);

// ---- optimizer ----------------------------------------------------------------------------------

// Whether a parameter is exempt from weight decay: biases, and 1-D norm weights (names containing
// "LayerNorm", "layer_norm" or "norm").
bool exempt_from_weight_decay(const std::string& name, const torch::Tensor& parameter);

// The trainable parameters (requires_grad) by name, split by weight decay. A tensor registered
// under several names (an LM head tied to the word embeddings) is listed once, under its first.
struct ParameterGroups {
  std::vector<std::pair<std::string, torch::Tensor>> decay, no_decay;
  size_t size() const { return decay.size() + no_decay.size(); }
};
ParameterGroups trainable_parameter_groups(const torch::nn::Module& model);

// AdamW with two groups: group 0 (decay) with `weight_decay`, group 1 (no_decay) with none.
// Empty groups are left out of the optimizer, but the order of the groups is kept.
std::unique_ptr<torch::optim::AdamW> make_adamw(const ParameterGroups& groups, double learning_rate,
                                                double weight_decay);

// ---- learning-rate schedule ---------------------------------------------------------------------

enum class Schedule { Linear, Cosine, Constant };
Schedule parse_schedule(const std::string& name);  // "linear" | "cosine" | "constant"

// The multiplier of the base learning rate before optimizer step `step` (0-based): linear
// warm-up from 0 over `warmup_steps`, then linear / cosine decay to `min_ratio` (default 0) at
// `total_steps` (constant: 1 after warm-up), as HF's get_*_schedule_with_warmup (and its
// cosine_with_min_lr).
double lr_multiplier(Schedule schedule, int64_t step, int64_t warmup_steps, int64_t total_steps, double min_ratio = 0.0);

// Sets every group's learning rate.
void set_learning_rate(torch::optim::Optimizer& optimizer, double learning_rate);

// ---- optimizer state as tensors -----------------------------------------------------------------

// AdamW's state of every parameter that has one, as "<param>.exp_avg", "<param>.exp_avg_sq",
// "<param>.max_exp_avg_sq" (amsgrad) and "<param>.step" (an int64 scalar).
io::TensorMap adamw_state_tensors(torch::optim::AdamW& optimizer, const ParameterGroups& groups);
// Restores what adamw_state_tensors wrote (copies, so the optimizer owns its state); throws
// naming `source` and the parameter when a tensor is missing or its shape differs.
void load_adamw_state(torch::optim::AdamW& optimizer, const ParameterGroups& groups, const io::TensorMap& tensors,
                      const std::string& source);

// ---- evaluation ---------------------------------------------------------------------------------

struct EvalResult {
  double loss = 0;                        // mean of the head's loss over batches (by examples; causal LM:
                                          // by predicted tokens, the mean token NLL)
  std::map<std::string, double> metrics;  // "loss", plus "accuracy" and "macro_f1" for class tasks,
                                          // "perplexity" (exp of the loss) for causal LM
  std::vector<int64_t> predictions;       // class / choice ids, in feature order (class tasks)
};

// The model's output on a batch, with the task's targets for the active head. Masked LM with one
// masked_lm head runs it only at the masked positions: the vocabulary projection of the rest is
// not needed by the loss (the output then has the loss, not the logits).
ModelOutput forward_batch(AdapterModelImpl& model, const Batch& batch, TaskKind task, torch::Device device);
// What the task's training loss averages over in a batch: its rows, its labelled tokens (tagging,
// masked LM) or its predicted tokens (causal LM). A data-parallel rank weighs its loss by its
// share of this, so that the ranks' mean is the loss of the whole batch.
double loss_weight(const Batch& batch, TaskKind task);

// Runs the active setup over `features` without gradients in eval mode (the previous mode is
// restored). Every task gets loss; classification and multiple choice accuracy, macro F1 and
// MCC; regression Pearson and Spearman; token classification token-level F1 (and accuracy);
// question answering exact match and F1 of the predicted spans when `dataset` (the examples the
// features were made from) is given; causal and masked LM perplexity, exp of the mean NLL per
// predicted token (masked LM: of a fixed masking, the same at every evaluation). With `parallel`,
// each rank runs every world-th batch and the metrics are computed from all of them on every
// rank: the same result as one process.
EvalResult evaluate(AdapterModelImpl& model, const FeatureSet& features, size_t batch_size, torch::Device device,
                    const Dataset* dataset = nullptr, DataParallel* parallel = nullptr);

// ---- the trainer --------------------------------------------------------------------------------

struct TrainerOptions {
  int64_t epochs = 3;
  size_t batch_size = 32;
  double learning_rate = 1e-4;
  double weight_decay = 0.0;
  double warmup_ratio = 0.0;       // of the total optimizer steps; warmup_steps wins when > 0
  int64_t warmup_steps = 0;
  std::string schedule = "linear"; // "linear" | "cosine" | "constant"
  double min_lr_ratio = 0.0;       // where linear / cosine decay ends, as a share of learning_rate
  double max_grad_norm = 1.0;      // <= 0: no clipping
  int64_t grad_accumulation = 1;   // micro-batches per optimizer step
  int64_t eval_every_steps = 0;    // 0: evaluate (and checkpoint) at the end of each epoch
  int64_t early_stopping_patience = 0;  // evaluations without improvement before stopping; 0: off
  std::string metric_for_best = "accuracy";  // "accuracy" | "macro_f1" | "loss"
  uint64_t seed = 42;              // data order per epoch; torch's generator is reseeded per micro-batch
  std::filesystem::path output_dir;  // required: metrics.jsonl, curves.svg, checkpoint-<step>/, best/
  int64_t save_total_limit = 0;      // > 0: keep only the newest N checkpoint-<step>/ (HF's save_total_limit)
  bool overwrite = false;            // replace a run already in output_dir
  std::filesystem::path resume_from; // a checkpoint folder to continue from
  int64_t max_steps = 0;             // > 0: train this many optimizer steps (overrides epochs)
  // > 0 (and no max_steps): train until this much time has passed, then end as planned; the
  // schedule runs over the steps the time is estimated to hold, re-estimated after every step.
  double time_limit_minutes = 0;
  bool bucket_by_length = false;
  int64_t log_every = 10;            // optimizer steps between train-loss log lines
  bool bf16 = false;                 // bf16 autocast where the libtorch supports it
  bool handle_sigint = true;         // Ctrl-C saves a resumable checkpoint and stops
  bool show_progress = true;         // a progress bar on stderr
  torch::Device device = torch::kCPU;
  // Called after every optimizer step with the global step (1-based); tests use it to stop a run
  // (Trainer::request_stop) at a known step.
  std::function<void(int64_t step)> on_step;
  // Data parallelism over several processes (distributed.h); none: this process alone. Each rank
  // takes an equal share of every batch of batch_size (which the world size must divide), the
  // trainable gradients are averaged after the backward passes of a step, and rank 0 alone writes.
  std::shared_ptr<DataParallel> parallel;
};

struct EvalRecord {
  int64_t step = 0;
  double epoch = 0;
  std::map<std::string, double> metrics;
};

struct TrainResult {
  std::string status;          // "completed" | "early_stopped" | "interrupted"
  int64_t global_step = 0;     // optimizer steps done
  int64_t total_steps = 0;     // optimizer steps planned
  double epoch = 0;            // epochs done, fractional
  std::vector<std::pair<int64_t, double>> train_loss;  // (step, mean loss since the last point)
  std::vector<EvalRecord> evaluations;
  std::optional<double> best_metric;
  std::filesystem::path best_checkpoint;  // output_dir/best, when there was an evaluation
  std::filesystem::path last_checkpoint;  // the latest checkpoint-<step>
  int64_t reduced_bytes_per_step = 0;     // gradient bytes all-reduced per optimizer step (data parallel)
  int64_t gradient_buckets = 0;           // all-reduces per optimizer step (data parallel), of them
  int64_t buckets_during_backward = 0;    // the ones started while backward ran (the last step)
};

// Where a run stands; trainer_state.json of a checkpoint.
struct TrainerState {
  int64_t global_step = 0;
  int64_t epoch = 0;           // the epoch in progress (0-based)
  int64_t batch_in_epoch = 0;  // micro-batches of that epoch already consumed
  int64_t evaluations_without_improvement = 0;
  std::optional<double> best_metric;
  int64_t best_step = 0;
  uint64_t seed = 0;
  std::vector<std::pair<int64_t, double>> train_loss;
  std::vector<EvalRecord> evaluations;
};

class Trainer {
 public:
  explicit Trainer(TrainerOptions options);

  // Trains `model`'s trainable parameters (set them up first: train_adapter, a head) on `train`,
  // evaluating on `validation` when given. Throws adapters::Error for bad options, an output_dir
  // that already holds a run (unless overwrite or resume_from) or an unreadable checkpoint.
  TrainResult train(AdapterModel& model, const FeatureSet& train, const FeatureSet* validation = nullptr);

  // Asks the loop to stop after the current optimizer step with a resumable checkpoint (what
  // Ctrl-C does). Safe from any thread.
  void request_stop() { stop_requested_.store(true); }

  const TrainerOptions& options() const { return options_; }

 private:
  TrainerOptions options_;
  std::atomic<bool> stop_requested_{false};
};

// Checkpoint files (inside checkpoint-<step>/ and best/).
inline constexpr const char* kTrainableFile = "trainable.safetensors";
inline constexpr const char* kOptimizerFile = "optimizer.safetensors";
inline constexpr const char* kTrainerStateFile = "trainer_state.json";

// Reads a checkpoint's trainer_state.json; throws naming the file.
TrainerState read_trainer_state(const std::filesystem::path& checkpoint_dir);

}  // namespace adapters::train
