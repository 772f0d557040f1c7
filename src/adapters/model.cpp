// AdapterModel: adapter bookkeeping over a base model, the forward entry point, and loading of
// HF model folders. The AdapterHub folder format lives in formats/adapterhub.cpp.
#include "adapters/model.h"

#include "adapters/models/seq2seq.h"

#include <torch/torch.h>

#include <iomanip>
#include <set>
#include <sstream>

#include "adapters/core/log.h"
#include "adapters/formats/keys.h"
#include "adapters/methods/prefix_tuning.h"
#include "adapters/methods/registry.h"
#include "adapters/per_row.h"

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

}  // namespace

namespace {

// The architecture of a config, with the keys its input kind needs checked before any module is built.
const models::ArchSpec& checked_arch(const models::ModelConfig& config) {
  const models::ArchSpec& arch = models::arch_spec(config.model_type);
  ADAPTERS_CHECK(arch.input != models::InputKind::Text || config.vocab_size > 0, "config.json: missing key 'vocab_size'",
                 " (a ", config.model_type, " model reads token ids and needs its vocabulary size)");
  ADAPTERS_CHECK(!arch.heads_split_hidden || config.head_dim() * config.num_attention_heads == config.hidden_size,
                 "config.json: head_dim ", config.head_dim(), " x num_attention_heads ", config.num_attention_heads, " = ",
                 config.head_dim() * config.num_attention_heads, ", expected hidden_size ", config.hidden_size,
                 " (the q/k/v projections of a ", config.model_type, " model are hidden_size wide)");
  return arch;
}

}  // namespace

AdapterModelImpl::AdapterModelImpl(const models::ModelConfig& config)
    : arch_(&checked_arch(config)),
      base_(arch_->create(config)),
      heads_(nn::make_adapter_dict<heads::PredictionHead>()) {
  register_module(arch_->base_prefix, base_);
  register_module("heads", heads_);
}

