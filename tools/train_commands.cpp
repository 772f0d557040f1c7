// Subcommands that train and use adapters on data: train, eval, predict, pretrain (masked-LM
// pretraining of an encoder, or causal-LM pretraining of a decoder, from a config), demo (the
// main job: example adapters vs full fine-tuning on the bundled dataset, written to
// results.json) and demo-generate (its generative half: adapters vs full fine-tuning of the
// bundled decoder continuing texts of one topic, appended to results.json).
#include <CLI/CLI.hpp>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <fstream>
#include <functional>
#include <iomanip>
#include <iostream>
#include <limits>
#include <memory>
#include <random>
#include <set>
#include <sstream>
#include <thread>
#include <utility>
#include <nlohmann/json.hpp>
#ifdef __GLIBC__
#include <malloc.h>
#endif

#include "adapters/core/log.h"
#include "adapters/formats/hf_model.h"
#include "adapters/generate.h"
#include "adapters/hub/hub.h"
#include "adapters/io/image.h"
#include "adapters/model.h"
#include "adapters/models/registry.h"
#include "adapters/per_row.h"
#include "adapters/tokenizer/tokenizer.h"
#include "adapters/train/metrics.h"
#include "adapters/train/pretraining.h"
#include "adapters/train/progress.h"
#include "adapters/train/trainer.h"
#include "commands.h"
#include "launch.h"

namespace adapters::cli {

namespace {

using nlohmann::json;
using tokenizer::Tokenizer;
namespace tr = adapters::train;

// ---- shared options -------------------------------------------------------------------------

struct DataArgs {
  std::string train, validation, test;
  std::string task = "sequence_classification";
  std::string text_column = "text", pair_column, label_column = "label";
  std::string adapter_column;  // multi-tenant training: the column naming each example's adapter
  std::string on_malformed = "fatal";
  std::size_t max_length = 128, doc_stride = 0;
  double mask_probability = 0.15;

  tr::FeatureOptions feature_options() const {
    tr::FeatureOptions o;
    o.max_length = max_length;
    o.doc_stride = doc_stride;
    o.mask_probability = mask_probability;
    return o;
  }

  void add(CLI::App* cmd, bool with_train) {
    if (with_train) {
      cmd->add_option("--train", train, "Training data (JSONL, CSV or TSV)")->required()->check(CLI::ExistingFile);
      cmd->add_option("--adapter-column", adapter_column,
                      "Column naming each example's adapter: one adapter per distinct name (--adapter-config each), all "
                      "trained together in one batch, one adapter per row (\"__base__\": the example trains none)");
    }
    cmd->add_option("--validation", validation, "Validation data")->check(CLI::ExistingFile);
    cmd->add_option("--test", test, "Test data")->check(CLI::ExistingFile);
    cmd->add_option("--task", task,
                    "sequence_classification, regression, multilabel, token_classification, question_answering, "
                    "multiple_choice, causal_lm (the text continued: a decoder and its causal_lm head), masked_lm (the "
                    "text's masked tokens: an encoder and its masked_lm head, e.g. domain-adaptive pretraining of an adapter)")
        ->capture_default_str();
    cmd->add_option("--mask-probability", mask_probability, "masked_lm: the share of the tokens masked")->capture_default_str();
    cmd->add_option("--text-column", text_column, "Column of the text")->capture_default_str();
    cmd->add_option("--pair-column", pair_column, "Column of the second text of a pair");
    cmd->add_option("--label-column", label_column, "Column of the label")->capture_default_str();
    cmd->add_option("--on-malformed", on_malformed, "A malformed line is fatal or skipped (with a warning)")
        ->check(CLI::IsMember({"fatal", "skip"}))
        ->capture_default_str();
    cmd->add_option("--max-length", max_length, "Tokens per example, special tokens included")->capture_default_str();
    cmd->add_option("--doc-stride", doc_stride,
                    "Question answering: cut long contexts into windows overlapping by N tokens (0: truncate)")
        ->capture_default_str();
  }

  tr::ReadOptions read_options() const {
    tr::ReadOptions o;
    o.task = tr::parse_task_kind(task);
    o.columns.text = text_column;
    o.columns.text_pair = pair_column;
    o.columns.label = label_column;
    o.columns.adapter = adapter_column;
    o.on_malformed = on_malformed == "skip" ? tr::MalformedPolicy::Skip : tr::MalformedPolicy::Fatal;
    return o;
  }
};

void report_skipped(const tr::Dataset& d) {
  if (d.report.skipped == 0) return;
  log::warn(str(d.source, ": skipped ", d.report.skipped, " malformed records"));
  for (const auto& w : d.report.warnings) log::warn(w);
}

torch::Device parse_device(const std::string& name) {
  if (name == "cpu") return torch::kCPU;
  ADAPTERS_CHECK(name == "cuda", "--device: expected cpu or cuda, found '", name, "'");
  ADAPTERS_CHECK(torch::cuda::is_available(), "--device cuda: no CUDA device is available to this libtorch");
  return torch::kCUDA;
}

torch::ScalarType parse_dtype(const std::string& name) {
  if (name == "float32" || name == "fp32") return torch::kFloat32;
  if (name == "bfloat16" || name == "bf16") return torch::kBFloat16;
  if (name == "float16" || name == "fp16") return torch::kFloat16;
  throw Error(str("--dtype: expected float32, bfloat16 or float16, found '", name, "'"));
}

// The head type and options of a task with `n` labels.
std::pair<std::string, json> head_for(tr::TaskKind task, const tr::LabelMap& labels) {
  json id2label = json::object();
  for (std::size_t i = 0; i < labels.size(); ++i) id2label[std::to_string(i)] = labels.name(static_cast<std::int64_t>(i));
  const auto n = static_cast<std::int64_t>(labels.size());
  switch (task) {
    case tr::TaskKind::SequenceClassification: return {"classification", {{"num_labels", n}, {"id2label", id2label}}};
    case tr::TaskKind::MultiLabel: return {"multilabel_classification", {{"num_labels", n}, {"id2label", id2label}}};
    case tr::TaskKind::Regression: return {"classification", {{"num_labels", 1}}};
    case tr::TaskKind::TokenClassification: return {"tagging", {{"num_labels", n}, {"id2label", id2label}}};
    case tr::TaskKind::QuestionAnswering: return {"question_answering", json::object()};
    case tr::TaskKind::MultipleChoice: return {"multiple_choice", {{"num_choices", 2}}};
    case tr::TaskKind::CausalLM: return {"causal_lm", json::object()};
    case tr::TaskKind::MaskedLM: return {"masked_lm", json::object()};
  }
  return {"classification", {{"num_labels", n}}};
}

// The label map a saved head carries (its config's label2id).
std::optional<tr::LabelMap> head_labels(const AdapterModel& model, const std::string& head) {
  const json& c = model->head(head).config();
  if (!c.contains("label2id") || !c["label2id"].is_object()) return std::nullopt;
  std::map<std::string, std::int64_t> label2id;
  for (const auto& [k, v] : c["label2id"].items()) label2id[k] = v.get<std::int64_t>();
  return tr::LabelMap::from_label2id(label2id);
}

// Trainable parameters, a tensor tied under several names (LM head = word embeddings) once.
std::int64_t trainable_parameters(const AdapterModel& model) {
  std::int64_t n = 0;
  std::set<const void*> seen;
  for (const auto& p : model->parameters()) {
    if (p.requires_grad() && seen.insert(p.unsafeGetTensorImpl()).second) n += p.numel();
  }
  return n;
}

// Copies a checkpoint's trainable.safetensors into the model's parameters.
void restore_checkpoint(AdapterModel& model, const fs::path& checkpoint) {
  const io::TensorMap saved = io::read_checkpoint(checkpoint / tr::kTrainableFile);
  auto params = model->named_parameters();
  torch::NoGradGuard no_grad;
  for (const auto& [key, t] : saved) {
    torch::Tensor* p = params.find(key);
    ADAPTERS_CHECK(p != nullptr && p->sizes() == t.sizes(), checkpoint.string(), ": parameter '", key,
                   "' does not fit this model");
    p->copy_(t);
  }
}

// Peak resident memory of this process since the last reset_peak_memory(), in MiB (Linux).
void reset_peak_memory() {
  std::ofstream clear("/proc/self/clear_refs");
  if (clear) clear << "5";
}
double peak_memory_mb() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmHWM:", 0) == 0) return std::stod(line.substr(6)) / 1024.0;
  }
  return 0.0;
}

