// The built-in prediction heads (the reference's heads/base.py, language_modeling.py and
// dependency_parsing.py) and the registry of head types.
#include "adapters/heads/heads.h"

#include <torch/torch.h>

#include <mutex>

#include "adapters/core/error.h"
#include "adapters/nn/activation.h"
#include "adapters/nn/linear.h"
#include "adapters/core/limits.h"

namespace adapters::heads {

using nlohmann::json;
using torch::Tensor;

std::int64_t PredictionHead::num_outputs() const {
  for (const char* key : {"num_labels", "num_choices", "vocab_size"}) {
    if (config_.contains(key) && config_[key].is_number_integer()) return config_[key].get<std::int64_t>();
  }
  return 0;
}

namespace {

std::string opt_string(const json& c, const char* key, const std::string& fallback = "") {
  return c.contains(key) && c[key].is_string() ? c[key].get<std::string>() : fallback;
}
std::int64_t opt_int(const json& c, const char* key, std::int64_t fallback) {
  return c.contains(key) && c[key].is_number_integer() ? c[key].get<std::int64_t>() : fallback;
}
bool opt_bool(const json& c, const char* key, bool fallback) {
  return c.contains(key) && c[key].is_boolean() ? c[key].get<bool>() : fallback;
}

Tensor require(const HeadInputs& in, const char* key) {
  auto it = in.extra.find(key);
  return it == in.extra.end() ? Tensor() : it->second;
}

// Cross-entropy over (N,K) logits and (N) targets, targets equal to -100 ignored (torch's default).
Tensor cross_entropy(const Tensor& logits, const Tensor& targets, std::int64_t ignore_index = -100) {
  return torch::nn::functional::cross_entropy(
      logits, targets.to(torch::kLong), torch::nn::functional::CrossEntropyFuncOptions().ignore_index(ignore_index));
}

// The reference's nn.Sequential of a prediction head: per layer a dropout, then a Linear (+ the
// activation) for hidden layers and the output Linear for the last. Modules are registered
// under their positions ("0", "1", ...) so keys read "heads.<name>.<i>.weight".
class MlpHead : public PredictionHead {
 public:
  MlpHead(json config, const HeadContext& ctx, std::int64_t outputs) : PredictionHead(std::move(config)) {
    const std::int64_t C = ctx.model.hidden_size;
    const std::int64_t layers = opt_int(config_, "layers", 1);
    ADAPTERS_CHECK(layers >= 1, "head config: 'layers' must be at least 1, found ", layers);
    const double p = config_.contains("dropout_prob") && config_["dropout_prob"].is_number()
                         ? config_["dropout_prob"].get<double>()
                         : ctx.model.hidden_dropout_prob;
    const std::string act = opt_string(config_, "activation_function");
    std::int64_t index = 0;
    for (std::int64_t l = 0; l < layers; ++l) {
      auto dropout = register_module(std::to_string(index++), torch::nn::Dropout(p));
      steps_.push_back([dropout](const Tensor& x) { return dropout->forward(x); });
      const bool last = l + 1 == layers;
      auto options = torch::nn::LinearOptions(C, last ? outputs : C).bias(last ? opt_bool(config_, "bias", true) : true);
      auto linear = register_module(std::to_string(index++), torch::nn::Linear(options));
      init_linear(*linear, ctx.model);
      steps_.push_back([linear](const Tensor& x) { return linear->forward(x); });
      if (!last && !act.empty()) {
        steps_.push_back(nn::resolve_activation(act, "head config: activation_function"));
        ++index;
      }
    }
  }

 protected:
  Tensor run(Tensor x) const {
    for (const auto& step : steps_) x = step(x);
    return x;
  }
  Tensor cls(const HeadInputs& in) const {
    if (in.summary.defined()) return in.summary;
    if (opt_bool(config_, "use_pooler", false)) {
      ADAPTERS_CHECK(in.pooled.defined(), "head '", type(), "': use_pooler is set but the model has no pooler");
      return in.pooled;
    }
    return in.hidden.select(1, 0);
  }
  static void init_linear(torch::nn::LinearImpl& l, const models::ModelConfig& model) {
    torch::NoGradGuard no_grad;
    l.weight.normal_(0.0, model.initializer_range);
    if (l.bias.defined()) l.bias.zero_();
  }

