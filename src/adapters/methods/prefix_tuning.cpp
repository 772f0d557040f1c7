// Prefix tuning: config (presets, validation, JSON round trip), the model-level pool computing
// every layer's prefix once per forward, the per-layer modules at the attention sites, the
// aliases the reference writes for the pool, and the ejection of reparametrised prefixes.
#include "adapters/methods/prefix_tuning.h"
#include "adapters/nn/mask.h"
#include "adapters/nn/residual_site.h"

#include <torch/torch.h>

#include <algorithm>
#include <cctype>
#include <cmath>

#include "adapters/model.h"
#include "adapters/models/registry.h"
#include "adapters/core/limits.h"

namespace adapters::methods {

using torch::Tensor;

// ---- config ---------------------------------------------------------------------------------

namespace {

constexpr const char* kPoolName = "prefix_tuning";  // the pool's attribute under the base model

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}

bool starts_with(const std::string& s, const std::string& prefix) { return s.rfind(prefix, 0) == 0; }

}  // namespace

PrefixTuningConfig PrefixTuningConfig::from_json(const json& options, const std::string& source) {
  JsonReader r(options, source);
  r.reject_unknown({"architecture", "encoder_prefix", "cross_prefix", "leave_out", "flat", "prefix_length",
                    "bottleneck_size", "non_linearity", "dropout", "use_gating", "shared_gating", "placement",
                    "num_layers", "num_transformer_submodules"});
  if (r.has("architecture") && r.raw("architecture") != "prefix_tuning") r.fail("architecture", "\"prefix_tuning\"");
  PrefixTuningConfig c;
  c.encoder_prefix = r.get_bool("encoder_prefix", c.encoder_prefix);
  c.cross_prefix = r.get_bool("cross_prefix", c.cross_prefix);
  if (r.has("leave_out")) c.leave_out = r.get_int_list("leave_out");
  c.flat = r.get_bool("flat", c.flat);
  c.prefix_length = r.get_int("prefix_length", c.prefix_length);
  if (c.prefix_length < 1 || c.prefix_length > kMaxAdapterSize) r.fail("prefix_length", str("an integer in [1, ", kMaxAdapterSize, "]"));
  c.bottleneck_size = r.get_int("bottleneck_size", c.bottleneck_size);
  if (c.bottleneck_size < 1 || c.bottleneck_size > kMaxAdapterSize) r.fail("bottleneck_size", str("an integer in [1, ", kMaxAdapterSize, "]"));
  c.non_linearity = r.get_string("non_linearity", c.non_linearity);
  nn::resolve_activation(lower(c.non_linearity), source + ": non_linearity");
  c.dropout = r.get_double("dropout", c.dropout);
  if (c.dropout < 0.0 || c.dropout >= 1.0) r.fail("dropout", "a probability in [0, 1)");
  c.use_gating = r.get_bool("use_gating", c.use_gating);
  c.shared_gating = r.get_bool("shared_gating", c.shared_gating);
  c.placement = r.get_string("placement", c.placement);
  if (c.placement != "attention" && c.placement != "past") r.fail("placement", "\"attention\" or \"past\"");
  c.num_layers = r.get_int("num_layers", c.num_layers);
  if (c.num_layers < 0 || c.num_layers > 4096) r.fail("num_layers", "a layer count in [0, 4096]");
  c.num_transformer_submodules = r.get_int("num_transformer_submodules", c.num_transformer_submodules);
  if (c.num_transformer_submodules != 1 && c.num_transformer_submodules != 2) r.fail("num_transformer_submodules", "1 or 2");
  if (c.placement == "past") {
    if (!c.flat) r.fail("flat", "true with placement \"past\" (the prefix is a table of key/value states)");
    if (c.use_gating) r.fail("use_gating", "false with placement \"past\"");
  }
  return c;
}

json PrefixTuningConfig::to_json() const {
  json j = {{"architecture", "prefix_tuning"}, {"bottleneck_size", bottleneck_size}, {"cross_prefix", cross_prefix},
          {"dropout", dropout},              {"encoder_prefix", encoder_prefix},   {"flat", flat},
          {"leave_out", leave_out},          {"non_linearity", non_linearity},     {"prefix_length", prefix_length},
          {"shared_gating", shared_gating},  {"use_gating", use_gating}};
  if (placement != "attention") {
    j["placement"] = placement;
    j["num_layers"] = num_layers;
    j["num_transformer_submodules"] = num_transformer_submodules;
  }
  return j;
}

