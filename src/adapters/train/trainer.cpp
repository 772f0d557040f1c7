// The training loop (see trainer.h): batches to tensors, AdamW with decay groups, the learning-rate
// schedule, evaluation, checkpoints of the trainable parameters with the optimizer state, resume,
// and Ctrl-C handling.
#include "adapters/train/trainer.h"

#include <ATen/autocast_mode.h>
#include <torch/nn/utils/clip_grad.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <csignal>
#include <iostream>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <type_traits>

#include "adapters/core/error.h"
#include "adapters/core/log.h"
#include "adapters/io/tensors.h"
#include "adapters/train/chart.h"
#include "adapters/train/metrics.h"
#include "adapters/train/progress.h"

namespace adapters::train {

namespace fs = std::filesystem;
using torch::Tensor;

// ---- batches as tensors -------------------------------------------------------------------------

namespace {

Tensor long_tensor(const std::vector<int64_t>& values, torch::IntArrayRef shape, torch::Device device) {
  return torch::tensor(values, torch::kLong).view(shape).to(device);
}

Tensor float_tensor(const std::vector<float>& values, torch::IntArrayRef shape, torch::Device device) {
  return torch::tensor(values, torch::kFloat).view(shape).to(device);
}

bool predicts_classes(TaskKind task) {
  return task == TaskKind::SequenceClassification || task == TaskKind::MultipleChoice;
}

}  // namespace

models::ModelInputs to_inputs(const Batch& batch, torch::Device device) {
  const std::vector<int64_t> rows = {batch.batch_size * batch.num_choices, batch.seq_len};
  ADAPTERS_CHECK(static_cast<int64_t>(batch.input_ids.size()) == rows[0] * rows[1], "batch: expected ", rows[0], " x ",
                 rows[1], " input ids, found ", batch.input_ids.size());
  models::ModelInputs inputs;
  inputs.input_ids = long_tensor(batch.input_ids, rows, device);
  if (!batch.attention_mask.empty()) inputs.attention_mask = long_tensor(batch.attention_mask, rows, device);
  if (!batch.token_type_ids.empty()) inputs.token_type_ids = long_tensor(batch.token_type_ids, rows, device);
  return inputs;
}

namespace {

// The batch as this model takes it: token type ids only for models with token-type embeddings
// (config.json type_vocab_size > 0). GPT-2 would add the embedding of token 0 to every position
// for a row of zero type ids, as HF does when they are passed.
models::ModelInputs inputs_for(const AdapterModelImpl& model, const Batch& batch, torch::Device device) {
  models::ModelInputs inputs = to_inputs(batch, device);
  const json& raw = model.config().raw;
  const bool segments = raw.contains("type_vocab_size") && raw["type_vocab_size"].is_number_integer() &&
                        raw["type_vocab_size"].get<std::int64_t>() > 0;
  if (!segments) inputs.token_type_ids = torch::Tensor();
  return inputs;
}

}  // namespace

HeadTensors to_head_inputs(const Batch& batch, TaskKind task, torch::Device device) {
  const int64_t B = batch.batch_size;
  switch (task) {
    case TaskKind::SequenceClassification:
    case TaskKind::MultipleChoice:
      return {{"labels", long_tensor(batch.labels, {B}, device)}};
    case TaskKind::TokenClassification:
    case TaskKind::CausalLM:
    case TaskKind::MaskedLM:
      return {{"labels", long_tensor(batch.labels, {B, batch.seq_len}, device)}};
    case TaskKind::Regression:
      return {{"labels", float_tensor(batch.float_labels, {B}, device)}};
    case TaskKind::MultiLabel:
      return {{"labels", float_tensor(batch.float_labels, {B, -1}, device)}};
    case TaskKind::QuestionAnswering:
      return {{"start_positions", long_tensor(batch.start_positions, {B}, device)},
              {"end_positions", long_tensor(batch.end_positions, {B}, device)}};
  }
  throw Error(str("batch: unknown task kind ", static_cast<int>(task)));
}

// ---- optimizer ----------------------------------------------------------------------------------

namespace {

bool ends_with(const std::string& text, const std::string& suffix) {
  return text.size() >= suffix.size() && text.compare(text.size() - suffix.size(), suffix.size(), suffix) == 0;
}

bool names_a_norm(const std::string& name) {
  return name.find("LayerNorm") != std::string::npos || name.find("layer_norm") != std::string::npos ||
         name.find("norm") != std::string::npos;
}

std::vector<Tensor> tensors_of(const std::vector<std::pair<std::string, Tensor>>& named) {
  std::vector<Tensor> out;
  for (const auto& item : named) out.push_back(item.second);
  return out;
}

// The optimizer's state key of a parameter: a string of the TensorImpl address in libtorch 1.x,
// the address itself in 2.x; deduced from the map so both compile.
template <typename StateMap>
typename StateMap::key_type state_key(const StateMap&, const Tensor& parameter) {
  using Key = typename StateMap::key_type;
  if constexpr (std::is_same_v<Key, std::string>) {
    std::ostringstream os;
    os << parameter.unsafeGetTensorImpl();
    return os.str();
  } else {
    return static_cast<Key>(parameter.unsafeGetTensorImpl());
  }
}

}  // namespace

bool exempt_from_weight_decay(const std::string& name, const Tensor& parameter) {
  return ends_with(name, "bias") || (parameter.dim() == 1 && names_a_norm(name));
}

ParameterGroups trainable_parameter_groups(const torch::nn::Module& model) {
  ParameterGroups groups;
  std::set<const void*> seen;  // a tied tensor (LM head = word embeddings) is listed under each of its names
  for (const auto& item : model.named_parameters()) {
    if (!item.value().requires_grad()) continue;
    if (!seen.insert(item.value().unsafeGetTensorImpl()).second) continue;
    auto& group = exempt_from_weight_decay(item.key(), item.value()) ? groups.no_decay : groups.decay;
    group.emplace_back(item.key(), item.value());
  }
  return groups;
}

std::unique_ptr<torch::optim::AdamW> make_adamw(const ParameterGroups& groups, double learning_rate,
                                                double weight_decay) {
  ADAPTERS_CHECK(groups.size() > 0, "optimizer: no parameter requires grad (expected the trainable ",
                 "parameters of an adapter or head; call train_adapter or add a head first)");
  std::vector<torch::optim::OptimizerParamGroup> param_groups;
  auto add_group = [&](const std::vector<std::pair<std::string, Tensor>>& named, double decay) {
    if (named.empty()) return;
    auto options = std::make_unique<torch::optim::AdamWOptions>(learning_rate);
    options->weight_decay(decay);
    param_groups.emplace_back(tensors_of(named), std::move(options));
  };
  add_group(groups.decay, weight_decay);
  add_group(groups.no_decay, 0.0);
  return std::make_unique<torch::optim::AdamW>(std::move(param_groups),
                                               torch::optim::AdamWOptions(learning_rate).weight_decay(weight_decay));
}

// ---- learning-rate schedule ---------------------------------------------------------------------

Schedule parse_schedule(const std::string& name) {
  if (name == "linear") return Schedule::Linear;
  if (name == "cosine") return Schedule::Cosine;
  if (name == "constant") return Schedule::Constant;
  throw Error(str("option schedule: expected linear, cosine or constant, found '", name, "'"));
}

double lr_multiplier(Schedule schedule, int64_t step, int64_t warmup_steps, int64_t total_steps, double min_ratio) {
  if (step < warmup_steps) return static_cast<double>(step) / static_cast<double>(std::max<int64_t>(1, warmup_steps));
  if (schedule == Schedule::Constant) return 1.0;
  const double decay_steps = static_cast<double>(std::max<int64_t>(1, total_steps - warmup_steps));
  const double progress = std::min(1.0, static_cast<double>(step - warmup_steps) / decay_steps);
  const double decay = schedule == Schedule::Linear ? 1.0 - progress : 0.5 * (1.0 + std::cos(M_PI * progress));
  return min_ratio + (1.0 - min_ratio) * decay;
}

void set_learning_rate(torch::optim::Optimizer& optimizer, double learning_rate) {
  for (auto& group : optimizer.param_groups()) {
    static_cast<torch::optim::AdamWOptions&>(group.options()).lr(learning_rate);
  }
}

// ---- optimizer state as tensors -----------------------------------------------------------------

namespace {

std::vector<std::pair<std::string, Tensor>> all_named(const ParameterGroups& groups) {
  auto named = groups.decay;
  named.insert(named.end(), groups.no_decay.begin(), groups.no_decay.end());
  return named;
}

const Tensor& require_tensor(const io::TensorMap& tensors, const std::string& key, const Tensor& like,
                             const std::string& source) {
  auto found = tensors.find(key);
  ADAPTERS_CHECK(found != tensors.end(), source, ": missing tensor '", key, "'");
  ADAPTERS_CHECK(found->second.sizes() == like.sizes(), source, ": tensor '", key, "' has shape ",
                 found->second.sizes(), ", expected ", like.sizes());
  return found->second;
}

Tensor owned_copy(const Tensor& source, const Tensor& like) {
  return source.to(like.device(), like.scalar_type()).clone();
}

}  // namespace

io::TensorMap adamw_state_tensors(torch::optim::AdamW& optimizer, const ParameterGroups& groups) {
  io::TensorMap out;
  auto& state = optimizer.state();
  for (const auto& [name, parameter] : all_named(groups)) {
    auto found = state.find(state_key(state, parameter));
    if (found == state.end()) continue;
    const auto& s = static_cast<const torch::optim::AdamWParamState&>(*found->second);
    out[name + ".exp_avg"] = s.exp_avg();
    out[name + ".exp_avg_sq"] = s.exp_avg_sq();
    if (s.max_exp_avg_sq().defined()) out[name + ".max_exp_avg_sq"] = s.max_exp_avg_sq();
    out[name + ".step"] = torch::tensor(static_cast<int64_t>(s.step()), torch::kLong);
  }
  return out;
}

void load_adamw_state(torch::optim::AdamW& optimizer, const ParameterGroups& groups, const io::TensorMap& tensors,
                      const std::string& source) {
  auto& state = optimizer.state();
  for (const auto& [name, parameter] : all_named(groups)) {
    if (!tensors.count(name + ".step")) continue;  // no step taken for it yet
    auto s = std::make_unique<torch::optim::AdamWParamState>();
    s->step(tensors.at(name + ".step").item<int64_t>());
    s->exp_avg(owned_copy(require_tensor(tensors, name + ".exp_avg", parameter, source), parameter));
    s->exp_avg_sq(owned_copy(require_tensor(tensors, name + ".exp_avg_sq", parameter, source), parameter));
    if (tensors.count(name + ".max_exp_avg_sq")) {
      s->max_exp_avg_sq(owned_copy(require_tensor(tensors, name + ".max_exp_avg_sq", parameter, source), parameter));
    }
    state[state_key(state, parameter)] = std::move(s);
  }
}

// ---- evaluation ---------------------------------------------------------------------------------

namespace {

std::vector<double> to_doubles(const Tensor& t) {
  const Tensor c = t.to(torch::kCPU, torch::kDouble).contiguous().view(-1);
  return {c.data_ptr<double>(), c.data_ptr<double>() + c.numel()};
}

// The highest-scoring answer span of one QA feature (start_logit + end_logit, at most 30 tokens,
// both ends inside the context, as HF's postprocess_qa_predictions); a score of -inf when the
// feature holds no context.
struct SpanChoice {
  double score = -std::numeric_limits<double>::infinity();
  size_t start = 0, end = 0;  // token indices
  size_t feature = 0;         // the window it lies in
};

SpanChoice best_span(const Tensor& start, const Tensor& end, const Feature& feature) {
  const auto s = to_doubles(start), e = to_doubles(end);
  const auto in_context = [&](size_t t) { return t < feature.context_offsets.size() && feature.context_offsets[t].has_value(); };
  SpanChoice best;
  for (size_t i = 0; i < s.size(); ++i) {
    if (!in_context(i)) continue;
    for (size_t j = i; j < e.size() && j < i + 30; ++j) {
      if (in_context(j) && s[i] + e[j] > best.score) best.score = s[i] + e[j], best.start = i, best.end = j;
    }
  }
  return best;
}

// Causal LM: the tokens a batch predicts, as the head's shifted loss counts them (a label at
// position t >= 1 that is not kIgnoreIndex).
int64_t predicted_token_count(const Batch& batch) {
  int64_t n = 0;
  for (int64_t b = 0; b < batch.batch_size; ++b) {
    for (int64_t t = 1; t < batch.seq_len; ++t) n += batch.labels[static_cast<size_t>(b * batch.seq_len + t)] != kIgnoreIndex;
  }
  return n;
}

int64_t labelled_token_count(const Batch& batch) {
  return std::count_if(batch.labels.begin(), batch.labels.end(), [](int64_t l) { return l != kIgnoreIndex; });
}

// The name of the one masked_lm head that the active head setup runs, if that is the setup.
std::optional<std::string> single_masked_lm_head(const AdapterModelImpl& model) {
  const auto& setup = model.active_head();
  if (!setup || !setup->is_adapter() || !model.has_head(setup->name)) return std::nullopt;
  const auto& config = model.head(setup->name).config();
  if (config.value("head_type", std::string()) != "masked_lm") return std::nullopt;
  return setup->name;
}

}  // namespace

ModelOutput forward_batch(AdapterModelImpl& model, const Batch& batch, TaskKind task, torch::Device device) {
  ForwardOptions options;
  options.adapter_per_row = batch.adapters;  // multi-tenant data: each row's own adapter
  const std::optional<std::string> mlm_head = task == TaskKind::MaskedLM ? single_masked_lm_head(model) : std::nullopt;
  if (!mlm_head) {
    options.head_inputs = to_head_inputs(batch, task, device);
    return model.forward(inputs_for(model, batch, device), options);
  }
  // Masked LM: the vocabulary projection only at the masked positions, all that its loss needs.
  options.skip_heads = true;
  ModelOutput out = model.forward(inputs_for(model, batch, device), options);
  const Tensor labels = long_tensor(batch.labels, {batch.batch_size, batch.seq_len}, device);
  const Tensor picked = labels.ne(kIgnoreIndex);
  heads::HeadInputs head_inputs;
  head_inputs.hidden = out.last_hidden_state.index({picked}).unsqueeze(0);  // (1,M,C)
  head_inputs.extra["labels"] = labels.index({picked}).unsqueeze(0);        // (1,M)
  out.loss = model.head(*mlm_head).forward(head_inputs).loss;
  return out;
}

double loss_weight(const Batch& batch, TaskKind task) {
  if (task == TaskKind::CausalLM) return static_cast<double>(predicted_token_count(batch));
  if (task == TaskKind::MaskedLM || task == TaskKind::TokenClassification) return static_cast<double>(labelled_token_count(batch));
  return static_cast<double>(batch.batch_size);
}

namespace {

// The seed of evaluation's masking: every evaluation masks the same tokens.
constexpr uint64_t kEvalMaskingSeed = 0x5EEDULL;

// One evaluation batch as numbers, so that the ranks of a data-parallel run can each evaluate a
// share of the batches and sum their records into every batch's: the loss times its weight, the
// weight, then by task the predicted class ids ((B), tagging (B,T)), the regression outputs (B*K),
// or every QA row's best span (score, start, end).
size_t record_size(const Batch& batch, TaskKind task, bool spans) {
  switch (task) {
    case TaskKind::SequenceClassification:
    case TaskKind::MultipleChoice: return 2 + static_cast<size_t>(batch.batch_size);
    case TaskKind::TokenClassification: return 2 + static_cast<size_t>(batch.batch_size * batch.seq_len);
    case TaskKind::Regression: return 2 + batch.float_labels.size();
    case TaskKind::QuestionAnswering: return 2 + (spans ? 3 * static_cast<size_t>(batch.batch_size) : 0);
    case TaskKind::MultiLabel:
    case TaskKind::CausalLM:
    case TaskKind::MaskedLM: return 2;
  }
  return 2;
}

void write_record(AdapterModelImpl& model, const FeatureSet& features, const Batch& batch, torch::Device device, bool spans,
                  std::vector<double>& record) {
  const ModelOutput out = forward_batch(model, batch, features.task, device);
  ADAPTERS_CHECK(out.loss.defined(), "evaluate: the model returned no loss (expected an active head for task ",
                 to_string(features.task), ")");
  // The loss averages over the batch's rows (HF Trainer's evaluation), or over its tokens for LMs.
  const bool per_token = features.task == TaskKind::CausalLM || features.task == TaskKind::MaskedLM;
  const double weight = per_token ? loss_weight(batch, features.task) : static_cast<double>(batch.batch_size);
  record[0] = weight > 0 ? out.loss.item<double>() * weight : 0.0;  // a batch predicting nothing has a NaN loss
  record[1] = weight;
  std::vector<double> outputs;
  switch (features.task) {
    case TaskKind::SequenceClassification:
    case TaskKind::MultipleChoice:
    case TaskKind::TokenClassification: outputs = to_doubles(out.head.at("logits").argmax(-1)); break;
    case TaskKind::Regression: outputs = to_doubles(out.head.at("logits")); break;
    case TaskKind::QuestionAnswering:
      for (int64_t b = 0; spans && b < batch.batch_size; ++b) {
        const Feature& f = features.features[batch.features[static_cast<size_t>(b)]];
        const SpanChoice span = best_span(out.head.at("start_logits")[b], out.head.at("end_logits")[b], f);
        outputs.insert(outputs.end(), {span.score, static_cast<double>(span.start), static_cast<double>(span.end)});
      }
      break;
    case TaskKind::MultiLabel:
    case TaskKind::CausalLM:
    case TaskKind::MaskedLM: break;
  }
  ADAPTERS_CHECK(outputs.size() + 2 == record.size(), "evaluate: the head gave ", outputs.size(), " outputs for a batch of ",
                 batch.batch_size, " (expected ", record.size() - 2, ": does the head's number of labels fit the data?)");
  std::copy(outputs.begin(), outputs.end(), record.begin() + 2);
}

// Evaluation's totals, batch record by batch record, in the order of the plan.
class EvalTally {
 public:
  EvalTally(const FeatureSet& features, const Dataset* dataset) : features_(features), dataset_(dataset) {}