 private:
  std::vector<std::function<Tensor(const Tensor&)>> steps_;
};

class ClassificationHead : public MlpHead {
 public:
  ClassificationHead(json c, const HeadContext& ctx) : MlpHead(c, ctx, c.at("num_labels").get<std::int64_t>()) {}
  HeadOutput forward(const HeadInputs& in) override {
    Tensor logits = run(cls(in));  // (B,K)
    HeadOutput out{{{"logits", logits}}, Tensor()};
    Tensor labels = require(in, "labels");
    if (!labels.defined()) return out;
    const std::int64_t K = logits.size(-1);
    if (type() == "multilabel_classification") {
      ADAPTERS_CHECK(labels.sizes() == logits.sizes(), "head '", type(), "': labels of shape ", labels.sizes(),
                     " do not match ", K, " labels per row (expected ", logits.sizes(), ")");
      out.loss = torch::binary_cross_entropy_with_logits(logits, labels.to(logits.scalar_type()));
    } else if (K == 1) {
      out.loss = torch::mse_loss(logits.view(-1), labels.view(-1).to(logits.scalar_type()));
    } else {
      check_class_labels(labels, K);
      out.loss = cross_entropy(logits.view({-1, K}), labels.view(-1));
    }
    return out;
  }

 protected:
  void check_class_labels(const Tensor& labels, std::int64_t K) const {
    if (labels.numel() == 0) return;
    const Tensor valid = labels.ne(-100);
    if (!valid.any().item<bool>()) return;
    const auto lo = labels.masked_select(valid).min().item<std::int64_t>();
    const auto hi = labels.masked_select(valid).max().item<std::int64_t>();
    ADAPTERS_CHECK(lo >= 0 && hi < K, "head '", type(), "': labels must lie in [0, ", K, ") for ", K,
                   " labels, found [", lo, ", ", hi, "]");
  }
};

class TaggingHead : public ClassificationHead {
 public:
  using ClassificationHead::ClassificationHead;
  HeadOutput forward(const HeadInputs& in) override {
    Tensor logits = run(in.hidden);  // (B,T,K)
    HeadOutput out{{{"logits", logits}}, Tensor()};
    Tensor labels = require(in, "labels");
    if (!labels.defined()) return out;
    const std::int64_t K = logits.size(-1);
    check_class_labels(labels, K);
    Tensor targets = labels.view(-1).to(torch::kLong);
    if (in.attention_mask.defined()) {
      targets = torch::where(in.attention_mask.reshape(-1).eq(1), targets, torch::full_like(targets, -100));
    }
    out.loss = cross_entropy(logits.view({-1, K}), targets);
    return out;
  }
};

class MultipleChoiceHead : public ClassificationHead {
 public:
  MultipleChoiceHead(json c, const HeadContext& ctx) : ClassificationHead(with_one_label(c), ctx) {}
  HeadOutput forward(const HeadInputs& in) override {
    const std::int64_t choices = config_.at("num_choices").get<std::int64_t>();
    Tensor logits = run(cls(in)).view({-1, choices});  // (B*N,1) -> (B,N)
    HeadOutput out{{{"logits", logits}}, Tensor()};
    Tensor labels = require(in, "labels");
    if (!labels.defined()) return out;
    check_class_labels(labels, choices);
    out.loss = cross_entropy(logits, labels.view(-1));
    return out;
  }

