// The LoRA family: config (presets, validation, JSON round trip), the per-layer deltas (LoRA,
// (IA)^3, VeRA, DoRA) with their merge rules, VeRA's model-level shared projections, placement at
// the adapted linear layers, and averaging.
#include "adapters/methods/lora.h"

#include <torch/torch.h>

#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <cmath>
#include <regex>
#include <set>

#include "adapters/core/regex.h"
#include "adapters/formats/keys.h"
#include "adapters/model.h"
#include "adapters/models/registry.h"
#include "adapters/nn/adapted_linear.h"
#include "adapters/nn/linear.h"
#include "adapters/nn/model_hooks.h"
#include "adapters/core/limits.h"

namespace adapters::methods {

using nn::OutputSlice;
using torch::Tensor;

// ---- config ---------------------------------------------------------------------------------

namespace {

const std::set<std::string>& known_keys() {
  static const std::set<std::string> keys = {
      "architecture", "selfattn_lora", "intermediate_lora", "output_lora", "leave_out",
      "r", "alpha", "dropout", "attn_matrices", "composition_mode",
      "init_weights", "use_gating", "use_rslora", "use_dora", "vera_d",
      "vera_b", "projection_prng_key", "target_modules", "exclude_modules", "layers_to_transform",
      "rank_pattern", "alpha_pattern", "feedforward_modules"};
  return keys;
}

const std::vector<std::string>& attention_roles() {
  static const std::vector<std::string> roles = {nn::role::kQuery, nn::role::kKey, nn::role::kValue,
                                                 nn::role::kAttentionOut};
  return roles;
}

bool is_attention_role(const std::string& role) {
  const auto& roles = attention_roles();
  return std::find(roles.begin(), roles.end(), role) != roles.end();
}

// The reference's location key of a role: where gating scores are stored.
std::string location_key(const std::string& role) {
  if (is_attention_role(role)) return "selfattn_lora";
  if (role == nn::role::kIntermediate) return "intermediate_lora";
  if (role == nn::role::kOutput) return "output_lora";
  return role + "_lora";
}

std::regex config_regex(const std::string& pattern) { return bounded_regex(pattern, "PEFT config"); }

bool regex_matches(const std::string& path, const std::string& pattern) {
  return bounded_regex_match(path, pattern, "PEFT config");
}

// A module selector of PEFT: a list of names or one regex string; null selects nothing.
void check_module_selector(const JsonReader& r, const char* key) {
  if (!r.has(key) || r.raw(key).is_null()) return;
  const json& v = r.raw(key);
  if (v.is_string()) {
    try {
      config_regex(v.get<std::string>());
    } catch (const Error& e) {
      r.fail(key, str("a valid regular expression (", e.what(), ")"));
    }
    return;
  }
  if (!v.is_array()) r.fail(key, "a list of module names or one regex string");
  for (const auto& name : v) {
    if (!name.is_string() || name.get<std::string>().empty()) r.fail(key, "a list of non-empty module names");
  }
}

bool selector_matches(const json& selector, const std::vector<std::string>& paths) {
  if (selector.is_null()) return false;
  for (const auto& path : paths) {
    if (selector.is_string()) {
      if (regex_matches(path, selector.get<std::string>())) return true;
      continue;
    }
    for (const auto& item : selector) {
      const std::string name = item.get<std::string>();
      if (path == name || (path.size() > name.size() && path.compare(path.size() - name.size(), name.size(), name) == 0 &&
                           path[path.size() - name.size() - 1] == '.')) {
        return true;
      }
    }
  }
  return false;
}

// PEFT's layer index of a module path: the number in its last ".<name>.<i>." (-1 when none).
std::int64_t peft_layer_index(const std::string& path) {
  static const std::regex layer(R"(.*\.[^.]*\.(\d+)\..*)");
  std::smatch m;
  if (!std::regex_match(path, m, layer)) return -1;
  return std::stoll(m[1].str());
}

// The value of the first pattern of `patterns` ({pattern: value}) that matches a path, else null:
// the module name itself, else "(.*\.)?(pattern)$", or a "^"-anchored pattern from the start.
json pattern_value(const json& patterns, const std::vector<std::string>& paths) {
  for (const auto& path : paths) {
    if (patterns.contains(path)) return patterns[path];
  }
  for (auto it = patterns.begin(); it != patterns.end(); ++it) {
    const std::string& pattern = it.key();
    for (const auto& path : paths) {
      const bool hit = pattern.rfind('^', 0) == 0 ? std::regex_search(path, config_regex(pattern), std::regex_constants::match_continuous)
                                                  : regex_matches(path, "(.*\\.)?(" + pattern + ")");
      if (hit) return it.value();
    }
  }
  return json();
}

}  // namespace

bool LoRAConfig::targets(const std::vector<std::string>& paths) const {
  if (!selector_matches(target_modules, paths) || selector_matches(exclude_modules, paths)) return false;
  if (layers_to_transform.empty() || target_modules.is_string()) return true;
  // PEFT reads the index from the module's path in the wrapped model ("model.layers.3.self_attn..."):
  // the first of our names for the module (bare, then prefixed) that has one.
  std::int64_t layer = -1;
  for (const auto& path : paths) {
    if ((layer = peft_layer_index(path)) >= 0) break;
  }
  return std::find(layers_to_transform.begin(), layers_to_transform.end(), layer) != layers_to_transform.end();
}

bool LoRAConfig::scales_input(const std::vector<std::string>& paths) const {
  if (!is_ia3() || feedforward_modules.is_null()) return false;
  for (const auto& path : paths) {
    if (feedforward_modules.is_string()) {
      if (regex_matches(path, feedforward_modules.get<std::string>())) return true;
      continue;
    }
    for (const auto& item : feedforward_modules) {  // PEFT: a plain suffix match
      const std::string name = item.get<std::string>();
      if (path.size() >= name.size() && path.compare(path.size() - name.size(), name.size(), name) == 0) return true;
    }
  }
  return false;
}

LoRAConfig LoRAConfig::for_module(const std::vector<std::string>& paths) const {
  LoRAConfig c = *this;
  if (const json rank = pattern_value(rank_pattern, paths); !rank.is_null()) c.r = rank.get<std::int64_t>();
  if (const json a = pattern_value(alpha_pattern, paths); !a.is_null()) c.alpha = a;
  return c;
}

LoRAConfig LoRAConfig::from_json(const json& options, const std::string& source) {
  JsonReader r(options, source);
  r.reject_unknown(known_keys());
  if (r.has("architecture") && r.raw("architecture") != "lora") r.fail("architecture", "\"lora\"");
  LoRAConfig c;
  c.selfattn_lora = r.get_bool("selfattn_lora", c.selfattn_lora);
  c.intermediate_lora = r.get_bool("intermediate_lora", c.intermediate_lora);
  c.output_lora = r.get_bool("output_lora", c.output_lora);
  if (r.has("leave_out")) c.leave_out = r.get_int_list("leave_out");
  c.r = r.get_int("r", c.r);
  if (c.r < 1 || c.r > kMaxAdapterSize) r.fail("r", str("a rank in [1, ", kMaxAdapterSize, "]"));
  if (r.has("alpha")) {
    c.alpha = r.raw("alpha");
    if (!c.alpha.is_number() || c.alpha.is_boolean() || c.alpha.get<double>() <= 0) r.fail("alpha", "a positive number");
  }
  c.dropout = r.get_double("dropout", c.dropout);
  if (c.dropout < 0.0 || c.dropout >= 1.0) r.fail("dropout", "a probability in [0, 1)");
  if (r.has("attn_matrices")) {
    c.attn_matrices = r.get_string_list("attn_matrices");
    std::set<std::string> seen;
    for (const auto& m : c.attn_matrices) {
      if (!is_attention_role(m)) r.fail("attn_matrices", "a list of \"q\", \"k\", \"v\" (and \"o\"); found \"" + m + "\"");
      if (!seen.insert(m).second) r.fail("attn_matrices", "a list without repetitions; \"" + m + "\" appears twice");
    }
  }
  c.composition_mode = r.get_string("composition_mode", c.composition_mode);
  if (c.composition_mode != "add" && c.composition_mode != "scale") r.fail("composition_mode", "\"add\" or \"scale\"");
  c.init_weights = r.get_string("init_weights", c.init_weights);
  if (c.init_weights != "lora" && c.init_weights != "bert" && c.init_weights != "ia3" && c.init_weights != "vera") {
    r.fail("init_weights", "\"lora\", \"bert\", \"ia3\" or \"vera\"");
  }
  c.use_gating = r.get_bool("use_gating", c.use_gating);
  c.use_rslora = r.get_bool("use_rslora", c.use_rslora);
  c.use_dora = r.get_bool("use_dora", c.use_dora);
  c.vera_d = r.get_double("vera_d", c.vera_d);
  c.vera_b = r.get_double("vera_b", c.vera_b);
  c.projection_prng_key = r.get_int("projection_prng_key", c.projection_prng_key);
  check_module_selector(r, "target_modules");
  check_module_selector(r, "exclude_modules");
  check_module_selector(r, "feedforward_modules");
  if (r.has("feedforward_modules")) c.feedforward_modules = r.raw("feedforward_modules");
  if (r.has("target_modules")) c.target_modules = r.raw("target_modules");
  if (r.has("exclude_modules")) c.exclude_modules = r.raw("exclude_modules");
  if (r.has("layers_to_transform")) c.layers_to_transform = r.get_int_list("layers_to_transform");
  for (const char* key : {"rank_pattern", "alpha_pattern"}) {
    if (!r.has(key) || r.raw(key).is_null()) continue;
    const json& patterns = r.raw(key);
    if (!patterns.is_object()) r.fail(key, "an object {pattern: number}");
    for (auto it = patterns.begin(); it != patterns.end(); ++it) {
      const bool rank = std::string(key) == "rank_pattern";
      if (!it.value().is_number() || it.value().is_boolean() || it.value().get<double>() <= 0 ||
          (rank && !it.value().is_number_integer())) {
        r.fail(key, str(rank ? "a positive integer rank" : "a positive alpha", " for pattern '", it.key(), "'"));
      }
      try {
        std::regex re(it.key());
      } catch (const std::regex_error& e) {
        r.fail(key, str("patterns that are valid regular expressions ('", it.key(), "': ", e.what(), ")"));
      }
    }
    (std::string(key) == "rank_pattern" ? c.rank_pattern : c.alpha_pattern) = patterns;
  }

  if (c.is_ia3() && c.r != 1) {
    throw Error(str(source, ": composition_mode \"scale\" ((IA)^3) needs r = 1, found r = ", c.r));
  }
  if (c.is_vera() && c.is_ia3()) throw Error(source + ": init_weights \"vera\" needs composition_mode \"add\"");
  if (c.use_dora && c.is_ia3()) throw Error(source + ": use_dora needs composition_mode \"add\"");
  if (c.use_dora && c.is_vera()) throw Error(source + ": use_dora and init_weights \"vera\" cannot be combined");
  if (!c.feedforward_modules.is_null() && (!c.is_ia3() || !c.targets_modules())) {
    throw Error(source + ": feedforward_modules needs (IA)^3 (composition_mode \"scale\") with target_modules");
  }
  if (c.use_dora && c.use_gating) throw NotSupported(source + ": use_gating with use_dora is not supported");
  const bool attention = c.selfattn_lora && !c.attn_matrices.empty();
  if (!c.targets_modules() && !attention && !c.intermediate_lora && !c.output_lora) {
    throw Error(source + ": the adapter is placed nowhere (selfattn_lora with attn_matrices, intermediate_lora "
                         "and output_lora select no layer)");
  }
  return c;
}

json LoRAConfig::to_json() const {
  // The keys of the reference's LoRAConfig (3.2.1), sorted as it writes them; the extensions only
  // when they differ from their defaults, so that the reference reads our files.
  json j = {{"alpha", alpha},
            {"architecture", "lora"},
            {"attn_matrices", attn_matrices},
            {"composition_mode", composition_mode},
            {"dropout", dropout},
            {"init_weights", init_weights},
            {"intermediate_lora", intermediate_lora},
            {"output_lora", output_lora},
            {"r", r},
            {"selfattn_lora", selfattn_lora},
            {"use_gating", use_gating}};
  if (!leave_out.empty()) j["leave_out"] = leave_out;
  if (use_rslora) j["use_rslora"] = true;
  if (use_dora) j["use_dora"] = true;
  if (targets_modules()) j["target_modules"] = target_modules;
  if (!exclude_modules.is_null()) j["exclude_modules"] = exclude_modules;
  if (!layers_to_transform.empty()) j["layers_to_transform"] = layers_to_transform;
  if (!rank_pattern.empty()) j["rank_pattern"] = rank_pattern;
  if (!alpha_pattern.empty()) j["alpha_pattern"] = alpha_pattern;
  if (!feedforward_modules.is_null()) j["feedforward_modules"] = feedforward_modules;
  if (is_vera()) {
    j["vera_d"] = vera_d;
    j["vera_b"] = vera_b;
    j["projection_prng_key"] = projection_prng_key;
  }
  return j;
}

std::string LoRAConfig::variant() const {
  if (is_ia3()) return "ia3";
  if (is_vera()) return "vera";
  if (use_dora) return "dora";
  return "lora";
}

double LoRAConfig::scaling() const {
  if (is_vera()) return 1.0;
  const double a = alpha.get<double>();
  return use_rslora ? a / std::sqrt(static_cast<double>(r)) : a / static_cast<double>(r);
}

bool LoRAConfig::places_at(const std::string& role, std::int64_t layer) const {
  if (std::find(leave_out.begin(), leave_out.end(), layer) != leave_out.end()) return false;
  if (is_attention_role(role)) {
    return selfattn_lora && std::find(attn_matrices.begin(), attn_matrices.end(), role) != attn_matrices.end();
  }
  if (role == nn::role::kIntermediate) return intermediate_lora;
  if (role == nn::role::kOutput) return output_lora;
  return false;
}

// ---- the deltas -----------------------------------------------------------------------------

namespace {

// numpy.column_stack of two score arrays, as the reference stores repeated gating scores.
Tensor column_stack(const Tensor& a, const Tensor& b) {
  return torch::cat({a.dim() == 1 ? a.unsqueeze(1) : a, b.dim() == 1 ? b.unsqueeze(1) : b}, 1);
}

// What every delta of the family shares: the slices of its layer that it adapts, its scale, the
// optional gate and dropout, and the gating-score cache.
class FamilyDelta : public nn::LinearDelta {
 public:
  FamilyDelta(std::string adapter, const LoRAConfig& config, const nn::AdaptedLinearImpl& site,
              std::vector<OutputSlice> slices)
      : adapter_(std::move(adapter)),
        layer_(site.layer()),
        location_(location_key(slices.front().role)),
        layout_(site.slices()),
        slices_(std::move(slices)),
        in_features_(site.in_features()),
        out_features_(site.out_features()),
        scaling_(config.scaling()),
        dropout_p_(config.is_ia3() ? 0.0 : config.dropout) {
    for (const auto& s : slices_) rows_ += s.size;
    covers_all_ = rows_ == out_features_;
    if (config.use_gating) {
      gate_ = register_module("gate", torch::nn::Linear(in_features_, static_cast<std::int64_t>(slices_.size())));
      torch::NoGradGuard no_grad;
      gate_->weight.normal_(0.0, 0.02);
    }
    if (dropout_p_ > 0.0) dropout_ = register_module("lora_dropout", torch::nn::Dropout(dropout_p_));
  }