std::uintmax_t folder_bytes(const fs::path& dir) {
  std::uintmax_t n = 0;
  for (const auto& e : fs::recursive_directory_iterator(dir)) {
    if (e.is_regular_file()) n += e.file_size();
  }
  return n;
}

// ---- train ----------------------------------------------------------------------------------

struct TrainArgs {
  std::string model;
  std::string tokenizer;  // default: the model folder
  std::string adapter_config;
  std::string setup;
  std::string name = "task";
  bool full = false;
  std::string output;
  std::string device = "cpu", dtype = "float32";
  tr::TrainerOptions trainer;
  std::string resume;
  std::optional<double> learning_rate;  // none: 1e-3 for adapters, 1e-4 for full fine-tuning
  int nproc = 1;             // worker processes on this machine (data parallel)
};

struct TrainOutcome {
  std::int64_t trainable = 0;
  tr::TrainResult result;
  std::map<std::string, double> test_metrics;
  double step_ms = 0;
  double peak_mb = 0;
  std::uintmax_t saved_bytes = 0;
  fs::path saved;
  bool main = true;  // the process that writes the results (rank 0 of a distributed run)
};

// libtorch's intra-op pool may start with one thread: use every core (a worker of a distributed
// run its share of them, LOCAL_WORLD_SIZE workers to a machine).
void use_all_cores() {
  const char* local = std::getenv("LOCAL_WORLD_SIZE");
  const unsigned workers = local != nullptr ? static_cast<unsigned>(std::max(1L, std::strtol(local, nullptr, 10))) : 1u;
  torch::set_num_threads(static_cast<int>(std::max(1u, std::thread::hardware_concurrency() / workers)));
}

// The data-parallel group this process belongs to (torchrun's environment), or none.
std::shared_ptr<tr::DataParallel> join_world(torch::Device device) {
  const auto env = tr::world_from_environment();
  return env ? std::make_shared<tr::DataParallel>(*env, device) : nullptr;
}

// --nproc N: runs the command as N workers; false when this process is to do the work itself
// (N = 1, or a worker already).
bool launched_workers(int nproc) {
  if (nproc <= 1 || is_distributed_worker()) return false;
  const int code = launch_workers(nproc);
  if (code != 0) throw Error(str("--nproc ", nproc, ": a worker failed (exit code ", code, "; its error is above)"));
  return true;
}

// glibc hands every block over its mmap threshold (at most 32 MB) back to the kernel when it is
// freed, so each training step page-faults its large tensors (a causal LM's logits over the
// vocabulary: 65 MB at 16 x 128 tokens) in anew: 3.5x slower steps for the tiny GPT-2 on one
// core. Long training loops keep freed memory in the heap instead.
void keep_freed_memory() {
#ifdef __GLIBC__
  mallopt(M_MMAP_MAX, 0);
  mallopt(M_TRIM_THRESHOLD, std::numeric_limits<int>::max());
#endif
}

// Returns the freed heap to the kernel (what keep_freed_memory holds back), so that a peak-memory
// measurement starts from the memory in use.
void release_freed_memory() {
#ifdef __GLIBC__
  malloc_trim(0);
#endif
}

// `threads` intra-op threads (--threads), every core when 0.
void use_threads(int threads) {
  ADAPTERS_CHECK(threads >= 0, "--threads: expected 0 (every core) or a positive count, found ", threads);
  if (threads == 0) return use_all_cores();
  torch::set_num_threads(threads);
}

// A Trainer run measured: the median step time, the peak resident memory; the best checkpoint
// (by validation) restored into the model afterwards.
struct MeasuredRun {
  tr::TrainResult result;
  double step_ms = 0;
  double peak_mb = 0;
};

MeasuredRun train_measured(AdapterModel& model, const tr::FeatureSet& train, const tr::FeatureSet* validation,
                           tr::TrainerOptions options) {
  MeasuredRun run;
  // Step time: the median interval between optimizer steps (evaluations and checkpoints, which
  // fall between epochs, land in the few longest intervals).
  std::vector<double> intervals;
  auto last = std::chrono::steady_clock::now();
  options.on_step = [&](std::int64_t) {
    const auto now = std::chrono::steady_clock::now();
    intervals.push_back(std::chrono::duration<double, std::milli>(now - last).count());
    last = now;
  };
  release_freed_memory();
  reset_peak_memory();
  run.result = tr::Trainer(options).train(model, train, validation);
  run.peak_mb = peak_memory_mb();
  if (intervals.size() > 1) {
    intervals.erase(intervals.begin());  // the first interval includes the set-up
    std::nth_element(intervals.begin(), intervals.begin() + static_cast<std::ptrdiff_t>(intervals.size() / 2), intervals.end());
    run.step_ms = intervals[intervals.size() / 2];
  }
  if (!run.result.best_checkpoint.empty() && fs::exists(run.result.best_checkpoint / tr::kTrainableFile)) {
    restore_checkpoint(model, run.result.best_checkpoint);
  }
  return run;
}

// Multi-tenant data: the distinct adapter names of the training split (sorted; "__base__" is no
// adapter); validation and test examples must name one of them.
std::vector<std::string> tenants_of(const tr::TaskData& data, const DataArgs& d) {
  std::set<std::string> names;
  for (const auto& e : data.train.examples) {
    if (e.adapter != kNoAdapter) names.insert(e.adapter);
  }
  ADAPTERS_CHECK(!names.empty(), data.train.source, ": column '", d.adapter_column, "' names no adapter (only \"",
                 kNoAdapter, "\")");
  for (const auto* split : {&data.validation, &data.test}) {
    for (const auto& e : split->examples) {
      ADAPTERS_CHECK(e.adapter == kNoAdapter || names.count(e.adapter), split->where(e), ": adapter '", e.adapter,
                     "' (column '", d.adapter_column, "') does not occur in the training data");
    }
  }
  return {names.begin(), names.end()};
}

