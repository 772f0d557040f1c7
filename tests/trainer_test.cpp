// Tests of the training loop on the tiny fixture BERT (vocab 99, hidden 32): it learns a synthetic
// task, changes only the trainable parameters, checkpoints only those (plus optimizer state),
// resumes bit for bit, refuses to clobber a run, and groups weight decay as the reference does;
// and on the tiny fixture GPT-2: causal-LM training lowers perplexity, the tied LM head stepped once.
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <random>
#include <set>

#include <nlohmann/json.hpp>

#include <sys/resource.h>

#include "adapters/core/error.h"
#include "adapters/io/tensors.h"
#include "adapters/train/metrics.h"
#include "adapters/train/trainer.h"

using namespace adapters;
using namespace adapters::train;
namespace fs = std::filesystem;

namespace {

// Label 1 iff marker tokens (ids 4..7) occur in the row.
constexpr int64_t kFirstMarker = 4, kMarkers = 4;

// Rows of 6..12 random ids (10..98) between [CLS]=2 and [SEP]=3; in every second row (label 1)
// about half the tokens are replaced by markers.
FeatureSet marker_task(size_t size, uint64_t seed) {
  std::mt19937_64 rng(seed);
  FeatureSet set;
  set.task = TaskKind::SequenceClassification;
  set.num_labels = 2;
  for (size_t i = 0; i < size; ++i) {
    const size_t length = 6 + rng() % 7;
    std::vector<int64_t> ids = {2};
    for (size_t t = 0; t < length; ++t) ids.push_back(10 + static_cast<int64_t>(rng() % 89));
    const int64_t label = static_cast<int64_t>(i % 2);
    if (label == 1) {
      ids[1 + rng() % length] = kFirstMarker;
      for (size_t t = 1; t <= length; ++t) {
        if (rng() % 2 == 0) ids[t] = kFirstMarker + static_cast<int64_t>(rng() % kMarkers);
      }
    }
    ids.push_back(3);
    Feature feature;
    feature.example = i;
    feature.rows.push_back({ids, std::vector<int64_t>(ids.size(), 0)});
    feature.label = label;
    set.features.push_back(std::move(feature));
  }
  return set;
}

std::vector<int64_t> labels_of(const FeatureSet& set) {
  std::vector<int64_t> out;
  for (const auto& f : set.features) out.push_back(f.label);
  return out;
}

AdapterModel tiny_model(const std::string& adapter_config) {
  torch::manual_seed(0);
  AdapterModel model = load_pretrained(fs::path(ADAPTERS_FIXTURES) / "adapterhub/models/bert");
  model->add_adapter("task", adapter_config);
  model->add_classification_head("task", 2);
  model->train_adapter("task");
  return model;
}

fs::path fresh_dir(const std::string& name) {
  const fs::path dir = fs::temp_directory_path() / ("adapters_trainer_test_" + name);
  io::remove_tree(dir);
  return dir;
}

TrainerOptions quick_options(const fs::path& dir) {
  TrainerOptions o;
  o.output_dir = dir;
  o.epochs = 3;
  o.batch_size = 16;
  o.learning_rate = 5e-3;
  o.weight_decay = 0.01;
  o.warmup_ratio = 0.1;
  o.log_every = 4;
  o.show_progress = false;
  o.seed = 7;
  return o;
}

std::map<std::string, torch::Tensor> snapshot(const torch::nn::Module& model) {
  std::map<std::string, torch::Tensor> out;
  for (const auto& item : model.named_parameters()) out[item.key()] = item.value().detach().clone();
  return out;
}

std::set<std::string> trainable_names(const torch::nn::Module& model) {
  std::set<std::string> out;
  for (const auto& item : model.named_parameters()) {
    if (item.value().requires_grad()) out.insert(item.key());
  }
  return out;
}

// A LoRA model trained for one epoch into a fresh folder (checkpoint-<steps> at its end).
struct OneEpochRun {
  AdapterModel model;
  TrainerOptions options;
};

OneEpochRun one_epoch_run(const std::string& dir_name, const FeatureSet& train) {
  OneEpochRun run{tiny_model("lora[r=8]"), quick_options(fresh_dir(dir_name))};
  run.options.epochs = 1;
  Trainer(run.options).train(run.model, train);
  return run;
}

// The message of the adapters::Error `f` throws (fails the test when it throws none).
template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected an adapters::Error";
  return "";
}