namespace {

// Inputs follow the model to its device; (B,N,T) token inputs (multiple choice) become (B*N,T).
ModelInputs prepare_inputs(const ModelInputs& in, const torch::Device& device) {
  auto to_device = [&](const Tensor& t) { return t.defined() ? t.to(device) : t; };
  auto tokens = [&](const Tensor& t) {
    Tensor out = to_device(t);
    return out.defined() && out.dim() > 2 ? out.reshape({-1, out.size(-1)}) : out;
  };
  ModelInputs out = in;
  for (Tensor* t : {&out.input_ids, &out.attention_mask, &out.token_type_ids, &out.position_ids}) *t = tokens(*t);
  for (Tensor* t : {&out.inputs_embeds, &out.pixel_values, &out.decoder_input_ids, &out.decoder_attention_mask,
                    &out.encoder_hidden_states}) {
    *t = to_device(*t);
  }
  return out;
}

// The soft prompt (P,E) of a prompt-tuning adapter.
Tensor prompt_embedding(const AdapterModelImpl& model, const std::string& adapter) {
  const std::string key = str("prompt_tunings.", adapter, ".prompt_embedding.weight");
  for (const auto& item : model.base().named_parameters()) {
    const std::string& k = item.key();
    if (k.size() >= key.size() && k.compare(k.size() - key.size(), key.size(), key) == 0) return item.value();
  }
  throw Error(str("prompt tuning '", adapter, "': no soft prompt in the model"));
}

// Prompt tuning joined at the input (combine "input", PEFT's placement): each row group's soft
// tokens go before the word embeddings of input_ids, passed on as inputs_embeds, so that the model's
// own embedding layer (positions, token types, norms, Gemma's scale) covers them; the attention
// mask grows by the prompt's attended columns (unless it covers them already, as generation's does),
// token types by zeros. Rows with shorter prompts are filled as SoftTokens says. Encoder-decoder
// models take them on the encoder side. A forward that continues a cache (or gets the encoder's
// states) finds the prompt there already.
ModelInputs with_input_prompt(const ModelInputs& in, const SoftTokens& soft, const AdapterModelImpl& model) {
  if (soft.prompt == 0 || in.encoder_hidden_states.defined()) return in;
  const bool encoder_decoder = model.arch().kind == models::ArchKind::EncoderDecoder;
  if (!encoder_decoder && in.cache != nullptr && in.cache->length() > 0) return in;
  ADAPTERS_CHECK(in.input_ids.defined() || in.inputs_embeds.defined(), "prompt tuning '", soft.groups.front().prompt,
                 "' needs input_ids or inputs_embeds");
  const Tensor embeds = in.inputs_embeds.defined() ? in.inputs_embeds : model.base().input_embeddings(in.input_ids);
  const std::int64_t B = embeds.size(0), T = embeds.size(1), P = soft.prompt;
  std::vector<Tensor> rows, token_types;
  std::int64_t begin = 0;
  for (const auto& g : soft.groups) {
    if (in.token_type_ids.defined()) {  // zeros for the prompt and the filler
      const Tensor types = in.token_type_ids.slice(0, begin, begin + g.rows);
      const Tensor before = torch::zeros({g.rows, soft.prompt_on_left ? P : g.prompt_length}, types.options());
      token_types.push_back(torch::cat({before, types, torch::zeros({g.rows, P - before.size(1)}, types.options())}, 1));
    }
    const Tensor tokens = embeds.slice(0, begin, begin + g.rows);
    const Tensor prompt = g.prompt.empty() ? embeds.new_zeros({g.rows, 0, embeds.size(2)})
                                           : prompt_embedding(model, g.prompt).to(embeds.dtype()).unsqueeze(0).expand(
                                                 {g.rows, g.prompt_length, embeds.size(2)});
    const Tensor fill = embeds.new_zeros({g.rows, P - g.prompt_length, embeds.size(2)});
    rows.push_back(torch::cat(soft.prompt_on_left ? std::vector<Tensor>{fill, prompt, tokens}
                                                  : std::vector<Tensor>{prompt, tokens, fill},
                              1));
    begin += g.rows;
  }
  ModelInputs out = in;
  if (encoder_decoder && !in.decoder_input_ids.defined() && in.input_ids.defined()) {
    // What the decoder would derive from the ids the prompt replaces (see EncoderDecoderModelImpl::run).
    out.decoder_input_ids = dynamic_cast<const models::EncoderDecoderModelImpl&>(model.base()).shift_right(in.input_ids);
  }
  out.input_ids = Tensor();
  out.inputs_embeds = torch::cat(rows, 0);
  const bool filled = soft.prompt_filled();
  // Positions given for the prompt and the tokens (generation's) stay; the tokens' alone are dropped
  // (the model counts from the prompt's first token).
  if (!(in.position_ids.defined() && in.position_ids.size(1) == P + T)) out.position_ids = Tensor();
  if ((in.attention_mask.defined() && in.attention_mask.size(1) == T) || (!in.attention_mask.defined() && filled)) {
    out.attention_mask = soft.join_prompt_mask(in.attention_mask, B, T, embeds.device());
  }
  if (in.token_type_ids.defined()) out.token_type_ids = torch::cat(token_types, 0);
  // Left filler shifts the positions back (the right filler of encoders comes after the tokens).
  if (filled && soft.prompt_on_left) {
    const Tensor filler = soft.prompt_filler(embeds.device());  // (B,P)
    out.filler = torch::cat({filler, torch::zeros({B, T}, filler.options())}, 1);
  }
  return out;
}

// PEFT's prefix tuning (prefix_tuning with placement "past"): each row group's prefix fills the
// key/value cache before the tokens, which then count their positions after it; the attention mask
// (the decoder's, in encoder-decoder models) grows by the prefix columns, the shorter prefixes' left
// filler masked out through KVCache::filler. The caller's cache when it is empty (generation's first
// step; later steps find the prefix in it), else `local`.
ModelInputs with_past_prefix(const ModelInputs& in, const SoftTokens& soft, AdapterModelImpl& model, nn::KVCache& local,
                             std::int64_t& prefilled) {
  if (soft.past == 0 || (in.cache != nullptr && in.cache->length() > 0)) return in;
  ModelInputs out = in;
  if (out.cache == nullptr) out.cache = &local;
  std::vector<methods::PastPrefixRows> groups;
  for (const auto& g : soft.groups) groups.push_back({g.past_prefix, g.rows});
  methods::prefill_past_prefixes(model.base(), groups, soft.past, *out.cache);
  prefilled = soft.past;
  const std::int64_t B = model.base().batch_size(in), P = soft.past;
  out.cache->filler = soft.past_filled() ? soft.past_filler(model.base().parameters().front().device()) : Tensor();
  // The mask of the tokens alone grows by the prefix; one that covers it already (generation's,
  // as PEFT's prepare_inputs_for_generation makes it) stays.
  const bool encoder_decoder = model.arch().kind == models::ArchKind::EncoderDecoder;
  Tensor& mask = encoder_decoder ? out.decoder_attention_mask : out.attention_mask;
  const Tensor& tokens = encoder_decoder ? out.decoder_input_ids : out.input_ids.defined() ? out.input_ids : out.inputs_embeds;
  if (mask.defined() && tokens.defined() && mask.size(1) == tokens.size(1)) {
    mask = torch::cat({torch::ones({B, P}, mask.options()), mask}, 1);
  }
  return out;
}

}  // namespace