 protected:
  Tensor dropped(const Tensor& x) { return dropout_ ? dropout_(x) : x; }

  // The gate per chosen slice, (B, n): the mean over the sequence of sigmoid(gate(x)); stored in
  // the context's gating scores when asked for.
  Tensor gate(const Tensor& x, nn::ForwardContext& ctx) {
    ADAPTERS_CHECK(x.dim() == 3, "adapter '", adapter_, "': use_gating needs (batch, sequence, features) inputs, found ",
                   x.sizes());
    Tensor g = torch::sigmoid(gate_(x)).mean(1);  // (B, n)
    if (ctx.output_gating_scores) {
      Tensor score = g.detach().squeeze();
      if (score.dim() == 0) score = score.unsqueeze(0);
      auto& cache = ctx.gating_scores[adapter_][layer_];
      auto it = cache.find(location_);
      cache[location_] = it == cache.end() ? score : column_stack(it->second, score);
    }
    return g;
  }

  // Per-row values of the gate, (B, 1, rows): each slice's gate repeated over its rows.
  Tensor gate_rows(const Tensor& g) const {
    if (slices_.size() == 1) return g.unsqueeze(-1);  // (B, 1, 1) broadcasts over the rows
    std::vector<std::int64_t> sizes;
    for (const auto& s : slices_) sizes.push_back(s.size);
    return g.repeat_interleave(torch::tensor(sizes, torch::TensorOptions().dtype(torch::kLong).device(g.device())), 1)
        .unsqueeze(1);
  }