// Causal LM rows of the fixture GPT-2 (bos = eos = 97, pad 98): 5..12 ids counting up from a
// random start (ids 2..91, wrapping), so every token follows from the one before.
FeatureSet counting_task(size_t size, uint64_t seed) {
  std::mt19937_64 rng(seed);
  FeatureSet set;
  set.task = TaskKind::CausalLM;
  set.pad_id = 98;
  for (size_t i = 0; i < size; ++i) {
    const size_t length = 5 + rng() % 8, start = rng() % 90;
    std::vector<int64_t> ids = {97};
    for (size_t t = 0; t < length; ++t) ids.push_back(2 + static_cast<int64_t>((start + t) % 90));
    ids.push_back(97);
    Feature feature;
    feature.example = i;
    feature.rows.push_back({ids, std::vector<int64_t>(ids.size(), 0)});
    feature.token_labels = ids;
    set.features.push_back(std::move(feature));
  }
  return set;
}

}  // namespace

TEST(Trainer, LearnsTheMarkerTaskAndLogsIt) {
  const FeatureSet train = marker_task(256, 1), validation = marker_task(64, 2);
  AdapterModel model = tiny_model("seq_bn");
  const fs::path dir = fresh_dir("learns");
  TrainerOptions options = quick_options(dir);
  options.epochs = 10;
  options.log_every = 16;  // one train-loss point per epoch
  const TrainResult result = Trainer(options).train(model, train, &validation);

  EXPECT_EQ(result.status, "completed");
  EXPECT_EQ(result.global_step, 10 * 16);
  ASSERT_GE(result.train_loss.size(), 2u);
  EXPECT_LT(result.train_loss.back().second, 0.8 * result.train_loss.front().second);
  EXPECT_LT(result.evaluations.back().metrics.at("loss"), result.evaluations.front().metrics.at("loss"));
  ASSERT_EQ(result.evaluations.size(), 10u);  // one per epoch
  const double baseline = majority_baseline_accuracy(labels_of(train), labels_of(validation));
  EXPECT_GT(result.evaluations.back().metrics.at("accuracy"), baseline + 0.2);
  EXPECT_TRUE(fs::exists(dir / "metrics.jsonl"));
  EXPECT_TRUE(fs::exists(dir / "curves.svg"));
  EXPECT_TRUE(fs::exists(dir / "best" / kTrainableFile));
  EXPECT_TRUE(fs::exists(dir / "checkpoint-160" / kTrainerStateFile));
  ASSERT_TRUE(result.best_metric.has_value());
  EXPECT_EQ(read_trainer_state(dir / "best").global_step, read_trainer_state(dir).best_step);
}

TEST(Trainer, ChangesOnlyTrainableParameters) {
  const FeatureSet train = marker_task(64, 3);
  AdapterModel model = tiny_model("lora[r=8]");
  const auto before = snapshot(*model);
  const auto trainable = trainable_names(*model);
  TrainerOptions options = quick_options(fresh_dir("only_trainable"));
  options.epochs = 1;
  Trainer(options).train(model, train);

  size_t changed = 0;
  for (const auto& item : model->named_parameters()) {
    const bool same = torch::equal(before.at(item.key()), item.value().detach());
    if (trainable.count(item.key())) {
      changed += same ? 0 : 1;
    } else {
      EXPECT_TRUE(same) << "frozen parameter changed: " << item.key();
    }
  }
  EXPECT_GT(changed, 0u);
}

