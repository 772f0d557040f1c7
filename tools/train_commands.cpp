// Subcommands that train and use adapters on data: train, eval, predict, pretrain (masked-LM
// pretraining of an encoder from a config), and demo (the main job: example adapters vs full
// fine-tuning on the bundled dataset, written to results.json).
#include <CLI/CLI.hpp>
#include <torch/torch.h>

#include <chrono>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <memory>
#include <random>
#include <thread>
#include <nlohmann/json.hpp>

#include "adapters/core/log.h"
#include "adapters/hub/hub.h"
#include "adapters/io/image.h"
#include "adapters/model.h"
#include "adapters/models/registry.h"
#include "adapters/tokenizer/tokenizer.h"
#include "adapters/train/metrics.h"
#include "adapters/train/progress.h"
#include "adapters/train/trainer.h"
#include "commands.h"

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
  std::string on_malformed = "fatal";
  std::size_t max_length = 128, doc_stride = 0;

  tr::FeatureOptions feature_options() const {
    tr::FeatureOptions o;
    o.max_length = max_length;
    o.doc_stride = doc_stride;
    return o;
  }

  void add(CLI::App* cmd, bool with_train) {
    if (with_train) cmd->add_option("--train", train, "Training data (JSONL, CSV or TSV)")->required()->check(CLI::ExistingFile);
    cmd->add_option("--validation", validation, "Validation data")->check(CLI::ExistingFile);
    cmd->add_option("--test", test, "Test data")->check(CLI::ExistingFile);
    cmd->add_option("--task", task,
                    "sequence_classification, regression, multilabel, token_classification, question_answering, "
                    "multiple_choice")
        ->capture_default_str();
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

std::int64_t trainable_parameters(const AdapterModel& model) {
  std::int64_t n = 0;
  for (const auto& p : model->parameters()) {
    if (p.requires_grad()) n += p.numel();
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

// Writes the base model (its weights under the HF prefix, and config.json) as an HF folder.
void save_base_model(const AdapterModel& model, const fs::path& dir) {
  fs::create_directories(dir);
  io::TensorMap tensors;
  const std::string prefix = model->arch().base_prefix + ".";
  for (const auto& item : model->base().named_parameters()) {
    if (item.key().find("adapter") == std::string::npos) tensors[prefix + item.key()] = item.value().detach();
  }
  for (const auto& item : model->base().named_buffers()) tensors[prefix + item.key()] = item.value().detach();
  io::write_safetensors(dir / "model.safetensors", tensors, io::Metadata{{"format", "pt"}});
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
  double learning_rate = 0;  // 0: 1e-3 for adapters, 1e-4 for full fine-tuning
};

struct TrainOutcome {
  std::int64_t trainable = 0;
  tr::TrainResult result;
  std::map<std::string, double> test_metrics;
  double step_ms = 0;
  double peak_mb = 0;
  std::uintmax_t saved_bytes = 0;
  fs::path saved;
};

// libtorch's intra-op pool may start with one thread: use every core.
void use_all_cores() { torch::set_num_threads(static_cast<int>(std::max(1u, std::thread::hardware_concurrency()))); }

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
  if (!a.full) model->add_adapter(a.name, a.adapter_config);
  model->add_head(a.name, head_type, head_options);
  if (a.full) {
    model->freeze_model(false);
    model->train();
  } else {
    model->train_adapter(a.setup.empty() ? Block::adapter(a.name) : composition::parse(a.setup));
  }

  tr::TrainerOptions options = a.trainer;
  options.learning_rate = a.learning_rate > 0 ? a.learning_rate : (a.full ? 1e-4 : 1e-3);
  options.output_dir = a.output;
  options.device = device;
  if (!a.resume.empty()) options.resume_from = a.resume;
  if (!validation) options.metric_for_best = "loss";

  TrainOutcome out;
  out.trainable = trainable_parameters(model);
  // Step time: the median interval between optimizer steps (evaluations and checkpoints, which
  // fall between epochs, land in the few longest intervals).
  std::vector<double> intervals;
  auto last = std::chrono::steady_clock::now();
  options.on_step = [&](std::int64_t) {
    const auto now = std::chrono::steady_clock::now();
    intervals.push_back(std::chrono::duration<double, std::milli>(now - last).count());
    last = now;
  };
  reset_peak_memory();
  out.result = tr::Trainer(options).train(model, train, validation ? &*validation : nullptr);
  out.peak_mb = peak_memory_mb();
  if (intervals.size() > 1) {
    intervals.erase(intervals.begin());  // the first interval includes the set-up
    std::nth_element(intervals.begin(), intervals.begin() + static_cast<std::ptrdiff_t>(intervals.size() / 2), intervals.end());
    out.step_ms = intervals[intervals.size() / 2];
  }
  if (!out.result.best_checkpoint.empty() && fs::exists(out.result.best_checkpoint / tr::kTrainableFile)) {
    restore_checkpoint(model, out.result.best_checkpoint);
  }
  if (test) out.test_metrics = tr::evaluate(*model, *test, options.batch_size, device, &data.test).metrics;

  out.saved = fs::path(a.output) / (a.full ? "model" : "adapter");
  if (a.full) {
    save_base_model(model, out.saved);
    io::write_file_atomic(out.saved / "config.json", model->config().raw.dump(2));
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
  cmd->add_option("--resume", a.resume, "Continue from this checkpoint folder (output/checkpoint-N)");
  cmd->add_flag("--no-progress", [&t](std::int64_t) { t.show_progress = false; }, "No progress bar");
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
    const TrainOutcome out = run_training(*a, *d);
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
    json j;
    try {
      j = json::parse(line);
    } catch (const json::exception& e) {
      throw Error(str(jsonl, ":", n, ": not a JSON object: ", e.what()));
    }
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

// ---- pretrain (masked LM) -------------------------------------------------------------------

struct PretrainArgs {
  std::string config, tokenizer, corpus, out, init;
  double minutes = 10, save_every_minutes = 10;
  std::int64_t warmup_steps = 500;
  std::int64_t max_steps = 0;
  std::size_t batch_size = 64, max_length = 128;
  double learning_rate = 1e-3, mask_probability = 0.15;
  std::uint64_t seed = 0;
};

// BERT's initialisation: N(0, 0.02) matrices and embeddings, zero biases, unit norms.
void init_like_bert(AdapterModel& model, double std) {
  torch::NoGradGuard no_grad;
  for (auto& item : model->named_parameters()) {
    auto& t = item.value();
    if (t.dim() >= 2) t.normal_(0.0, std);
    else if (item.key().find("LayerNorm") != std::string::npos || item.key().find("layer_norm") != std::string::npos)
      t.fill_(item.key().size() > 6 && item.key().substr(item.key().size() - 6) == "weight" ? 1.0 : 0.0);
    else t.zero_();
  }
}

// Token rows of the corpus: each line encoded, long lines cut into pieces of max_length tokens
// (special tokens of each piece included).
std::vector<std::vector<std::int64_t>> corpus_rows(const Tokenizer& tok, const fs::path& corpus, std::size_t max_length) {
  std::ifstream in(corpus);
  ADAPTERS_CHECK(in.good(), corpus.string(), ": cannot read the corpus");
  std::vector<std::vector<std::int64_t>> rows;
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    const auto e = tok.encode(line, /*add_special_tokens=*/false);
    for (std::size_t at = 0; at < e.ids.size(); at += max_length - 2) {
      std::vector<std::int64_t> row;
      const std::size_t end = std::min(e.ids.size(), at + max_length - 2);
      row.assign(e.ids.begin() + static_cast<std::ptrdiff_t>(at), e.ids.begin() + static_cast<std::ptrdiff_t>(end));
      if (row.size() >= 4) rows.push_back(std::move(row));
    }
  }
  ADAPTERS_CHECK(!rows.empty(), corpus.string(), ": no text in the corpus");
  return rows;
}

void add_pretrain(CLI::App& app) {
  auto a = std::make_shared<PretrainArgs>();
  CLI::App* cmd = app.add_subcommand("pretrain", "Pretrain an encoder from a config.json with masked-LM training");
  cmd->add_option("--config", a->config, "config.json of the encoder")->required()->check(CLI::ExistingFile);
  cmd->add_option("--tokenizer", a->tokenizer, "Tokenizer folder")->required()->check(CLI::ExistingDirectory);
  cmd->add_option("--corpus", a->corpus, "Text corpus, one passage per line")->required()->check(CLI::ExistingFile);
  cmd->add_option("--out", a->out, "Where model.safetensors goes (beside the config)")->required();
  cmd->add_option("--minutes", a->minutes, "Training time budget")->capture_default_str();
  cmd->add_option("--max-steps", a->max_steps, "Stop after N steps (0: the time budget decides)");
  cmd->add_option("--batch-size", a->batch_size, "Rows per step")->capture_default_str();
  cmd->add_option("--max-length", a->max_length, "Tokens per row")->capture_default_str();
  cmd->add_option("--lr", a->learning_rate, "Peak learning rate")->capture_default_str();
  cmd->add_option("--seed", a->seed, "Seed (use a new one when continuing with --init)")->capture_default_str();
  cmd->add_option("--init", a->init, "Continue from the weights of this model folder (same config)")
      ->check(CLI::ExistingDirectory);
  cmd->add_option("--mask-probability", a->mask_probability, "Share of tokens masked")
      ->check(CLI::Range(0.01, 0.9))
      ->capture_default_str();
  cmd->add_option("--warmup-steps", a->warmup_steps, "Linear learning-rate warm-up")->capture_default_str();
  cmd->add_option("--save-every", a->save_every_minutes, "Save the weights every N minutes (0: only at the end)")
      ->capture_default_str();
  cmd->callback([a] {
    const Tokenizer tok = Tokenizer::from_pretrained(a->tokenizer);
    const auto mask_id = tok.token_to_id("<mask>");
    ADAPTERS_CHECK(mask_id.has_value(), a->tokenizer, ": the tokenizer has no <mask> token");
    const std::int64_t bos = tok.token_to_id("<s>").value_or(0), eos = tok.token_to_id("</s>").value_or(2);
    const auto rows = corpus_rows(tok, a->corpus, a->max_length);
    std::cerr << "pretrain: " << rows.size() << " rows from " << a->corpus << '\n';

    use_all_cores();
    torch::manual_seed(a->seed);
    const models::ModelConfig config = models::load_model_config(a->config);
    AdapterModel model = a->init.empty() ? AdapterModel(config) : load_pretrained(a->init);
    ADAPTERS_CHECK(model->config().hidden_size == config.hidden_size && model->config().vocab_size == config.vocab_size &&
                       model->config().num_hidden_layers == config.num_hidden_layers,
                   a->init, ": --init model does not have the shape of ", a->config,
                   " (hidden size, vocabulary and layer count must match)");
    model->add_head("mlm", "masked_lm");
    if (a->init.empty()) {
      init_like_bert(model, config.initializer_range);
    } else {
      std::cerr << "pretrain: continuing from " << a->init << " (the MLM head transform starts fresh)\n";
    }
    model->train();
    const auto groups = tr::trainable_parameter_groups(*model);
    auto optimizer = tr::make_adamw(groups, a->learning_rate, 0.01);
    const std::int64_t pad = config.pad_token_id, vocab = config.vocab_size;
    std::mt19937_64 rng(a->seed);
    const std::int64_t warmup = std::max<std::int64_t>(1, a->warmup_steps);
    const auto start = std::chrono::steady_clock::now();
    double last_save = 0;
    const std::int64_t planned = a->max_steps > 0 ? a->max_steps : 1000000;
    double smoothed = 0;
    std::int64_t step = 0;
    for (; step < planned; ++step) {
      const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      if (a->max_steps == 0 && elapsed > a->minutes * 60) break;
      // A batch of random rows, padded; 15% of the tokens masked (80% <mask>, 10% random, 10% kept).
      std::vector<const std::vector<std::int64_t>*> batch;
      std::size_t longest = 0;
      for (std::size_t i = 0; i < a->batch_size; ++i) {
        batch.push_back(&rows[rng() % rows.size()]);
        longest = std::max(longest, batch.back()->size() + 2);
      }
      const auto B = static_cast<std::int64_t>(batch.size()), T = static_cast<std::int64_t>(longest);
      torch::Tensor ids = torch::full({B, T}, pad, torch::kLong), mask = torch::zeros({B, T}, torch::kLong);
      torch::Tensor labels = torch::full({B, T}, -100, torch::kLong);
      auto id = ids.accessor<std::int64_t, 2>();
      auto m = mask.accessor<std::int64_t, 2>();
      auto l = labels.accessor<std::int64_t, 2>();
      std::uniform_real_distribution<double> u(0.0, 1.0);
      for (std::int64_t b = 0; b < B; ++b) {
        const auto& row = *batch[static_cast<std::size_t>(b)];
        id[b][0] = bos;
        for (std::size_t j = 0; j < row.size(); ++j) id[b][static_cast<std::int64_t>(j) + 1] = row[j];
        id[b][static_cast<std::int64_t>(row.size()) + 1] = eos;
        for (std::int64_t j = 0; j < static_cast<std::int64_t>(row.size()) + 2; ++j) m[b][j] = 1;
        for (std::int64_t j = 1; j <= static_cast<std::int64_t>(row.size()); ++j) {
          if (u(rng) >= a->mask_probability) continue;
          l[b][j] = id[b][j];
          const double r = u(rng);
          if (r < 0.8) id[b][j] = *mask_id;
          else if (r < 0.9) id[b][j] = 4 + static_cast<std::int64_t>(rng() % static_cast<std::uint64_t>(vocab - 5));
        }
      }
      // Linear warm-up, then linear decay to 10% over the budget (time or steps).
      const double progress = a->max_steps > 0 ? static_cast<double>(step) / static_cast<double>(a->max_steps)
                                               : elapsed / (a->minutes * 60);
      tr::set_learning_rate(*optimizer, a->learning_rate * std::min(1.0, static_cast<double>(step + 1) / warmup) *
                                            (1.0 - 0.9 * std::min(1.0, progress)));
      // The vocabulary projection only at the masked positions.
      ForwardOptions options;
      options.skip_heads = true;
      const ModelOutput out = model->forward({ids, mask, torch::Tensor()}, options);
      const torch::Tensor picked = labels.ne(-100);
      heads::HeadInputs head_in;
      head_in.hidden = out.last_hidden_state.index({picked}).unsqueeze(0);  // (1,M,C)
      head_in.extra["labels"] = labels.index({picked}).unsqueeze(0);        // (1,M)
      const torch::Tensor loss = model->head("mlm").forward(head_in).loss;
      optimizer->zero_grad();
      loss.backward();
      torch::nn::utils::clip_grad_norm_(model->parameters(), 1.0);
      optimizer->step();
      const double value = loss.item<double>();
      smoothed = step == 0 ? value : 0.98 * smoothed + 0.02 * value;
      if (step % 100 == 0) std::cerr << "pretrain: step " << step << " loss " << smoothed << " (" << elapsed << " s)\n";
      if (a->save_every_minutes > 0 && elapsed - last_save > a->save_every_minutes * 60) {
        save_base_model(model, a->out);  // written to a temporary file, then renamed
        last_save = elapsed;
        std::cerr << "pretrain: saved at step " << step << '\n';
      }
    }
    model->delete_head("mlm");
    save_base_model(model, a->out);
    std::cerr << "pretrain: " << step << " steps, final loss " << smoothed << ", saved " << (fs::path(a->out) / "model.safetensors").string()
              << '\n';
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

}  // namespace

void add_training_commands(CLI::App& app) {
  add_train(app);
  add_eval(app);
  add_predict(app);
  add_pretrain(app);
  add_demo(app);
}

}  // namespace adapters::cli