  // (..., rows) over the chosen slices -> (..., out), `fill` in the other columns.
  Tensor spread(const Tensor& part, double fill) const {
    if (covers_all_) return part;
    std::vector<Tensor> pieces;
    std::int64_t taken = 0;
    for (const auto& s : layout_) {
      const bool chosen = std::any_of(slices_.begin(), slices_.end(), [&](const OutputSlice& c) { return c.offset == s.offset; });
      if (chosen) {
        pieces.push_back(part.narrow(-1, taken, s.size));
        taken += s.size;
      } else {
        auto shape = part.sizes().vec();
        shape.back() = s.size;
        pieces.push_back(torch::full(shape, fill, part.options()));
      }
    }
    return torch::cat(pieces, -1);
  }

  // The rows of `weight` (or entries of `bias`) of chosen slice i.
  static Tensor rows_of(Tensor& t, const OutputSlice& s) { return t.narrow(0, s.offset, s.size); }

  std::string adapter_;
  std::int64_t layer_;
  std::string location_;
  std::vector<OutputSlice> layout_;  // every slice of the layer
  std::vector<OutputSlice> slices_;  // the chosen ones, in order
  std::int64_t in_features_, out_features_;
  std::int64_t rows_ = 0;
  bool covers_all_ = false;
  double scaling_;
  double dropout_p_;
  torch::nn::Linear gate_{nullptr};
  torch::nn::Dropout dropout_{nullptr};
};

void init_matrix(Tensor& t, const std::string& scheme, bool is_a) {
  torch::NoGradGuard no_grad;
  if (scheme == "lora") {
    if (is_a) {
      torch::nn::init::kaiming_uniform_(t, std::sqrt(5.0));
    } else {
      t.zero_();
    }
  } else if (scheme == "bert") {
    t.normal_(0.0, 0.02);
  } else {
    t.fill_(1.0);  // "ia3"
  }
}

// LoRA: y += s * dropout(x) A^T B^T (the gate replaces s when gating). On a fused layer A stacks
// r rows per chosen slice and B the chosen slices' rows: slice i uses A[i r : (i+1) r] and its
// own rows of B (the reference's grouped conv1d).
class LoRADeltaImpl : public FamilyDelta {
 public:
  LoRADeltaImpl(const std::string& adapter, const LoRAConfig& c, const nn::AdaptedLinearImpl& site,
                std::vector<OutputSlice> slices)
      : FamilyDelta(adapter, c, site, std::move(slices)), r_(c.r) {
    const auto n = static_cast<std::int64_t>(slices_.size());
    lora_A = register_parameter("lora_A", torch::zeros({r_ * n, in_features_}));
    lora_B = register_parameter("lora_B", torch::zeros({rows_, r_}));
    init_matrix(lora_A, c.init_weights, true);
    init_matrix(lora_B, c.init_weights, false);
  }