TEST(Trainer, CheckpointHoldsOnlyTrainableParametersAndOptimizerState) {
  const FeatureSet train = marker_task(32, 4);
  const OneEpochRun run = one_epoch_run("checkpoint", train);
  const fs::path& dir = run.options.output_dir;

  const auto trainable = trainable_names(*run.model);
  const io::TensorMap saved = io::read_checkpoint(dir / "checkpoint-2" / kTrainableFile);
  std::set<std::string> saved_names;
  for (const auto& [name, tensor] : saved) saved_names.insert(name);
  EXPECT_EQ(saved_names, trainable);
  for (const auto& name : saved_names) {
    EXPECT_TRUE(name.find("lora") != std::string::npos || name.rfind("heads.", 0) == 0) << name;
  }
  const io::TensorMap optimizer = io::read_checkpoint(dir / "checkpoint-2" / kOptimizerFile);
  for (const auto& name : trainable) {
    EXPECT_TRUE(optimizer.count(name + ".exp_avg")) << name;
    EXPECT_TRUE(optimizer.count(name + ".exp_avg_sq")) << name;
    ASSERT_TRUE(optimizer.count(name + ".step")) << name;
    EXPECT_EQ(optimizer.at(name + ".step").item<int64_t>(), 2);
  }
  const TrainerState state = read_trainer_state(dir / "checkpoint-2");
  EXPECT_EQ(state.global_step, 2);
  EXPECT_EQ(state.epoch, 1);
  EXPECT_EQ(state.batch_in_epoch, 0);
}

TEST(Trainer, ResumeFromAnInterruptedRunIsBitIdentical) {
  const FeatureSet train = marker_task(80, 5), validation = marker_task(16, 6);
  TrainerOptions base = quick_options({});
  base.epochs = 2;
  base.grad_accumulation = 2;  // 5 batches per epoch: steps of 2, 2, 1 micro-batches
  base.schedule = "cosine";

  AdapterModel uninterrupted = tiny_model("lora[r=8]");
  TrainerOptions full = base;
  full.output_dir = fresh_dir("resume_full");
  EXPECT_EQ(Trainer(full).train(uninterrupted, train, &validation).status, "completed");

  // Stopped mid-epoch after step 2 (of 3 per epoch), as Ctrl-C would.
  AdapterModel first_half = tiny_model("lora[r=8]");
  TrainerOptions stopped = base;
  stopped.output_dir = fresh_dir("resume_split");
  TrainerOptions with_stop = stopped;
  Trainer* self = nullptr;
  with_stop.on_step = [&self](int64_t step) {
    if (step == 2) self->request_stop();
  };
  Trainer interrupting(with_stop);
  self = &interrupting;
  const TrainResult partial = interrupting.train(first_half, train, &validation);
  EXPECT_EQ(partial.status, "interrupted");
  EXPECT_EQ(partial.global_step, 2);
  const TrainerState position = read_trainer_state(stopped.output_dir / "checkpoint-2");
  EXPECT_EQ(position.epoch, 0);
  EXPECT_EQ(position.batch_in_epoch, 4);

  AdapterModel resumed = tiny_model("lora[r=8]");
  TrainerOptions resume = stopped;
  resume.resume_from = stopped.output_dir / "checkpoint-2";
  const TrainResult rest = Trainer(resume).train(resumed, train, &validation);
  EXPECT_EQ(rest.status, "completed");
  EXPECT_EQ(rest.global_step, 6);

  const auto expected = snapshot(*uninterrupted);
  for (const auto& item : resumed->named_parameters()) {
    EXPECT_TRUE(torch::equal(expected.at(item.key()), item.value().detach())) << item.key();
  }
}

TEST(Trainer, RefusesAnOutputDirHoldingARun) {
  const FeatureSet train = marker_task(16, 7);
  OneEpochRun run = one_epoch_run("refuse", train);
  const std::string message = error_of([&] { Trainer(run.options).train(run.model, train); });
  EXPECT_NE(message.find(run.options.output_dir.string()), std::string::npos) << message;
  EXPECT_NE(message.find("overwrite"), std::string::npos) << message;
  EXPECT_NE(message.find("resume_from"), std::string::npos) << message;
  run.options.overwrite = true;
  EXPECT_EQ(Trainer(run.options).train(run.model, train).status, "completed");
}

