// Bottleneck adapters: config (presets, validation, JSON round trip), the adapter module with the
// reference's pre_forward / forward / post_forward, and placement at the residual sites.
#include "adapters/methods/bottleneck.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>

#include "adapters/methods/compacter.h"
#include "adapters/methods/invertible.h"
#include "adapters/nn/linear.h"
#include "adapters/core/limits.h"

namespace adapters::methods {

using torch::Tensor;

// ---- config ---------------------------------------------------------------------------------

namespace {

const std::set<std::string>& known_keys() {
  static const std::set<std::string> keys = {
      "architecture", "mh_adapter", "output_adapter", "reduction_factor", "non_linearity", "original_ln_before",
      "original_ln_after", "residual_before_ln", "adapter_residual_before_ln", "ln_before", "ln_after",
      "init_weights", "is_parallel", "scaling", "use_gating", "dropout", "inv_adapter",
      "inv_adapter_reduction_factor", "cross_adapter", "leave_out", "phm_layer", "phm_dim", "factorized_phm_W",
      "shared_W_phm", "shared_phm_rule", "factorized_phm_rule", "phm_c_init", "phm_init_range", "learn_phm",
      "hypercomplex_nonlinearity", "phm_rank", "phm_bias"};
  return keys;
}

void check_positive_factor(const json& value, const JsonReader& r, const std::string& what) {
  if (!value.is_number() || value.get<double>() <= 0) r.fail("reduction_factor", what);
}

}  // namespace

BnConfig BnConfig::from_json(const json& options, const std::string& source) {
  JsonReader r(options, source);
  r.reject_unknown(known_keys());
  if (r.has("architecture")) r.fail("architecture", "null for a bottleneck adapter");
  BnConfig c;
  c.mh_adapter = r.get_bool("mh_adapter", c.mh_adapter);
  c.output_adapter = r.get_bool("output_adapter", c.output_adapter);
  if (r.has("reduction_factor")) {
    c.reduction_factor = r.raw("reduction_factor");
    const std::string expected = "a positive number or a mapping {\"<layer>\": number, \"default\": number}";
    if (c.reduction_factor.is_object()) {
      for (auto it = c.reduction_factor.begin(); it != c.reduction_factor.end(); ++it) {
        check_positive_factor(it.value(), r, expected);
      }
    } else {
      check_positive_factor(c.reduction_factor, r, expected);
    }
  }
  c.non_linearity = r.get_string("non_linearity", c.non_linearity);
  nn::resolve_activation(c.non_linearity, source + ": non_linearity");
  c.original_ln_before = r.get_bool("original_ln_before", c.original_ln_before);
  c.original_ln_after = r.get_bool("original_ln_after", c.original_ln_after);
  if (r.has("residual_before_ln")) {
    c.residual_before_ln = r.raw("residual_before_ln");
    if (!c.residual_before_ln.is_boolean() && c.residual_before_ln != "post_add") {
      r.fail("residual_before_ln", "true, false or \"post_add\"");
    }
    if (c.residual_before_ln == "post_add" && !c.original_ln_before) {
      throw Error(source + ": residual_before_ln=\"post_add\" needs original_ln_before=true");
    }
  }
  c.adapter_residual_before_ln = r.get_bool("adapter_residual_before_ln", c.adapter_residual_before_ln);
  c.ln_before = r.get_bool("ln_before", c.ln_before);
  c.ln_after = r.get_bool("ln_after", c.ln_after);
  c.init_weights = r.get_string("init_weights", c.init_weights);
  if (c.init_weights != "bert" && c.init_weights != "mam_adapter") r.fail("init_weights", "\"bert\" or \"mam_adapter\"");
  c.is_parallel = r.get_bool("is_parallel", c.is_parallel);
  if (r.has("scaling")) {
    c.scaling = r.raw("scaling");
    if (!c.scaling.is_number() && c.scaling != "learned" && c.scaling != "channel") {
      r.fail("scaling", "a number, \"learned\" or \"channel\"");
    }
    if (c.scaling.is_number()) c.scaling = c.scaling.get<double>();
  }
  c.use_gating = r.get_bool("use_gating", c.use_gating);
  c.dropout = r.get_double("dropout", c.dropout);
  if (c.dropout < 0.0 || c.dropout >= 1.0) r.fail("dropout", "a probability in [0, 1)");
  if (r.has("inv_adapter")) {
    c.inv_adapter = r.raw("inv_adapter");
    if (c.inv_adapter != "nice" && c.inv_adapter != "glow") r.fail("inv_adapter", "null, \"nice\" or \"glow\"");
  }
  if (r.has("inv_adapter_reduction_factor")) {
    c.inv_adapter_reduction_factor = r.raw("inv_adapter_reduction_factor");
    if (!c.inv_adapter_reduction_factor.is_number()) r.fail("inv_adapter_reduction_factor", "a number or null");
  }
  c.cross_adapter = r.get_bool("cross_adapter", c.cross_adapter);
  if (r.has("leave_out")) c.leave_out = r.get_int_list("leave_out");
  c.phm_layer = r.get_bool("phm_layer", c.phm_layer);
  c.phm_dim = r.get_int("phm_dim", c.phm_dim);
  c.factorized_phm_W = r.get_bool("factorized_phm_W", c.factorized_phm_W);
  c.shared_W_phm = r.get_bool("shared_W_phm", c.shared_W_phm);
  c.shared_phm_rule = r.get_bool("shared_phm_rule", c.shared_phm_rule);
  c.factorized_phm_rule = r.get_bool("factorized_phm_rule", c.factorized_phm_rule);
  c.phm_c_init = r.get_string("phm_c_init", c.phm_c_init);
  c.phm_init_range = r.get_double("phm_init_range", c.phm_init_range);
  c.learn_phm = r.get_bool("learn_phm", c.learn_phm);
  c.hypercomplex_nonlinearity = r.get_string("hypercomplex_nonlinearity", c.hypercomplex_nonlinearity);
  c.phm_rank = r.get_int("phm_rank", c.phm_rank);
  c.phm_bias = r.get_bool("phm_bias", c.phm_bias);
  if (c.phm_dim < 1 || c.phm_dim > kMaxAdapterSize) r.fail("phm_dim", str("an integer in [1, ", kMaxAdapterSize, "]"));
  if (c.phm_rank < 1 || c.phm_rank > kMaxAdapterSize) r.fail("phm_rank", str("an integer in [1, ", kMaxAdapterSize, "]"));
  if (c.phm_c_init != "normal" && c.phm_c_init != "uniform") r.fail("phm_c_init", "\"normal\" or \"uniform\"");
  static const std::set<std::string> w_inits = {"phm", "glorot-normal", "glorot-uniform", "normal"};
  if (!w_inits.count(c.hypercomplex_nonlinearity)) {
    r.fail("hypercomplex_nonlinearity", "\"phm\", \"glorot-normal\", \"glorot-uniform\" or \"normal\"");
  }
  if (c.phm_layer && c.init_weights == "mam_adapter") {
    throw Error(source + ": init_weights=\"mam_adapter\" initialises Linear projections; with phm_layer=true use \"bert\"");
  }
  if (!c.inv_adapter.is_null() && c.inv_adapter_reduction_factor.is_null()) {
    r.fail("inv_adapter_reduction_factor", "a positive number when inv_adapter is set");
  }
  if (c.inv_adapter_reduction_factor.is_number() && c.inv_adapter_reduction_factor.get<double>() <= 0) {
    r.fail("inv_adapter_reduction_factor", "a positive number");
  }
  if (!c.mh_adapter && !c.output_adapter && !c.cross_adapter) {
    throw Error(source + ": the adapter is placed nowhere (mh_adapter, output_adapter and cross_adapter are all false)");
  }
  return c;
}

json BnConfig::to_json() const {
  // The keys of the reference's bottleneck config (3.2.1), sorted as it writes them; "dropout"
  // (a later addition) only when set, so that the reference reads our files.
  json j = {{"adapter_residual_before_ln", adapter_residual_before_ln},
            {"cross_adapter", cross_adapter},
            {"factorized_phm_W", factorized_phm_W},
            {"factorized_phm_rule", factorized_phm_rule},
            {"hypercomplex_nonlinearity", hypercomplex_nonlinearity},
            {"init_weights", init_weights},
            {"inv_adapter", inv_adapter},
            {"inv_adapter_reduction_factor", inv_adapter_reduction_factor},
            {"is_parallel", is_parallel},
            {"learn_phm", learn_phm},
            {"leave_out", leave_out},
            {"ln_after", ln_after},
            {"ln_before", ln_before},
            {"mh_adapter", mh_adapter},
            {"non_linearity", non_linearity},
            {"original_ln_after", original_ln_after},
            {"original_ln_before", original_ln_before},
            {"output_adapter", output_adapter},
            {"phm_bias", phm_bias},
            {"phm_c_init", phm_c_init},
            {"phm_dim", phm_dim},
            {"phm_init_range", phm_init_range},
            {"phm_layer", phm_layer},
            {"phm_rank", phm_rank},
            {"reduction_factor", reduction_factor},
            {"residual_before_ln", residual_before_ln},
            {"scaling", scaling},
            {"shared_W_phm", shared_W_phm},
            {"shared_phm_rule", shared_phm_rule},
            {"use_gating", use_gating}};
  if (dropout != 0.0) j["dropout"] = dropout;
  return j;
}

std::int64_t BnConfig::bottleneck_size(std::int64_t hidden, std::int64_t layer, const std::string& source) const {
  json factor = reduction_factor;
  if (factor.is_object()) {
    const std::string key = std::to_string(layer);
    if (factor.contains(key)) {
      factor = factor.at(key);
    } else if (factor.contains("default")) {
      factor = factor.at("default");
    } else {
      throw Error(str(source, ": reduction_factor ", describe(reduction_factor), " gives no factor for layer ", layer),
                  "add a \"default\" entry, e.g. {\"1\": 16, \"default\": 16}");
    }
  }
  const std::int64_t size = static_cast<std::int64_t>(std::floor(static_cast<double>(hidden) / factor.get<double>()));
  ADAPTERS_CHECK(size >= 1, source, ": reduction_factor ", describe(factor), " gives a bottleneck of size ", size,
                 " for hidden size ", hidden, " (expected at least 1: use a factor <= ", hidden, ")");
  ADAPTERS_CHECK(size <= kMaxAdapterSize, source, ": reduction_factor ", describe(factor), " gives a bottleneck of size ", size,
                 " for hidden size ", hidden, " (expected at most ", kMaxAdapterSize, ")");
  return size;
}

bool BnConfig::places_at(const std::string& location, std::int64_t layer) const {
  if (std::find(leave_out.begin(), leave_out.end(), layer) != leave_out.end()) return false;
  if (location == nn::location::kAttention) return mh_adapter;
  if (location == nn::location::kOutput) return output_adapter;
  if (location == nn::location::kCrossAttention) return cross_adapter;
  return false;
}

// ---- the adapter module ---------------------------------------------------------------------

BottleneckAdapterImpl::BottleneckAdapterImpl(const BnConfig& config, std::int64_t input_size, std::int64_t bottleneck,
                                             const std::string& source, std::shared_ptr<PhmSharedImpl> phm_shared)
    : config_(config), activation_(nn::resolve_activation(config.non_linearity, source + ": non_linearity")) {
  auto adapter_down = register_module("adapter_down", std::make_shared<torch::nn::Module>());
  int index = 0;
  if (config.ln_before) {
    norm_before_ = adapter_down->register_module(std::to_string(index++), torch::nn::LayerNorm(torch::nn::LayerNormOptions({input_size})));
  }
  if (config.phm_layer) {
    phm_down_ = adapter_down->register_module(
        std::to_string(index), std::make_shared<PHMLayerImpl>(config, input_size, bottleneck, "down", phm_shared, source));
    phm_up_ = register_module("adapter_up",
                              std::make_shared<PHMLayerImpl>(config, bottleneck, input_size, "up", phm_shared, source));
  } else {
    down_ = adapter_down->register_module(std::to_string(index), torch::nn::Linear(input_size, bottleneck));
    up_ = register_module("adapter_up", torch::nn::Linear(bottleneck, input_size));
  }
  if (config.scaling == "learned") {
    scaling_param_ = register_parameter("scaling", torch::ones({1}));
  } else if (config.scaling == "channel") {
    scaling_param_ = register_parameter("scaling", torch::ones({input_size}));
  } else {
    scaling_value_ = config.scaling.get<double>();
  }
  if (config.ln_after) {
    norm_after_ = register_module("adapter_norm_after", torch::nn::LayerNorm(torch::nn::LayerNormOptions({input_size})));
  }
  if (config.use_gating) gate_ = register_module("gate", torch::nn::Linear(input_size, 1));
  dropout_ = register_module("dropout", torch::nn::Dropout(config.dropout));
  init_weights(config.init_weights);
}

void BottleneckAdapterImpl::init_weights(const std::string& scheme) {
  torch::NoGradGuard no_grad;
  auto bert_init = [](torch::nn::Linear& l) {
    l->weight.normal_(0.0, 0.02);
    l->bias.zero_();
  };
  if (gate_) bert_init(gate_);
  if (phm_down_) return;  // PHM layers initialise themselves (init_bert_weights touches only Linear layers)
  if (scheme == "mam_adapter") {
    torch::nn::init::kaiming_uniform_(down_->weight, std::sqrt(5.0));
    down_->bias.zero_();
    up_->weight.zero_();
    up_->bias.zero_();
  } else {
    bert_init(down_);
    bert_init(up_);
  }
}

Tensor BottleneckAdapterImpl::down_project(const Tensor& x) {
  Tensor h = norm_before_ ? norm_before_(x) : x;
  return activation_(phm_down_ ? phm_down_->forward(h) : nn::linear(h, down_->weight, down_->bias));
}

Tensor BottleneckAdapterImpl::up_project(const Tensor& x) {
  return phm_up_ ? phm_up_->forward(x) : nn::linear(x, up_->weight, up_->bias);
}

nn::PreForward BottleneckAdapterImpl::pre_forward(const Tensor& hidden, const Tensor& input, const nn::Norm& norm,
                                                  bool want_query, bool query_before_ln) {
  if (config_.is_parallel) return {input, want_query ? input : Tensor(), input};
  const bool residual_first = config_.residual_before_ln == true;
  const bool post_add = config_.residual_before_ln == "post_add";
  Tensor h = hidden, residual, query;
  if (residual_first) residual = h;
  if (want_query && query_before_ln) query = h;
  if (config_.original_ln_before) {
    h = h + input;
    if (post_add) residual = h;
    if (norm) h = norm(h);
  }
  if (!residual_first && !post_add) residual = h;
  if (want_query && !query_before_ln) query = h;
  return {h, query, residual};
}

nn::AdapterOutput BottleneckAdapterImpl::forward(const Tensor& x, const Tensor& residual) {
  Tensor down = down_project(x);
  Tensor up = up_project(down);
  up = scaling_param_.defined() ? up * scaling_param_ : up * scaling_value_;
  Tensor out = dropout_(up);
  Tensor gate;
  if (gate_) {
    gate = torch::sigmoid(gate_(x)).mean(1).unsqueeze(-1);  // (B,T,1) -> (B,1,1)
    out = out * gate;
  }
  if (config_.is_parallel) {
    if (norm_after_) out = norm_after_(out);
    return {out, down, up, gate};
  }
  if (config_.adapter_residual_before_ln) out = out + residual;
  if (norm_after_) out = norm_after_(out);
  if (!config_.adapter_residual_before_ln) out = out + residual;
  return {out, down, up, gate};
}

Tensor BottleneckAdapterImpl::post_forward(const Tensor& hidden, const Tensor& input_hidden, const Tensor& input,
                                           const nn::Norm& norm) {
  Tensor h = config_.is_parallel ? hidden + input_hidden : hidden;
  if (config_.original_ln_after) h = norm ? norm(h + input) : h + input;
  return h;
}

// ---- the method -----------------------------------------------------------------------------

MethodSpec bottleneck_method() {
  const json seq_bn = json::object();
  const json double_seq_bn = {{"mh_adapter", true}, {"non_linearity", "swish"}, {"original_ln_before", false}};
  const json par_bn = {{"original_ln_before", false}, {"is_parallel", true}, {"reduction_factor", 2},
                       {"scaling", 4.0}, {"init_weights", "mam_adapter"}};
  json scaled_par_bn = par_bn;
  scaled_par_bn["scaling"] = "learned";
  auto with = [](json base, const json& extra) {
    for (auto it = extra.begin(); it != extra.end(); ++it) base[it.key()] = it.value();
    return base;
  };
  const json compacter = {{"phm_layer", true}, {"reduction_factor", 32}, {"non_linearity", "gelu"}};
  const json inv = {{"inv_adapter", "nice"}, {"inv_adapter_reduction_factor", 2}};

  MethodSpec spec;
  spec.name = "bottleneck";
  spec.architecture = nullptr;
  spec.presets = {{"seq_bn", seq_bn},         {"pfeiffer", seq_bn},       {"double_seq_bn", double_seq_bn},
                  {"houlsby", double_seq_bn}, {"par_bn", par_bn},         {"parallel", par_bn},
                  {"scaled_par_bn", scaled_par_bn}, {"scaled_parallel", scaled_par_bn},
                  {"compacter", with(double_seq_bn, compacter)}, {"compacter++", with(seq_bn, compacter)},
                  {"seq_bn_inv", with(seq_bn, inv)},   {"pfeiffer+inv", with(seq_bn, inv)},
                  {"double_seq_bn_inv", with(double_seq_bn, inv)}, {"houlsby+inv", with(double_seq_bn, inv)}};
  spec.normalize = [](const json& options, const std::string& source) {
    return BnConfig::from_json(options, source).to_json();
  };
  spec.attach = [](const std::string& adapter, const json& values, models::BaseModelImpl& model) {
    const std::string source = "adapter '" + adapter + "'";
    const BnConfig config = BnConfig::from_json(values, source);
    const std::int64_t hidden = model.config().hidden_size;
    std::shared_ptr<PhmSharedImpl> phm_shared = config.phm_layer ? add_phm_shared(adapter, config, model, source) : nullptr;
    for (nn::ResidualSite* site : model.sites().residual) {
      if (!config.places_at(site->location(), site->layer())) continue;
      const std::int64_t bottleneck = config.bottleneck_size(hidden, site->layer(), source);
      site->add_adapter(adapter, std::make_shared<BottleneckAdapterImpl>(config, hidden, bottleneck, source, phm_shared));
    }
    if (!config.inv_adapter.is_null()) {
      add_invertible_adapter(adapter, config.inv_adapter.get<std::string>(), config.non_linearity,
                             config.inv_adapter_reduction_factor.get<double>(), model, source);
    }
  };
  spec.key_aliases = [](const json& values) {
    std::vector<std::pair<std::string, std::string>> aliases;
    if (values.value("ln_before", false)) aliases.emplace_back(".adapter_norm_before.", ".adapter_down.0.");
    return aliases;
  };
  return spec;
}

}  // namespace adapters::methods