TrainOutcome run_training(const TrainArgs& a, const DataArgs& d) {
  use_all_cores();
  const fs::path model_dir = hub::resolve_model(a.model);
  const Tokenizer tok = Tokenizer::from_pretrained(a.tokenizer.empty() ? model_dir : fs::path(a.tokenizer));
  tr::DataFiles files{d.train};
  if (!d.validation.empty()) files.validation = d.validation;
  if (!d.test.empty()) files.test = d.test;
  const tr::TaskData data = tr::load_data(files, d.read_options());
  for (const auto* ds : {&data.train, &data.validation, &data.test}) report_skipped(*ds);
  const tr::FeatureOptions fo = d.feature_options();
  const tr::FeatureSet train = tr::make_features(tok, data.train, data.labels, fo);
  std::optional<tr::FeatureSet> validation, test;
  if (!data.validation.examples.empty()) validation = tr::make_features(tok, data.validation, data.labels, fo);
  if (!data.test.examples.empty()) test = tr::make_features(tok, data.test, data.labels, fo);

  torch::manual_seed(a.trainer.seed);
  AdapterModel model = load_pretrained(model_dir);
  const torch::Device device = parse_device(a.device);
  model->to(device, parse_dtype(a.dtype));
  ADAPTERS_CHECK(a.full != !a.adapter_config.empty(), "train: give either --adapter-config SPEC or --full");
  const auto [head_type, head_options] = head_for(train.task, data.labels);
  const std::vector<std::string> tenants = d.adapter_column.empty() ? std::vector<std::string>{} : tenants_of(data, d);
  if (!tenants.empty()) {
    ADAPTERS_CHECK(!a.full && a.setup.empty(), "train --adapter-column: every example trains its own adapter (",
                   "--adapter-config); --full and --setup do not apply");
    std::vector<Block> members;
    for (const auto& tenant : tenants) {
      model->add_adapter(tenant, a.adapter_config);
      members.push_back(Block::adapter(tenant));
    }
    model->add_head(a.name, head_type, head_options);
    model->train_adapter(Block::of(composition::BlockType::Stack, std::move(members)));  // rows pick their own
  } else {
    if (!a.full) model->add_adapter(a.name, a.adapter_config);
    model->add_head(a.name, head_type, head_options);
    if (a.full) {
      model->freeze_model(false);
      model->train();
    } else {
      model->train_adapter(a.setup.empty() ? Block::adapter(a.name) : composition::parse(a.setup));
    }
  }

  tr::TrainerOptions options = a.trainer;
  options.learning_rate = a.learning_rate.value_or(a.full ? 1e-4 : 1e-3);
  options.output_dir = a.output;
  options.device = device;
  if (!a.resume.empty()) options.resume_from = a.resume;
  if (!validation) options.metric_for_best = "loss";
  tr::Trainer check(options);  // bad options fail here, before the ranks meet
  options.parallel = join_world(device);

  TrainOutcome out;
  out.trainable = trainable_parameters(model);
  out.main = options.parallel == nullptr || options.parallel->is_main();
  if (!out.main) options.show_progress = false;
  MeasuredRun run = train_measured(model, train, validation ? &*validation : nullptr, options);
  // The test split: each rank runs a share of its batches, every rank gets the metrics.
  if (test) out.test_metrics = tr::evaluate(*model, *test, options.batch_size, device, &data.test, options.parallel.get()).metrics;
  if (!out.main) return out;  // rank 0 saves
  out.result = std::move(run.result);
  out.step_ms = run.step_ms;
  out.peak_mb = run.peak_mb;

  out.saved = fs::path(a.output) / (a.full ? "model" : tenants.empty() ? "adapter" : "adapters");
  if (!tenants.empty()) {
    // adapters/<tenant>/ each adapter, adapters/<head name>/ the head the tenants share.
    for (const auto& tenant : tenants) model->save_adapter(out.saved / tenant, tenant, /*with_head=*/false);
    model->save_head(out.saved / a.name, a.name);
  } else if (a.full) {
    formats::save_pretrained(*model, out.saved);
    model->save_head(out.saved / "head", a.name);
  } else {
    model->save_adapter(out.saved, a.name);
  }
  out.saved_bytes = folder_bytes(out.saved);
  const json results = {{"status", out.result.status},       {"global_step", out.result.global_step},
                        {"trainable_params", out.trainable},  {"test", out.test_metrics},
                        {"step_ms", out.step_ms},             {"peak_mb", out.peak_mb},
                        {"saved", out.saved.string()},        {"saved_bytes", out.saved_bytes},
                        {"best_metric", out.result.best_metric ? json(*out.result.best_metric) : json(nullptr)}};
  io::write_file_atomic(fs::path(a.output) / "results.json", results.dump(2));
  return out;
}

void add_training_options(CLI::App* cmd, TrainArgs& a) {
  auto& t = a.trainer;
  cmd->add_option("--epochs", t.epochs, "Epochs")->capture_default_str();
  cmd->add_option("--batch-size", t.batch_size, "Examples per batch")->capture_default_str();
  cmd->add_option("--lr", a.learning_rate, "Peak learning rate (default 1e-3 for adapters, 1e-4 for --full)");
  cmd->add_option("--weight-decay", t.weight_decay, "AdamW weight decay (not on biases and norms)")->capture_default_str();
  cmd->add_option("--warmup-ratio", t.warmup_ratio, "Warm-up share of the steps")->capture_default_str();
  cmd->add_option("--schedule", t.schedule, "linear, cosine or constant")->capture_default_str();
  cmd->add_option("--max-grad-norm", t.max_grad_norm, "Gradient clipping (<= 0: off)")->capture_default_str();
  cmd->add_option("--grad-accumulation", t.grad_accumulation, "Micro-batches per optimizer step")->capture_default_str();
  cmd->add_option("--eval-every", t.eval_every_steps, "Evaluate every N steps (0: each epoch)")->capture_default_str();
  cmd->add_option("--patience", t.early_stopping_patience, "Early stopping patience in evaluations (0: off)");
  cmd->add_option("--metric", t.metric_for_best, "accuracy, macro_f1 or loss: picks the best checkpoint")
      ->capture_default_str();
  cmd->add_option("--max-steps", t.max_steps, "Stop after N optimizer steps (0: epochs decide)");
  cmd->add_flag("--bucket", t.bucket_by_length, "Batch examples of similar length together");
  cmd->add_flag("--bf16", t.bf16, "bf16 autocast where this libtorch supports it");
  cmd->add_option("--seed", t.seed, "Seed of initialisation and data order")->capture_default_str();
  cmd->add_option("--device", a.device, "cpu or cuda")->capture_default_str();
  cmd->add_option("--dtype", a.dtype, "float32, bfloat16 or float16")->capture_default_str();
  cmd->add_flag("--overwrite", t.overwrite, "Replace a run already in --output");
  cmd->add_option("--save-total-limit", t.save_total_limit, "Keep only the newest N checkpoints (0: all)")->capture_default_str();
  cmd->add_option("--resume", a.resume, "Continue from this checkpoint folder (output/checkpoint-N)");
  cmd->add_flag("--no-progress", [&t](std::int64_t) { t.show_progress = false; }, "No progress bar");
  cmd->add_option("--nproc", a.nproc,
                  "Train with N processes on this machine (data parallel over Gloo; --batch-size stays the global "
                  "batch). Across machines, start one process per rank with torchrun's MASTER_ADDR, MASTER_PORT, "
                  "WORLD_SIZE, RANK and LOCAL_RANK instead")
      ->check(CLI::Range(1, 256))
      ->capture_default_str();
}

void add_train(CLI::App& app) {
  auto a = std::make_shared<TrainArgs>();
  auto d = std::make_shared<DataArgs>();
  CLI::App* cmd = app.add_subcommand("train", "Train an adapter (or the full model) and a head on a dataset");
  cmd->add_option("--model", a->model, "HF model folder or hub repo id org/name[@revision]")->required();
  cmd->add_option("--tokenizer", a->tokenizer, "Tokenizer folder (default: the model's)")->check(CLI::ExistingDirectory);
  cmd->add_option("--adapter-config", a->adapter_config, "Adapter config, e.g. \"lora[r=8]\", \"seq_bn\", \"mam\"");
  cmd->add_flag("--full", a->full, "Full fine-tuning instead of an adapter");
  cmd->add_option("--setup", a->setup, "Setup to train, e.g. \"Stack(lang, task)\" (default: the new adapter)");
  cmd->add_option("--name", a->name, "Name of the adapter and its head")->capture_default_str();
  cmd->add_option("--output", a->output, "Run folder: checkpoints, best/, metrics.jsonl, curves.svg, adapter/")->required();
  d->add(cmd, true);
  add_training_options(cmd, *a);
  cmd->footer(
      "Examples:\n"
      "  adapters train --model assets/tiny-encoder --adapter-config \"lora[r=8]\" \\\n"
      "      --train data/train.jsonl --validation data/validation.jsonl --test data/test.jsonl --output runs/lora\n"
      "  adapters train --model org/name@main --full --train train.csv --text-column sentence --output runs/full");
  cmd->callback([a, d] {
    if (launched_workers(a->nproc)) return;
    const TrainOutcome out = run_training(*a, *d);
    if (!out.main) return;
    json summary = {{"status", out.result.status}, {"steps", out.result.global_step}, {"test", out.test_metrics},
                    {"saved", out.saved.string()}};
    std::cout << summary.dump() << '\n';
  });
}

// ---- eval / predict -------------------------------------------------------------------------

struct UseArgs {
  std::string model, adapter, device = "cpu";
  std::string tokenizer;  // default: the model folder
  std::size_t batch_size = 32;
};

// The model (from its resolved folder) with the saved adapter (and its head) loaded and active.
std::pair<AdapterModel, std::string> load_for_use(const UseArgs& u, const fs::path& model_dir) {
  AdapterModel model = load_pretrained(model_dir);
  const std::string name = model->load_adapter(u.adapter, "", WeightsPreference::Safetensors, /*set_active=*/true);
  ADAPTERS_CHECK(model->has_head(name), u.adapter, ": no head saved with the adapter (head_config.json)",
                 " (train with `adapters train`, which saves the head beside the adapter)");
  model->to(parse_device(u.device));
  model->eval();
  return {std::move(model), name};
}

std::pair<AdapterModel, std::string> load_for_use(const UseArgs& u) { return load_for_use(u, hub::resolve_model(u.model)); }