// Options that are not finite or out of range are refused by name, never clamped or replaced
// by a default (an infinite learning rate trained to an all-NaN adapter).
TEST(Trainer, RefusesOptionsThatAreNotFiniteOrOutOfRange) {
  const double inf = std::numeric_limits<double>::infinity(), nan = std::nan("");
  const std::vector<std::pair<std::function<void(TrainerOptions&)>, std::string>> cases = {
      {[&](TrainerOptions& o) { o.learning_rate = inf; }, "option learning_rate (--lr)"},
      {[&](TrainerOptions& o) { o.learning_rate = nan; }, "option learning_rate (--lr)"},
      {[&](TrainerOptions& o) { o.learning_rate = -1; }, "option learning_rate (--lr)"},
      {[&](TrainerOptions& o) { o.weight_decay = nan; }, "option weight_decay"},
      {[&](TrainerOptions& o) { o.warmup_ratio = nan; }, "option warmup_ratio"},
      {[&](TrainerOptions& o) { o.max_grad_norm = inf; }, "option max_grad_norm"},
      {[&](TrainerOptions& o) { o.max_steps = -1; }, "option max_steps (--max-steps)"},
      {[&](TrainerOptions& o) { o.eval_every_steps = -5; }, "option eval_every_steps (--eval-every)"},
  };
  for (const auto& [set, name] : cases) {
    TrainerOptions o = quick_options(fresh_dir("bad_options"));
    set(o);
    const std::string message = error_of([&] { Trainer{o}; });
    EXPECT_NE(message.find(name), std::string::npos) << message;
  }
}

// A step whose loss is not finite stops the run with an error naming the step; nothing of it is
// saved (no checkpoint, no NaN weights written).
TEST(Trainer, ANonFiniteLossStopsTheRunNamingTheStep) {
  AdapterModel model = tiny_model("lora[r=8]");
  {
    torch::NoGradGuard no_grad;
    for (auto& item : model->named_parameters()) {
      if (item.key().rfind("heads.", 0) == 0) item.value().fill_(std::nan(""));  // the head's weights
    }
  }
  TrainerOptions o = quick_options(fresh_dir("nan_loss"));
  const std::string message = error_of([&] { Trainer(o).train(model, marker_task(32, 3)); });
  EXPECT_NE(message.find("the loss is not finite (nan) at step 1"), std::string::npos) << message;
  EXPECT_FALSE(fs::exists(o.output_dir / "checkpoint-1"));
}

// A checkpoint whose trainer state no run reaches is refused, naming the file and the key.
TEST(Trainer, RefusesAnImpossibleCheckpointState) {
  const FeatureSet train = marker_task(16, 7);
  OneEpochRun run = one_epoch_run("impossible", train);
  const fs::path checkpoint = run.options.output_dir / "checkpoint-1";
  ASSERT_TRUE(fs::exists(checkpoint / kTrainerStateFile));
  nlohmann::json state = nlohmann::json::parse(std::ifstream(checkpoint / kTrainerStateFile));
  state["batch_in_epoch"] = -3;
  std::ofstream(checkpoint / kTrainerStateFile) << state.dump();
  const std::string message = error_of([&] { read_trainer_state(checkpoint); });
  EXPECT_NE(message.find("key 'batch_in_epoch' must be >= 0, found -3"), std::string::npos) << message;
  EXPECT_NE(message.find(kTrainerStateFile), std::string::npos) << message;
}