bool PrefixTuningConfig::places_at(const std::string& location, std::int64_t layer) const {
  if (std::find(leave_out.begin(), leave_out.end(), layer) != leave_out.end()) return false;
  if (starts_with(location, "cross")) return cross_prefix;
  if (starts_with(location, "encoder")) return encoder_prefix;
  return true;
}

// ---- prefix modules -------------------------------------------------------------------------

PrefixTuningImpl::PrefixTuningImpl(const PrefixTuningConfig& config, std::int64_t n_layers, std::int64_t hidden,
                                   std::int64_t kv_width, const std::string& source)
    : activation_(nn::resolve_activation(lower(config.non_linearity), source + ": non_linearity")) {
  wte_ = register_module("wte", torch::nn::Embedding(config.prefix_length, hidden));
  auto control_trans = register_module("control_trans", std::make_shared<torch::nn::Module>());
  down_ = control_trans->register_module("0", torch::nn::Linear(hidden, config.bottleneck_size));
  up_ = control_trans->register_module("2", torch::nn::Linear(config.bottleneck_size, n_layers * 2 * kv_width));
}

// wte(0..P-1) is wte's weight: (P,C) -> (P, L*2*C)
Tensor PrefixTuningImpl::states() { return up_(activation_(down_(wte_->weight))); }

FlatPrefixTuningImpl::FlatPrefixTuningImpl(const PrefixTuningConfig& config, std::int64_t n_layers, std::int64_t kv_width)
    : FlatPrefixTuningImpl(torch::randn({config.prefix_length * n_layers * 2 * kv_width}), config.prefix_length) {}

FlatPrefixTuningImpl::FlatPrefixTuningImpl(const Tensor& values, std::int64_t prefix_length)
    : prefix_length_(prefix_length) {
  control_trans_ = register_parameter("control_trans", values);
}

// (P*L*2*C) -> (P, L*2*C)
Tensor FlatPrefixTuningImpl::states() { return control_trans_.view({prefix_length_, -1}); }

// ---- the group and the pool -----------------------------------------------------------------

PrefixTuningGroupImpl::PrefixTuningGroupImpl(const PrefixTuningConfig& config,
                                             const std::map<std::string, std::int64_t>& layer_counts,
                                             std::int64_t kv_heads, std::int64_t head_dim, std::int64_t hidden,
                                             const std::string& source)
    : heads_(kv_heads), head_dim_(head_dim), prefix_length_(config.prefix_length) {
  const std::int64_t kv_width = kv_heads * head_dim;
  for (const auto& [location, n_layers] : layer_counts) {
    std::shared_ptr<PrefixModuleImpl> module;
    if (config.flat) {
      module = std::make_shared<FlatPrefixTuningImpl>(config, n_layers, kv_width);
    } else {
      module = std::make_shared<PrefixTuningImpl>(config, n_layers, hidden, kv_width, source);
    }
    locations_[location] = {register_module(location, module), n_layers};
  }
  dropout_ = register_module("dropout", torch::nn::Dropout(config.dropout));
}

std::vector<std::pair<const void*, std::uint32_t>> PrefixTuningGroupImpl::parameter_versions() const {
  std::vector<std::pair<const void*, std::uint32_t>> versions;
  for (const auto& p : parameters()) versions.emplace_back(p.data_ptr(), p._version());
  return versions;
}

std::map<std::string, std::vector<nn::PrefixKV>> PrefixTuningGroupImpl::forward(std::int64_t batch) {
  std::map<std::string, std::vector<nn::PrefixKV>> out;
  const std::int64_t P = prefix_length_, H = heads_, D = head_dim_;
  const bool reusable = !torch::GradMode::is_enabled() && !(is_training() && dropout_->options.p() > 0.0);
  if (reusable) {
    auto versions = parameter_versions();
    if (versions != cached_from_) {
      cached_states_.clear();
      cached_from_ = std::move(versions);
    }
  } else {
    cached_states_.clear();
    cached_from_.clear();
  }
  for (const auto& [location, l] : locations_) {
    const std::int64_t L2 = 2 * l.n_layers;
    Tensor kv;
    if (auto hit = cached_states_.find(location); reusable && hit != cached_states_.end()) {
      kv = hit->second;
    } else {
      kv = l.module->states().view({P, L2, H, D}).permute({1, 2, 0, 3});  // (2L,H,P,D)
      if (reusable) cached_states_[location] = kv;
    }
    kv = kv.unsqueeze(1).expand({L2, batch, H, P, D});  // (2L,B,H,P,D)
    if (is_training() && dropout_->options.p() > 0.0) kv = dropout_(kv.contiguous());
    auto& layers = out[location];
    for (std::int64_t i = 0; i < l.n_layers; ++i) layers.push_back({kv[2 * i], kv[2 * i + 1]});
  }
  return out;
}