Tokenizer tokenizer_for(const UseArgs& u) {
  return Tokenizer::from_pretrained(u.tokenizer.empty() ? hub::resolve_model(u.model) : fs::path(u.tokenizer));
}

void add_use_options(CLI::App* cmd, UseArgs& u) {
  cmd->add_option("--model", u.model, "HF model folder or hub repo id")->required();
  cmd->add_option("--tokenizer", u.tokenizer, "Tokenizer folder (default: the model's)")->check(CLI::ExistingDirectory);
  cmd->add_option("--adapter", u.adapter, "Adapter folder (with its head)")->required()->check(CLI::ExistingDirectory);
  cmd->add_option("--device", u.device, "cpu or cuda")->capture_default_str();
}

void add_eval(CLI::App& app) {
  auto u = std::make_shared<UseArgs>();
  auto d = std::make_shared<DataArgs>();
  auto data = std::make_shared<std::string>();
  CLI::App* cmd = app.add_subcommand("eval", "Evaluate a trained adapter and head on a dataset");
  add_use_options(cmd, *u);
  cmd->add_option("--data", *data, "Data to evaluate on")->required()->check(CLI::ExistingFile);
  cmd->add_option("--batch-size", u->batch_size, "Examples per batch")->capture_default_str();
  d->add(cmd, false);
  cmd->footer("Example:\n  adapters eval --model assets/tiny-encoder --adapter runs/lora/adapter --data data/test.jsonl");
  cmd->callback([u, d, data] {
    auto [model, name] = load_for_use(*u);
    const Tokenizer tok = tokenizer_for(*u);
    const std::optional<tr::LabelMap> labels = head_labels(model, name);
    tr::Dataset ds = tr::read_dataset(*data, d->read_options());
    report_skipped(ds);
    const tr::FeatureSet features = tr::make_features(tok, ds, labels ? *labels : tr::LabelMap(), d->feature_options());
    const tr::EvalResult r = tr::evaluate(*model, features, u->batch_size, parse_device(u->device), &ds);
    std::cout << json(r.metrics).dump() << '\n';
  });
}

// The texts of --text and --jsonl (one {"text": ...} object per line).
std::vector<std::string> predict_texts(const std::vector<std::string>& texts, const std::string& jsonl,
                                       const std::string& text_key) {
  std::vector<std::string> inputs = texts;
  if (jsonl.empty()) return inputs;
  std::ifstream in(jsonl);
  std::string line;
  for (std::size_t n = 1; std::getline(in, line); ++n) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const json j = parse_json_file_text(line, str(jsonl, ":", n));
    ADAPTERS_CHECK(j.is_object() && j.contains(text_key) && j[text_key].is_string(), jsonl, ":", n,
                   ": expected an object with a string '", text_key, "'");
    inputs.push_back(j[text_key].get<std::string>());
  }
  return inputs;
}

// One JSON line: the input (under `input_key`), the best label and its probability.
void print_prediction(const std::string& input_key, const std::string& input, const ModelOutput& out,
                      const std::optional<tr::LabelMap>& labels) {
  const torch::Tensor probs = torch::softmax(out.head.at("logits").to(torch::kFloat).view(-1), 0).cpu();
  const std::int64_t best = probs.argmax().item<std::int64_t>();
  json row = {{input_key, input}, {"label", labels ? labels->name(best) : std::to_string(best)},
              {"score", probs[best].item<double>()}};
  std::cout << row.dump() << '\n';
}

// Checks that the inputs given suit the model: images for vision models, texts otherwise.
void check_predict_inputs(const fs::path& model_dir, bool images, bool texts) {
  ADAPTERS_CHECK(images != texts, "predict: give --image, or --text / --jsonl", images ? " (not both)" : "");
  const std::string type = models::load_model_config(model_dir / "config.json").model_type;
  const bool vision = models::arch_spec(type).input == models::InputKind::Image;
  ADAPTERS_CHECK(!images || vision, "predict: --image needs a vision model (vit, beit); ", model_dir,
                 " is a '", type, "' model, which reads text: give --text or --jsonl");
  ADAPTERS_CHECK(!texts || !vision, "predict: ", model_dir, " is a '", type,
                 "' model, which reads images: give --image FILE (PNG or JPEG)");
}

// The processor's output size against the model's image_size (the model only says what it reads).
void check_image_size(const io::ImageProcessor& p, const fs::path& model_dir, const json& config) {
  if (!config.contains("image_size") || !config["image_size"].is_number_integer()) return;
  const std::int64_t size = config["image_size"].get<std::int64_t>();
  const std::int64_t h = p.do_center_crop ? p.crop_height : p.height, w = p.do_center_crop ? p.crop_width : p.width;
  const fs::path file = model_dir / "preprocessor_config.json";
  ADAPTERS_CHECK(!(p.do_resize || p.do_center_crop) || (h == size && w == size), file, ": the images are processed to ",
                 h, "x", w, " but the model reads ", size, "x", size, " (config.json image_size)",
                 fs::exists(file) ? "" : " (the file is missing: defaults used)");
}

void add_predict(CLI::App& app) {
  auto u = std::make_shared<UseArgs>();
  auto texts = std::make_shared<std::vector<std::string>>();
  auto images = std::make_shared<std::vector<std::string>>();
  auto jsonl = std::make_shared<std::string>();
  auto text_key = std::make_shared<std::string>("text");
  auto max_length = std::make_shared<std::size_t>(128);
  CLI::App* cmd = app.add_subcommand("predict", "Predict labels of texts or images with a trained adapter and head (JSONL out)");
  add_use_options(cmd, *u);
  cmd->add_option("--text", *texts, "A text to classify (repeatable)");
  cmd->add_option("--jsonl", *jsonl, "A JSONL file with one {\"text\": ...} per line")->check(CLI::ExistingFile);
  cmd->add_option("--image", *images,
                  "An image to classify, PNG or JPEG (repeatable; vision models, preprocessed as the model "
                  "folder's preprocessor_config.json says)");
  cmd->add_option("--text-key", *text_key, "Key of the text in --jsonl")->capture_default_str();
  cmd->add_option("--max-length", *max_length, "Tokens per text")->capture_default_str();
  cmd->footer("Examples:\n  adapters predict --model assets/tiny-encoder --adapter runs/lora/adapter --text \"I love pizza\"\n"
              "  adapters predict --model google/vit-base-patch16-224-in21k --adapter runs/vit/adapter --image cat.jpg");
  cmd->callback([=] {
    const std::vector<std::string> inputs = predict_texts(*texts, *jsonl, *text_key);
    const fs::path model_dir = hub::resolve_model(u->model);
    check_predict_inputs(model_dir, !images->empty(), !inputs.empty());
    auto [model, name] = load_for_use(*u, model_dir);
    const auto labels = head_labels(model, name);
    const torch::Device device = parse_device(u->device);
    torch::NoGradGuard no_grad;
    if (!images->empty()) {
      const io::ImageProcessor processor = io::ImageProcessor::load(model_dir, model->config().raw);
      check_image_size(processor, model_dir, model->config().raw);
      for (const auto& image : *images) {
        models::ModelInputs in;
        in.pixel_values = processor.pixel_values({image}).to(device);
        print_prediction("image", image, model->forward(in), labels);
      }
      return;
    }
    Tokenizer tok = tokenizer_for(*u);
    for (const auto& text : inputs) {
      auto e = tok.encode(text);
      if (e.size() > *max_length) e.truncate(*max_length, 0, tokenizer::Encoding::Direction::Right);
      std::vector<std::int64_t> ids(e.ids.begin(), e.ids.end());
      const torch::Tensor input = torch::tensor(ids, torch::kLong).view({1, -1}).to(device);
      print_prediction("text", text, model->forward({input, torch::ones_like(input), torch::Tensor()}), labels);
    }
  });
}

// ---- pretrain (masked LM / causal LM) -------------------------------------------------------

struct PretrainArgs {
  std::string config, tokenizer, corpus, out, init, resume;
  std::string objective = "masked";
  double minutes = 10, save_every_minutes = 10;
  std::int64_t warmup_steps = 500;
  std::int64_t max_steps = 0;
  std::size_t batch_size = 64, max_length = 128;
  double learning_rate = 1e-3, mask_probability = 0.15;
  std::uint64_t seed = 0;
  int threads = 0;
  int nproc = 1;
  bool overwrite = false, progress = true;
};