  void add(const Batch& batch, const std::vector<double>& record) {
    loss_sum_ += record[0];
    weight_sum_ += record[1];
    const auto outputs = record.begin() + 2;
    switch (features_.task) {
      case TaskKind::SequenceClassification:
      case TaskKind::MultipleChoice:
      case TaskKind::TokenClassification:
        for (auto it = outputs; it != record.end(); ++it) predictions_.push_back(static_cast<int64_t>(*it));
        gold_.insert(gold_.end(), batch.labels.begin(), batch.labels.end());
        break;
      case TaskKind::Regression:
        predicted_values_.insert(predicted_values_.end(), outputs, record.end());
        gold_values_.insert(gold_values_.end(), batch.float_labels.begin(), batch.float_labels.end());
        break;
      case TaskKind::QuestionAnswering:
        if (dataset_ == nullptr) break;
        for (int64_t b = 0; b < batch.batch_size; ++b) {
          const Feature& f = features_.features[batch.features[static_cast<size_t>(b)]];
          const SpanChoice span{outputs[3 * b], static_cast<size_t>(outputs[3 * b + 1]), static_cast<size_t>(outputs[3 * b + 2]),
                                batch.features[static_cast<size_t>(b)]};
          SpanChoice& kept = answer_of_[f.example];
          if (span.score > kept.score) kept = span;
        }
        break;
      case TaskKind::MultiLabel:
      case TaskKind::CausalLM:
      case TaskKind::MaskedLM: break;
    }
  }

