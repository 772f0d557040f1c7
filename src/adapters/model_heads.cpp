// AdapterModel's prediction heads and AdapterFusion layers: adding and removing them, choosing
// the active head(s), running them after the base model (one per branch under Parallel or
// BatchSplit), fusion training, and the static-head conversion of HF task checkpoints.
#include <torch/torch.h>

#include "adapters/core/log.h"
#include "adapters/formats/keys.h"
#include "adapters/model.h"

namespace adapters {

using composition::BlockType;
using nlohmann::json;
using torch::Tensor;

namespace {

std::string join_names(const std::vector<std::string>& names) {
  std::string out;
  for (const auto& n : names) out += (out.empty() ? "" : ", ") + n;
  return out.empty() ? "none" : out;
}

// Rows [begin, end) of every tensor of a head input set.
heads::HeadInputs slice_rows(const heads::HeadInputs& in, std::int64_t begin, std::int64_t end) {
  auto rows = [&](const Tensor& t) { return t.defined() ? t.slice(0, begin, end) : t; };
  heads::HeadInputs out{rows(in.hidden), rows(in.pooled), rows(in.summary), rows(in.attention_mask), {}, in.before_lm_head};
  for (const auto& [k, t] : in.extra) out.extra[k] = rows(t);
  return out;
}

}  // namespace

// ---- heads ----------------------------------------------------------------------------------

heads::HeadContext AdapterModelImpl::head_context() const {
  return {config(), base_->word_embeddings(), config().tie_word_embeddings};
}

void AdapterModelImpl::add_head(const std::string& name, const std::string& type, const json& options,
                                bool overwrite_ok, bool set_active) {
  ADAPTERS_CHECK(!name.empty() && name.find_first_of(".,() []=|") == std::string::npos, "head name '", name,
                 "' must be non-empty and free of . , ( ) [ ] = | and spaces");
  if (has_head(name)) {
    ADAPTERS_CHECK(overwrite_ok, "add_head: a head named '", name, "' already exists (delete it first or pass overwrite_ok)");
    delete_head(name);
  }
  const json config = heads::complete_config(type, options, this->config());
  std::shared_ptr<heads::PredictionHead> head = heads::make_head(config, head_context(), "head '" + name + "'");
  const Tensor reference = base_->parameters().front();
  head->to(reference.device(), reference.scalar_type());
  head->train(is_training());
  heads_->insert(name, std::move(head));
  if (set_active) active_head_ = Block::adapter(name);
}

void AdapterModelImpl::add_classification_head(const std::string& name, std::int64_t num_labels, bool multilabel,
                                               bool overwrite_ok) {
  add_head(name, multilabel ? "multilabel_classification" : "classification", {{"num_labels", num_labels}},
           overwrite_ok);
}

void AdapterModelImpl::delete_head(const std::string& name) {
  ADAPTERS_CHECK(has_head(name), "delete_head: no head named '", name, "' (known: ", join_names(head_names()), ")");
  heads_->erase(name);
  if (active_head_ && active_head_->contains(name)) active_head_.reset();
}

bool AdapterModelImpl::has_head(const std::string& name) const { return heads_->contains(name); }

std::vector<std::string> AdapterModelImpl::head_names() const {
  std::vector<std::string> names;
  for (const auto& [name, head] : heads_->items()) names.push_back(name);
  return names;
}

heads::PredictionHead& AdapterModelImpl::head(const std::string& name) const {
  heads::PredictionHead* h = heads_->find(name);
  ADAPTERS_CHECK(h != nullptr, "no head named '", name, "' (known: ", join_names(head_names()), ")");
  return *h;
}

void AdapterModelImpl::set_active_head(const Block& head_setup) {
  ADAPTERS_CHECK(head_setup.is_adapter() || head_setup.type == BlockType::Parallel ||
                     head_setup.type == BlockType::BatchSplit,
                 "head setup ", head_setup.to_string(), ": expected a head name, Parallel(...) or BatchSplit(...)");
  for (const auto& name : head_setup.flatten()) {
    ADAPTERS_CHECK(has_head(name), "head setup ", head_setup.to_string(), ": no head named '", name, "' (known: ",
                   join_names(head_names()), ")");
  }
  if (!head_setup.is_adapter()) composition::validate(head_setup);
  active_head_ = head_setup;
}

void AdapterModelImpl::set_active_head(const std::string& head_setup) { set_active_head(composition::parse(head_setup)); }

std::optional<Block> AdapterModelImpl::heads_from_setup(const Block& setup) const {
  const Block* last = &setup;
  if (last->type == BlockType::Stack) last = &last->children.back();
  if (last->is_adapter()) return has_head(last->name) ? std::optional<Block>(*last) : std::nullopt;
  if (last->type != BlockType::Parallel && last->type != BlockType::BatchSplit) return std::nullopt;
  Block heads = Block::of(last->type, {});
  heads.batch_sizes = last->batch_sizes;
  for (const Block& child : last->children) {
    const std::string name = child.last();
    if (!has_head(name)) return std::nullopt;
    heads.children.push_back(Block::adapter(name));
  }
  return heads;
}

io::TensorMap AdapterModelImpl::head_state_dict(const std::string& name) const {
  head(name);  // checks it exists
  return parameters_where([&](const std::string& key) { return formats::key_belongs_to_head(key, name); });
}

void AdapterModelImpl::run_heads(const models::BaseModelOutput& base, const ModelInputs& inputs,
                                 const ForwardOptions& options, nn::ForwardContext& ctx, ModelOutput& out) {
  std::optional<Block> setup;
  if (!options.head.empty()) {
    head(options.head);
    setup = Block::adapter(options.head);
  } else {
    setup = active_head_;
  }
  if (!setup) return;

  const Tensor& hidden = base.head_input.defined() ? base.head_input : base.last_hidden_state;
  heads::HeadInputs in{hidden, base.pooler_output, base.sequence_summary, inputs.attention_mask, {}, {}};
  for (const auto& [key, t] : options.head_inputs) {
    Tensor moved = t.to(base.last_hidden_state.device());
    // Multiple-choice style inputs (B,N,T) were flattened to (B*N,T): so are their extras.
    in.extra[key] = (key == "word_starts" && moved.dim() > 2) ? moved.reshape({-1, moved.size(-1)}) : moved;
  }
  in.before_lm_head = [this, &ctx](const Tensor& h) { return base_->hooks().before_lm_head(h, ctx); };

  if (setup->is_adapter()) {
    heads::HeadOutput o = head(setup->name).forward(in);
    out.head = std::move(o.tensors);
    out.loss = o.loss;
    return;
  }
  const auto n = static_cast<std::int64_t>(setup->children.size());
  const std::int64_t rows = in.hidden.size(0);
  std::vector<std::pair<std::int64_t, std::int64_t>> spans;
  if (setup->type == BlockType::BatchSplit) {
    std::int64_t total = 0;
    for (auto b : setup->batch_sizes) total += b;
    ADAPTERS_CHECK(total == rows, "head setup ", setup->to_string(), ": batch sizes sum to ", total,
                   ", the batch has ", rows, " rows");
    std::int64_t begin = 0;
    for (auto b : setup->batch_sizes) {
      spans.emplace_back(begin, begin + b);
      begin += b;
    }
  } else {
    ADAPTERS_CHECK(rows % n == 0 && (ctx.adapters_parallelized || n == 1), "head setup ", setup->to_string(), ": ", n,
                   " heads need an adapter setup with a Parallel block of ", n,
                   " members (the batch was not replicated)");
    const std::int64_t b = rows / n;
    for (std::int64_t i = 0; i < n; ++i) spans.emplace_back(i * b, (i + 1) * b);
  }
  Tensor loss;
  bool all_losses = true;
  for (std::int64_t i = 0; i < n; ++i) {
    heads::HeadInputs part = slice_rows(in, spans[i].first, spans[i].second);
    if (setup->type == BlockType::Parallel) part.extra = in.extra;  // each branch sees the whole batch's targets
    heads::HeadOutput o = head(setup->children[static_cast<std::size_t>(i)].name).forward(part);
    if (o.loss.defined()) {
      loss = loss.defined() ? loss + o.loss : o.loss;
    } else {
      all_losses = false;
    }
    out.head_outputs.push_back(std::move(o.tensors));
  }
  if (all_losses) out.loss = loss;
}

// ---- fusion ---------------------------------------------------------------------------------

void AdapterModelImpl::add_adapter_fusion(const Block& fuse_in, const json& config_spec, bool overwrite_ok,
                                          bool set_active) {
  // A fusion layer fuses one adapter per child: a nested Stack contributes its last adapter (the
  // reference names Fuse(Stack(p, q), r) "q,r").
  std::vector<Block> fused;
  for (const Block& c : fuse_in.children) {
    ADAPTERS_CHECK(c.is_adapter() || c.type == BlockType::Stack, "add_adapter_fusion: ", fuse_in.to_string(),
                   ": fusion layers fuse adapters and Stacks, found ", c.to_string());
    fused.push_back(Block::adapter(c.last()));
  }
  const Block fuse = Block::of(BlockType::Fuse, fused);
  ADAPTERS_CHECK(fuse.children.size() >= 1, "add_adapter_fusion: a Fuse block needs adapters");
  for (const Block& c : fuse.children) {
    ADAPTERS_CHECK(has_adapter(c.name), "add_adapter_fusion: ", fuse.to_string(), ": unknown adapter '", c.name,
                   "' (known: ", join_names(adapter_names()), ")");
  }
  const std::string name = fuse.fusion_name();
  if (has_adapter_fusion(name)) {
    ADAPTERS_CHECK(overwrite_ok, "add_adapter_fusion: fusion '", name, "' already exists (pass overwrite_ok)");
    delete_adapter_fusion(name);
  }
  const nn::FusionConfig config = nn::FusionConfig::from_json(config_spec, "fusion '" + name + "'");
  const Tensor reference = base_->parameters().front();
  std::size_t placed = 0;
  for (nn::ResidualSite* site : base_->sites().residual) {
    // A fusion layer sits where every fused adapter has a module (the reference's common_config_value).
    bool all_here = true;
    for (const Block& c : fuse.children) all_here = all_here && site->holds(c.name);
    if (!all_here) continue;
    auto layer = std::make_shared<nn::BertFusionImpl>(config, this->config().hidden_size,
                                                      this->config().attention_probs_dropout_prob);
    layer->to(reference.device(), reference.scalar_type());
    layer->train(is_training());
    site->add_fusion(name, layer);
    ++placed;
  }
  ADAPTERS_CHECK(placed > 0, "add_adapter_fusion: ", fuse.to_string(), ": the adapters share no residual site, so there "
                 "is nowhere to fuse them (fusion works with bottleneck adapters)");
  fusions_.emplace_back(name, config);
  if (set_active) set_active_adapters(fuse_in.type == BlockType::Fuse ? fuse_in : fuse);
}

void AdapterModelImpl::delete_adapter_fusion(const std::string& name) {
  ADAPTERS_CHECK(has_adapter_fusion(name), "delete_adapter_fusion: no fusion '", name, "' (known: ",
                 join_names(adapter_fusion_names()), ")");
  for (nn::ResidualSite* site : base_->sites().residual) site->delete_fusion(name);
  fusions_.erase(std::find_if(fusions_.begin(), fusions_.end(), [&](const auto& f) { return f.first == name; }));
  if (active_) {
    std::function<bool(const Block&)> uses = [&](const Block& b) {
      if (b.type == BlockType::Fuse && b.fusion_name() == name) return true;
      return std::any_of(b.children.begin(), b.children.end(), uses);
    };
    if (uses(*active_)) active_.reset();
  }
}

bool AdapterModelImpl::has_adapter_fusion(const std::string& name) const {
  return std::any_of(fusions_.begin(), fusions_.end(), [&](const auto& f) { return f.first == name; });
}

std::vector<std::string> AdapterModelImpl::adapter_fusion_names() const {
  std::vector<std::string> names;
  for (const auto& f : fusions_) names.push_back(f.first);
  return names;
}

const nn::FusionConfig& AdapterModelImpl::adapter_fusion_config(const std::string& name) const {
  for (const auto& f : fusions_) {
    if (f.first == name) return f.second;
  }
  throw Error(str("no fusion '", name, "' (known: ", join_names(adapter_fusion_names()), ")"));
}

io::TensorMap AdapterModelImpl::adapter_fusion_state_dict(const std::string& name) const {
  adapter_fusion_config(name);  // checks it exists
  return parameters_where([&](const std::string& key) { return formats::key_belongs_to_fusion(key, name); });
}

void AdapterModelImpl::train_adapter_fusion(const Block& setup, bool unfreeze_adapters) {
  check_setup(setup);
  train(true);
  freeze_model(true);
  for (const auto& name : adapter_names()) {
    for (const auto& key : adapter_parameter_names(name)) named_parameters()[key].set_requires_grad(false);
  }
  for (const auto& f : fusions_) {
    for (auto& [key, t] : adapter_fusion_state_dict(f.first)) t.set_requires_grad(false);
  }
  std::function<void(const Block&)> enable = [&](const Block& b) {
    if (b.type == BlockType::Fuse) {
      for (auto& [key, t] : adapter_fusion_state_dict(b.fusion_name())) t.set_requires_grad(true);
    }
    for (const auto& c : b.children) enable(c);
  };
  enable(setup);
  if (unfreeze_adapters) {
    for (const auto& name : setup.flatten()) {
      for (const auto& key : adapter_parameter_names(name)) named_parameters()[key].set_requires_grad(true);
    }
  }
  set_active_adapters(setup);
}

Tensor AdapterModelImpl::fusion_regularization_loss() const {
  Tensor loss = torch::zeros({}, base_->parameters().front().options());
  for (nn::ResidualSite* site : base_->sites().residual) {
    for (const auto& [name, fusion] : site->fusions()->items()) {
      if (fusion->config().regularization) loss = loss + fusion->regularization_loss();
    }
  }
  return loss;
}

}  // namespace adapters