 private:
  static json with_one_label(json c) {
    c["num_labels"] = 1;  // the output layer scores one choice
    return c;
  }
};

class QuestionAnsweringHead : public ClassificationHead {
 public:
  using ClassificationHead::ClassificationHead;
  HeadOutput forward(const HeadInputs& in) override {
    Tensor logits = run(in.hidden);  // (B,T,2)
    auto parts = logits.split(1, -1);
    Tensor start = parts[0].squeeze(-1), end = parts[1].squeeze(-1);
    HeadOutput out{{{"start_logits", start}, {"end_logits", end}}, Tensor()};
    Tensor sp = require(in, "start_positions"), ep = require(in, "end_positions");
    if (!sp.defined() || !ep.defined()) return out;
    const std::int64_t ignored = start.size(1);
    sp = sp.view(-1).to(torch::kLong).clamp(0, ignored);
    ep = ep.view(-1).to(torch::kLong).clamp(0, ignored);
    out.loss = (cross_entropy(start, sp, ignored) + cross_entropy(end, ep, ignored)) / 2;
    return out;
  }
};

// The output Linear of an LM head, its weight optionally shared with the input embeddings.
struct DecoderImpl : torch::nn::Module {
  DecoderImpl(std::int64_t in, std::int64_t vocab, bool with_bias, const Tensor& tied) {
    weight = register_parameter("weight", tied.defined() ? tied : torch::empty({vocab, in}).normal_(0.0, 0.02));
    if (with_bias) bias = register_parameter("bias", torch::zeros({vocab}));
  }
  Tensor forward(const Tensor& x) { return nn::linear(x, weight, bias); }
  Tensor weight, bias;
};
TORCH_MODULE(Decoder);

// Masked, causal and seq2seq LM heads: hidden layers of Linear + activation (+ LayerNorm), then
// the decoder over the vocabulary.
class LmHead : public PredictionHead {
 public:
  LmHead(json c, const HeadContext& ctx) : PredictionHead(std::move(c)) {
    const std::int64_t C = ctx.model.hidden_size;
    const std::int64_t E = opt_int(config_, "embedding_size", C);
    const std::int64_t V = config_.at("vocab_size").get<std::int64_t>();
    const std::int64_t layers = opt_int(config_, "layers", 1);
    ADAPTERS_CHECK(layers >= 1, "head config: 'layers' must be at least 1, found ", layers);
    const std::string act = opt_string(config_, "activation_function");
    std::int64_t index = 0;
    for (std::int64_t l = 0; l + 1 < layers; ++l) {
      auto linear = register_module(std::to_string(index++), torch::nn::Linear(l == 0 ? C : E, E));
      steps_.push_back([linear](const Tensor& x) { return linear->forward(x); });
      if (!act.empty()) {
        steps_.push_back(nn::resolve_activation(act, "head config: activation_function"));
        ++index;
      }
      if (opt_bool(config_, "layer_norm", false)) {
        auto norm = register_module(std::to_string(index++),
                                    torch::nn::LayerNorm(torch::nn::LayerNormOptions({E}).eps(ctx.model.layer_norm_eps)));
        steps_.push_back([norm](const Tensor& x) { return norm->forward(x); });
      }
    }
    const bool tie = ctx.tie_word_embeddings && ctx.input_embeddings.defined() &&
                     ctx.input_embeddings.sizes() == torch::IntArrayRef({V, layers > 1 ? E : C});
    decoder_ = register_module(std::to_string(index), Decoder(layers > 1 ? E : C, V, opt_bool(config_, "bias", true),
                                                              tie ? ctx.input_embeddings : Tensor()));
  }

  // The transform layers, then invertible adapters' inverse, then the decoder (as the reference).
  HeadOutput forward(const HeadInputs& in) override {
    Tensor x = in.hidden;
    for (const auto& step : steps_) x = step(x);
    if (in.before_lm_head) x = in.before_lm_head(x);
    x = decoder_->forward(x);
    HeadOutput out{{{"logits", x}}, Tensor()};
    Tensor labels = require(in, "labels");
    if (!labels.defined()) return out;
    Tensor logits = x;
    if (opt_bool(config_, "shift_labels", false)) {
      logits = logits.slice(1, 0, -1);
      labels = labels.slice(1, 1);
    }
    out.loss = cross_entropy(logits.reshape({-1, logits.size(-1)}), labels.reshape(-1));
    return out;
  }

 private:
  std::vector<std::function<Tensor(const Tensor&)>> steps_;
  Decoder decoder_{nullptr};
};

// Biaffine scorer: s[b,o,x,y] = [x;1]^T W_o [y;1] (bias terms as configured).
struct BiaffineImpl : torch::nn::Module {
  BiaffineImpl(std::int64_t n_in, std::int64_t n_out, bool bias_x, bool bias_y) : bias_x(bias_x), bias_y(bias_y) {
    weight = register_parameter("weight", torch::zeros({n_out, n_in + bias_x, n_in + bias_y}));
  }
  Tensor forward(Tensor x, Tensor y) {
    if (bias_x) x = torch::cat({x, torch::ones_like(x.narrow(-1, 0, 1))}, -1);
    if (bias_y) y = torch::cat({y, torch::ones_like(y.narrow(-1, 0, 1))}, -1);
    return torch::einsum("bxi,oij,byj->boxy", {x, weight, y});  // (B,O,X,Y)
  }
  bool bias_x, bias_y;
  Tensor weight;
};
TORCH_MODULE(Biaffine);

class DependencyParsingHead : public PredictionHead {
 public:
  DependencyParsingHead(json c, const HeadContext& ctx) : PredictionHead(std::move(c)), pad_(ctx.model.pad_token_id) {
    const std::int64_t C = ctx.model.hidden_size;
    biaffine_arcs = register_module("biaffine_arcs", Biaffine(C, 1, true, false));
    biaffine_rels = register_module("biaffine_rels", Biaffine(C, config_.at("num_labels").get<std::int64_t>(), true, true));
    dropout = register_module("dropout", torch::nn::Dropout(ctx.model.hidden_dropout_prob));
  }