  EvalResult result() {
    const TaskKind task = features_.task;
    const bool per_token = task == TaskKind::CausalLM || task == TaskKind::MaskedLM;
    ADAPTERS_CHECK(!per_token || weight_sum_ > 0, "evaluate: the ", to_string(task), " features predict no token",
                   task == TaskKind::CausalLM ? " (every text is a single token)" : " (no token was masked)");
    EvalResult result;
    result.loss = loss_sum_ / weight_sum_;
    result.metrics["loss"] = result.loss;
    result.predictions = predictions_;
    if (per_token) result.metrics["perplexity"] = std::exp(result.loss);
    if (predicts_classes(task)) {
      result.metrics["accuracy"] = accuracy(gold_, predictions_);
      result.metrics["macro_f1"] = macro_f1(gold_, predictions_);
      result.metrics["mcc"] = matthews_corrcoef(gold_, predictions_);
    } else if (task == TaskKind::TokenClassification) {
      const double f1 = token_f1(gold_, predictions_).f1;
      result.metrics["token_f1"] = f1;
      result.metrics["accuracy"] = f1;  // every position counts: accuracy
    } else if (task == TaskKind::Regression) {
      result.metrics["pearson"] = pearson(gold_values_, predicted_values_);
      result.metrics["spearman"] = spearman(gold_values_, predicted_values_);
    } else if (!answer_of_.empty()) {
      std::vector<std::string> answers;
      std::vector<std::vector<std::string>> gold_answers;
      for (const auto& [example, span] : answer_of_) {
        answers.push_back(std::isfinite(span.score) ? span_text(dataset_->examples.at(example), features_.features[span.feature], span.start, span.end) : "");
        gold_answers.emplace_back();
        for (const auto& a : dataset_->examples.at(example).answers) gold_answers.back().push_back(a.text);
      }
      const QaScores qa = squad_scores(answers, gold_answers);
      result.metrics["exact_match"] = qa.exact_match;
      result.metrics["f1"] = qa.f1;
    }
    return result;
  }