  // (..., rows): dropout(x) A^T B^T, slice by slice.
  Tensor low_rank(const Tensor& x) {
    Tensor a = nn::linear(dropped(x), lora_A);
    if (slices_.size() == 1) return nn::linear(a, lora_B);
    std::vector<Tensor> parts;
    std::int64_t row = 0;
    for (std::size_t i = 0; i < slices_.size(); ++i) {
      parts.push_back(nn::linear(a.narrow(-1, static_cast<std::int64_t>(i) * r_, r_), lora_B.narrow(0, row, slices_[i].size)));
      row += slices_[i].size;
    }
    return torch::cat(parts, -1);
  }

  Tensor apply(const nn::LinearCall& call, const Tensor& y) override {
    if (gate_) return y + spread(low_rank(call.x) * gate_rows(gate(call.x, call.ctx)), 0.0);
    if (covers_all_ && slices_.size() == 1 && y.is_contiguous()) {
      // One fused GEMM: y + s * (x A^T) B^T.
      return nn::add_linear(y, nn::linear(dropped(call.x), lora_A), lora_B, scaling_);
    }
    // A fused layer (GPT-2's c_attn with q and v chosen): each chosen slice's columns get their
    // delta added in place to a copy of y, without building the full-width delta.
    Tensor a = nn::linear(dropped(call.x), lora_A);  // (..., n*r)
    Tensor out = y.clone();
    std::int64_t row = 0;
    for (std::size_t i = 0; i < slices_.size(); ++i) {
      const Tensor b = lora_B.narrow(0, row, slices_[i].size);
      out.narrow(-1, slices_[i].offset, slices_[i].size)
          .add_(nn::linear(a.narrow(-1, static_cast<std::int64_t>(i) * r_, r_), b), scaling_);
      row += slices_[i].size;
    }
    return out;
  }

  std::string merge_blocker() const override {
    return gate_ ? "its output depends on the input through the gate (use_gating)" : "";
  }

  void merge_into(Tensor& weight, Tensor& bias) const override {
    std::int64_t row = 0;
    for (std::size_t i = 0; i < slices_.size(); ++i) {
      const Tensor a = lora_A.detach().narrow(0, static_cast<std::int64_t>(i) * r_, r_).to(torch::kFloat);
      const Tensor b = lora_B.detach().narrow(0, row, slices_[i].size).to(torch::kFloat);
      Tensor w = rows_of(weight, slices_[i]);
      w.copy_(w.to(torch::kFloat) + scaling_ * torch::matmul(b, a));
      row += slices_[i].size;
    }
  }