TEST(Trainer, WeightDecaySkipsBiasesAndNorms) {
  EXPECT_TRUE(exempt_from_weight_decay("bert.encoder.layer.0.output.dense.bias", torch::zeros({4})));
  EXPECT_TRUE(exempt_from_weight_decay("bert.embeddings.LayerNorm.weight", torch::zeros({4})));
  EXPECT_TRUE(exempt_from_weight_decay("x.adapter_norm_before.weight", torch::zeros({4})));
  EXPECT_FALSE(exempt_from_weight_decay("bert.encoder.layer.0.output.dense.weight", torch::zeros({4, 4})));
  EXPECT_FALSE(exempt_from_weight_decay("x.normalizer.weight", torch::zeros({4, 4})));

  AdapterModel model = tiny_model("seq_bn");
  const ParameterGroups groups = trainable_parameter_groups(*model);
  EXPECT_EQ(groups.size(), trainable_names(*model).size());
  for (const auto& [name, p] : groups.no_decay) EXPECT_TRUE(p.dim() == 1) << name;
  for (const auto& [name, p] : groups.decay) EXPECT_FALSE(name.size() >= 4 && name.substr(name.size() - 4) == "bias") << name;
  ASSERT_FALSE(groups.decay.empty());
  ASSERT_FALSE(groups.no_decay.empty());
  auto optimizer = make_adamw(groups, 1e-3, 0.05);
  ASSERT_EQ(optimizer->param_groups().size(), 2u);
  auto decay_of = [&](size_t i) {
    return static_cast<torch::optim::AdamWOptions&>(optimizer->param_groups()[i].options()).weight_decay();
  };
  EXPECT_DOUBLE_EQ(decay_of(0), 0.05);
  EXPECT_DOUBLE_EQ(decay_of(1), 0.0);
  EXPECT_EQ(optimizer->param_groups()[0].params().size(), groups.decay.size());
}

TEST(Trainer, ScheduleWarmsUpThenDecays) {
  EXPECT_DOUBLE_EQ(lr_multiplier(Schedule::Linear, 0, 10, 110), 0.0);
  EXPECT_DOUBLE_EQ(lr_multiplier(Schedule::Linear, 5, 10, 110), 0.5);
  EXPECT_DOUBLE_EQ(lr_multiplier(Schedule::Linear, 10, 10, 110), 1.0);
  EXPECT_DOUBLE_EQ(lr_multiplier(Schedule::Linear, 60, 10, 110), 0.5);
  EXPECT_DOUBLE_EQ(lr_multiplier(Schedule::Linear, 110, 10, 110), 0.0);
  EXPECT_NEAR(lr_multiplier(Schedule::Cosine, 60, 10, 110), 0.5, 1e-12);
  EXPECT_NEAR(lr_multiplier(Schedule::Cosine, 110, 10, 110), 0.0, 1e-12);
  EXPECT_DOUBLE_EQ(lr_multiplier(Schedule::Constant, 100, 10, 110), 1.0);
  EXPECT_THROW(parse_schedule("exponential"), Error);
  // A floor: decay ends at min_ratio (pretraining decays to 10%); warm-up is unchanged.
  EXPECT_DOUBLE_EQ(lr_multiplier(Schedule::Linear, 5, 10, 110, 0.1), 0.5);
  EXPECT_DOUBLE_EQ(lr_multiplier(Schedule::Linear, 60, 10, 110, 0.1), 0.55);
  EXPECT_DOUBLE_EQ(lr_multiplier(Schedule::Linear, 110, 10, 110, 0.1), 0.1);
  EXPECT_DOUBLE_EQ(lr_multiplier(Schedule::Linear, 500, 10, 110, 0.1), 0.1);
  EXPECT_NEAR(lr_multiplier(Schedule::Cosine, 110, 10, 110, 0.1), 0.1, 1e-12);
}

// A metrics log planted as a symbolic link in the output folder is replaced, not appended through.
TEST(Trainer, AMetricsLogPlantedAsASymlinkIsReplaced) {
  const fs::path dir = fresh_dir("planted_link"), victim = fresh_dir("planted_link_victim");
  fs::create_directories(dir);
  io::write_file_atomic(victim, "mine\n");
  fs::create_symlink(victim, dir / "metrics.jsonl");
  AdapterModel model = tiny_model("seq_bn");
  TrainerOptions options = quick_options(dir);
  options.max_steps = 2;
  Trainer(options).train(model, marker_task(32, 1));
  EXPECT_EQ(io::read_text_file(victim), "mine\n");
  EXPECT_FALSE(fs::is_symlink(dir / "metrics.jsonl"));
  EXPECT_FALSE(io::read_text_file(dir / "metrics.jsonl").empty());
}