  HeadOutput forward(const HeadInputs& in) override {
    Tensor word_starts = require(in, "word_starts");
    ADAPTERS_CHECK(word_starts.defined(), "dependency_parsing head: the input 'word_starts' (B,T) is required");
    Tensor outs = dropout(in.hidden);
    Tensor deps = merge_subwords(outs, word_starts);                     // (B,T,C)
    Tensor heads = torch::cat({outs.select(1, 0).unsqueeze(1), deps}, 1);  // (B,T+1,C): the root is CLS
    Tensor arcs = biaffine_arcs(deps, heads).squeeze(1);                   // (B,T,T+1)
    Tensor rels = biaffine_rels(deps, heads).permute({0, 2, 3, 1});        // (B,T,T+1,L)
    HeadOutput out{{{"arc_preds", arcs}, {"rel_preds", rels}}, Tensor()};
    Tensor labels_arcs = require(in, "labels_arcs"), labels_rels = require(in, "labels_rels");
    if (!labels_arcs.defined() || !labels_rels.defined()) return out;
    const Tensor mask = labels_arcs.ne(pad_);
    Tensor arc_scores = arcs.index({mask}), gold_arcs = labels_arcs.index({mask}).to(torch::kLong);
    Tensor loss = cross_entropy(arc_scores, gold_arcs);
    Tensor rel_scores = rels.index({mask});
    rel_scores = rel_scores.index({torch::arange(gold_arcs.size(0), gold_arcs.options()), gold_arcs});
    out.loss = loss + cross_entropy(rel_scores, labels_rels.index({mask}));
    return out;
  }

  Biaffine biaffine_arcs{nullptr}, biaffine_rels{nullptr};
  torch::nn::Dropout dropout{nullptr};