// ---- static heads -------------------------------------------------------------------------

namespace adapters::detail {

namespace {

// A checkpoint's LM decoder bias may be stored beside the decoder (cls.predictions.bias, lm_head.bias).
std::string bias_fallback(const std::string& prefix) {
  const auto dot = prefix.rfind('.');
  return dot == std::string::npos ? prefix + ".bias" : prefix.substr(0, dot) + ".bias";
}

}  // namespace

std::set<std::string> convert_static_head(AdapterModelImpl& model, const io::TensorMap& checkpoint,
                                          const std::string& head_name, const std::string& source) {
  const json& raw = model.config().raw;
  if (!raw.contains("architectures") || !raw["architectures"].is_array() || raw["architectures"].empty()) return {};
  const std::string architecture = raw["architectures"][0].get<std::string>();
  const models::StaticHeadSpec* spec = models::find_static_head(model.arch(), architecture);
  if (spec == nullptr) return {};

  json options = spec->config;
  if (options.value("activation_function", json()) == "hidden_act") options["activation_function"] = model.config().hidden_act;
  if (raw.contains("id2label") && raw["id2label"].is_object()) options["id2label"] = raw["id2label"];
  if (raw.contains("label2id") && raw["label2id"].is_object()) options["label2id"] = raw["label2id"];
  if (!options.contains("num_labels")) {
    if (raw.contains("num_labels")) options["num_labels"] = raw["num_labels"];
    else if (raw.contains("id2label") && raw["id2label"].is_object()) options["num_labels"] = raw["id2label"].size();
  }
  std::set<std::string> used;
  io::TensorMap weights;
  for (std::size_t i = 0; i < spec->layers.size(); ++i) {
    const std::string& prefix = spec->layers[i];
    if (prefix.empty()) continue;
    for (const char* param : {"weight", "bias"}) {
      std::string key = prefix + "." + param;
      if (!checkpoint.count(key) && std::string(param) == "bias") key = bias_fallback(prefix);
      if (!checkpoint.count(key)) continue;
      weights[str(formats::kHeadsPrefix, head_name, ".", i, ".", param)] = checkpoint.at(key);
      used.insert(key);
    }
  }
  // An LM head whose decoder is the input embeddings may have no tensor of its own in the checkpoint.
  const bool lm = spec->head_type == "masked_lm" || spec->head_type == "causal_lm" || spec->head_type == "seq2seq_lm";
  if (used.empty() && !(lm && model.config().tie_word_embeddings)) return {};
  model.add_head(head_name, spec->head_type, options, /*overwrite_ok=*/true);
  torch::NoGradGuard no_grad;
  for (auto& [key, param] : model.head_state_dict(head_name)) {
    auto it = weights.find(key);
    if (it == weights.end()) {
      // A tied LM decoder may be absent from the checkpoint: it is the input embeddings already.
      ADAPTERS_CHECK(key.find(".weight") != std::string::npos && lm, source,
                     ": the ", architecture, " head lacks the weight for '", key, "'");
      continue;
    }
    ADAPTERS_CHECK(it->second.sizes() == param.sizes(), source, ": static head weight for '", key, "' has shape ",
                   it->second.sizes(), ", the flexible head expects ", param.sizes());
    param.copy_(it->second);
  }
  log::info(str(source, ": converted the static ", architecture, " head into the flexible head '", head_name, "'"));
  return used;
}

}  // namespace adapters::detail