 private:
  const FeatureSet& features_;
  const Dataset* dataset_;
  double loss_sum_ = 0, weight_sum_ = 0;
  std::vector<int64_t> gold_, predictions_;
  std::vector<double> gold_values_, predicted_values_;
  std::map<size_t, SpanChoice> answer_of_;  // QA: the best span over each example's windows
};

}  // namespace

EvalResult evaluate(AdapterModelImpl& model, const FeatureSet& features, size_t batch_size, torch::Device device,
                    const Dataset* dataset, DataParallel* parallel) {
  ADAPTERS_CHECK(!features.features.empty(), "evaluate: expected features, found an empty set");
  const bool was_training = model.is_training();
  model.eval();
  torch::NoGradGuard no_grad;
  const bool spans = features.task == TaskKind::QuestionAnswering && dataset != nullptr;
  const auto plan = plan_batches(features, {batch_size, false});
  const auto batch_at = [&](size_t b) {
    Batch batch = collate(features, plan[b]);
    if (features.task == TaskKind::MaskedLM) mask_tokens(batch, features.masking, kEvalMaskingSeed);
    return batch;
  };
  const int rank = parallel != nullptr ? parallel->rank() : 0, world = parallel != nullptr ? parallel->world_size() : 1;
  // Every batch's record, one after the other: rank r runs batches r, r + world, ...; the ranks'
  // records are then summed, so that every rank holds all of them.
  std::vector<double> records;
  std::vector<size_t> offsets{0};
  for (size_t b = 0; b < plan.size(); ++b) {
    const Batch batch = batch_at(b);
    std::vector<double> record(record_size(batch, features.task, spans), 0.0);
    if (static_cast<int>(b % static_cast<size_t>(world)) == rank) write_record(model, features, batch, device, spans, record);
    records.insert(records.end(), record.begin(), record.end());
    offsets.push_back(records.size());
  }
  model.train(was_training);
  if (parallel != nullptr) records = parallel->sum(records);
  EvalTally tally(features, dataset);
  for (size_t b = 0; b < plan.size(); ++b) {
    const auto begin = records.begin();
    tally.add(batch_at(b), std::vector<double>(begin + static_cast<std::ptrdiff_t>(offsets[b]), begin + static_cast<std::ptrdiff_t>(offsets[b + 1])));
  }
  return tally.result();
}

// ---- checkpoints --------------------------------------------------------------------------------

namespace {

nlohmann::json evaluations_json(const std::vector<EvalRecord>& records) {
  nlohmann::json out = nlohmann::json::array();
  for (const auto& r : records) out.push_back({{"step", r.step}, {"epoch", r.epoch}, {"metrics", r.metrics}});
  return out;
}

nlohmann::json state_json(const TrainerState& s) {
  return {{"global_step", s.global_step},
          {"epoch", s.epoch},
          {"batch_in_epoch", s.batch_in_epoch},
          {"evaluations_without_improvement", s.evaluations_without_improvement},
          {"best_metric", s.best_metric ? nlohmann::json(*s.best_metric) : nlohmann::json(nullptr)},
          {"best_step", s.best_step},
          {"seed", s.seed},
          {"train_loss", s.train_loss},
          {"evaluations", evaluations_json(s.evaluations)}};
}

TrainerState state_from_json(const nlohmann::json& j) {
  TrainerState s;
  s.global_step = j.at("global_step").get<int64_t>();
  s.epoch = j.at("epoch").get<int64_t>();
  s.batch_in_epoch = j.at("batch_in_epoch").get<int64_t>();
  s.evaluations_without_improvement = j.value("evaluations_without_improvement", int64_t{0});
  if (j.contains("best_metric") && !j["best_metric"].is_null()) s.best_metric = j["best_metric"].get<double>();
  s.best_step = j.value("best_step", int64_t{0});
  s.seed = j.at("seed").get<uint64_t>();
  if (j.contains("train_loss")) s.train_loss = j["train_loss"].get<std::vector<std::pair<int64_t, double>>>();
  if (j.contains("evaluations")) {
    for (const auto& r : j["evaluations"]) {
      s.evaluations.push_back({r.at("step").get<int64_t>(), r.at("epoch").get<double>(),
                               r.at("metrics").get<std::map<std::string, double>>()});
    }
  }
  return s;
}

io::TensorMap trainable_tensors(const ParameterGroups& groups) {
  io::TensorMap out;
  for (const auto& [name, parameter] : all_named(groups)) out[name] = parameter.detach();
  return out;
}

// Writes the checkpoint into a temporary folder and renames it to `dir`, so a checkpoint folder
// is always complete.
void write_checkpoint(const fs::path& dir, const ParameterGroups& groups, torch::optim::AdamW& optimizer,
                      const TrainerState& state) {
  const fs::path temporary = dir.parent_path() / ("." + dir.filename().string() + ".tmp");
  io::remove_tree(temporary);
  try {
    fs::create_directories(temporary);
    io::write_safetensors(temporary / kTrainableFile, trainable_tensors(groups), {{"format", "pt"}});
    io::write_safetensors(temporary / kOptimizerFile, adamw_state_tensors(optimizer, groups), {{"format", "pt"}});
    io::write_file_atomic(temporary / kTrainerStateFile, state_json(state).dump(2) + "\n");
  } catch (...) {
    io::remove_tree(temporary);  // e.g. a full disk: no partial checkpoint is left behind
    throw;
  }
  io::remove_tree(dir);
  fs::rename(temporary, dir);
}

// Copies a complete checkpoint to `dir` (output_dir/best), replacing the previous one.
void copy_checkpoint(const fs::path& from, const fs::path& dir) {
  const fs::path temporary = dir.parent_path() / ("." + dir.filename().string() + ".tmp");
  io::remove_tree(temporary);
  fs::copy(from, temporary, fs::copy_options::recursive);
  io::remove_tree(dir);
  fs::rename(temporary, dir);
}

void load_trainable(const ParameterGroups& groups, const io::TensorMap& tensors, const std::string& source) {
  torch::NoGradGuard no_grad;
  const auto named = all_named(groups);
  for (const auto& [name, parameter] : named) {
    parameter.copy_(require_tensor(tensors, name, parameter, source));
  }
  ADAPTERS_CHECK(tensors.size() == named.size(), source, ": holds ", tensors.size(), " tensors, expected the ",
                 named.size(), " trainable parameters of the model (was it saved with another adapter setup?)");
}

bool holds_a_run(const fs::path& dir) {
  if (!fs::is_directory(dir)) return false;
  if (fs::exists(dir / kTrainerStateFile)) return true;
  for (const auto& entry : fs::directory_iterator(dir)) {
    if (entry.is_directory() && entry.path().filename().string().rfind("checkpoint-", 0) == 0) return true;
  }
  return false;
}

// Removes what an earlier run wrote to `dir` (only the trainer's own files).
void clear_run(const fs::path& dir) {
  if (!fs::is_directory(dir)) return;
  std::vector<fs::path> doomed;
  for (const auto& entry : fs::directory_iterator(dir)) {
    const std::string name = entry.path().filename().string();
    if (name.rfind("checkpoint-", 0) == 0 || name == "best" || name == kTrainerStateFile || name == "metrics.jsonl" ||
        name == "curves.svg") {
      doomed.push_back(entry.path());
    }
  }
  for (const auto& path : doomed) io::remove_tree(path);
}

}  // namespace

TrainerState read_trainer_state(const fs::path& checkpoint_dir) {
  const fs::path file = checkpoint_dir / kTrainerStateFile;
  TrainerState state;
  try {
    state = state_from_json(parse_json_file_text(io::read_text_file(file), file.string()));
  } catch (const nlohmann::json::exception& e) {
    throw Error(str(file.string(), ": not a trainer state (", std::string(e.what()).substr(0, 200), ")"));
  }
  // A position no run reaches: refused rather than resumed from.
  for (const auto& [key, value] : {std::pair<const char*, int64_t>{"global_step", state.global_step},
                                   {"epoch", state.epoch},
                                   {"batch_in_epoch", state.batch_in_epoch},
                                   {"evaluations_without_improvement", state.evaluations_without_improvement},
                                   {"best_step", state.best_step}}) {
    ADAPTERS_CHECK(value >= 0, file.string(), ": key '", key, "' must be >= 0, found ", value);
  }
  ADAPTERS_CHECK(state.best_step <= state.global_step, file.string(), ": key 'best_step' (", state.best_step,
                 ") lies after 'global_step' (", state.global_step, ")");
  return state;
}

// ---- the loop's helpers -------------------------------------------------------------------------

namespace {

std::atomic<bool> g_sigint{false};

extern "C" void on_sigint(int) { g_sigint.store(true); }

// Installs the Ctrl-C handler for the life of the training loop and restores the previous one.
class SigintGuard {
 public:
  explicit SigintGuard(bool enabled) : enabled_(enabled) {
    g_sigint.store(false);
    if (enabled_) previous_ = std::signal(SIGINT, on_sigint);
  }
  ~SigintGuard() {
    if (enabled_) std::signal(SIGINT, previous_);
  }
  SigintGuard(const SigintGuard&) = delete;
  SigintGuard& operator=(const SigintGuard&) = delete;