 private:
  // The mean of each word's sub-token vectors, words at the front, zeros after: the reference's
  // _merge_subword_tokens (word_starts lists each word's first token, pad_token_id = unused).
  Tensor merge_subwords(const Tensor& outs, const Tensor& word_starts) const {
    const std::int64_t B = outs.size(0), T = outs.size(1), C = outs.size(2);
    std::vector<Tensor> rows;
    for (std::int64_t i = 0; i < B; ++i) {
      Tensor starts = word_starts[i].masked_select(word_starts[i].ne(pad_)).to(torch::kCPU);
      auto s = starts.accessor<std::int64_t, 1>();
      std::vector<Tensor> words;
      for (std::int64_t j = 0; j + 1 < starts.size(0); ++j) {
        if (s[j + 1] <= 0) break;
        words.push_back(outs[i].slice(0, s[j], s[j + 1]).mean(0));
      }
      while (static_cast<std::int64_t>(words.size()) < T) words.push_back(torch::zeros({C}, outs.options()));
      rows.push_back(torch::stack(words));
    }
    return torch::stack(rows);
  }
  std::int64_t pad_;
};

std::shared_ptr<PredictionHead> make_classification(const json& c, const HeadContext& ctx) {
  return std::make_shared<ClassificationHead>(c, ctx);
}

std::map<std::string, HeadFactory>& registry() {
  static std::map<std::string, HeadFactory> types = {
      {"classification", make_classification},
      {"multilabel_classification", make_classification},
      {"image_classification", make_classification},
      {"tagging", [](const json& c, const HeadContext& x) { return std::make_shared<TaggingHead>(c, x); }},
      {"multiple_choice", [](const json& c, const HeadContext& x) { return std::make_shared<MultipleChoiceHead>(c, x); }},
      {"question_answering",
       [](const json& c, const HeadContext& x) { return std::make_shared<QuestionAnsweringHead>(c, x); }},
      {"dependency_parsing",
       [](const json& c, const HeadContext& x) { return std::make_shared<DependencyParsingHead>(c, x); }},
      {"masked_lm", [](const json& c, const HeadContext& x) { return std::make_shared<LmHead>(c, x); }},
      {"causal_lm", [](const json& c, const HeadContext& x) { return std::make_shared<LmHead>(c, x); }},
      {"seq2seq_lm", [](const json& c, const HeadContext& x) { return std::make_shared<LmHead>(c, x); }},
  };
  return types;
}

std::mutex& registry_mutex() {
  static std::mutex m;
  return m;
}

json label_map(const json& options, std::int64_t n) {
  if (options.contains("label2id") && options["label2id"].is_object()) return options["label2id"];
  json map = json::object();
  if (options.contains("id2label") && options["id2label"].is_object()) {
    for (const auto& [id, label] : options["id2label"].items()) map[label.get<std::string>()] = std::stoll(id);
    return map;
  }
  for (std::int64_t i = 0; i < n; ++i) map["LABEL_" + std::to_string(i)] = i;
  return map;
}

}  // namespace

void register_head_type(const std::string& type, HeadFactory make) {
  ADAPTERS_CHECK(!type.empty() && make, "register_head_type: a head type needs a name and a factory");
  std::lock_guard<std::mutex> lock(registry_mutex());
  registry()[type] = std::move(make);
}

std::vector<std::string> head_types() {
  std::lock_guard<std::mutex> lock(registry_mutex());
  std::vector<std::string> names;
  for (const auto& [name, make] : registry()) names.push_back(name);
  return names;
}

json complete_config(const std::string& type, const json& options, const models::ModelConfig& model) {
  ADAPTERS_CHECK(options.is_object(), "head options for '", type, "' must be an object, found ", describe(options));
  json c = options;
  c["head_type"] = type;
  auto set_default = [&](const char* key, json value) {
    if (!c.contains(key)) c[key] = std::move(value);
  };
  const bool mlp = type == "classification" || type == "multilabel_classification" || type == "image_classification";
  if (mlp || type == "tagging" || type == "question_answering" || type == "dependency_parsing") {
    set_default("num_labels", 2);
  }
  if (mlp) {
    set_default("layers", 2);
    set_default("activation_function", "tanh");
    set_default("use_pooler", false);
    set_default("bias", true);
    if (c.value("multilabel", false)) c["head_type"] = "multilabel_classification";
    c.erase("multilabel");
  } else if (type == "tagging" || type == "question_answering") {
    set_default("layers", 1);
    set_default("activation_function", "tanh");
  } else if (type == "multiple_choice") {
    set_default("num_choices", 2);
    set_default("layers", 2);
    set_default("activation_function", "tanh");
    set_default("use_pooler", false);
  } else if (type == "masked_lm" || type == "causal_lm" || type == "seq2seq_lm") {
    set_default("vocab_size", model.vocab_size);
    set_default("embedding_size", model.embedding_size);
    const bool mlm = type == "masked_lm";
    set_default("layers", mlm ? 2 : 1);
    set_default("activation_function", mlm ? json("gelu") : json(nullptr));
    set_default("layer_norm", mlm);
    set_default("bias", mlm);
    set_default("shift_labels", type == "causal_lm");
    set_default("label2id", nullptr);
  }
  const std::int64_t n = c.contains("num_labels") && c["num_labels"].is_number_integer() ? c["num_labels"].get<std::int64_t>()
                         : c.contains("num_choices") && c["num_choices"].is_number_integer() ? c["num_choices"].get<std::int64_t>()
                                                                                            : 0;
  // A label map of n entries is built here: n is bounded before (make_head checks the rest).
  ADAPTERS_CHECK(n <= kMaxHeadLabels, "head options for '", type, "': num_labels / num_choices must be at most ", kMaxHeadLabels,
                 ", found ", n);
  if (n > 0 && !c.contains("label2id")) c["label2id"] = label_map(options, n);
  c.erase("id2label");
  return c;
}

std::shared_ptr<PredictionHead> make_head(const json& config, const HeadContext& ctx, const std::string& source) {
  ADAPTERS_CHECK(config.is_object() && config.contains("head_type") && config["head_type"].is_string(), source,
                 ": a head config needs a string 'head_type', found ", describe(config));
  const std::string type = config["head_type"].get<std::string>();
  HeadFactory make;
  {
    std::lock_guard<std::mutex> lock(registry_mutex());
    auto it = registry().find(type);
    if (it == registry().end()) {
      std::string known;
      for (const auto& [name, f] : registry()) known += (known.empty() ? "" : ", ") + name;
      throw Error(str(source, ": unknown head type '", type, "' (known: ", known, ")"),
                  "register custom heads with adapters::heads::register_head_type");
    }
    make = it->second;
  }
  for (const char* key : {"num_labels", "num_choices", "vocab_size", "layers"}) {
    if (!config.contains(key)) continue;
    const std::int64_t most = std::string(key) == "layers" ? kMaxHeadLayers : kMaxHeadLabels;
    ADAPTERS_CHECK(config[key].is_number_integer() && config[key].get<std::int64_t>() >= 1 && config[key].get<std::int64_t>() <= most,
                   source, ": head option '", key, "' must be an integer in [1, ", most, "], found ", describe(config[key]));
  }
  try {
    return make(config, ctx);
  } catch (const json::exception& e) {
    throw Error(str(source, ": bad head config ", describe(config), ": ", e.what()));
  }
}

}  // namespace adapters::heads