  std::int64_t r_;
  Tensor lora_A, lora_B;
};

// (IA)^3: y *= s * lora_B over the chosen rows (bias included, as the reference's forward); the
// gate replaces s when gating.
// (IA)^3: y * (s * l) over the chosen rows, bias included; with scale_input (PEFT's
// feedforward_modules) W (s * l * x) + b, lora_B then being (1, in).
class IA3DeltaImpl : public FamilyDelta {
 public:
  IA3DeltaImpl(const std::string& adapter, const LoRAConfig& c, const nn::AdaptedLinearImpl& site,
               std::vector<OutputSlice> slices, bool scale_input = false)
      : FamilyDelta(adapter, c, site, std::move(slices)), scale_input_(scale_input) {
    ADAPTERS_CHECK(!scale_input || (covers_all_ && !gate_), "adapter '", adapter,
                   "': an input-scaling (IA)^3 adapts a whole layer, without gating");
    lora_B = register_parameter("lora_B", scale_input ? torch::zeros({1, in_features_}) : torch::zeros({rows_, 1}));
    init_matrix(lora_B, c.init_weights, false);
  }

  Tensor apply(const nn::LinearCall& call, const Tensor& y) override {
    const Tensor l = lora_B.view(-1);
    if (scale_input_) return y + nn::linear(call.x * (l * scaling_ - 1.0), call.weight);  // keeps earlier deltas
    if (gate_) return y * spread(l * gate_rows(gate(call.x, call.ctx)), 1.0);
    return y * spread(l * scaling_, 1.0);
  }

  std::string merge_blocker() const override {
    return gate_ ? "its output depends on the input through the gate (use_gating)" : "";
  }

  void merge_into(Tensor& weight, Tensor& bias) const override {
    const Tensor factor = lora_B.detach().view(-1).to(torch::kFloat) * scaling_;
    if (scale_input_) {  // the columns of W; the bias is not scaled
      weight.copy_(weight.to(torch::kFloat) * factor.unsqueeze(0));
      return;
    }
    std::int64_t row = 0;
    for (const auto& s : slices_) {
      const Tensor f = factor.narrow(0, row, s.size);
      Tensor w = rows_of(weight, s);
      w.copy_(w.to(torch::kFloat) * f.unsqueeze(1));
      // The reference (3.2.1) leaves the bias alone, so its merged model differs from the
      // unmerged one; the forward scales the bias too, and so must the merge.
      if (bias.defined()) {
        Tensor b = rows_of(bias, s);
        b.copy_(b.to(torch::kFloat) * f);
      }
      row += s.size;
    }
  }

  Tensor lora_B;

 private:
  bool scale_input_;
};

// VeRA's frozen random projections of one adapter, shared by all its layers: buffers (not
// parameters: they are never trained and not saved, but regenerated from the seed).
class VeraProjectionsImpl : public torch::nn::Module {
 public:
  VeraProjectionsImpl(std::int64_t r, std::int64_t max_in, std::int64_t max_out, std::int64_t seed,
                      const torch::TensorOptions& options) {
    // PEFT's VeraModel: Kaiming-uniform (gain sqrt(2), fan in) from one CPU generator, A then B.
    at::Generator gen = at::detail::createCPUGenerator(static_cast<std::uint64_t>(seed));
    Tensor a = torch::empty({r, max_in});
    Tensor b = torch::empty({max_out, r});
    const double bound_a = std::sqrt(6.0 / static_cast<double>(max_in));
    const double bound_b = std::sqrt(6.0 / static_cast<double>(r));
    {
      torch::NoGradGuard no_grad;
      a.uniform_(-bound_a, bound_a, gen);
      b.uniform_(-bound_b, bound_b, gen);
    }
    vera_A = register_buffer("vera_A", a.to(options));
    vera_B = register_buffer("vera_B", b.to(options));
  }
  Tensor vera_A;  // (r, max in)
  Tensor vera_B;  // (max out, r)
};

// The model-level container of VeRA projections, one entry per VeRA adapter.
class VeraSharedImpl : public nn::ModelHook {
 public:
  static constexpr const char* kName = "vera";

  std::shared_ptr<VeraProjectionsImpl> add(const std::string& adapter, std::shared_ptr<VeraProjectionsImpl> p) {
    delete_adapter(adapter);
    projections_[adapter] = register_module(adapter, std::move(p));
    return projections_[adapter];
  }
  void delete_adapter(const std::string& name) override {
    if (projections_.erase(name)) unregister_module(name);
  }

 private:
  std::map<std::string, std::shared_ptr<VeraProjectionsImpl>> projections_;
};

// VeRA: y += lambda_b * ((lambda_d * (dropout(x) A^T)) B^T) with the shared frozen A and B cut
// to this layer's size (the gate, when gating, multiplies the delta).
class VeraDeltaImpl : public FamilyDelta {
 public:
  VeraDeltaImpl(const std::string& adapter, const LoRAConfig& c, const nn::AdaptedLinearImpl& site,
                std::vector<OutputSlice> slices, std::shared_ptr<VeraProjectionsImpl> shared)
      : FamilyDelta(adapter, c, site, std::move(slices)), shared_(std::move(shared)) {
    vera_lambda_b = register_parameter("vera_lambda_b", torch::full({rows_}, c.vera_b));
    vera_lambda_d = register_parameter("vera_lambda_d", torch::full({c.r}, c.vera_d));
  }

  Tensor a() const { return shared_->vera_A.narrow(1, 0, in_features_); }
  Tensor b() const { return shared_->vera_B.narrow(0, 0, rows_); }

  Tensor apply(const nn::LinearCall& call, const Tensor& y) override {
    Tensor h = torch::matmul(dropped(call.x), a().t()) * vera_lambda_d;
    Tensor d = torch::matmul(h, b().t()) * vera_lambda_b;
    if (gate_) d = d * gate_rows(gate(call.x, call.ctx));
    return y + d;
  }