void PrefixTuningGroupImpl::eject() {
  torch::NoGradGuard no_grad;
  for (auto& [location, l] : locations_) {
    if (dynamic_cast<PrefixTuningImpl*>(l.module.get()) == nullptr) continue;
    auto flat = std::make_shared<FlatPrefixTuningImpl>(l.module->states().detach().reshape({-1}).clone(), prefix_length_);
    flat->train(is_training());
    unregister_module(location);
    l.module = register_module(location, std::shared_ptr<PrefixModuleImpl>(flat));
  }
}

PrefixTuningPoolImpl::PrefixTuningPoolImpl() : groups_(nn::make_adapter_dict<PrefixTuningGroupImpl>()) {
  register_module("prefix_tunings", groups_);
}

void PrefixTuningPoolImpl::prepare(std::int64_t batch_size, nn::ForwardContext& ctx) {
  if (ctx.setup == nullptr || groups_->empty()) return;
  for (const auto& name : ctx.setup->flatten()) {
    PrefixTuningGroupImpl* g = groups_->find(name);
    if (g != nullptr && !g->past) ctx.prefix_states[name] = g->forward(batch_size);
  }
}

void PrefixTuningPoolImpl::delete_adapter(const std::string& name) { groups_->erase(name); }

void PrefixTuningPoolImpl::add(const std::string& name, std::shared_ptr<PrefixTuningGroupImpl> group) {
  groups_->insert(name, std::move(group));
}

// ---- the per-layer module -------------------------------------------------------------------

PrefixTuningLayerImpl::PrefixTuningLayerImpl(std::string adapter, std::int64_t prefix_id,
                                             const PrefixTuningConfig& config, std::int64_t hidden)
    : adapter_(std::move(adapter)), prefix_id_(prefix_id) {
  if (!config.use_gating) return;
  const std::int64_t outputs = config.shared_gating ? 1 : 2;
  const double bound = 1.0 / std::sqrt(static_cast<double>(hidden));  // nn.Linear's bias initialisation
  gate_weight_ = register_parameter("weight", torch::empty({outputs, hidden}).normal_(0.0, 0.02));
  gate_bias_ = register_parameter("bias", torch::empty({outputs}).uniform_(-bound, bound));
}

namespace {

// The prefix states' rows for a state that may be a share of the batch (BatchSplit) or one of
// its Parallel copies: prefix states have one row per row of the model's input.
Tensor rows_for(const Tensor& t, const nn::AttentionState& s) {
  const std::int64_t batch = s.key.size(0);
  if (t.size(0) == batch) return t;
  const std::int64_t offset = s.row_offset % t.size(0);
  if (offset + batch <= t.size(0)) return t.narrow(0, offset, batch);
  return nn::match_batch(t, s.key);
}

}  // namespace

nn::AttentionState PrefixTuningLayerImpl::apply(const nn::AttentionState& state, std::int64_t layer,
                                                const std::string& location, nn::ForwardContext& ctx) {
  auto adapter_states = ctx.prefix_states.find(adapter_);
  ADAPTERS_CHECK(adapter_states != ctx.prefix_states.end() && adapter_states->second.count(location),
                 "prefix tuning '", adapter_, "': no prefix states for ", location, " in this forward pass");
  const nn::PrefixKV& kv = adapter_states->second.at(location).at(static_cast<std::size_t>(prefix_id_));
  Tensor key = rows_for(kv.key, state), value = rows_for(kv.value, state);  // (B,H,P,D)
  if (gate_weight_.defined()) {
    Tensor gate = torch::sigmoid(torch::linear(state.hidden, gate_weight_, gate_bias_)).mean(1);  // (B,T,G) -> (B,G)
    if (ctx.output_gating_scores) ctx.gating_scores[adapter_][layer][location] = gate.detach();
    key = key * gate.select(1, 0).view({-1, 1, 1, 1});
    value = value * gate.select(1, gate.size(1) - 1).view({-1, 1, 1, 1});
  }
  nn::AttentionState out = state;
  out.key = torch::cat({key, state.key}, 2);
  out.value = torch::cat({value, state.value}, 2);
  // Prefix positions are always attended: additive 0.  (B,1,Q,P) ++ (B,1,Q,T)
  out.mask = nn::prepend_mask_columns(state.mask, key.size(2));
  return out;
}