 private:
  bool enabled_;
  void (*previous_)(int) = SIG_DFL;
};

// bf16 autocast on the CPU (or CUDA) for the guard's life, where this libtorch has it.
class Bf16Autocast {
 public:
  Bf16Autocast(bool enabled, torch::Device device) : enabled_(enabled), cuda_(device.is_cuda()) {
    if (!enabled_) return;
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 4)
    const auto type = cuda_ ? at::kCUDA : at::kCPU;
    at::autocast::set_autocast_dtype(type, at::kBFloat16);
    at::autocast::set_autocast_enabled(type, true);
#else
    if (cuda_) {
      at::autocast::set_autocast_gpu_dtype(at::kBFloat16);
      at::autocast::set_enabled(true);
    } else {
      at::autocast::set_autocast_cpu_dtype(at::kBFloat16);
      at::autocast::set_cpu_enabled(true);
    }
#endif
  }
  ~Bf16Autocast() {
    if (!enabled_) return;
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 4)
    at::autocast::set_autocast_enabled(cuda_ ? at::kCUDA : at::kCPU, false);
#else
    if (cuda_) at::autocast::set_enabled(false); else at::autocast::set_cpu_enabled(false);
#endif
    at::autocast::clear_cache();
  }
  Bf16Autocast(const Bf16Autocast&) = delete;
  Bf16Autocast& operator=(const Bf16Autocast&) = delete;

 private:
  bool enabled_, cuda_;
};

// splitmix64: the seed of the random draws (dropout) of one micro-batch, so that they depend only
// on the run's seed and the batch's position, never on what ran before (resume stays exact).
uint64_t micro_batch_seed(uint64_t seed, int64_t epoch, int64_t batch) {
  uint64_t z = seed + 0x9E3779B97F4A7C15ULL * static_cast<uint64_t>(epoch * 1000003 + batch + 1);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return (z ^ (z >> 31)) & 0x7FFFFFFFFFFFFFFFULL;
}

bool lower_is_better(const std::string& metric) { return metric == "loss"; }

void check_options(const TrainerOptions& o) {
  ADAPTERS_CHECK(!o.output_dir.empty(), "option output_dir: expected a folder for checkpoints and logs, found none");
  ADAPTERS_CHECK(o.batch_size > 0, "option batch_size: expected > 0, found ", o.batch_size);
  for (const auto& [name, value] : {std::pair<const char*, int64_t>{"epochs (--epochs)", o.epochs},
                                    {"max_steps (--max-steps)", o.max_steps},
                                    {"eval_every_steps (--eval-every)", o.eval_every_steps},
                                    {"warmup_steps", o.warmup_steps},
                                    {"early_stopping_patience (--patience)", o.early_stopping_patience},
                                    {"log_every", o.log_every},
                                    {"save_total_limit (--save-total-limit)", o.save_total_limit}}) {
    ADAPTERS_CHECK(value >= 0, "option ", name, ": expected >= 0, found ", value);
  }
  ADAPTERS_CHECK(o.epochs > 0 || o.max_steps > 0, "options epochs / max_steps: expected one > 0, found ", o.epochs,
                 " / ", o.max_steps);
  ADAPTERS_CHECK(o.grad_accumulation > 0, "option grad_accumulation: expected > 0, found ", o.grad_accumulation);
  // Not finite or out of range trains to NaN weights or does nothing: refused, never clamped.
  ADAPTERS_CHECK(std::isfinite(o.learning_rate) && o.learning_rate > 0 && o.learning_rate <= 10,
                 "option learning_rate (--lr): expected a finite value in (0, 10], found ", o.learning_rate);
  ADAPTERS_CHECK(std::isfinite(o.weight_decay) && o.weight_decay >= 0 && o.weight_decay <= 1,
                 "option weight_decay (--weight-decay): expected a finite value in [0, 1], found ", o.weight_decay);
  ADAPTERS_CHECK(std::isfinite(o.warmup_ratio) && o.warmup_ratio >= 0 && o.warmup_ratio <= 1,
                 "option warmup_ratio (--warmup-ratio): expected [0, 1], found ", o.warmup_ratio);
  ADAPTERS_CHECK(std::isfinite(o.min_lr_ratio) && o.min_lr_ratio >= 0 && o.min_lr_ratio <= 1,
                 "option min_lr_ratio: expected [0, 1], found ", o.min_lr_ratio);
  ADAPTERS_CHECK(std::isfinite(o.time_limit_minutes) && o.time_limit_minutes >= 0,
                 "option time_limit_minutes (--minutes): expected a finite value >= 0, found ", o.time_limit_minutes);
  ADAPTERS_CHECK(!(o.time_limit_minutes > 0 && o.max_steps == 0 && o.warmup_ratio > 0 && o.warmup_steps == 0),
                 "option warmup_ratio: a time limit gives no step count to take a share of; give warmup_steps");
  ADAPTERS_CHECK(std::isfinite(o.max_grad_norm), "option max_grad_norm (--max-grad-norm): expected a finite value ",
                 "(<= 0: no clipping), found ", o.max_grad_norm);
  ADAPTERS_CHECK(o.metric_for_best == "accuracy" || o.metric_for_best == "macro_f1" || o.metric_for_best == "loss",
                 "option metric_for_best: expected accuracy, macro_f1 or loss, found '", o.metric_for_best, "'");
  parse_schedule(o.schedule);
}