  std::string merge_blocker() const override {
    return gate_ ? "its output depends on the input through the gate (use_gating)" : "";
  }

  void merge_into(Tensor& weight, Tensor& bias) const override {
    const Tensor bb = vera_lambda_b.detach().to(torch::kFloat).unsqueeze(1) * b().to(torch::kFloat);
    const Tensor aa = vera_lambda_d.detach().to(torch::kFloat).unsqueeze(1) * a().to(torch::kFloat);
    weight.copy_(weight.to(torch::kFloat) + torch::matmul(bb, aa));
  }

  std::shared_ptr<VeraProjectionsImpl> shared_;
  Tensor vera_lambda_b, vera_lambda_d;
};

// DoRA: the adapted weight W' = W + s B A, renormalised row by row to the trainable magnitude m:
// y = (m / ||W'||) * (x W'^T) + b, computed as PEFT does: the base output plus
// (m / ||W'|| - 1) x W^T + (m / ||W'||) s dropout(x) A^T B^T, with ||W'|| detached.
class DoraDeltaImpl : public FamilyDelta {
 public:
  DoraDeltaImpl(const std::string& adapter, const LoRAConfig& c, const nn::AdaptedLinearImpl& site,
                std::vector<OutputSlice> slices)
      : FamilyDelta(adapter, c, site, std::move(slices)), r_(c.r) {
    lora_A = register_parameter("lora_A", torch::zeros({r_, in_features_}));
    lora_B = register_parameter("lora_B", torch::zeros({rows_, r_}));
    init_matrix(lora_A, c.init_weights, true);
    init_matrix(lora_B, c.init_weights, false);
    torch::NoGradGuard no_grad;
    const Tensor norm = adapted_norm(site.weight_out_in().detach().to(torch::kCPU, torch::kFloat), lora_A, lora_B);
    lora_magnitude_vector = register_parameter("lora_magnitude_vector", norm.clone());
  }

  // Row norms of W + s B A (out).
  Tensor adapted_norm(const Tensor& w, const Tensor& a, const Tensor& b) const {
    return (w + scaling_ * torch::matmul(b, a)).norm(2, torch::IntArrayRef{1});
  }

  Tensor apply(const nn::LinearCall& call, const Tensor& y) override {
    const Tensor x = dropped(call.x);
    const Tensor lora = torch::matmul(torch::matmul(x, lora_A.t()), lora_B.t());
    const Tensor wn = adapted_norm(call.weight, lora_A, lora_B).detach();
    const Tensor mag = lora_magnitude_vector / wn;
    Tensor base;
    if (dropout_ && is_training()) {
      base = torch::nn::functional::linear(x, call.weight);
    } else {
      base = call.bias.defined() ? call.base - call.bias : call.base;
    }
    return y + (mag - 1) * base + mag * scaling_ * lora;
  }

  std::string merge_blocker() const override { return ""; }

  void merge_into(Tensor& weight, Tensor& bias) const override {
    const Tensor w = weight.to(torch::kFloat) +
                     scaling_ * torch::matmul(lora_B.detach().to(torch::kFloat), lora_A.detach().to(torch::kFloat));
    const Tensor mag = lora_magnitude_vector.detach().to(torch::kFloat) / w.norm(2, torch::IntArrayRef{1});
    weight.copy_(w * mag.unsqueeze(1));
  }