TEST(Trainer, SaveTotalLimitKeepsTheNewestCheckpoints) {
  const FeatureSet train = marker_task(64, 1);  // 4 steps per epoch
  AdapterModel model = tiny_model("seq_bn");
  TrainerOptions options = quick_options(fresh_dir("save_total_limit"));
  options.save_total_limit = 2;
  Trainer(options).train(model, train);
  std::set<std::string> checkpoints;
  for (const auto& entry : fs::directory_iterator(options.output_dir)) {
    if (entry.path().filename().string().rfind("checkpoint-", 0) == 0) checkpoints.insert(entry.path().filename().string());
  }
  EXPECT_EQ(checkpoints, (std::set<std::string>{"checkpoint-8", "checkpoint-12"}));
  options.save_total_limit = -1;
  EXPECT_NE(error_of([&] { Trainer{options}; }).find("save_total_limit"), std::string::npos);
}

TEST(Trainer, ATimeLimitEndsTheRunAsPlanned) {
  const FeatureSet train = marker_task(64, 1);
  AdapterModel model = tiny_model("seq_bn");
  TrainerOptions options = quick_options(fresh_dir("time_limit"));
  options.epochs = 100000;  // hours of steps: the time limit must end the run
  options.warmup_ratio = 0;
  options.warmup_steps = 2;
  options.time_limit_minutes = 0.02;  // 1.2 s
  const auto start = std::chrono::steady_clock::now();
  const TrainResult result = Trainer(options).train(model, train);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_EQ(result.status, "completed");
  EXPECT_GT(result.global_step, 2);
  EXPECT_EQ(result.total_steps, result.global_step);
  EXPECT_LT(seconds, 60.0);
  EXPECT_TRUE(fs::exists(options.output_dir / ("checkpoint-" + std::to_string(result.global_step))));
  // A warm-up share needs a step count, which a time limit does not give.
  options.warmup_ratio = 0.1;
  options.warmup_steps = 0;
  EXPECT_NE(error_of([&] { Trainer{options}; }).find("warmup_ratio"), std::string::npos);
}

TEST(Trainer, MultipleChoiceBatchesFlattenToRows) {
  Batch batch;
  batch.batch_size = 2;
  batch.num_choices = 3;
  batch.seq_len = 4;
  batch.input_ids.assign(24, 5);
  batch.attention_mask.assign(24, 1);
  batch.labels = {0, 2};
  const auto inputs = to_inputs(batch, torch::kCPU);
  EXPECT_EQ(inputs.input_ids.sizes(), (std::vector<int64_t>{6, 4}));
  EXPECT_EQ(inputs.attention_mask.sizes(), (std::vector<int64_t>{6, 4}));
  EXPECT_FALSE(inputs.token_type_ids.defined());
  const auto targets = to_head_inputs(batch, TaskKind::MultipleChoice, torch::kCPU);
  EXPECT_EQ(targets.at("labels").sizes(), (std::vector<int64_t>{2}));
}

// Limits the size of every file this process writes (RLIMIT_FSIZE) for its lifetime: a write past
// the limit fails with EFBIG, as a write to a full disk fails with ENOSPC.
class FileSizeLimit {
 public:
  explicit FileSizeLimit(rlim_t bytes) {
    getrlimit(RLIMIT_FSIZE, &saved_);
    previous_handler_ = std::signal(SIGXFSZ, SIG_IGN);  // fail the write instead of killing us
    rlimit limited = saved_;
    limited.rlim_cur = bytes;
    setrlimit(RLIMIT_FSIZE, &limited);
  }
  ~FileSizeLimit() {
    setrlimit(RLIMIT_FSIZE, &saved_);
    std::signal(SIGXFSZ, previous_handler_);
  }

 private:
  rlimit saved_{};
  void (*previous_handler_)(int) = nullptr;
};