void check_output_dir(const TrainerOptions& o) {
  if (!holds_a_run(o.output_dir)) return;
  if (!o.resume_from.empty()) return;
  ADAPTERS_CHECK(o.overwrite, "output_dir '", o.output_dir.string(),
                 "' already holds a training run (trainer_state.json or checkpoint-*); set overwrite to replace it ",
                 "or resume_from to continue from one of its checkpoints");
  clear_run(o.output_dir);
}

std::vector<Series> chart_series(const TrainerState& state, const std::string& metric) {
  Series train_loss{"train loss", {}, Panel::Loss};
  for (const auto& [step, loss] : state.train_loss) train_loss.points.emplace_back(step, loss);
  Series eval_loss{"validation loss", {}, Panel::Loss};
  Series eval_metric{"validation " + (metric == "loss" ? std::string("accuracy") : metric), {}, Panel::Metric};
  const std::string shown = metric == "loss" ? "accuracy" : metric;
  for (const auto& r : state.evaluations) {
    if (r.metrics.count("loss")) eval_loss.points.emplace_back(r.step, r.metrics.at("loss"));
    if (r.metrics.count(shown)) eval_metric.points.emplace_back(r.step, r.metrics.at(shown));
  }
  std::vector<Series> series = {train_loss, eval_loss};
  if (!eval_metric.points.empty()) series.push_back(eval_metric);
  return series;
}

}  // namespace

// ---- the trainer --------------------------------------------------------------------------------

namespace {

// Rank `rank` of `world`'s share of a batch: a contiguous, balanced slice (empty when the batch
// has fewer rows than ranks).
std::vector<size_t> shard(const std::vector<size_t>& batch, int rank, int world) {
  const size_t n = batch.size();
  const size_t begin = n * static_cast<size_t>(rank) / static_cast<size_t>(world);
  const size_t end = n * static_cast<size_t>(rank + 1) / static_cast<size_t>(world);
  return std::vector<size_t>(batch.begin() + static_cast<std::ptrdiff_t>(begin), batch.begin() + static_cast<std::ptrdiff_t>(end));
}

// One training run: the trainer's loop cut into its pieces. micro_batch() runs forward and
// backward; reduce_gradients() is the one place after backward where gradients cross processes;
// optimizer_step() clips, schedules and steps; evaluate_and_checkpoint() and checkpoint() are
// where results are written, by the main process alone (writes()).
class TrainingRun {
 public:
  TrainingRun(const TrainerOptions& o, AdapterModel& model, const FeatureSet& train, const FeatureSet* validation)
      : o_(o), model_(model), train_(train), validation_(validation), parallel_(o.parallel.get()),
        groups_(trainable_parameter_groups(*model)), trainable_(tensors_of(all_named(groups_))),
        optimizer_(make_adamw(groups_, o.learning_rate, o.weight_decay)), schedule_(parse_schedule(o.schedule)) {
    if (parallel_ != nullptr) reducer_.emplace(*parallel_, trainable_);
  }

  bool writes() const { return parallel_ == nullptr || parallel_->is_main(); }

  // Where the run starts: fresh, or where a checkpoint left off; the step plan.
  void start() {
    state_.seed = o_.seed;
    if (!o_.resume_from.empty()) {
      state_ = read_trainer_state(o_.resume_from);
      load_trainable(groups_, io::read_checkpoint(o_.resume_from / kTrainableFile), (o_.resume_from / kTrainableFile).string());
      load_adamw_state(*optimizer_, groups_, io::read_checkpoint(o_.resume_from / kOptimizerFile),
                       (o_.resume_from / kOptimizerFile).string());
      if (state_.seed != o_.seed && writes()) {
        log::warn(str("resume: using the checkpoint's seed ", state_.seed, " (not ", o_.seed, ")"));
      }
    }
    torch::manual_seed(state_.seed);
    batches_per_epoch_ = static_cast<int64_t>(plan_batches(train_, {o_.batch_size, true, state_.seed, o_.bucket_by_length}).size());
    const int64_t steps_per_epoch = (batches_per_epoch_ + o_.grad_accumulation - 1) / o_.grad_accumulation;
    total_steps_ = o_.max_steps > 0 ? o_.max_steps : o_.epochs * steps_per_epoch;
    warmup_steps_ = o_.warmup_steps > 0 ? o_.warmup_steps : static_cast<int64_t>(std::ceil(o_.warmup_ratio * total_steps_));
    if (timed()) total_steps_ = std::max(total_steps_, state_.global_step + 1);  // re-estimated after each step
    result_.total_steps = total_steps_;
    steps_at_start_ = state_.global_step;
    started_ = std::chrono::steady_clock::now();
    if (!writes()) return;
    metrics_log_.emplace(o_.output_dir / "metrics.jsonl");
    if (o_.show_progress) {
      ProgressOptions p;
      p.total_steps = timed() ? 0 : static_cast<size_t>(total_steps_);  // a time limit: no step count to show
      p.initial_step = static_cast<size_t>(state_.global_step);
      p.examples_per_step = static_cast<double>(o_.batch_size * static_cast<size_t>(o_.grad_accumulation));
      if (parallel_ != nullptr) p.description = str("train (", parallel_->world_size(), " processes)");
      progress_.emplace(std::cerr, p);
    }
  }

  const TrainerState& state() const { return state_; }
  int64_t total_steps() const { return total_steps_; }
  // The planned end: the steps planned, or the time limit.
  bool done() const { return state_.global_step >= total_steps_; }