// A config token id (bos_token_id, eos_token_id) when config.json gives one, else the tokenizer's.
std::int64_t config_token(const models::ModelConfig& config, const char* key, const Tokenizer& tok, const char* token) {
  if (config.raw.contains(key) && config.raw[key].is_number_integer()) return config.raw[key].get<std::int64_t>();
  const auto id = tok.token_to_id(token);
  ADAPTERS_CHECK(id.has_value(), "pretrain: config.json has no '", key, "' and the tokenizer no ", token, " token");
  return *id;
}

// The corpus as the objective's features: masked LM on padded rows, causal LM on packed blocks.
tr::FeatureSet pretraining_corpus(const PretrainArgs& a, const AdapterModel& model, const Tokenizer& tok) {
  const models::ModelConfig& c = model->config();
  tr::CorpusLayout layout;
  layout.max_length = a.max_length;
  layout.pad = c.pad_token_id;
  if (a.objective == "causal") {
    ADAPTERS_CHECK(model->arch().kind == models::ArchKind::Decoder, "pretrain --objective causal: ", a.config,
                   " is a '", c.model_type, "' model; expected a decoder (gpt2, gptj)");
    ADAPTERS_CHECK(static_cast<std::int64_t>(a.max_length) <= c.max_position_embeddings, "--max-length: expected at most the ",
                   c.max_position_embeddings, " positions of ", a.config, " (n_positions), found ", a.max_length);
    layout.bos = config_token(c, "bos_token_id", tok, "<s>");
    layout.eos = config_token(c, "eos_token_id", tok, "</s>");
    return tr::causal_lm_corpus(tok, a.corpus, layout);
  }
  layout.bos = tok.token_to_id("<s>").value_or(0);
  layout.eos = tok.token_to_id("</s>").value_or(2);
  tr::MaskingOptions masking = tr::masking_options(tok, a.mask_probability);
  masking.vocab_size = c.vocab_size;
  return tr::masked_lm_corpus(tok, a.corpus, layout, masking);
}

// The model to pretrain: from the config's initialisation, or continued from --init.
AdapterModel pretrain_model(const PretrainArgs& a, const models::ModelConfig& config) {
  torch::manual_seed(a.seed);
  AdapterModel model = a.init.empty() ? AdapterModel(config) : load_pretrained(a.init);
  ADAPTERS_CHECK(model->config().hidden_size == config.hidden_size && model->config().vocab_size == config.vocab_size &&
                     model->config().num_hidden_layers == config.num_hidden_layers,
                 a.init, ": --init model does not have the shape of ", a.config,
                 " (hidden size, vocabulary and layer count must match)");
  for (const auto& name : model->head_names()) model->delete_head(name);  // a converted static head
  return model;
}

// The Trainer's options of a pretraining run: AdamW (decay 0.01, none on biases and norms), linear
// warm-up then linear decay to 10% over --max-steps (or the --minutes budget), clipping at 1.0.
tr::TrainerOptions pretraining_options(const PretrainArgs& a) {
  tr::TrainerOptions o;
  o.batch_size = a.batch_size;
  o.learning_rate = a.learning_rate;
  o.weight_decay = 0.01;
  o.warmup_steps = std::max<std::int64_t>(1, a.warmup_steps);
  o.min_lr_ratio = 0.1;
  o.max_grad_norm = 1.0;
  o.max_steps = a.max_steps;
  o.time_limit_minutes = a.max_steps > 0 ? 0.0 : a.minutes;
  o.epochs = a.max_steps > 0 ? 1 : std::numeric_limits<std::int32_t>::max();  // the time limit ends the run
  o.seed = a.seed;
  o.output_dir = a.out;
  o.overwrite = a.overwrite;
  if (!a.resume.empty()) o.resume_from = a.resume;
  o.metric_for_best = "loss";
  o.log_every = 1;  // every step's loss: the final loss is a mean of the last ones
  o.save_total_limit = 1;  // a checkpoint per epoch of the whole model: keep the newest
  o.show_progress = a.progress;
  return o;
}

// The mean of the last tenth of the step losses (at most 100): less noisy than one step.
std::pair<double, std::size_t> final_loss(const std::vector<std::pair<std::int64_t, double>>& losses) {
  const std::size_t tail = std::min(losses.size(), std::clamp<std::size_t>(losses.size() / 10, 1, 100));
  double sum = 0;
  for (std::size_t i = losses.size() - tail; i < losses.size(); ++i) sum += losses[i].second;
  return {tail > 0 ? sum / static_cast<double>(tail) : 0.0, tail};
}

// Pretrains with the Trainer on the corpus; saves the base model's weights to --out (every
// --save-every minutes too), beside the Trainer's checkpoints, metrics and curves.
void run_pretraining(const PretrainArgs& a) {
  use_threads(a.threads);
  keep_freed_memory();
  tr::TrainerOptions options = pretraining_options(a);
  tr::Trainer check(options);  // bad options fail here, before the ranks meet
  options.parallel = join_world(torch::kCPU);
  const bool main = options.parallel == nullptr || options.parallel->is_main();
  const Tokenizer tok = Tokenizer::from_pretrained(a.tokenizer);
  const models::ModelConfig config = models::load_model_config(a.config);
  AdapterModel model = pretrain_model(a, config);
  const tr::FeatureSet corpus = pretraining_corpus(a, model, tok);
  if (main) std::cerr << "pretrain: " << corpus.features.size() << (a.objective == "causal" ? " blocks" : " rows") << " from " << a.corpus << '\n';
  const std::string head = a.objective == "causal" ? "lm" : "mlm";
  model->add_head(head, a.objective == "causal" ? "causal_lm" : "masked_lm");  // tied to the word embeddings
  if (a.init.empty()) {
    tr::init_weights(*model, config.initializer_range);
  } else if (main) {
    std::cerr << "pretrain: continuing from " << a.init << " (the " << head << " head's own layers start fresh)\n";
  }
  const auto start = std::chrono::steady_clock::now();
  double last_save = 0;
  options.on_step = [&](std::int64_t step) {
    const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (!main || a.save_every_minutes <= 0 || elapsed - last_save < a.save_every_minutes * 60) return;
    formats::save_pretrained(*model, a.out);  // written to temporary files, then renamed
    last_save = elapsed;
    std::cerr << "pretrain: saved at step " << step << '\n';
  };
  const tr::TrainResult result = tr::Trainer(options).train(model, corpus);
  if (!main) return;
  model->delete_head(head);
  formats::save_pretrained(*model, a.out);
  const auto [last, tail] = final_loss(result.train_loss);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::cerr << "pretrain: " << result.global_step << " steps in " << seconds << " s, first loss "
            << (result.train_loss.empty() ? 0.0 : result.train_loss.front().second) << ", final loss " << last
            << " (mean of the last " << tail << " steps), saved " << (fs::path(a.out) / "model.safetensors").string() << '\n';
}

