// AdapterModel: adapter bookkeeping over a base model, the forward entry point, and loading of
// HF model folders. The AdapterHub folder format lives in formats/adapterhub.cpp.
#include "adapters/model.h"

#include <torch/torch.h>

#include <iomanip>
#include <sstream>

#include "adapters/core/log.h"
#include "adapters/formats/keys.h"
#include "adapters/methods/registry.h"

namespace adapters {

using torch::Tensor;

namespace {

void check_adapter_name(const std::string& name) {
  ADAPTERS_CHECK(!name.empty(), "adapter name must not be empty");
  ADAPTERS_CHECK(name.find_first_of(".,() []=|") == std::string::npos, "adapter name '", name,
                 "' contains one of the characters . , ( ) [ ] = | or a space, which the setup strings and "
                 "parameter names reserve");
}

std::string join(const std::vector<std::string>& items, std::size_t limit = 20) {
  std::string out;
  for (std::size_t i = 0; i < items.size() && i < limit; ++i) out += (i ? ", " : "") + items[i];
  if (items.size() > limit) out += str(", ... (", items.size() - limit, " more)");
  return out;
}

void check_inputs(const ModelInputs& in, std::int64_t vocab_size) {
  ADAPTERS_CHECK(in.input_ids.defined(), "forward: input_ids is required");
  ADAPTERS_CHECK(in.input_ids.dim() == 2, "forward: input_ids must be (B,T), found ", in.input_ids.dim(), " dimensions");
  ADAPTERS_CHECK(in.input_ids.scalar_type() == torch::kLong, "forward: input_ids must be int64, found ",
                 in.input_ids.scalar_type());
  if (in.input_ids.numel() > 0) {
    const auto lo = in.input_ids.min().item<std::int64_t>();
    const auto hi = in.input_ids.max().item<std::int64_t>();
    ADAPTERS_CHECK(lo >= 0 && hi < vocab_size, "forward: input_ids must lie in [0, ", vocab_size, "), found [", lo,
                   ", ", hi, "]");
  }
  for (const auto& [what, t] : {std::pair<const char*, const Tensor&>{"attention_mask", in.attention_mask},
                                {"token_type_ids", in.token_type_ids}}) {
    if (!t.defined()) continue;
    ADAPTERS_CHECK(t.sizes() == in.input_ids.sizes(), "forward: ", what, " must have the shape of input_ids ",
                   in.input_ids.sizes(), ", found ", t.sizes());
  }
}

}  // namespace

AdapterModelImpl::AdapterModelImpl(const models::ModelConfig& config)
    : arch_(&models::arch_spec(config.model_type)),
      base_(arch_->create(config)),
      heads_(nn::make_adapter_dict<heads::PredictionHead>()) {
  register_module(arch_->base_prefix, base_);
  register_module("heads", heads_);
}

namespace {

// Inputs follow the model to its device; (B,N,T) inputs (multiple choice) become (B*N,T).
ModelInputs prepare_inputs(const ModelInputs& in, const torch::Device& device) {
  auto move = [&](const Tensor& t) {
    if (!t.defined()) return t;
    Tensor out = t.to(device);
    return out.dim() > 2 ? out.reshape({-1, out.size(-1)}) : out;
  };
  return {move(in.input_ids), move(in.attention_mask), move(in.token_type_ids)};
}

}  // namespace

ModelOutput AdapterModelImpl::forward(const ModelInputs& raw_inputs, const ForwardOptions& options) {
  ADAPTERS_CHECK(raw_inputs.input_ids.defined(), "forward: input_ids is required");
  const ModelInputs inputs = prepare_inputs(raw_inputs, base_->parameters().front().device());
  check_inputs(inputs, config().vocab_size);
  nn::ForwardContext ctx;
  std::optional<Block> override_setup;
  if (options.setup != nullptr) {
    check_setup(*options.setup);
    override_setup = composition::normalize_active(*options.setup);
    ctx.setup = &*override_setup;
  } else if (active_) {
    ctx.setup = &*active_;
  }
  ctx.input_batch_size = inputs.input_ids.size(0);
  ctx.pad_token_id = config().pad_token_id;
  ctx.output_gating_scores = options.output_gating_scores;
  ctx.output_fusion_attentions = options.output_fusion_attentions;
  models::BaseModelOutput base = base_->forward(inputs, ctx);
  ModelOutput out;
  out.last_hidden_state = base.last_hidden_state;
  out.pooler_output = base.pooler_output;
  if (!options.skip_heads) run_heads(base, inputs, options, ctx, out);
  out.gating_scores = std::move(ctx.gating_scores);
  out.fusion_attentions = std::move(ctx.fusion_attentions);
  return out;
}

// ---- adapters -------------------------------------------------------------------------------

void AdapterModelImpl::add_adapter(const std::string& name, const methods::AdapterConfig& config, bool overwrite_ok,
                                   bool set_active) {
  check_adapter_name(name);
  if (has_adapter(name)) {
    ADAPTERS_CHECK(overwrite_ok, "add_adapter: an adapter named '", name, "' already exists",
                   " (delete it first or pass overwrite_ok)");
    delete_adapter(name);
  }
  const auto& method = methods::method_spec(config.method);
  try {
    method.attach(name, config.values, *base_);
  } catch (...) {
    base_->delete_adapter(name);
    throw;
  }
  adapters_.emplace_back(name, config);
  // New modules follow the model's mode, device and dtype.
  const Tensor reference = base_->parameters().front();
  for (const auto& key : adapter_parameter_names(name)) {
    Tensor p = named_parameters()[key];
    if (p.device() != reference.device() || p.scalar_type() != reference.scalar_type()) {
      p.set_data(p.to(reference.device(), reference.scalar_type()));
    }
  }
  train(is_training());
  if (set_active) set_active_adapters(Block::adapter(name));
}

void AdapterModelImpl::add_adapter(const std::string& name, const std::string& config_spec, bool overwrite_ok,
                                   bool set_active) {
  add_adapter(name, methods::AdapterConfig::parse(config_spec), overwrite_ok, set_active);
}

void AdapterModelImpl::delete_adapter(const std::string& name) {
  ADAPTERS_CHECK(has_adapter(name), "delete_adapter: no adapter named '", name, "' (known: ", join(adapter_names()), ")");
  // Fusions of this adapter go with it.
  for (const auto& fusion : adapter_fusion_names()) {
    const Block fuse = composition::parse("Fuse(" + fusion + ")");
    if (fuse.contains(name)) delete_adapter_fusion(fusion);
  }
  base_->delete_adapter(name);
  adapters_.erase(std::find_if(adapters_.begin(), adapters_.end(), [&](const auto& a) { return a.first == name; }));
  if (active_ && active_->contains(name)) active_.reset();
}

bool AdapterModelImpl::has_adapter(const std::string& name) const {
  return std::any_of(adapters_.begin(), adapters_.end(), [&](const auto& a) { return a.first == name; });
}

std::vector<std::string> AdapterModelImpl::adapter_names() const {
  std::vector<std::string> names;
  for (const auto& a : adapters_) names.push_back(a.first);
  return names;
}

const methods::AdapterConfig& AdapterModelImpl::adapter_config(const std::string& name) const {
  for (const auto& a : adapters_) {
    if (a.first == name) return a.second;
  }
  throw Error(str("no adapter named '", name, "' (known: ", join(adapter_names()), ")"));
}

void AdapterModelImpl::check_setup(const Block& setup) const {
  for (const auto& name : setup.flatten()) {
    ADAPTERS_CHECK(has_adapter(name), "adapter setup ", setup.to_string(), ": unknown adapter '", name,
                   "' (known: ", join(adapter_names()), ")");
  }
  composition::validate(setup);
  std::function<void(const Block&)> check_fusions = [&](const Block& b) {
    if (b.type == composition::BlockType::Fuse) {
      ADAPTERS_CHECK(has_adapter_fusion(b.fusion_name()), "adapter setup ", setup.to_string(), ": no fusion layer '",
                     b.fusion_name(), "'", " (add it with add_adapter_fusion or load_adapter_fusion first)");
    }
    for (const auto& c : b.children) check_fusions(c);
  };
  check_fusions(setup);
}

void AdapterModelImpl::set_active_adapters(const Block& setup) {
  check_setup(setup);
  active_ = composition::normalize_active(setup);
  // As the reference: the heads named like the setup's last adapter(s) become active.
  if (auto head_setup = heads_from_setup(*active_)) active_head_ = head_setup;
}

void AdapterModelImpl::set_active_adapters(const std::string& setup) { set_active_adapters(composition::parse(setup)); }

void AdapterModelImpl::deactivate_adapters() { active_.reset(); }

void AdapterModelImpl::freeze_model(bool freeze) {
  for (auto& p : base_->parameters()) p.set_requires_grad(!freeze);
}

void AdapterModelImpl::train_adapter(const Block& setup) {
  check_setup(setup);
  train(true);
  freeze_model(true);
  for (const auto& name : setup.flatten()) {
    for (const auto& key : adapter_parameter_names(name)) named_parameters()[key].set_requires_grad(true);
  }
  set_active_adapters(setup);
}

void AdapterModelImpl::train_adapter(const std::string& setup) { train_adapter(composition::parse(setup)); }

io::TensorMap AdapterModelImpl::parameters_where(const std::function<bool(const std::string&)>& selects) const {
  io::TensorMap out;
  for (const auto& item : named_parameters()) {
    if (selects(item.key())) out[item.key()] = item.value();
  }
  return out;
}

std::vector<std::string> AdapterModelImpl::adapter_parameter_names(const std::string& name) const {
  std::vector<std::string> keys;
  for (const auto& [key, t] : parameters_where([&](const std::string& k) { return formats::key_belongs_to_adapter(k, name); })) {
    keys.push_back(key);
  }
  return keys;
}

std::int64_t AdapterModelImpl::base_parameter_count() const {
  std::int64_t count = 0;
  for (const auto& item : named_parameters()) {
    bool is_adapter = item.key().rfind(formats::kHeadsPrefix, 0) == 0 || formats::is_fusion_key(item.key());
    for (const auto& a : adapters_) is_adapter = is_adapter || formats::key_belongs_to_adapter(item.key(), a.first);
    if (!is_adapter) count += item.value().numel();
  }
  return count;
}

std::vector<AdapterSummaryRow> AdapterModelImpl::adapter_summary_rows() const {
  const auto params = named_parameters();
  const double base = static_cast<double>(base_parameter_count());
  std::vector<AdapterSummaryRow> rows;
  for (const auto& [name, config] : adapters_) {
    AdapterSummaryRow row{name, config.method};
    for (const auto& key : adapter_parameter_names(name)) {
      row.parameters += params[key].numel();
      row.train = row.train || params[key].requires_grad();
    }
    row.percent_of_base = base > 0 ? 100.0 * static_cast<double>(row.parameters) / base : 0.0;
    row.active = active_ && active_->contains(name);
    rows.push_back(row);
  }
  return rows;
}

std::string AdapterModelImpl::adapter_summary() const {
  std::ostringstream os;
  const std::string rule(80, '=');
  const std::string thin(80, '-');
  os << rule << '\n'
     << std::left << std::setw(25) << "Name" << std::setw(21) << "Architecture" << std::right << std::setw(12) << "#Param"
     << std::setw(10) << "%Param" << std::setw(8) << "Active" << std::setw(8) << "Train" << '\n'
     << thin << '\n';
  for (const auto& r : adapter_summary_rows()) {
    os << std::left << std::setw(25) << r.name << std::setw(21) << r.method << std::right << std::setw(12)
       << r.parameters << std::setw(10) << std::fixed << std::setprecision(3) << r.percent_of_base << std::setw(8)
       << (r.active ? 1 : 0) << std::setw(8) << (r.train ? 1 : 0) << '\n';
  }
  bool base_trains = false;
  for (const auto& p : base_->parameters()) base_trains = base_trains || p.requires_grad();
  os << thin << '\n'
     << std::left << std::setw(46) << "Full model" << std::right << std::setw(12) << base_parameter_count()
     << std::setw(10) << std::fixed << std::setprecision(3) << 100.0 << std::setw(8) << "" << std::setw(8)
     << (base_trains ? 1 : 0) << '\n'
     << rule << '\n';
  return os.str();
}

io::TensorMap AdapterModelImpl::adapter_state_dict(const std::string& name) const {
  ADAPTERS_CHECK(has_adapter(name), "no adapter named '", name, "' (known: ", join(adapter_names()), ")");
  return parameters_where([&](const std::string& key) { return formats::key_belongs_to_adapter(key, name); });
}

void AdapterModelImpl::load_adapter_state_dict(const std::string& name, const io::TensorMap& tensors,
                                               const std::string& source) {
  io::copy_checked(adapter_state_dict(name), tensors, source, "adapter '" + name + "'");
}

// ---- HF model folders -----------------------------------------------------------------------

namespace {

fs::path find_model_weights(const fs::path& dir) {
  for (const char* name : {"model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                           "pytorch_model.bin.index.json"}) {
    if (fs::exists(dir / name)) return dir / name;
  }
  throw Error(str(dir.string(), ": no model weights found (looked for model.safetensors, model.safetensors.index.json, "
                                "pytorch_model.bin, pytorch_model.bin.index.json)"));
}

bool is_pooler_key(const std::string& key) { return key.find(".pooler.") != std::string::npos; }

}  // namespace

AdapterModel load_pretrained(const fs::path& dir, const std::string& static_head_name) {
  ADAPTERS_CHECK(fs::is_directory(dir), dir.string(), ": not a model folder (expected a folder with config.json)");
  const models::ModelConfig config = models::load_model_config(dir / "config.json");
  AdapterModel model(config);
  const fs::path weights = find_model_weights(dir);
  const io::TensorMap checkpoint = io::read_checkpoint(weights);
  const std::string prefix = model->arch().base_prefix;

  auto params = model->named_parameters();
  auto buffers = model->named_buffers();
  std::set<std::string> loaded;
  std::vector<std::string> skipped;
  torch::NoGradGuard no_grad;
  for (const auto& [key, tensor] : checkpoint) {
    bool is_base = false;
    const std::string name = formats::to_base_prefix(key, prefix, &is_base);
    Tensor* target = params.find(name);
    if (target == nullptr) target = buffers.find(name);
    if (!is_base || target == nullptr) {
      skipped.push_back(key);
      continue;
    }
    ADAPTERS_CHECK(tensor.sizes() == target->sizes(), weights.string(), ": tensor '", key, "' has shape ", tensor.sizes(),
                   ", the ", config.model_type, " model expects ", target->sizes(), " for '", name, "'");
    target->copy_(tensor);
    loaded.insert(name);
  }
  std::vector<std::string> missing, missing_pooler;
  for (const auto& item : params) {
    if (loaded.count(item.key())) continue;
    (is_pooler_key(item.key()) ? missing_pooler : missing).push_back(item.key());
  }
  ADAPTERS_CHECK(missing.empty(), weights.string(), ": missing weights for ", join(missing),
                 " (is this a ", config.model_type, " checkpoint?)");
  if (!missing_pooler.empty()) log::warn(str(weights.string(), ": no pooler weights (", join(missing_pooler), "); the pooler keeps its random initialisation"));
  if (!skipped.empty()) {
    const std::set<std::string> used = detail::convert_static_head(*model, checkpoint, static_head_name, weights.string());
    skipped.erase(std::remove_if(skipped.begin(), skipped.end(), [&](const auto& k) { return used.count(k) > 0; }),
                  skipped.end());
  }
  if (!skipped.empty()) log::info(str(weights.string(), ": keys outside the base model, not loaded: ", join(skipped)));
  model->eval();
  return model;
}

}  // namespace adapters