  // Forward and backward of this process's share of batch `b` of the epoch's plan, its loss scaled
  // by its share of the accumulation group (and, across ranks, of the batch).
  void micro_batch(const std::vector<size_t>& indices, int64_t epoch, int64_t b, int64_t group_size, bool last_of_step) {
    if (reducer_ && last_of_step) reducer_->arm();  // this backward's gradients are reduced as they come
    const uint64_t seed = micro_batch_seed(state_.seed, epoch, b);
    torch::manual_seed(seed);
    const std::vector<size_t> mine = parallel_ != nullptr ? shard(indices, parallel_->rank(), parallel_->world_size()) : indices;
    std::optional<Batch> batch;
    if (!mine.empty()) {
      batch = collate(train_, mine);
      if (train_.task == TaskKind::MaskedLM) mask_tokens(*batch, train_.masking, seed);
    }
    const double local = batch ? loss_weight(*batch, train_.task) : 0.0;
    double weight = local > 0 ? 1.0 : 0.0;
    if (parallel_ != nullptr) {
      const double total = parallel_->sum({local}).front();
      weight = total > 0 ? local * parallel_->world_size() / total : 0.0;
    }
    if (weight == 0.0) return;  // nothing of this batch here (or nothing to predict): zero gradients
    const ModelOutput out = forward_batch(*model_, *batch, train_.task, o_.device);
    ADAPTERS_CHECK(out.loss.defined(), "train: the model returned no loss (expected an active head for task ",
                   to_string(train_.task), ")");
    const Tensor loss = parallel_ != nullptr ? out.loss * weight : out.loss;
    const double value = loss.item<double>();
    ADAPTERS_CHECK(std::isfinite(value), "train: the loss is not finite (", value, ") at step ", state_.global_step + 1,
                   " (epoch ", epoch + 1, ", batch ", b + 1, "); nothing of this step is saved (lower --lr, or check the ",
                   "data and the model in float32)");
    (loss / static_cast<double>(group_size)).backward();
    step_loss_ += value / static_cast<double>(group_size);
  }

  // The one place after backward where gradients cross processes: averaged over the ranks (the
  // reducer started most of it during the last backward pass).
  void reduce_gradients() {
    if (!reducer_) return;
    result_.reduced_bytes_per_step = reducer_->finish();
    result_.gradient_buckets = static_cast<int64_t>(reducer_->buckets());
    result_.buckets_during_backward = static_cast<int64_t>(reducer_->buckets_started_during_backward());
  }

  // Clipping (on the global norm: every rank holds the averaged gradients), the learning rate of
  // this step, AdamW.
  void optimizer_step() {
    if (o_.max_grad_norm > 0) torch::nn::utils::clip_grad_norm_(trainable_, o_.max_grad_norm);
    set_learning_rate(*optimizer_, o_.learning_rate * lr_multiplier(schedule_, state_.global_step, warmup_steps_, total_steps_,
                                                                    o_.min_lr_ratio));
    optimizer_->step();
    optimizer_->zero_grad();
    ++state_.global_step;
    // A step that made a weight NaN or infinite (an overflow) stops the run before it is saved.
    for (const auto& p : trainable_) {
      ADAPTERS_CHECK(torch::isfinite(p).all().item<bool>(), "train: step ", state_.global_step,
                     " made a trainable weight not finite; nothing of this step is saved (lower --lr or --max-grad-norm)");
    }
  }

  // The step's loss, the stop requests (Ctrl-C on any rank) and the time taken agreed over the
  // ranks; returns whether to stop. A run with a time limit re-estimates its steps from the time.
  bool agree(bool stop_requested) {
    double loss = step_loss_;
    double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - started_).count();
    if (parallel_ != nullptr) {
      const std::vector<double> agreed = parallel_->sum({step_loss_, stop_requested ? 1.0 : 0.0, elapsed});
      loss = agreed[0] / parallel_->world_size();
      stop_requested = agreed[1] > 0;
      elapsed = agreed[2] / parallel_->world_size();
    }
    if (timed()) {
      const double limit = o_.time_limit_minutes * 60;
      const int64_t done = state_.global_step - steps_at_start_;
      if (done > 0 && elapsed > 0) {
        total_steps_ = std::max(state_.global_step + 1, state_.global_step + static_cast<int64_t>(std::llround(static_cast<double>(done) * (limit - elapsed) / elapsed)));
      }
      if (elapsed >= limit) total_steps_ = state_.global_step;  // time is up: this step was the last
      result_.total_steps = total_steps_;
    }
    step_loss_ = 0;
    loss_since_log_ += loss;
    ++steps_since_log_;
    return stop_requested;
  }

  // After the step: the position a resumed run continues from, the progress bar, the loss log.
  void record_step(int64_t epoch, int64_t b, int64_t n) {
    state_.epoch = b + 1 == n ? epoch + 1 : epoch;
    state_.batch_in_epoch = b + 1 == n ? 0 : b + 1;
    if (progress_) progress_->update(static_cast<size_t>(state_.global_step), loss_since_log_ / steps_since_log_);
    if (steps_since_log_ >= std::max<int64_t>(1, o_.log_every) || state_.global_step == total_steps_) {
      const double mean = loss_since_log_ / steps_since_log_;
      state_.train_loss.emplace_back(state_.global_step, mean);
      if (metrics_log_) {
        // Examples of every process per second since the last line.
        const auto now = std::chrono::steady_clock::now();
        const double seconds = std::chrono::duration<double>(now - last_log_time_).count();
        const double examples = static_cast<double>(steps_since_log_ * o_.grad_accumulation) * static_cast<double>(o_.batch_size);
        last_log_time_ = now;
        metrics_log_->write({state_.global_step, fractional_epoch(), "train",
                             {{"loss", mean},
                              {"learning_rate", optimizer_->param_groups()[0].options().get_lr()},
                              {"examples_per_second", seconds > 0 ? examples / seconds : 0.0}}});
      }
      loss_since_log_ = 0;
      steps_since_log_ = 0;
    }
  }

  // Evaluates (when there is validation data: each rank a share of it, all with the same metrics),
  // logs, checkpoints and tracks the best; returns whether early stopping says to stop.
  bool evaluate_and_checkpoint() {
    bool improved = false;
    if (validation_ != nullptr) {
      const EvalResult eval = evaluate(*model_, *validation_, o_.batch_size, o_.device, nullptr, parallel_);
      const EvalRecord record{state_.global_step, fractional_epoch(), eval.metrics};
      state_.evaluations.push_back(record);
      if (metrics_log_) metrics_log_->write({state_.global_step, record.epoch, "validation", eval.metrics});
      // Tasks without the metric (regression, ...) fall back to the loss.
      const std::string metric = eval.metrics.count(o_.metric_for_best) ? o_.metric_for_best : "loss";
      const double value = eval.metrics.at(metric);
      improved = !state_.best_metric || (lower_is_better(metric) ? value < *state_.best_metric : value > *state_.best_metric);
      if (improved) {
        state_.best_metric = value;
        state_.best_step = state_.global_step;
        state_.evaluations_without_improvement = 0;
      } else {
        ++state_.evaluations_without_improvement;
      }
      std::ostringstream line;
      line << "step " << state_.global_step << " validation";
      for (const auto& [name, v] : eval.metrics) line << " " << name << "=" << v;
      say(line.str());
    }
    const fs::path dir = checkpoint();
    if (improved && writes()) copy_checkpoint(dir, o_.output_dir / "best");
    return o_.early_stopping_patience > 0 && state_.evaluations_without_improvement >= o_.early_stopping_patience;
  }