// ---- the method -----------------------------------------------------------------------------

namespace {

PrefixTuningPoolImpl* pool_of(models::BaseModelImpl& model, const std::string& source) {
  auto pool = model.hooks().get_or_create<PrefixTuningPoolImpl>(kPoolName, [] { return std::make_shared<PrefixTuningPoolImpl>(); });
  ADAPTERS_CHECK(pool != nullptr, source, ": the model's '", kPoolName, "' hook is not a prefix-tuning pool");
  return pool.get();
}

// The self-attention layers a "past" prefix fills: every self-attention site outside an encoder
// of an encoder-decoder model (decoder-only and encoder-only models: all of them).
std::int64_t past_layers(const models::BaseModelImpl& model) {
  std::int64_t n = 0;
  for (const nn::AttentionSite* site : model.sites().attention) n += site->location() == nn::attention_location::kSelf;
  return n;
}

// Placement "past": one table location ("past") of num_layers layers; nothing at the attention sites.
void attach_past(const std::string& adapter, const PrefixTuningConfig& config, models::BaseModelImpl& model,
                 const std::string& source) {
  const models::ModelConfig& c = model.config();
  const std::int64_t layers = past_layers(model);
  ADAPTERS_CHECK(layers > 0, source, ": ", c.model_type, " has no self-attention layer to hold a past prefix");
  const std::int64_t table_layers = config.num_layers > 0 ? config.num_layers : layers;
  ADAPTERS_CHECK(table_layers == layers, source, ": num_layers is ", table_layers, ", the model has ", layers,
                 " self-attention layers to fill");
  auto group = std::make_shared<PrefixTuningGroupImpl>(config, std::map<std::string, std::int64_t>{{"past", table_layers}},
                                                       c.num_key_value_heads, c.head_dim(), c.hidden_size, source);
  group->past = true;
  group->submodules = config.num_transformer_submodules;
  pool_of(model, source)->add(adapter, std::move(group));
}

void attach(const std::string& adapter, const json& values, models::BaseModelImpl& model) {
  const std::string source = "adapter '" + adapter + "'";
  const PrefixTuningConfig config = PrefixTuningConfig::from_json(values, source);
  if (config.placement == "past") return attach_past(adapter, config, model, source);
  const std::int64_t hidden = model.config().hidden_size;
  std::map<std::string, std::int64_t> layer_counts;
  for (nn::AttentionSite* site : model.sites().attention) {
    if (!config.places_at(site->location(), site->layer())) continue;
    const std::int64_t prefix_id = layer_counts[site->location()]++;
    site->add_adapter(adapter, std::make_shared<PrefixTuningLayerImpl>(adapter, prefix_id, config, hidden));
  }
  ADAPTERS_CHECK(!layer_counts.empty(), source, ": the prefix is placed in no attention layer (leave_out ",
                 json(config.leave_out).dump(), ", the model has ", model.sites().attention.size(), " attention sites)");
  const models::ModelConfig& c = model.config();
  pool_of(model, source)->add(adapter, std::make_shared<PrefixTuningGroupImpl>(config, layer_counts, c.num_key_value_heads, c.head_dim(),
                                                             hidden, source));
}

// The reference registers the pool inside every attention layer's shim as "pool", so its .bin
// holds each pool tensor again under "<site>.prefix_tuning.pool.prefix_tunings...": one alias per
// attention site (left-out layers included), mapped onto the pool under the base model.
std::vector<std::pair<std::string, std::string>> pool_aliases(const json&, const models::BaseModelImpl& model) {
  std::map<const torch::nn::Module*, std::string> paths;
  for (const auto& item : model.named_modules()) paths[item.value().get()] = item.key();
  std::vector<std::pair<std::string, std::string>> aliases;
  for (const nn::AttentionSite* site : model.sites().attention) {
    auto it = paths.find(site->module());
    if (it != paths.end()) aliases.emplace_back(it->second + ".pool.prefix_tunings.", "prefix_tuning.prefix_tunings.");
  }
  return aliases;
}

// eject_prefix_tuning: every reparametrised prefix becomes a flat one with the same states.
json eject(const std::string& adapter, const json& config, models::BaseModelImpl& model) {
  auto pool = model.hooks().find<PrefixTuningPoolImpl>(kPoolName);
  PrefixTuningGroupImpl* group = pool ? pool->group(adapter) : nullptr;
  ADAPTERS_CHECK(group != nullptr, "eject_prefix_tuning: adapter '", adapter, "' has no prefix in the model");
  group->eject();
  json ejected = config;
  ejected["flat"] = true;
  return ejected;
}

}  // namespace