  std::int64_t r_;
  Tensor lora_A, lora_B, lora_magnitude_vector;
};

struct Placement {
  nn::AdaptedLinearImpl* site;
  std::vector<OutputSlice> slices;
  LoRAConfig config;
  bool scale_input = false;  // (IA)^3 on a feedforward module
};

// Placement by role: the slices of each layer whose role and layer the config selects.
std::vector<Placement> places_by_role(const LoRAConfig& c, models::BaseModelImpl& model, const std::string& source) {
  std::vector<Placement> places;
  for (nn::AdaptedLinearImpl* site : model.sites().linear) {
    std::vector<OutputSlice> chosen;
    for (const auto& s : site->slices()) {
      if (c.places_at(s.role, site->layer())) chosen.push_back(s);
    }
    if (chosen.empty()) continue;
    if (site->is_fused() && (c.is_vera() || c.is_dora())) {
      throw NotSupported(str(source, ": ", c.variant(), " on a fused projection (", site->describe(),
                             ") is not supported yet"));
    }
    places.push_back({site, std::move(chosen), c});
  }
  return places;
}

// Placement by module path (target_modules): each targeted layer as a whole; none is an error.
std::vector<Placement> places_by_module(const LoRAConfig& c, models::BaseModelImpl& model, const std::string& source) {
  const std::string prefix = models::arch_spec(model.config().model_type).base_prefix;
  const auto& sites = model.sites();
  std::vector<Placement> places;
  for (std::size_t i = 0; i < sites.linear.size(); ++i) {
    const std::vector<std::string> paths = {sites.linear_paths[i], prefix + "." + sites.linear_paths[i]};
    if (!c.targets(paths)) continue;
    nn::AdaptedLinearImpl* site = sites.linear[i];
    places.push_back({site, {OutputSlice{"module", 0, site->out_features()}}, c.for_module(paths), c.scales_input(paths)});
  }
  if (places.empty()) {
    std::string some;
    for (std::size_t i = 0; i < sites.linear_paths.size() && i < 8; ++i) some += (i ? ", " : "") + sites.linear_paths[i];
    throw Error(str(source, ": target_modules ", describe(c.target_modules), " match no linear layer of this ",
                    model.config().model_type, " model (an adapter that adapts nothing would silently be the base model)"),
                "its linear layers are named like: " + some);
  }
  return places;
}

void attach(const std::string& adapter, const json& values, models::BaseModelImpl& model) {
  const std::string source = "adapter '" + adapter + "'";
  const LoRAConfig c = LoRAConfig::from_json(values, source);
  std::vector<Placement> places = c.targets_modules() ? places_by_module(c, model, source) : places_by_role(c, model, source);
  std::shared_ptr<VeraProjectionsImpl> shared;
  if (c.is_vera() && !places.empty()) {
    std::int64_t max_in = 0, max_out = 0;
    for (const auto& p : places) {
      max_in = std::max(max_in, p.site->in_features());
      max_out = std::max(max_out, p.site->out_features());
    }
    auto hook = model.hooks().get_or_create<VeraSharedImpl>(VeraSharedImpl::kName,
                                                            [] { return std::make_shared<VeraSharedImpl>(); });
    ADAPTERS_CHECK(hook != nullptr, source, ": the model-level hook '", VeraSharedImpl::kName,
                   "' exists with another type");
    const auto options = places.front().site->weight.options().requires_grad(false);
    shared = hook->add(adapter, std::make_shared<VeraProjectionsImpl>(c.r, max_in, max_out, c.projection_prng_key,
                                                                      torch::TensorOptions().dtype(options.dtype()).device(options.device())));
  }
  for (auto& p : places) {
    std::shared_ptr<nn::LinearDelta> delta;
    if (c.is_ia3()) {
      delta = std::make_shared<IA3DeltaImpl>(adapter, p.config, *p.site, p.slices, p.scale_input);
    } else if (c.is_vera()) {
      delta = std::make_shared<VeraDeltaImpl>(adapter, p.config, *p.site, p.slices, shared);
    } else if (c.is_dora()) {
      delta = std::make_shared<DoraDeltaImpl>(adapter, p.config, *p.site, p.slices);
    } else {
      delta = std::make_shared<LoRADeltaImpl>(adapter, p.config, *p.site, p.slices);
    }
    p.site->add_adapter(adapter, delta);
  }
}

}  // namespace

MethodSpec lora_method() {
  const json ia3 = {{"selfattn_lora", true},       {"intermediate_lora", true}, {"output_lora", false},
                    {"r", 1},                      {"alpha", 1},                {"attn_matrices", {"k", "v"}},
                    {"composition_mode", "scale"}, {"init_weights", "ia3"}};
  const json vera = {{"r", 256}, {"init_weights", "vera"}};
  const json dora = {{"use_dora", true}};
  MethodSpec spec;
  spec.name = "lora";
  spec.architecture = "lora";
  spec.presets = {{"lora", json::object()}, {"ia3", ia3}, {"vera", vera}, {"dora", dora}};
  spec.normalize = [](const json& options, const std::string& source) {
    return LoRAConfig::from_json(options, source).to_json();
  };
  spec.attach = attach;
  spec.key_aliases = [](const json&) { return std::vector<std::pair<std::string, std::string>>{}; };
  spec.capabilities.mergeable = true;
  spec.average = [](const AdapterModelImpl& model, const std::string& name, const std::vector<std::string>& sources,
                    const std::vector<double>& weights, const std::string& strategy, std::int64_t svd_rank) {
    const std::optional<std::int64_t> rank = svd_rank > 0 ? std::optional<std::int64_t>(svd_rank) : std::nullopt;
    AveragedAdapter out;
    out.tensors = average_lora_weights(model, name, sources, weights, strategy, rank);
    out.config = averaged_lora_config(model.adapter_config(sources.front()).values, strategy, rank);
    return out;
  };
  return spec;
}

// ---- averaging ------------------------------------------------------------------------------

const std::vector<std::string>& lora_combine_strategies() {
  static const std::vector<std::string> s = {"linear", "lora_linear_only_negate_b", "lora_delta_w_svd"};
  return s;
}

namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

LoRAConfig lora_config_of(const AdapterModelImpl& model, const std::string& name, const std::string& what) {
  const AdapterConfig& config = model.adapter_config(name);
  if (config.method != "lora") {
    throw Error(str(what, ": adapter '", name, "' is a ", config.method,
                    " adapter; this strategy combines LoRA-family adapters only"));
  }
  return LoRAConfig::from_json(config.values, str("adapter '", name, "'"));
}

}  // namespace

json averaged_lora_config(const json& config, const std::string& combine_strategy, std::optional<std::int64_t> svd_rank) {
  LoRAConfig c = LoRAConfig::from_json(config, "average_adapter");
  if (combine_strategy == "lora_delta_w_svd") {
    ADAPTERS_CHECK(svd_rank.has_value(), "average_adapter: combine_strategy \"lora_delta_w_svd\" needs svd_rank");
    ADAPTERS_CHECK(*svd_rank >= 1, "average_adapter: svd_rank must be at least 1, found ", *svd_rank);
    c.r = *svd_rank;
  }
  return c.to_json();
}

