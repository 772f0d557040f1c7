// Compacter's PHM layers and shared parameters, following the reference's PHMLayer,
// init_shared_parameters and init_W (adapter-transformers 3.2.1, adapters/modeling.py).
#include "adapters/methods/compacter.h"

#include <torch/torch.h>

namespace adapters::methods {

using torch::Tensor;

namespace {

// The reference's init_W: its first branch tests `if config["hypercomplex_nonlinearity"]`, which
// every valid value satisfies, so every W slice gets xavier_normal_ whatever the option says.
void init_w(Tensor& w) {
  torch::NoGradGuard no_grad;
  for (std::int64_t i = 0; i < w.size(0); ++i) {
    Tensor slice = w[i];
    torch::nn::init::xavier_normal_(slice);
  }
}

// A W of the given shape, initialised as the reference does.
Tensor make_w(std::vector<std::int64_t> shape) {
  Tensor w = torch::empty(shape);
  init_w(w);
  return w;
}

// A PHM rule tensor: normal(0, std) or uniform(-bound, bound) by phm_c_init.
Tensor make_rule(const BnConfig& c, std::vector<std::int64_t> shape, double stddev, double bound) {
  Tensor r = torch::empty(shape);
  torch::NoGradGuard no_grad;
  if (c.phm_c_init == "uniform") {
    r.uniform_(-bound, bound);
  } else {
    r.normal_(0.0, stddev);
  }
  return r;
}

}  // namespace

Tensor kronecker_product(const Tensor& a, const Tensor& b) {
  // (...,p,1,q,1) * (...,1,r,1,s) -> (...,p,r,q,s) -> (...,p*r,q*s)
  Tensor res = a.unsqueeze(-1).unsqueeze(-3) * b.unsqueeze(-2).unsqueeze(-4);
  std::vector<std::int64_t> shape(res.sizes().begin(), res.sizes().end() - 4);
  shape.push_back(a.size(-2) * b.size(-2));
  shape.push_back(a.size(-1) * b.size(-1));
  return res.reshape(shape);
}

void check_phm_sizes(const BnConfig& c, std::int64_t in, std::int64_t out, const std::string& source) {
  for (const auto& [what, n] : {std::pair<const char*, std::int64_t>{"input", in}, {"output", out}}) {
    ADAPTERS_CHECK(n % c.phm_dim == 0, source, ": phm_dim ", c.phm_dim, " must divide the PHM layer's ", what,
                   " size, found ", n, " (hidden ", std::max(in, out), ", bottleneck ", std::min(in, out),
                   "): choose a reduction_factor whose bottleneck is a multiple of phm_dim");
  }
}

// ---- shared parameters ----------------------------------------------------------------------

PhmSharedImpl::PhmSharedImpl(const BnConfig& config, std::int64_t hidden, std::int64_t bottleneck)
    : config_(config), bottleneck_(bottleneck) {
  const std::int64_t n = config.phm_dim, k = config.phm_rank;
  const std::int64_t in_axis = hidden / n, out_axis = bottleneck / n;
  if (config.shared_W_phm) {
    if (config.factorized_phm_W) {
      params_["W_down_left"] = register_parameter("W_down_left", make_w({n, in_axis, k}));
      params_["W_down_right"] = register_parameter("W_down_right", make_w({n, k, out_axis}));
      params_["W_up_left"] = register_parameter("W_up_left", make_w({n, out_axis, k}));
      params_["W_up_right"] = register_parameter("W_up_right", make_w({n, k, in_axis}));
    } else {
      params_["W_down"] = register_parameter("W_down", make_w({n, in_axis, out_axis}));
      params_["W_up"] = register_parameter("W_up", make_w({n, out_axis, in_axis}));
    }
  }
  if (config.shared_phm_rule) {
    const double stddev = config.phm_init_range;
    if (config.factorized_phm_rule) {
      params_["phm_rule_left"] =
          register_parameter("phm_rule_left", make_rule(config, {n, n, 1}, stddev, 1.0), config.learn_phm);
      params_["phm_rule_right"] =
          register_parameter("phm_rule_right", make_rule(config, {n, 1, n}, stddev, 1.0), config.learn_phm);
    } else {
      params_["phm_rule"] = register_parameter("phm_rule", make_rule(config, {n, n, n}, stddev, 1.0), config.learn_phm);
    }
  }
}

Tensor PhmSharedImpl::phm_rule() const {
  if (config_.factorized_phm_rule) return torch::bmm(params_.at("phm_rule_left"), params_.at("phm_rule_right"));
  return params_.at("phm_rule");
}

Tensor PhmSharedImpl::weight(const std::string& position) const {
  if (config_.factorized_phm_W) {
    return torch::bmm(params_.at("W_" + position + "_left"), params_.at("W_" + position + "_right"));
  }
  return params_.at("W_" + position);
}

void SharedParametersHook::insert(const std::string& adapter, std::shared_ptr<PhmSharedImpl> shared) {
  delete_adapter(adapter);
  items_[adapter] = register_module(adapter, std::move(shared));
}

void SharedParametersHook::delete_adapter(const std::string& name) {
  if (items_.erase(name)) unregister_module(name);
}

std::shared_ptr<PhmSharedImpl> add_phm_shared(const std::string& adapter, const BnConfig& config,
                                              models::BaseModelImpl& model, const std::string& source) {
  const std::int64_t hidden = model.config().hidden_size;
  std::int64_t bottleneck = 0;
  for (nn::ResidualSite* site : model.sites().residual) {
    if (!config.places_at(site->location(), site->layer())) continue;
    const std::int64_t size = config.bottleneck_size(hidden, site->layer(), source);
    check_phm_sizes(config, hidden, size, source);
    if (config.shared_W_phm && bottleneck != 0) {
      ADAPTERS_CHECK(size == bottleneck, source, ": shared_W_phm=true needs one bottleneck size for every layer, "
                     "found ", bottleneck, " and ", size, " (reduction_factor ", describe(config.reduction_factor), ")");
    }
    bottleneck = size;
  }
  auto shared = std::make_shared<PhmSharedImpl>(config, hidden, bottleneck);
  auto hook = model.hooks().get_or_create<SharedParametersHook>(
      "shared_parameters", [] { return std::make_shared<SharedParametersHook>(); });
  hook->insert(adapter, shared);
  return shared;
}

// ---- the PHM layer ----------------------------------------------------------------------------

PHMLayerImpl::PHMLayerImpl(const BnConfig& config, std::int64_t in_features, std::int64_t out_features,
                           std::string position, std::shared_ptr<PhmSharedImpl> shared, const std::string& source)
    : config_(config), position_(std::move(position)), shared_(std::move(shared)) {
  check_phm_sizes(config, in_features, out_features, source);
  ADAPTERS_CHECK(shared_ || (!config.shared_W_phm && !config.shared_phm_rule), source,
                 ": a PHM layer with shared parameters needs the adapter's shared_parameters");
  const std::int64_t n = config.phm_dim, k = config.phm_rank;
  const std::int64_t in_axis = in_features / n, out_axis = out_features / n;
  if (!config.shared_phm_rule) {
    if (config.factorized_phm_rule) {
      rule_left_ = register_parameter("phm_rule_left", make_rule(config, {n, n, 1}, 0.01, 0.01), config.learn_phm);
      rule_right_ = register_parameter("phm_rule_right", make_rule(config, {n, 1, n}, 0.01, 0.01), config.learn_phm);
    } else {
      rule_ = register_parameter("phm_rule", make_rule(config, {n, n, n}, 0.01, 0.01), config.learn_phm);
    }
  }
  if (!config.shared_W_phm) {
    if (config.factorized_phm_W) {
      W_left_ = register_parameter("W_left", make_w({n, in_axis, k}));
      W_right_ = register_parameter("W_right", make_w({n, k, out_axis}));
    } else {
      W_ = register_parameter("W", make_w({n, in_axis, out_axis}));
    }
  }
  if (config.phm_bias) b_ = register_parameter("b", torch::zeros({out_features}));
}

Tensor PHMLayerImpl::weight() const {
  if (config_.shared_W_phm) return shared_->weight(position_);
  return config_.factorized_phm_W ? torch::bmm(W_left_, W_right_) : W_;
}

Tensor PHMLayerImpl::phm_rule() const {
  if (config_.shared_phm_rule) return shared_->phm_rule();
  return config_.factorized_phm_rule ? torch::bmm(rule_left_, rule_right_) : rule_;
}

Tensor PHMLayerImpl::forward(const Tensor& x) {
  const Tensor H = kronecker_product(phm_rule(), weight()).sum(0);  // (n,in,out) -> (in,out)
  Tensor y = torch::matmul(x, H);
  if (b_.defined()) y = y + b_;
  return y;
}

}  // namespace adapters::methods