namespace {

PrefixTuningGroupImpl* past_group(models::BaseModelImpl& model, const std::string& adapter) {
  auto pool = model.hooks().find<PrefixTuningPoolImpl>(kPoolName);
  PrefixTuningGroupImpl* group = pool ? pool->group(adapter) : nullptr;
  return group != nullptr && group->past ? group : nullptr;
}

// One group's prefix as the decoder's layers read it: L entries of (rows,Hkv,P,D).
std::vector<nn::PrefixKV> past_table(PrefixTuningGroupImpl& group, std::int64_t rows) {
  const std::vector<nn::PrefixKV> table = group.forward(rows).at("past");
  if (group.submodules != 2) return table;
  // PEFT's encoder-decoder table (num_transformer_submodules 2) is doubled to 2L entries and
  // decoder layer i reads entry 2i of that: entry 2i mod L of the table (a PEFT quirk kept as is).
  const std::size_t L = table.size();
  std::vector<nn::PrefixKV> layers;
  for (std::size_t i = 0; i < L; ++i) layers.push_back(table[(2 * i) % L]);
  return layers;
}

}  // namespace

void prefill_past_prefixes(models::BaseModelImpl& model, const std::vector<PastPrefixRows>& groups, std::int64_t length,
                           nn::KVCache& cache) {
  ADAPTERS_CHECK(cache.length() == 0, "prefix tuning: the past prefix fills an empty cache, this one holds ",
                 cache.length(), " tokens");
  std::vector<std::vector<nn::PrefixKV>> tables(groups.size());  // empty for a group without a prefix
  const nn::PrefixKV* like = nullptr;
  for (std::size_t g = 0; g < groups.size(); ++g) {
    if (groups[g].adapter.empty()) continue;
    PrefixTuningGroupImpl* group = past_group(model, groups[g].adapter);
    ADAPTERS_CHECK(group != nullptr, "prefix tuning: adapter '", groups[g].adapter, "' has no past prefix in the model");
    tables[g] = past_table(*group, groups[g].rows);
    like = &tables[g].front();
  }
  if (like == nullptr) return;
  const bool encoder_decoder = models::arch_spec(model.config().model_type).kind == models::ArchKind::EncoderDecoder;
  const std::size_t layers = static_cast<std::size_t>(past_layers(model));  // every table's length
  for (std::size_t i = 0; i < layers; ++i) {
    std::vector<torch::Tensor> keys, values;
    for (std::size_t g = 0; g < groups.size(); ++g) {
      if (tables[g].empty()) {  // (rows,Hkv,length,D) zeros
        std::vector<std::int64_t> shape = like->key.sizes().vec();
        shape[0] = groups[g].rows;
        shape[2] = length;
        keys.push_back(torch::zeros(shape, like->key.options()));
        values.push_back(torch::zeros(shape, like->value.options()));
        continue;
      }
      const nn::PrefixKV& kv = tables[g][i];
      const std::int64_t fill = length - kv.key.size(2);
      keys.push_back(fill > 0 ? torch::constant_pad_nd(kv.key, {0, 0, fill, 0}) : kv.key);
      values.push_back(fill > 0 ? torch::constant_pad_nd(kv.value, {0, 0, fill, 0}) : kv.value);
    }
    // Encoder-decoder caches hold decoder layer i's self-attention in slot 2i (cross-attention 2i+1).
    const std::size_t slot = encoder_decoder ? 2 * i : i;
    cache.layer(slot)->append(torch::cat(keys, 0).contiguous(), torch::cat(values, 0).contiguous());
  }
}

MethodSpec prefix_tuning_method() {
  MethodSpec spec;
  spec.name = "prefix_tuning";
  spec.architecture = "prefix_tuning";
  spec.presets = {{"prefix_tuning", json::object()}, {"prefix_tuning_flat", {{"flat", true}}}};
  spec.normalize = [](const json& options, const std::string& source) {
    return PrefixTuningConfig::from_json(options, source).to_json();
  };
  spec.attach = attach;
  spec.key_aliases = [](const json&) { return std::vector<std::pair<std::string, std::string>>(); };
  spec.model_key_aliases = pool_aliases;
  spec.eject = eject;
  return spec;
}

}  // namespace adapters::methods