TEST(Trainer, FullDiskWhileSavingLeavesTheLastCheckpointIntact) {
  const FeatureSet train = marker_task(32, 10);
  OneEpochRun run = one_epoch_run("full_disk", train);
  const fs::path& dir = run.options.output_dir;
  const fs::path last = dir / "checkpoint-2";
  const io::TensorMap before = io::read_checkpoint(last / kTrainableFile);

  TrainerOptions more = run.options;
  more.epochs = 2;
  more.resume_from = last;
  std::string message;
  {
    const FileSizeLimit limit(1024);  // below the size of the next checkpoint's weight files
    message = error_of([&] { Trainer(more).train(run.model, train); });
  }
  ASSERT_FALSE(message.empty()) << "saving past the file size limit did not fail";
  EXPECT_NE(message.find(dir.string()), std::string::npos) << message;
  EXPECT_NE(message.find("too large"), std::string::npos) << message;  // strerror(EFBIG)
  EXPECT_FALSE(fs::exists(dir / "checkpoint-4"));
  for (const auto& entry : fs::directory_iterator(dir)) {
    EXPECT_NE(entry.path().filename().string().front(), '.') << "temporary left behind: " << entry.path();
  }
  const io::TensorMap after = io::read_checkpoint(last / kTrainableFile);
  ASSERT_EQ(after.size(), before.size());
  for (const auto& [name, tensor] : before) EXPECT_TRUE(torch::equal(tensor, after.at(name))) << name;
  EXPECT_EQ(read_trainer_state(last).global_step, 2);
}

TEST(Trainer, CtrlCSavesAResumableCheckpointAndStops) {
  const FeatureSet train = marker_task(64, 8);
  AdapterModel model = tiny_model("lora[r=8]");
  const fs::path dir = fresh_dir("sigint");
  TrainerOptions options = quick_options(dir);
  options.on_step = [](int64_t step) {
    if (step == 1) std::raise(SIGINT);
  };
  const TrainResult result = Trainer(options).train(model, train);
  EXPECT_EQ(result.status, "interrupted");
  EXPECT_EQ(result.global_step, 1);
  EXPECT_EQ(result.last_checkpoint, dir / "checkpoint-1");
  EXPECT_EQ(read_trainer_state(dir / "checkpoint-1").batch_in_epoch, 1);
}

TEST(Trainer, Bf16AutocastTrainsWithFiniteLoss) {
  const FeatureSet train = marker_task(32, 9);
  AdapterModel model = tiny_model("lora[r=8]");
  TrainerOptions options = quick_options(fresh_dir("bf16"));
  options.epochs = 1;
  options.log_every = 1;
  options.bf16 = true;
  const TrainResult result = Trainer(options).train(model, train);
  EXPECT_EQ(result.status, "completed");
  for (const auto& [step, loss] : result.train_loss) EXPECT_TRUE(std::isfinite(loss)) << step;
  for (const auto& item : model->named_parameters()) EXPECT_EQ(item.value().scalar_type(), torch::kFloat) << item.key();
}

// Masked LM rows of the fixture BERT: [CLS]=2, 6..11 ids counting up from a random start (ids
// 10..97, wrapping), [SEP]=3; every text token may be masked, and each follows from its neighbours.
FeatureSet counting_mlm_task(size_t size, uint64_t seed) {
  FeatureSet set = counting_task(size, seed);
  set.task = TaskKind::MaskedLM;
  set.pad_id = 0;
  set.masking.mask_id = 4;
  set.masking.vocab_size = 99;
  set.masking.probability = 0.3;
  for (Feature& f : set.features) {
    auto& ids = f.rows[0].input_ids;
    for (auto& id : ids) id = 10 + (id - 2) % 88;
    ids.front() = 2;
    ids.back() = 3;
    f.token_labels = ids;
    f.token_labels.front() = f.token_labels.back() = kIgnoreIndex;
  }
  return set;
}