void add_pretrain(CLI::App& app) {
  auto a = std::make_shared<PretrainArgs>();
  CLI::App* cmd = app.add_subcommand(
      "pretrain", "Pretrain a model from a config.json: an encoder with masked-LM training, a decoder with causal-LM training");
  cmd->add_option("--config", a->config, "config.json of the model")->required()->check(CLI::ExistingFile);
  cmd->add_option("--tokenizer", a->tokenizer, "Tokenizer folder")->required()->check(CLI::ExistingDirectory);
  cmd->add_option("--corpus", a->corpus, "Text corpus, one passage per line")->required()->check(CLI::ExistingFile);
  cmd->add_option("--out", a->out, "Where model.safetensors goes (beside the config)")->required();
  cmd->add_option("--objective", a->objective,
                  "masked (an encoder: masked LM on padded rows) or causal (a decoder such as gpt2: next-token "
                  "prediction on packed blocks of --max-length tokens)")
      ->check(CLI::IsMember({"masked", "causal"}))
      ->capture_default_str();
  cmd->add_option("--minutes", a->minutes, "Training time budget")->capture_default_str();
  cmd->add_option("--max-steps", a->max_steps, "Stop after N steps (0: the time budget decides)");
  cmd->add_option("--batch-size", a->batch_size, "Rows per step")->capture_default_str();
  cmd->add_option("--max-length", a->max_length, "Tokens per row (causal: per block)")->capture_default_str();
  cmd->add_option("--lr", a->learning_rate, "Peak learning rate")->capture_default_str();
  cmd->add_option("--seed", a->seed, "Seed (use a new one when continuing with --init)")->capture_default_str();
  cmd->add_option("--init", a->init, "Continue from the weights of this model folder (same config)")
      ->check(CLI::ExistingDirectory);
  cmd->add_option("--mask-probability", a->mask_probability, "Share of tokens masked (--objective masked)")
      ->check(CLI::Range(0.01, 0.9))
      ->capture_default_str();
  cmd->add_option("--warmup-steps", a->warmup_steps, "Linear learning-rate warm-up")->capture_default_str();
  cmd->add_option("--save-every", a->save_every_minutes, "Save the weights every N minutes (0: only at the end)")
      ->capture_default_str();
  cmd->add_option("--threads", a->threads, "CPU threads (0: every core)")->check(CLI::NonNegativeNumber)->capture_default_str();
  cmd->add_option("--nproc", a->nproc, "Pretrain with N processes on this machine (data parallel; --batch-size is global)")
      ->check(CLI::Range(1, 256))
      ->capture_default_str();
  cmd->add_flag("--overwrite", a->overwrite, "Replace a run already in --out");
  cmd->add_option("--resume", a->resume, "Continue from this checkpoint folder (out/checkpoint-N)");
  cmd->add_flag("--no-progress", [a](std::int64_t) { a->progress = false; }, "No progress bar");
  cmd->footer(
      "Examples:\n"
      "  adapters pretrain --config assets/tiny-encoder/config.json --tokenizer assets/tiny-encoder \\\n"
      "      --corpus build/corpus/corpus.txt --out build/pretrain/enc --max-steps 1660 --batch-size 32 --max-length 96\n"
      "  adapters pretrain --objective causal --config assets/tiny-gpt2/config.json --tokenizer assets/tiny-gpt2 \\\n"
      "      --corpus build/corpus/corpus.txt --out build/pretrain/gpt2 --max-steps 2000 --batch-size 16 --threads 1");
  cmd->callback([a] {
    if (!launched_workers(a->nproc)) run_pretraining(*a);
  });
}

// ---- demo: the main job ---------------------------------------------------------------------

void add_demo(CLI::App& app) {
  auto model = std::make_shared<std::string>("assets/tiny-encoder");
  auto data = std::make_shared<std::string>("build/demo/data");
  auto out = std::make_shared<std::string>("build/demo");
  auto epochs = std::make_shared<std::int64_t>(15);
  auto methods = std::make_shared<std::vector<std::string>>(
      std::vector<std::string>{"full", "seq_bn", "lora", "prefix_tuning", "ia3", "compacter"});
  CLI::App* cmd = app.add_subcommand(
      "demo", "The main job: train example adapters and full fine-tuning on a dataset, compare them (results.json)");
  cmd->add_option("--model", *model, "Pretrained encoder (HF folder or repo id)")->capture_default_str();
  cmd->add_option("--data", *data, "Folder with train.jsonl, validation.jsonl, test.jsonl ({text, label})")
      ->capture_default_str();
  cmd->add_option("--out", *out, "Output folder: runs/<method>/, results.json")->capture_default_str();
  cmd->add_option("--epochs", *epochs, "Epochs per method")->capture_default_str();
  cmd->add_option("--methods", *methods, "Methods to run")->capture_default_str();
  cmd->callback([=] {
    DataArgs d;
    d.train = (fs::path(*data) / "train.jsonl").string();
    d.validation = (fs::path(*data) / "validation.jsonl").string();
    d.test = (fs::path(*data) / "test.jsonl").string();
    for (const auto& f : {d.train, d.validation, d.test}) {
      ADAPTERS_CHECK(fs::exists(f), f, ": missing (make the dataset with scripts/make-dataset ", *data, ")");
    }
    const std::map<std::string, std::pair<std::string, double>> specs = {
        {"full", {"", 2e-4}},
        {"seq_bn", {"seq_bn[reduction_factor=16]", 3e-3}},
        {"lora", {"lora[r=8,alpha=16,selfattn_lora=True,intermediate_lora=True,output_lora=True]", 3e-3}},
        {"prefix_tuning", {"prefix_tuning[prefix_length=16,bottleneck_size=128]", 3e-3}},
        {"ia3", {"ia3", 1e-2}},
        {"compacter", {"compacter[reduction_factor=8]", 3e-3}},
    };
    // The majority class of the training split, and its accuracy on the test split.
    const tr::TaskData labelled = tr::load_data({d.train, d.validation, d.test}, d.read_options());
    std::vector<std::int64_t> train_gold, test_gold;
    for (const auto& e : labelled.train.examples) train_gold.push_back(labelled.labels.id(e.labels.front(), ""));
    for (const auto& e : labelled.test.examples) test_gold.push_back(labelled.labels.id(e.labels.front(), ""));
    const double majority = tr::majority_baseline_accuracy(train_gold, test_gold);

    json results = json::array();
    for (const auto& method : *methods) {
      auto it = specs.find(method);
      ADAPTERS_CHECK(it != specs.end(), "--methods: unknown method '", method,
                     "' (known: full, seq_bn, lora, prefix_tuning, ia3, compacter)");
      TrainArgs a;
      a.model = *model;
      a.full = method == "full";
      a.adapter_config = it->second.first;
      a.learning_rate = it->second.second;
      a.name = method;
      a.output = (fs::path(*out) / "runs" / method).string();
      a.trainer.epochs = *epochs;
      a.trainer.batch_size = 32;
      a.trainer.warmup_ratio = 0.1;
      a.trainer.metric_for_best = "accuracy";
      a.trainer.bucket_by_length = true;
      a.trainer.overwrite = true;
      a.trainer.show_progress = false;
      std::cerr << "demo: training " << method << '\n';
      const TrainOutcome o = run_training(a, d);
      results.push_back({{"method", method},
                         {"trainable_params", o.trainable},
                         {"accuracy", o.test_metrics.at("accuracy")},
                         {"macro_f1", o.test_metrics.at("macro_f1")},
                         {"majority_baseline", majority},
                         {"step_ms", o.step_ms},
                         {"peak_mb", o.peak_mb},
                         {"adapter_bytes", o.saved_bytes}});
    }
    io::write_file_atomic(fs::path(*out) / "results.json", results.dump(2));

    // The table, then one adapter reloaded into a fresh model predicting a few test lines.
    AdapterModel base = load_pretrained(hub::resolve_model(*model));
    const double base_params = static_cast<double>(base->base_parameter_count());
    std::cout << "\nFortune topic classification (" << labelled.labels.size() << " classes, " << labelled.train.examples.size()
              << " train / " << labelled.test.examples.size() << " test); majority baseline " << std::fixed
              << std::setprecision(3) << majority << "\n\n"
              << std::left << std::setw(15) << "method" << std::right << std::setw(12) << "trainable" << std::setw(9) << "%"
              << std::setw(10) << "accuracy" << std::setw(10) << "macro-F1" << std::setw(10) << "step ms" << std::setw(10)
              << "peak MB" << std::setw(12) << "disk bytes" << '\n';
    for (const auto& r : results) {
      std::cout << std::left << std::setw(15) << r["method"].get<std::string>() << std::right << std::setw(12)
                << r["trainable_params"].get<std::int64_t>() << std::setw(8) << std::setprecision(2)
                << 100.0 * r["trainable_params"].get<double>() / base_params << "%" << std::setprecision(3) << std::setw(10)
                << r["accuracy"].get<double>() << std::setw(10) << r["macro_f1"].get<double>() << std::setprecision(1)
                << std::setw(10) << r["step_ms"].get<double>() << std::setw(10) << r["peak_mb"].get<double>() << std::setw(12)
                << r["adapter_bytes"].get<std::uintmax_t>() << '\n';
    }
    std::cout << "\nresults: " << (fs::path(*out) / "results.json").string() << '\n';
    const fs::path reload = fs::path(*out) / "runs" / "lora" / "adapter";
    if (fs::exists(reload)) {
      UseArgs u;
      u.model = *model;
      u.adapter = reload.string();
      auto [m, name] = load_for_use(u);
      const Tokenizer tok = tokenizer_for(u);
      const auto labels = head_labels(m, name);
      std::cout << "\nreloaded " << reload.string() << ", predictions on the first test lines:\n";
      torch::NoGradGuard no_grad;
      for (std::size_t i = 0; i < 4 && i < labelled.test.examples.size(); ++i) {
        const auto& e = labelled.test.examples[i];
        const auto enc = tok.encode(e.text);
        std::vector<std::int64_t> ids(enc.ids.begin(), enc.ids.end());
        const torch::Tensor input = torch::tensor(ids, torch::kLong).view({1, -1});
        const std::int64_t best = m->forward({input, torch::ones_like(input), torch::Tensor()}).head.at("logits").argmax(-1).item<std::int64_t>();
        std::cout << "  [" << (labels ? labels->name(best) : std::to_string(best)) << " / gold " << e.labels.front() << "] "
                  << e.text.substr(0, 90) << (e.text.size() > 90 ? "..." : "") << '\n';
      }
    }
  });
}