  fs::path checkpoint() {
    const fs::path dir = o_.output_dir / ("checkpoint-" + std::to_string(state_.global_step));
    if (writes()) {
      write_checkpoint(dir, groups_, *optimizer_, state_);
      remove_old_checkpoints();
    }
    result_.last_checkpoint = dir;
    return dir;
  }

  // save_total_limit: only the newest checkpoints stay (best/ is a copy of its own).
  void remove_old_checkpoints() const {
    if (o_.save_total_limit <= 0) return;
    std::vector<std::pair<int64_t, fs::path>> checkpoints;
    for (const auto& entry : fs::directory_iterator(o_.output_dir)) {
      const std::string name = entry.path().filename().string();
      if (!entry.is_directory() || name.rfind("checkpoint-", 0) != 0) continue;
      const std::string digits = name.substr(11);
      if (digits.empty() || digits.size() > 18 || digits.find_first_not_of("0123456789") != std::string::npos) continue;
      checkpoints.emplace_back(std::stoll(digits), entry.path());
    }
    std::sort(checkpoints.begin(), checkpoints.end());
    for (size_t i = 0; i + static_cast<size_t>(o_.save_total_limit) < checkpoints.size(); ++i) io::remove_tree(checkpoints[i].second);
  }

  void say(const std::string& line) {
    if (progress_) progress_->message(line);
  }

  TrainResult finish(const std::string& status) {
    if (progress_) progress_->finish();
    if (parallel_ != nullptr) parallel_->barrier();  // every rank is done before any leaves
    if (writes()) {
      io::write_file_atomic(o_.output_dir / kTrainerStateFile, state_json(state_).dump(2) + "\n");
      ChartOptions chart;
      chart.title = "training curves";
      chart.metric_label = o_.metric_for_best == "loss" ? "accuracy" : o_.metric_for_best;
      write_svg(o_.output_dir / "curves.svg", chart_series(state_, o_.metric_for_best), chart);
    }
    result_.status = status;
    result_.global_step = state_.global_step;
    result_.epoch = fractional_epoch();
    result_.train_loss = state_.train_loss;
    result_.evaluations = state_.evaluations;
    result_.best_metric = state_.best_metric;
    if (fs::exists(o_.output_dir / "best")) result_.best_checkpoint = o_.output_dir / "best";
    return result_;
  }

 private:
  bool timed() const { return o_.time_limit_minutes > 0 && o_.max_steps == 0; }

  double fractional_epoch() const {
    return static_cast<double>(state_.epoch) + static_cast<double>(state_.batch_in_epoch) / batches_per_epoch_;
  }

  const TrainerOptions& o_;
  AdapterModel& model_;
  const FeatureSet& train_;
  const FeatureSet* validation_;
  DataParallel* parallel_;
  const ParameterGroups groups_;
  const std::vector<Tensor> trainable_;
  std::unique_ptr<torch::optim::AdamW> optimizer_;
  const Schedule schedule_;
  std::optional<GradientReducer> reducer_;
  TrainerState state_;
  TrainResult result_;
  int64_t batches_per_epoch_ = 0, total_steps_ = 0, warmup_steps_ = 0, steps_at_start_ = 0;
  std::chrono::steady_clock::time_point started_;
  std::optional<MetricsLog> metrics_log_;
  std::optional<ProgressBar> progress_;
  double step_loss_ = 0, loss_since_log_ = 0;
  int64_t steps_since_log_ = 0;
  std::chrono::steady_clock::time_point last_log_time_ = std::chrono::steady_clock::now();
};

}  // namespace

Trainer::Trainer(TrainerOptions options) : options_(std::move(options)) { check_options(options_); }

TrainResult Trainer::train(AdapterModel& model, const FeatureSet& train_set, const FeatureSet* validation) {
  const TrainerOptions& o = options_;
  ADAPTERS_CHECK(!train_set.features.empty(), "train: expected training features, found an empty set");
  const bool main = o.parallel == nullptr || o.parallel->is_main();
  if (o.parallel != nullptr) {
    const auto world = static_cast<size_t>(o.parallel->world_size());
    ADAPTERS_CHECK(o.batch_size % world == 0, "option batch_size (--batch-size) ", o.batch_size, " is not a multiple of the ",
                   world, " processes: each takes an equal share of every batch");
  }
  if (main) {
    check_output_dir(o);
    fs::create_directories(o.output_dir);
  }
  stop_requested_.store(false);
  SigintGuard sigint(o.handle_sigint);

  model->to(o.device);
  model->train(true);
  TrainingRun run(o, model, train_set, validation);
  run.start();

  Bf16Autocast autocast(o.bf16, o.device);
  std::string status = "completed";
  bool stop = run.done();
  const int64_t start_epoch = run.state().epoch, start_batch = run.state().batch_in_epoch;
  const uint64_t seed = run.state().seed;
  for (int64_t epoch = start_epoch; !stop; ++epoch) {
    const auto plan = plan_batches(train_set, {o.batch_size, true, seed + static_cast<uint64_t>(epoch), o.bucket_by_length});
    const int64_t n = static_cast<int64_t>(plan.size());
    for (int64_t b = epoch == start_epoch ? start_batch : 0; b < n && !stop; ++b) {
      const int64_t group_start = b - b % o.grad_accumulation;
      const int64_t group_size = std::min<int64_t>(o.grad_accumulation, n - group_start);
      const bool last_of_step = b + 1 == group_start + group_size;
      run.micro_batch(plan[static_cast<size_t>(b)], epoch, b, group_size, last_of_step);
      if (!last_of_step) continue;

      run.reduce_gradients();
      run.optimizer_step();
      if (o.on_step) o.on_step(run.state().global_step);
      const bool stop_requested = run.agree(g_sigint.load() || stop_requested_.load());
      run.record_step(epoch, b, n);

      const bool epoch_done = b + 1 == n;
      const bool last = run.done();
      const bool due = o.eval_every_steps > 0 ? run.state().global_step % o.eval_every_steps == 0 : epoch_done;
      if (due || last) {
        if (run.evaluate_and_checkpoint() && !last) {
          status = "early_stopped";
          stop = true;
        }
      }
      if (last) stop = true;
      if (!stop && stop_requested) {
        if (!(due || last)) run.checkpoint();
        run.say(str("stopped at step ", run.state().global_step, "; resume from ",
                    (o.output_dir / ("checkpoint-" + std::to_string(run.state().global_step))).string()));
        status = "interrupted";
        stop = true;
      }
    }
  }
  return run.finish(status);
}

}  // namespace adapters::train