io::TensorMap average_lora_weights(const AdapterModelImpl& model, const std::string& new_name,
                                   const std::vector<std::string>& names, const std::vector<double>& weights,
                                   const std::string& combine_strategy, std::optional<std::int64_t> svd_rank) {
  const std::string what = str("average_adapter('", new_name, "', combine_strategy \"", combine_strategy, "\")");
  ADAPTERS_CHECK(!names.empty(), what, ": no adapters to average");
  ADAPTERS_CHECK(weights.size() == names.size(), what, ": ", names.size(), " adapters but ", weights.size(), " weights");
  const auto& strategies = lora_combine_strategies();
  if (std::find(strategies.begin(), strategies.end(), combine_strategy) == strategies.end()) {
    throw Error(str(what, ": unknown combine strategy for LoRA-family adapters"),
                "known: linear, lora_linear_only_negate_b, lora_delta_w_svd");
  }
  std::vector<LoRAConfig> configs;
  for (const auto& n : names) configs.push_back(lora_config_of(model, n, what));
  for (std::size_t i = 1; i < names.size(); ++i) {
    ADAPTERS_CHECK(configs[i].variant() == configs[0].variant(), what, ": adapter '", names[i], "' is ",
                   configs[i].variant(), ", adapter '", names[0], "' is ", configs[0].variant());
  }
  std::vector<io::TensorMap> states;
  for (const auto& n : names) states.push_back(model.adapter_state_dict(n));
  // The counterpart of names[0]'s key `key` in adapter i.
  auto counterpart = [&](const std::string& key, std::size_t i) -> const Tensor& {
    const std::string k = formats::rename_adapter(key, names[0], names[i]);
    auto it = states[i].find(k);
    ADAPTERS_CHECK(it != states[i].end(), what, ": adapter '", names[i], "' has no weight '", k, "' (adapter '", names[0],
                   "' has; are they placed alike?)");
    ADAPTERS_CHECK(it->second.sizes() == states[0].at(key).sizes(), what, ": weight '", k, "' has shape ",
                   it->second.sizes(), ", adapter '", names[0], "' has ", states[0].at(key).sizes());
    return it->second;
  };
  for (std::size_t i = 1; i < names.size(); ++i) {
    ADAPTERS_CHECK(states[i].size() == states[0].size(), what, ": adapter '", names[i], "' has ", states[i].size(),
                   " weights, adapter '", names[0], "' has ", states[0].size(), " (are they placed alike?)");
  }

  torch::NoGradGuard no_grad;
  io::TensorMap out;
  if (combine_strategy == "linear" || combine_strategy == "lora_linear_only_negate_b") {
    const bool negate_b = combine_strategy == "lora_linear_only_negate_b";
    for (const auto& [key, t0] : states[0]) {
      double sign_of_a = 1.0;
      if (negate_b) {
        if (ends_with(key, ".lora_A")) {
          sign_of_a = -1.0;  // marks: use |w|
        } else if (!ends_with(key, ".lora_B")) {
          throw Error(str(what, ": weight '", key, "' is neither lora_A nor lora_B; this strategy needs plain LoRA "
                                                   "or (IA)^3 adapters without gates"));
        }
      }
      Tensor sum = torch::zeros_like(t0, t0.options().requires_grad(false));
      for (std::size_t i = 0; i < names.size(); ++i) {
        const double w = sign_of_a < 0 ? std::abs(weights[i]) : weights[i];
        sum.add_(counterpart(key, i).detach(), w);
      }
      out[formats::rename_adapter(key, names[0], new_name)] = sum;
    }
    return out;
  }

  // lora_delta_w_svd
  ADAPTERS_CHECK(svd_rank.has_value(), what, ": svd_rank must be set");
  ADAPTERS_CHECK(*svd_rank >= 1, what, ": svd_rank must be at least 1, found ", *svd_rank);
  if (configs[0].variant() != "lora" || configs[0].use_gating) {
    throw Error(str(what, ": adapter '", names[0], "' is ", configs[0].use_gating ? "gated " : "", configs[0].variant(),
                    "; this strategy combines plain LoRA adapters (lora_A and lora_B) only"));
  }
  for (std::size_t i = 1; i < names.size(); ++i) {
    ADAPTERS_CHECK(!configs[i].use_gating, what, ": adapter '", names[i], "' is gated (use_gating)");
  }
  LoRAConfig target = configs[0];
  target.r = *svd_rank;
  const double new_scale = target.scaling();
  for (const auto& [key, a0] : states[0]) {
    if (!ends_with(key, ".lora_A")) continue;
    const std::string prefix = key.substr(0, key.size() - std::string("lora_A").size());
    const std::string key_b = prefix + "lora_B";
    ADAPTERS_CHECK(states[0].count(key_b), what, ": weight '", key_b, "' is missing");
    const Tensor& b0 = states[0].at(key_b);
    if (a0.size(0) != b0.size(1)) {
      throw NotSupported(str(what, ": '", prefix, "' is a fused projection; the SVD strategy does not support it yet"));
    }
    Tensor delta;
    for (std::size_t i = 0; i < names.size(); ++i) {
      const Tensor& a = i == 0 ? a0 : states[i].at(formats::rename_adapter(key, names[0], names[i]));
      const Tensor& b = i == 0 ? b0 : states[i].at(formats::rename_adapter(key_b, names[0], names[i]));
      ADAPTERS_CHECK(a.size(1) == a0.size(1) && b.size(0) == b0.size(0), what, ": adapter '", names[i],
                     "' has other shapes at '", prefix, "'");
      Tensor d = torch::matmul(b.detach().to(torch::kDouble), a.detach().to(torch::kDouble)) *
                 (weights[i] * configs[i].scaling());
      delta = delta.defined() ? delta + d : d;
    }
    delta = delta / new_scale;
    const std::int64_t k = *svd_rank;
    ADAPTERS_CHECK(k <= std::min(delta.size(0), delta.size(1)), what, ": svd_rank ", k, " exceeds the size of '", prefix,
                   "' (", delta.size(0), " x ", delta.size(1), ")");
    auto [U, S, Vh] = torch::linalg_svd(delta, /*full_matrices=*/false);
    const Tensor new_a = Vh.narrow(0, 0, k);
    const Tensor new_b = U.narrow(1, 0, k) * S.narrow(0, 0, k).unsqueeze(0);
    out[formats::rename_adapter(key, names[0], new_name)] = new_a.to(a0.scalar_type()).contiguous();
    out[formats::rename_adapter(key_b, names[0], new_name)] = new_b.to(b0.scalar_type()).contiguous();
  }
  return out;
}

}  // namespace adapters::methods