// ---- demo-generate: the generative half of the main job -------------------------------------

struct GenerationDemoArgs {
  std::string model = "assets/tiny-gpt2", data = "build/demo/data", out = "build/demo", topic = "politics";
  std::vector<std::string> methods{"full", "seq_bn", "lora", "prefix_tuning"};
  std::int64_t epochs = 8;
  std::size_t batch_size = 16;
  std::size_t samples = 3, prompt_words = 3;
  std::int64_t max_new_tokens = 24;
  std::uint64_t seed = 42;
  int threads = 0;
};

struct GenerationMethod {
  std::string adapter_config;  // empty: full fine-tuning
  double learning_rate;
};

const std::map<std::string, GenerationMethod>& generation_methods() {
  static const std::map<std::string, GenerationMethod> methods = {
      {"full", {"", 3e-4}},
      {"seq_bn", {"seq_bn[reduction_factor=16]", 3e-3}},
      {"lora", {"lora[r=8,alpha=16,selfattn_lora=True,intermediate_lora=True,output_lora=True]", 3e-3}},
      {"prefix_tuning", {"prefix_tuning[prefix_length=16,bottleneck_size=128]", 3e-3}},
      {"ia3", {"ia3", 1e-2}},
  };
  return methods;
}

// The texts of one topic of a {text, label} file, as a causal-LM dataset.
tr::Dataset topic_texts(const fs::path& file, const std::string& topic) {
  const tr::Dataset labelled = tr::read_dataset(file, tr::ReadOptions{});
  tr::Dataset texts;
  texts.source = file.string();
  texts.task = tr::TaskKind::CausalLM;
  std::set<std::string> labels;
  for (const auto& e : labelled.examples) {
    labels.insert(e.labels.front());
    if (e.labels.front() != topic) continue;
    tr::Example text;
    text.line = e.line;
    text.text = e.text;
    texts.examples.push_back(std::move(text));
  }
  std::string known;
  for (const auto& l : labels) known += (known.empty() ? "" : ", ") + l;
  ADAPTERS_CHECK(!texts.examples.empty(), "--topic: expected a label of ", file.string(), " (", known, "), found '", topic, "'");
  return texts;
}

// The decoder with the method set up for training: an adapter (the base and its tied LM head
// frozen) or the whole model.
AdapterModel generation_model(const fs::path& dir, const std::string& method, const GenerationMethod& m, std::uint64_t seed) {
  torch::manual_seed(seed);
  AdapterModel model = load_pretrained(dir);
  const auto& head = model->active_head();
  ADAPTERS_CHECK(head && head->is_adapter() && model->head(head->name).type() == "causal_lm", dir.string(),
                 ": expected a causal-LM model folder (config.json \"architectures\": [\"GPT2LMHeadModel\"]), found no "
                 "active causal_lm head");
  if (m.adapter_config.empty()) {
    model->freeze_model(false);
    model->train();
  } else {
    model->add_adapter(method, m.adapter_config);
    model->train_adapter(method);  // the LM head stays the pretrained one
  }
  return model;
}

// The tokens a feature set predicts (every token after the first of each text).
std::int64_t predicted_tokens(const tr::FeatureSet& features) {
  std::int64_t n = 0;
  for (const auto& f : features.features) n += static_cast<std::int64_t>(f.length()) - 1;
  return n;
}

struct Sample {
  std::string prompt, text;
};

// The first `words` words of the first `n` texts.
std::vector<std::string> sample_prompts(const tr::Dataset& texts, std::size_t n, std::size_t words) {
  std::vector<std::string> prompts;
  for (std::size_t i = 0; i < n && i < texts.examples.size(); ++i) {
    std::istringstream in(texts.examples[i].text);
    std::string word, prompt;
    for (std::size_t w = 0; w < words && in >> word; ++w) prompt += (prompt.empty() ? "" : " ") + word;
    prompts.push_back(prompt);
  }
  return prompts;
}

// Each prompt (after the model's bos token, as the texts were trained) continued with generate();
// the text is the decoded prompt and continuation.
std::vector<Sample> generate_samples(AdapterModel& model, const Tokenizer& tok, const std::vector<std::string>& prompts,
                                     const generation::GenerationConfig& config) {
  model->eval();
  std::vector<Sample> samples;
  for (const auto& prompt : prompts) {
    std::vector<std::int64_t> ids;
    if (config.bos_token_id) ids.push_back(*config.bos_token_id);
    for (const auto id : tok.encode(prompt, /*add_special_tokens=*/false).ids) ids.push_back(static_cast<std::int64_t>(id));
    const torch::Tensor input = torch::tensor(ids, torch::kLong).unsqueeze(0);
    const torch::Tensor row = generate(*model, input, torch::Tensor(), config).sequences[0].to(torch::kCPU);
    std::vector<std::uint32_t> out;
    for (std::int64_t i = 0; i < row.size(0); ++i) out.push_back(static_cast<std::uint32_t>(row[i].item<std::int64_t>()));
    samples.push_back({prompt, tok.decode(out, /*skip_special_tokens=*/true)});
  }
  return samples;
}

// Saves what a method trained: the adapter alone (the LM head is the model's own) or, for full
// fine-tuning, a complete model folder (config, weights, tokenizer, generation_config.json) that
// `adapters generate --model` runs. Returns the bytes of the trained weights and their config.
std::uintmax_t save_generation_run(const AdapterModel& model, const std::string& method, const fs::path& run,
                                   const fs::path& model_dir) {
  const fs::path dir = run / (method == "full" ? "model" : "adapter");
  fs::remove_all(dir);  // nothing of an earlier run counted
  if (method != "full") {
    model->save_adapter(dir, method, /*with_head=*/false);
    return folder_bytes(dir);
  }
  formats::save_pretrained(*model, dir);
  const std::uintmax_t bytes = folder_bytes(dir);
  for (const char* file : {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "sentencepiece.bpe.model",
                           "generation_config.json"}) {
    if (fs::exists(model_dir / file)) fs::copy_file(model_dir / file, dir / file, fs::copy_options::overwrite_existing);
  }
  return bytes;
}

// results.json with its generation rows replaced by `rows`; every other row is kept as it is.
void merge_generation_results(const fs::path& file, const json& rows) {
  json all = json::array();
  if (fs::exists(file)) {
    const json old = parse_json_file_text(io::read_text_file(file), file.string());
    ADAPTERS_CHECK(old.is_array(), file.string(), ": expected a JSON array of result rows, found ", old.type_name());
    for (const auto& r : old) {
      if (!(r.is_object() && r.value("task", "") == "generation")) all.push_back(r);
    }
  }
  for (const auto& r : rows) all.push_back(r);
  io::write_file_atomic(file, all.dump(2));
}

