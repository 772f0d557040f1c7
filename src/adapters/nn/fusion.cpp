// AdapterFusion layers: query/key/value attention over adapter outputs, as BertFusion computes it.
#include "adapters/nn/fusion.h"

#include <torch/torch.h>

#include "adapters/core/error.h"
#include "adapters/core/json.h"

namespace adapters::nn {

using torch::Tensor;

namespace {

FusionConfig preset(const std::string& name, const std::string& source) {
  FusionConfig c;  // dynamic
  if (name == "dynamic") return c;
  if (name == "static") {
    c.value = false;
    c.regularization = false;
    c.value_initialized = false;
    return c;
  }
  throw Error(str(source, ": unknown fusion config '", name, "' (known: static, dynamic, or an object of options)"));
}

void init_bert(torch::nn::Linear& l) {
  torch::NoGradGuard no_grad;
  l->weight.normal_(0.0, 0.02);
  if (l->bias.defined()) l->bias.zero_();
}

}  // namespace

FusionConfig FusionConfig::from_json(const nlohmann::json& spec, const std::string& source) {
  if (spec.is_string()) return preset(spec.get<std::string>(), source);
  ADAPTERS_CHECK(spec.is_object(), source, ": a fusion config is \"static\", \"dynamic\" or an object, found ", describe(spec));
  FusionConfig c;
  const std::pair<const char*, bool*> keys[] = {
      {"key", &c.key}, {"query", &c.query}, {"value", &c.value}, {"query_before_ln", &c.query_before_ln},
      {"regularization", &c.regularization}, {"residual_before", &c.residual_before},
      {"temperature", &c.temperature}, {"value_before_softmax", &c.value_before_softmax},
      {"value_initialized", &c.value_initialized}};
  for (const auto& [key, value] : spec.items()) {
    bool known = false;
    for (const auto& [name, field] : keys) {
      if (key != name) continue;
      known = true;
      // value_initialized may be a string in older files ("True"); any non-empty string is true.
      if (value.is_string()) {
        *field = !value.get<std::string>().empty() && value.get<std::string>() != "False";
      } else {
        ADAPTERS_CHECK(value.is_boolean(), source, ": fusion option '", key, "' must be true or false, found ", describe(value));
        *field = value.get<bool>();
      }
    }
    ADAPTERS_CHECK(known, source, ": unknown fusion option '", key,
                   "' (known: key, query, value, query_before_ln, regularization, residual_before, temperature, "
                   "value_before_softmax, value_initialized)");
  }
  return c;
}

nlohmann::json FusionConfig::to_json() const {
  return {{"key", key}, {"query", query}, {"value", value}, {"query_before_ln", query_before_ln},
          {"regularization", regularization}, {"residual_before", residual_before}, {"temperature", temperature},
          {"value_before_softmax", value_before_softmax}, {"value_initialized", value_initialized}};
}

BertFusionImpl::BertFusionImpl(const FusionConfig& config, std::int64_t hidden, double attention_dropout)
    : config_(config), temperature_(config.temperature ? 50.0 : 1.0), reduction_(temperature_ / 1000.0) {
  dropout_ = register_module("dropout", torch::nn::Dropout(attention_dropout));
  if (!config.query && !config.key && !config.value) {
    dense = register_module("dense", torch::nn::Linear(hidden, 1));
  }
  if (config.query) {
    query = register_module("query", torch::nn::Linear(hidden, hidden));
    init_bert(query);
  }
  if (config.key) {
    key = register_module("key", torch::nn::Linear(hidden, hidden));
    init_bert(key);
  }
  if (config.value) {
    value = register_module("value", torch::nn::Linear(torch::nn::LinearOptions(hidden, hidden).bias(false)));
    init_bert(value);
    if (config.value_initialized) {
      torch::NoGradGuard no_grad;
      value->weight.fill_(1e-6).fill_diagonal_(1.0);
    }
  }
}

// Computed as BertFusion does, with the linear maps moved out of the adapter dimension N, which
// gives the same values with N times fewer matmuls over (B,T,C):
//   q . (W_k u_i + b_k) = (W_k^T q) . u_i + q . b_k      (key)
//   sum_i p_i W_v v_i  = W_v sum_i p_i v_i               (value before softmax: W_v has no bias)
Tensor BertFusionImpl::forward(const Tensor& q, const Tensor& k, Tensor v, const Tensor& residual, Tensor* scores) {
  if (config_.residual_before) v = v + residual.unsqueeze(2);                      // (B,T,N,C)
  const Tensor query_layer = config_.query ? query(q) : q;                          // (B,T,C)
  Tensor attention;                                                                 // (B,T,N)
  if (config_.key) {
    const Tensor projected = torch::matmul(query_layer, key->weight);               // W_k^T q: (B,T,C)
    attention = torch::matmul(k, projected.unsqueeze(-1)).squeeze(-1);             // (B,T,N)
    if (key->bias.defined()) attention = attention + torch::matmul(query_layer, key->bias).unsqueeze(-1);
  } else {
    attention = torch::matmul(k, query_layer.unsqueeze(-1)).squeeze(-1);
  }
  attention = dropout_(attention);
  const Tensor probs = torch::softmax(attention / temperature_, -1);
  temperature_ = std::max(temperature_ - reduction_, 1.0);  // every call, train or eval, as the reference
  Tensor context = torch::matmul(probs.unsqueeze(2), v).squeeze(2);                // (B,T,C)
  if (config_.value) context = value(context);  // before or after the softmax: the same, W_v is linear
  if (!config_.residual_before) context = context + residual;
  if (scores != nullptr) *scores = probs.detach();
  return context;
}

Tensor BertFusionImpl::regularization_loss() const {
  if (!value) return torch::zeros({});
  const Tensor target = torch::eye(value->weight.size(0), value->weight.options());
  return 0.01 * (target - value->weight).pow(2).sum();
}

}  // namespace adapters::nn