// Encoder-decoder models without decoder inputs derive them from the labels (shifted right) when
// the architecture says so (ArchSpec::decoder_inputs_from_labels), else from input_ids.
ModelInputs AdapterModelImpl::with_decoder_inputs(const ModelInputs& inputs, const ForwardOptions& options) const {
  if (arch_->kind != models::ArchKind::EncoderDecoder || inputs.decoder_input_ids.defined() || !arch_->decoder_inputs_from_labels) {
    return inputs;
  }
  auto labels = options.head_inputs.find("labels");
  if (labels == options.head_inputs.end() || labels->second.dim() != 2) return inputs;
  ModelInputs out = inputs;
  out.decoder_input_ids = dynamic_cast<const models::EncoderDecoderModelImpl&>(*base_).shift_right(
      labels->second.to(inputs.input_ids.defined() ? inputs.input_ids.device() : labels->second.device()));
  return out;
}

ModelOutput AdapterModelImpl::forward(const ModelInputs& raw_inputs, const ForwardOptions& options) {
  if (!options.adapter_per_row.empty()) {
    ADAPTERS_CHECK(options.setup == nullptr, "forward: give adapter_per_row or a setup, not both");
    ForwardOptions rest = options;
    rest.adapter_per_row.clear();
    return forward_per_row(*this, raw_inputs, options.adapter_per_row, std::move(rest));
  }
  const ModelInputs inputs = prepare_inputs(raw_inputs, base_->parameters().front().device());
  nn::ForwardContext ctx;
  std::optional<Block> override_setup;
  if (options.setup != nullptr) {
    check_setup(*options.setup);
    override_setup = composition::normalize_active(*options.setup);
    ctx.setup = &*override_setup;
  } else if (active_) {
    ctx.setup = &*active_;
  }
  ctx.input_batch_size = base_->batch_size(inputs);
  if (options.inputs_replicated_for_parallel && ctx.setup != nullptr) {
    const std::int64_t channels = composition::parallel_channels(*ctx.setup);
    ADAPTERS_CHECK(ctx.input_batch_size % channels == 0, "forward: inputs replicated for ", channels,
                   " Parallel branches must have a multiple of ", channels, " rows, found ", ctx.input_batch_size);
    ctx.input_batch_size /= channels;
    ctx.adapters_parallelized = channels > 1;
  }
  ctx.pad_token_id = config().pad_token_id;
  ctx.rows_independent = options.rows_independent && ctx.setup != nullptr;
  ctx.output_gating_scores = options.output_gating_scores;
  ctx.output_fusion_attentions = options.output_fusion_attentions;
  nn::KVCache prefix_cache;  // PEFT's prefix tuning without a caller's cache
  std::int64_t prefilled = 0;
  const SoftTokens soft = soft_tokens(*this, ctx.setup, base_->batch_size(inputs));
  const ModelInputs model_inputs = with_past_prefix(with_input_prompt(with_decoder_inputs(inputs, options), soft, *this),
                                                    soft, *this, prefix_cache, prefilled);
  models::BaseModelOutput base = base_->forward(model_inputs, ctx);
  if (prefilled > 0 && model_inputs.cache->length() == prefilled) {
    throw NotSupported(str(arch_->model_type, " does not read a key/value cache, so it cannot take a past prefix",
                           " (PEFT prefix tuning)"), "use AdapterHub's prefix tuning (placement \"attention\") on it");
  }
  ModelOutput out;
  out.last_hidden_state = base.last_hidden_state;
  out.pooler_output = base.pooler_output;
  out.encoder_last_hidden_state = base.encoder_last_hidden_state;
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
  // Soft tokens joined at the input (PEFT's prompt tuning) are input tokens: every text model takes them.
  const bool input_prompt = is_input_prompt(config) && arch_->input == models::InputKind::Text;
  if (auto refused = arch_->unsupported_methods.find(config.method);
      refused != arch_->unsupported_methods.end() && !input_prompt) {
    throw NotSupported(str("add_adapter '", name, "': ", config.method, " is not supported on ", arch_->model_type, ": ",
                           refused->second));
  }
  std::set<std::string> before;
  for (const auto& item : named_parameters()) before.insert(item.key());
  try {
    method.attach(name, config.values, *base_);
  } catch (...) {
    base_->delete_adapter(name);
    throw;
  }
  // The adapter owns exactly the parameters its method attached.
  std::vector<std::string>& owned = owned_parameters_[name];
  owned.clear();
  for (const auto& item : named_parameters()) {
    if (!before.count(item.key())) owned.push_back(item.key());
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
  owned_parameters_.erase(name);
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
    if (name == kNoAdapter) continue;  // a member without adapter (the rows of forward_per_row)
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
  auto it = owned_parameters_.find(name);
  return it == owned_parameters_.end() ? std::vector<std::string>() : it->second;
}

std::int64_t AdapterModelImpl::base_parameter_count() const {
  std::set<std::string> owned;
  for (const auto& [name, keys] : owned_parameters_) owned.insert(keys.begin(), keys.end());
  std::int64_t count = 0;
  for (const auto& item : named_parameters()) {
    const bool is_adapter = item.key().rfind(formats::kHeadsPrefix, 0) == 0 || formats::is_fusion_key(item.key()) ||
                            owned.count(item.key()) > 0;
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
  const std::vector<std::string> keys = adapter_parameter_names(name);
  const std::set<std::string> owned(keys.begin(), keys.end());
  return parameters_where([&](const std::string& key) { return owned.count(key) > 0; });
}

void AdapterModelImpl::load_adapter_state_dict(const std::string& name, const io::TensorMap& tensors,
                                               const std::string& source) {
  io::copy_checked(adapter_state_dict(name), tensors, source, "adapter '" + name + "'");
}

// ---- merging, averaging, ejection: dispatched on the method's capabilities -----------------

void AdapterModelImpl::merge_adapter(const std::string& name) {
  const methods::AdapterConfig& config = adapter_config(name);
  if (!methods::method_spec(config.method).capabilities.mergeable) {
    throw Error(str("merge_adapter: adapter '", name, "' is a ", config.method,
                    " adapter, which cannot be merged into the weights (only the LoRA family can: lora, ia3, "
                    "vera, dora)"));
  }
  std::vector<nn::AdaptedLinearImpl*> sites;
  for (nn::AdaptedLinearImpl* site : base_->sites().linear) {
    nn::LinearDelta* delta = site->adapter(name);
    if (delta == nullptr) continue;
    // Check every layer before changing any, so that a refusal leaves the model as it was.
    const std::string blocker = delta->merge_blocker();
    ADAPTERS_CHECK(blocker.empty(), "merge_adapter: adapter '", name, "' cannot be merged: ", blocker);
    sites.push_back(site);
  }
  ADAPTERS_CHECK(!sites.empty(), "merge_adapter: adapter '", name, "' has no module in this model (leave_out and ",
                 "the placement options leave no layer)");
  for (nn::AdaptedLinearImpl* site : sites) site->merge_adapter(name);
}

void AdapterModelImpl::reset_adapter() {
  for (nn::AdaptedLinearImpl* site : base_->sites().linear) site->reset_merged();
}

std::vector<std::string> AdapterModelImpl::merged_adapters() const {
  std::vector<std::string> names;
  for (const nn::AdaptedLinearImpl* site : base_->sites().linear) {
    for (const auto& m : site->merged()) {
      if (std::find(names.begin(), names.end(), m) == names.end()) names.push_back(m);
    }
  }
  return names;
}

namespace {

std::vector<double> checked_weights(std::vector<double> weights, std::size_t count, bool normalize,
                                    const std::string& name) {
  if (weights.empty()) weights.assign(count, 1.0 / static_cast<double>(count));
  ADAPTERS_CHECK(weights.size() == count, "average_adapter '", name, "': ", count, " adapters but ", weights.size(),
                 " weights");
  if (normalize) {
    double sum = 0.0;
    for (double w : weights) sum += w;
    ADAPTERS_CHECK(std::abs(sum) > 1e-12, "average_adapter '", name,
                   "': the weights sum to 0 and cannot be normalised (pass normalize_weights=false)");
    for (double& w : weights) w /= sum;
  }
  return weights;
}

}  // namespace

void AdapterModelImpl::average_adapter(const std::string& name, const std::vector<std::string>& sources,
                                       std::vector<double> weights, const std::string& combine_strategy,
                                       bool normalize_weights, std::int64_t svd_rank) {
  ADAPTERS_CHECK(!sources.empty(), "average_adapter '", name, "': no adapters to average");
  ADAPTERS_CHECK(!has_adapter(name), "average_adapter: an adapter named '", name, "' already exists");
  const methods::AdapterConfig config = adapter_config(sources.front());
  for (const auto& s : sources) {
    ADAPTERS_CHECK(adapter_config(s) == config, "average_adapter '", name, "': cannot average adapters with different "
                   "configs ('", sources.front(), "' is ", config.values.dump(), ", '", s, "' is ", adapter_config(s).values.dump(), ")");
  }
  weights = checked_weights(std::move(weights), sources.size(), normalize_weights, name);
  const methods::MethodSpec& method = methods::method_spec(config.method);
  if (method.average) {
    // Methods with strategies of their own (the LoRA family: methods/lora.h).
    const methods::AveragedAdapter averaged = method.average(*this, name, sources, weights, combine_strategy, svd_rank);
    add_adapter(name, methods::AdapterConfig{config.method, averaged.config});
    try {
      load_adapter_state_dict(name, averaged.tensors, "average_adapter '" + name + "'");
    } catch (...) {
      delete_adapter(name);
      throw;
    }
    return;
  }
  ADAPTERS_CHECK(combine_strategy == "linear", "average_adapter '", name, "': unknown combine_strategy '",
                 combine_strategy, "' for ", config.method, " adapters (expected \"linear\")");

  add_adapter(name, config);
  try {
    torch::NoGradGuard no_grad;
    io::TensorMap target = adapter_state_dict(name);
    for (auto& [key, param] : target) {
      param.zero_();
      for (std::size_t i = 0; i < sources.size(); ++i) {
        const std::string source_key = formats::rename_adapter(key, name, sources[i]);
        param.add_(named_parameters()[source_key], weights[i]);
      }
    }
  } catch (...) {
    delete_adapter(name);
    throw;
  }
}

void AdapterModelImpl::eject_prefix_tuning(const std::string& name) {
  ADAPTERS_CHECK(has_adapter(name), "eject_prefix_tuning: no adapter named '", name, "'");
  methods::AdapterConfig& config = std::find_if(adapters_.begin(), adapters_.end(), [&](const auto& a) { return a.first == name; })->second;
  const methods::MethodSpec& method = methods::method_spec(config.method);
  ADAPTERS_CHECK(method.eject != nullptr, "eject_prefix_tuning: adapter '", name, "' is a ", config.method,
                 " adapter, expected a prefix_tuning adapter");
  std::set<std::string> before;
  for (const auto& item : named_parameters()) before.insert(item.key());
  config.values = method.eject(name, config.values, *base_);
  // Ejection replaces modules: the adapter owns what it kept and what the ejection created.
  std::vector<std::string>& owned = owned_parameters_[name];
  const std::set<std::string> kept(owned.begin(), owned.end());
  owned.clear();
  for (const auto& item : named_parameters()) {
    if (kept.count(item.key()) || !before.count(item.key())) owned.push_back(item.key());
  }
}

// ---- HF model folders -----------------------------------------------------------------------

namespace {

std::optional<fs::path> find_model_weights(const fs::path& dir) {
  for (const char* name : {"model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                           "pytorch_model.bin.index.json"}) {
    if (fs::exists(dir / name)) return dir / name;
  }
  return std::nullopt;
}

// The config's sizes against the checkpoint, before anything is built: a vocabulary, width or
// feed-forward size that no tensor of the checkpoint has would make the model allocate what the
// checkpoint does not hold (a 200-byte config.json claiming vocab_size 10^9 is not a 100 GB model).
void check_config_sizes(const models::ModelConfig& c, const io::TensorMap& checkpoint, const fs::path& dir) {
  std::set<std::int64_t> dims;
  for (const auto& [key, t] : checkpoint) dims.insert(t.sizes().begin(), t.sizes().end());
  const bool text = models::arch_spec(c.model_type).input == models::InputKind::Text;  // BEiT's vocab_size is its codebook's
  for (const auto& [key, value] : {std::pair<const char*, std::int64_t>{"vocab_size", text ? c.vocab_size : 0},
                                   {"hidden_size", c.hidden_size},
                                   {"intermediate_size", c.intermediate_size}}) {
    if (value <= 0 || dims.count(value)) continue;
    throw Error(str((dir / "config.json").string(), ": ", key, " ", value, " is the size of no tensor of the checkpoint (",
                    checkpoint.size(), " tensors)"),
                "the config and the weights do not belong together");
  }
  ADAPTERS_CHECK(c.num_hidden_layers <= 4096 && c.num_decoder_layers <= 4096, (dir / "config.json").string(),
                 ": expected at most 4096 layers, found ", std::max(c.num_hidden_layers, c.num_decoder_layers));
}

// Builds the model of a config; a failed allocation is one error naming the folder.
AdapterModel build_model(const models::ModelConfig& config, const fs::path& dir) {
  try {
    return AdapterModel(config);
  } catch (const std::bad_alloc&) {
    throw Error(str(dir.string(), ": out of memory while building the '", config.model_type, "' model of its config.json"));
  } catch (const c10::Error& e) {
    throw Error(str(dir.string(), ": building the '", config.model_type, "' model of its config.json failed: ",
                    std::string(e.what_without_backtrace()).substr(0, 300)));
  }
}


}  // namespace

AdapterModel load_pretrained(const fs::path& dir, const std::string& static_head_name) {
  ADAPTERS_CHECK(fs::is_directory(dir), dir.string(), ": not a model folder (expected a folder with config.json)");
  const models::ModelConfig config = models::load_model_config(dir / "config.json");
  const std::optional<fs::path> found = find_model_weights(dir);
  if (!found) {
    build_model(config, dir);  // the config's own errors first
    throw Error(str(dir.string(), ": no model weights found (looked for model.safetensors, model.safetensors.index.json, "
                                  "pytorch_model.bin, pytorch_model.bin.index.json)"));
  }
  const fs::path weights = *found;
  const io::TensorMap checkpoint = io::read_checkpoint(weights);
  check_config_sizes(config, checkpoint, dir);
  AdapterModel model = build_model(config, dir);
  const std::string prefix = model->arch().base_prefix;

  const models::ArchSpec& arch = model->arch();
  const std::string pooler = arch.pooler.empty() ? std::string() : prefix + "." + arch.pooler + ".";
  auto is_pooler_key = [&](const std::string& key) { return !pooler.empty() && key.rfind(pooler, 0) == 0; };
  auto params = model->named_parameters();
  auto buffers = model->named_buffers();
  std::set<std::string> loaded;
  std::vector<std::string> skipped;
  torch::NoGradGuard no_grad;
  std::set<std::string> checkpoint_names;
  for (const auto& item : checkpoint) checkpoint_names.insert(formats::to_base_prefix(item.first, prefix, nullptr));
  for (const auto& [key, tensor] : checkpoint) {
    bool is_base = false;
    std::string name = formats::to_base_prefix(key, prefix, &is_base);
    if (auto tied = arch.tied_keys.find(name.substr(std::min(name.size(), prefix.size() + 1)));
        is_base && tied != arch.tied_keys.end()) {
      const std::string canonical = prefix + "." + tied->second;
      if (checkpoint_names.count(canonical)) continue;  // the tied weight itself is in the checkpoint
      name = canonical;
    }
    Tensor* target = params.find(name);
    if (target == nullptr) target = buffers.find(name);
    if (!is_base || target == nullptr) {
      skipped.push_back(key);
      continue;
    }
    const Tensor value = arch.load_transform ? arch.load_transform(name.substr(prefix.size() + 1), tensor) : tensor;
    ADAPTERS_CHECK(value.sizes() == target->sizes(), weights.string(), ": tensor '", key, "' has shape ", value.sizes(),
                   ", the ", config.model_type, " model expects ", target->sizes(), " for '", name, "'");
    target->copy_(value);
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
  {
    const std::set<std::string> used = detail::convert_static_head(*model, checkpoint, static_head_name, weights.string());
    skipped.erase(std::remove_if(skipped.begin(), skipped.end(), [&](const auto& k) { return used.count(k) > 0; }),
                  skipped.end());
  }
  // As HF warns: weights the model does not use are often a sign of the wrong architecture or class.
  if (!skipped.empty()) {
    log::warn(str(weights.string(), ": ", skipped.size(), " tensors the ", config.model_type,
                  " model does not use were not loaded: ", join(skipped)));
  }
  model->eval();
  return model;
}

}  // namespace adapters