TEST(Trainer, MaskedLmLearnsTheMaskedTokensAndProjectsOnlyThem) {
  const FeatureSet train = counting_mlm_task(128, 21), validation = counting_mlm_task(32, 22);
  torch::manual_seed(0);
  AdapterModel model = load_pretrained(fs::path(ADAPTERS_FIXTURES) / "adapterhub/models/bert");
  model->add_head("mlm", "masked_lm");
  model->freeze_model(false);  // pretraining: every weight

  // The loss at the masked positions alone is the loss of the head on every position.
  Batch batch = collate(train, {0, 1, 2, 3});
  mask_tokens(batch, train.masking, 5);
  model->eval();
  ForwardOptions dense;
  dense.head_inputs = to_head_inputs(batch, TaskKind::MaskedLM, torch::kCPU);
  const double every_position = model->forward(to_inputs(batch, torch::kCPU), dense).loss.item<double>();
  const ModelOutput sparse = forward_batch(*model, batch, TaskKind::MaskedLM, torch::kCPU);
  EXPECT_NEAR(sparse.loss.item<double>(), every_position, 1e-5);
  EXPECT_FALSE(sparse.head.count("logits"));

  const EvalResult before = evaluate(*model, validation, 16, torch::kCPU);
  EXPECT_NEAR(evaluate(*model, validation, 8, torch::kCPU).loss, before.loss, 1e-5);  // the same masking every time
  TrainerOptions options = quick_options(fresh_dir("masked_lm"));
  options.epochs = 60;
  const TrainResult result = Trainer(options).train(model, train, &validation);
  EXPECT_EQ(result.status, "completed");
  const EvalResult after = evaluate(*model, validation, 16, torch::kCPU);
  EXPECT_NEAR(after.metrics.at("perplexity"), std::exp(after.loss), 1e-9);
  EXPECT_LT(after.metrics.at("perplexity"), 0.5 * before.metrics.at("perplexity")) << before.metrics.at("perplexity");
}

TEST(Trainer, CausalLmLowersPerplexityAndStepsTheTiedHeadOnce) {
  const FeatureSet train = counting_task(128, 11), validation = counting_task(32, 12);
  torch::manual_seed(0);
  AdapterModel model = load_pretrained(fs::path(ADAPTERS_FIXTURES) / "adapterhub/models/gpt2");
  model->add_head("lm", "causal_lm");  // tied to the word embeddings
  model->freeze_model(false);
  const EvalResult before = evaluate(*model, validation, 16, torch::kCPU);
  EXPECT_NEAR(before.metrics.at("perplexity"), std::exp(before.loss), 1e-9);

  // The tied matrix is one trainable parameter, under its first (base model) name.
  const ParameterGroups groups = trainable_parameter_groups(*model);
  std::set<const void*> tensors;
  std::string tied;
  for (const auto* group : {&groups.decay, &groups.no_decay}) {
    for (const auto& [name, t] : *group) {
      EXPECT_TRUE(tensors.insert(t.unsafeGetTensorImpl()).second) << "listed twice: " << name;
      if (t.is_same(model->base().word_embeddings())) tied = name;
    }
  }
  ASSERT_FALSE(tied.empty());
  EXPECT_EQ(tied.rfind("heads.", 0), std::string::npos) << tied;

  const fs::path dir = fresh_dir("causal_lm");
  TrainerOptions options = quick_options(dir);
  options.epochs = 3;
  const TrainResult result = Trainer(options).train(model, train, &validation);
  EXPECT_EQ(result.status, "completed");
  const EvalResult after = evaluate(*model, validation, 16, torch::kCPU);
  EXPECT_LT(after.metrics.at("perplexity"), 0.7 * before.metrics.at("perplexity"));
  EXPECT_TRUE(result.evaluations.back().metrics.count("perplexity"));
  // AdamW stepped the tied matrix once per optimizer step, and it is still the head's weight.
  const io::TensorMap optimizer = io::read_checkpoint(dir / ("checkpoint-" + std::to_string(result.global_step)) / kOptimizerFile);
  ASSERT_TRUE(optimizer.count(tied + ".step"));
  EXPECT_EQ(optimizer.at(tied + ".step").item<int64_t>(), result.global_step);
  EXPECT_TRUE(model->head_state_dict("lm").begin()->second.is_same(model->base().word_embeddings()));
}