void print_generation_table(const json& rows, const GenerationDemoArgs& a, std::size_t train_texts, std::size_t test_texts,
                            std::int64_t test_tokens, double base_params, double pretrained_ppl,
                            const std::vector<Sample>& pretrained_samples) {
  std::cout << "\nContinuing '" << a.topic << "' fortunes with " << a.model << " (" << train_texts << " train / " << test_texts
            << " test texts, " << test_tokens << " test tokens); held-out perplexity of the pretrained model " << std::fixed
            << std::setprecision(1) << pretrained_ppl << "\n\n"
            << std::left << std::setw(15) << "method" << std::right << std::setw(12) << "trainable" << std::setw(9) << "%"
            << std::setw(12) << "perplexity" << std::setw(10) << "step ms" << std::setw(10) << "peak MB" << std::setw(12)
            << "disk bytes" << '\n';
  for (const auto& r : rows) {
    std::cout << std::left << std::setw(15) << r["method"].get<std::string>() << std::right << std::setw(12)
              << r["trainable_params"].get<std::int64_t>() << std::setw(8) << std::setprecision(2)
              << 100.0 * r["trainable_params"].get<double>() / base_params << "%" << std::setprecision(1) << std::setw(12)
              << r["perplexity"].get<double>() << std::setw(10) << r["step_ms"].get<double>() << std::setw(10)
              << r["peak_mb"].get<double>() << std::setw(12) << r["adapter_bytes"].get<std::uintmax_t>() << '\n';
  }
  std::cout << "\nSamples (the first " << a.prompt_words << " words of test texts continued; seeded sampling, seed " << a.seed
            << "):\n";
  for (std::size_t i = 0; i < pretrained_samples.size(); ++i) {
    std::cout << "  prompt \"" << pretrained_samples[i].prompt << "\"\n    " << std::left << std::setw(14) << "pretrained"
              << pretrained_samples[i].text << '\n';
    for (const auto& r : rows) {
      std::cout << "    " << std::setw(14) << r["method"].get<std::string>() << r["samples"][i]["text"].get<std::string>() << '\n';
    }
  }
  std::cout << std::right << "\nresults: " << (fs::path(a.out) / "results.json").string() << " (rows with \"task\": \"generation\")\n";
}

// What every method of the generative demo shares: the topic's texts and features per split,
// the sampling options and the prompts of the samples.
struct GenerationDemo {
  fs::path model_dir;
  Tokenizer tok;
  std::map<std::string, tr::Dataset> texts;  // "train", "validation", "test"
  std::map<std::string, tr::FeatureSet> features;
  generation::GenerationConfig sampling;
  std::vector<std::string> prompts;
};

GenerationDemo prepare_generation_demo(const GenerationDemoArgs& a, const AdapterModel& base) {
  const fs::path model_dir = hub::resolve_model(a.model);
  GenerationDemo d{model_dir, Tokenizer::from_pretrained(model_dir), {}, {}, {}, {}};
  tr::FeatureOptions fo;
  fo.max_length = static_cast<std::size_t>(base->config().max_position_embeddings);
  for (const char* name : {"train", "validation", "test"}) {
    const fs::path file = fs::path(a.data) / (std::string(name) + ".jsonl");
    ADAPTERS_CHECK(fs::exists(file), file.string(), ": missing (make the dataset with scripts/make-dataset ", a.data, ")");
    d.texts[name] = topic_texts(file, a.topic);
    d.features[name] = tr::make_features(d.tok, d.texts[name], {}, fo);
  }
  d.sampling = load_generation_config(model_dir, base->config());
  d.sampling.do_sample = true;  // with the folder's top-k / top-p / temperature, reproducible by the seed
  d.sampling.max_new_tokens = a.max_new_tokens;
  d.sampling.max_length.reset();
  d.sampling.seed = a.seed;
  d.prompts = sample_prompts(d.texts["test"], a.samples, a.prompt_words);
  return d;
}

// Trains one method, measures it on the test texts, generates its samples and saves it: its
// results.json row.
json train_generation_method(const GenerationDemoArgs& a, GenerationDemo& d, const std::string& method,
                             double pretrained_ppl) {
  const GenerationMethod& m = generation_methods().at(method);
  AdapterModel model = generation_model(d.model_dir, method, m, a.seed);
  const fs::path run = fs::path(a.out) / "generation" / method;
  tr::TrainerOptions o;
  o.output_dir = run;
  o.epochs = a.epochs;
  o.batch_size = a.batch_size;
  o.learning_rate = m.learning_rate;
  o.warmup_ratio = 0.1;
  o.metric_for_best = "loss";
  o.bucket_by_length = true;
  o.overwrite = true;
  o.show_progress = false;
  o.seed = a.seed;
  const std::int64_t trainable = trainable_parameters(model);
  const MeasuredRun measured = train_measured(model, d.features["train"], &d.features["validation"], o);
  const double ppl = tr::evaluate(*model, d.features["test"], 32, torch::kCPU).metrics.at("perplexity");
  json samples = json::array();
  for (const auto& s : generate_samples(model, d.tok, d.prompts, d.sampling)) samples.push_back({{"prompt", s.prompt}, {"text", s.text}});
  return {{"task", "generation"},
          {"method", method},
          {"topic", a.topic},
          {"trainable_params", trainable},
          {"perplexity", ppl},
          {"pretrained_perplexity", pretrained_ppl},
          {"test_tokens", predicted_tokens(d.features["test"])},
          {"steps", measured.result.global_step},
          {"step_ms", measured.step_ms},
          {"peak_mb", measured.peak_mb},
          {"adapter_bytes", save_generation_run(model, method, run, d.model_dir)},
          {"samples", samples}};
}

void run_generation_demo(const GenerationDemoArgs& a) {
  for (const auto& method : a.methods) {
    ADAPTERS_CHECK(generation_methods().count(method), "--methods: expected full, seq_bn, lora, prefix_tuning or ia3, found '",
                   method, "'");
  }
  use_threads(a.threads);
  keep_freed_memory();
  AdapterModel base = load_pretrained(hub::resolve_model(a.model));
  GenerationDemo d = prepare_generation_demo(a, base);
  const double pretrained_ppl = tr::evaluate(*base, d.features["test"], 32, torch::kCPU).metrics.at("perplexity");
  const std::vector<Sample> pretrained_samples = generate_samples(base, d.tok, d.prompts, d.sampling);
  json rows = json::array();
  for (const auto& method : a.methods) {
    std::cerr << "demo-generate: training " << method << '\n';
    rows.push_back(train_generation_method(a, d, method, pretrained_ppl));
  }
  merge_generation_results(fs::path(a.out) / "results.json", rows);
  print_generation_table(rows, a, d.texts["train"].size(), d.texts["test"].size(), predicted_tokens(d.features["test"]),
                         static_cast<double>(base->base_parameter_count()), pretrained_ppl, pretrained_samples);
}

void add_demo_generate(CLI::App& app) {
  auto a = std::make_shared<GenerationDemoArgs>();
  CLI::App* cmd = app.add_subcommand(
      "demo-generate",
      "The main job's generative half: adapters and full fine-tuning of a small decoder continuing texts of one topic, "
      "compared by held-out perplexity (rows with \"task\": \"generation\" in results.json)");
  cmd->add_option("--model", a->model, "Pretrained decoder with its LM head and tokenizer (HF folder or repo id)")
      ->capture_default_str();
  cmd->add_option("--data", a->data, "Folder with train.jsonl, validation.jsonl, test.jsonl ({text, label})")
      ->capture_default_str();
  cmd->add_option("--topic", a->topic, "The label whose texts are learnt (one held out of the pretraining corpus)")
      ->capture_default_str();
  cmd->add_option("--out", a->out, "Output folder: generation/<method>/, results.json")->capture_default_str();
  cmd->add_option("--methods", a->methods, "Methods to run (full, seq_bn, lora, prefix_tuning, ia3)")->capture_default_str();
  cmd->add_option("--epochs", a->epochs, "Epochs per method")->capture_default_str();
  cmd->add_option("--batch-size", a->batch_size, "Texts per step")->capture_default_str();
  cmd->add_option("--samples", a->samples, "Test texts whose first words are continued by every method")->capture_default_str();
  cmd->add_option("--prompt-words", a->prompt_words, "Words of each sample prompt")->capture_default_str();
  cmd->add_option("--max-new-tokens", a->max_new_tokens, "Tokens generated per sample")->capture_default_str();
  cmd->add_option("--seed", a->seed, "Seed of initialisation, data order and sampling")->capture_default_str();
  cmd->add_option("--threads", a->threads, "CPU threads (0: every core)")->check(CLI::NonNegativeNumber)->capture_default_str();
  cmd->callback([a] { run_generation_demo(*a); });
}

}  // namespace

void add_training_commands(CLI::App& app) {
  add_train(app);
  add_eval(app);
  add_predict(app);
  add_pretrain(app);
  add_demo(app);
  add_demo_generate(app);
}

}  // namespace adapters::cli
