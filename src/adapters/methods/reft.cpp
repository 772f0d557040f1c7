// ReFT: config (loreft / noreft / direft presets, validation, JSON round trip), the intervention
// units and modules, and the layer-output hook that applies them.
#include "adapters/methods/reft.h"

#include <torch/torch.h>

#include "adapters/nn/composer.h"
#include "adapters/core/limits.h"

#include <algorithm>

namespace adapters::methods {

using torch::Tensor;

// ---- config ---------------------------------------------------------------------------------

ReftConfig ReftConfig::from_json(const json& options, const std::string& source) {
  JsonReader r(options, source);
  r.reject_unknown({"architecture", "layers", "prefix_positions", "suffix_positions", "r", "orthogonality",
                    "tied_weights", "subtract_projection", "dropout", "non_linearity", "dtype", "output_reft",
                    "init_weights_seed"});
  if (r.has("architecture") && r.raw("architecture") != "reft") r.fail("architecture", "\"reft\"");
  ReftConfig c;
  if (r.has("layers")) {
    c.layers = r.raw("layers");
    if (c.layers != "all") {
      for (std::int64_t layer : r.get_int_list("layers")) {
        if (layer < 0) r.fail("layers", "\"all\" or a list of layer indices >= 0");
      }
    }
  }
  c.prefix_positions = r.get_int("prefix_positions", c.prefix_positions);
  c.suffix_positions = r.get_int("suffix_positions", c.suffix_positions);
  if (c.prefix_positions < 0 || c.prefix_positions > kMaxAdapterSize) r.fail("prefix_positions", str("a number in [0, ", kMaxAdapterSize, "]"));
  if (c.suffix_positions < 0 || c.suffix_positions > kMaxAdapterSize) r.fail("suffix_positions", str("a number in [0, ", kMaxAdapterSize, "]"));
  if (c.prefix_positions + c.suffix_positions == 0) {
    throw Error(source + ": ReFT intervenes nowhere (prefix_positions and suffix_positions are both 0)");
  }
  c.r = r.get_int("r", c.r);
  if (c.r < 1 || c.r > kMaxAdapterSize) r.fail("r", str("an integer in [1, ", kMaxAdapterSize, "] (the rank of the intervention)"));
  c.orthogonality = r.get_bool("orthogonality", c.orthogonality);
  c.tied_weights = r.get_bool("tied_weights", c.tied_weights);
  c.subtract_projection = r.get_bool("subtract_projection", c.subtract_projection);
  c.dropout = r.get_double("dropout", c.dropout);
  if (c.dropout < 0.0 || c.dropout >= 1.0) r.fail("dropout", "a probability in [0, 1)");
  if (r.has("non_linearity") && !r.raw("non_linearity").is_null()) {
    c.non_linearity = r.get_string("non_linearity");
    nn::resolve_activation(c.non_linearity.get<std::string>(), source + ": non_linearity");
  }
  c.output_reft = r.get_bool("output_reft", c.output_reft);
  if (!c.output_reft) throw Error(source + ": ReFT is placed nowhere (output_reft is false)");
  if (r.has("dtype") && !r.raw("dtype").is_null()) {
    throw NotSupported(str(source, ": dtype ", describe(r.raw("dtype")), " (adapters follow the model's dtype)"));
  }
  if (r.has("init_weights_seed") && !r.raw("init_weights_seed").is_null()) {
    throw NotSupported(source + ": init_weights_seed (seeded initialisation) is not supported yet");
  }
  return c;
}

json ReftConfig::to_json() const {
  return {{"architecture", "reft"},
          {"dropout", dropout},
          {"dtype", dtype},
          {"init_weights_seed", init_weights_seed},
          {"layers", layers},
          {"non_linearity", non_linearity},
          {"orthogonality", orthogonality},
          {"output_reft", output_reft},
          {"prefix_positions", prefix_positions},
          {"r", r},
          {"subtract_projection", subtract_projection},
          {"suffix_positions", suffix_positions},
          {"tied_weights", tied_weights}};
}

bool ReftConfig::applies_to(std::int64_t layer) const {
  if (layers == "all") return true;
  const auto list = layers.get<std::vector<std::int64_t>>();
  return std::find(list.begin(), list.end(), layer) != list.end();
}

// ---- modules --------------------------------------------------------------------------------

OrthogonalProjectionImpl::OrthogonalProjectionImpl(std::int64_t in_features, std::int64_t r) {
  // torch's right_inverse for the Householder map: QR of the (C,r) transpose of a default-initialised
  // Linear weight, with the reflectors' signs fixed so that the parametrised weight is its Q factor.
  Tensor w = torch::nn::Linear(torch::nn::LinearOptions(in_features, r).bias(false))->weight.detach();
  auto [a, tau] = torch::geqrf(w.t().contiguous());  // a: (C,r)
  Tensor diag = a.diagonal(0, -2, -1);
  diag.sign_();
  diag.copy_(torch::where(tau == 0, -diag, diag));  // no reflection there (LAPACK's convention)
  auto params = register_module("parametrizations", std::make_shared<torch::nn::Module>());
  auto weight = params->register_module("weight", std::make_shared<torch::nn::Module>());
  original_ = weight->register_parameter("original", a.t().contiguous());
}

Tensor OrthogonalProjectionImpl::weight() const {
  // contiguous(): libtorch 1.13's householder_product returns zero columns for some transposed inputs.
  const Tensor x = original_.t().contiguous();           // (C,r), C >= r
  const Tensor a = x.tril(-1);                           // the Householder vectors
  const Tensor tau = 2.0 / (1.0 + (a * a).sum(-2));      // (r)
  Tensor q = torch::linalg_householder_product(a, tau);  // (C,r), orthonormal columns
  // The diagonal holds the reflections' signs (torch truncates it to int; sign() agrees on the
  // +-1 it holds and stays orthogonal if weight decay moves it).
  q = q * x.diagonal(0, -2, -1).detach().sign().unsqueeze(-2);
  return q.t();
}

ReftUnitImpl::ReftUnitImpl(const ReftConfig& config, std::int64_t in_features, const std::string& source)
    : subtract_projection_(config.subtract_projection),
      activation_(config.non_linearity.is_null()
                      ? nn::Activation([](const Tensor& x) { return x; })
                      : nn::resolve_activation(config.non_linearity.get<std::string>(), source + ": non_linearity")) {
  ADAPTERS_CHECK(config.r <= in_features, source, ": r ", config.r, " exceeds the hidden size ", in_features);
  learned_source_ = register_module("learned_source", torch::nn::Linear(in_features, config.r));
  if (config.orthogonality) {
    orthogonal_ = register_module("projection", std::make_shared<OrthogonalProjectionImpl>(in_features, config.r));
  } else {
    projection_ = register_module("projection", torch::nn::Linear(torch::nn::LinearOptions(in_features, config.r).bias(false)));
  }
  dropout_ = register_module("dropout", torch::nn::Dropout(config.dropout));
}

Tensor ReftUnitImpl::projection_weight() const { return orthogonal_ ? orthogonal_->weight() : projection_->weight; }

Tensor ReftUnitImpl::forward(const Tensor& x) {
  const Tensor R = projection_weight();                   // (r,C)
  Tensor source = activation_(learned_source_(x));        // (B,P,r)
  if (subtract_projection_) source = source - torch::matmul(x, R.t());
  return dropout_(x + torch::matmul(source, R));
}

ReftModuleImpl::ReftModuleImpl(const ReftConfig& config, std::int64_t in_features, const std::string& source)
    : prefix_(config.prefix_positions), suffix_(config.suffix_positions), tied_(config.tied_weights) {
  auto list = register_module("units", std::make_shared<torch::nn::Module>());
  for (int i = 0; i < (tied_ ? 1 : 2); ++i) {
    units_.push_back(list->register_module(std::to_string(i), std::make_shared<ReftUnitImpl>(config, in_features, source)));
  }
}

Tensor ReftModuleImpl::forward(const Tensor& h) {
  const std::int64_t T = h.size(1);
  ADAPTERS_CHECK(prefix_ <= T && suffix_ <= T, "ReFT: the sequence has ", T, " positions, the intervention needs ",
                 prefix_, " prefix and ", suffix_, " suffix positions");
  const Tensor prefix = h.narrow(1, 0, prefix_), suffix = h.narrow(1, T - suffix_, suffix_);  // (B,P,C), (B,S,C)
  Tensor adapted;  // (B,P+S,C)
  if (tied_) {
    adapted = units_[0]->forward(torch::cat({prefix, suffix}, 1));
  } else {
    adapted = torch::cat({units_[0]->forward(prefix), units_[1]->forward(suffix)}, 1);
  }
  Tensor out = h.clone();
  out.narrow(1, 0, prefix_).copy_(adapted.narrow(1, 0, prefix_));
  out.narrow(1, T - suffix_, suffix_).copy_(adapted.narrow(1, prefix_, suffix_));
  return out;
}

// ---- the hook -------------------------------------------------------------------------------

void ReftHook::insert(const std::string& adapter, std::int64_t layer, std::shared_ptr<ReftModuleImpl> module) {
  auto& container = adapters_[adapter];
  if (!container) container = register_module(adapter, std::make_shared<torch::nn::Module>());
  modules_[adapter][layer] = container->register_module(std::to_string(layer), std::move(module));
}

ReftModuleImpl* ReftHook::find(const std::string& adapter, std::int64_t layer) const {
  auto it = modules_.find(adapter);
  if (it == modules_.end()) return nullptr;
  auto at = it->second.find(layer);
  return at == it->second.end() ? nullptr : at->second.get();
}

void ReftHook::delete_adapter(const std::string& name) {
  modules_.erase(name);
  if (adapters_.erase(name)) unregister_module(name);
}

Tensor ReftHook::layer_output(std::int64_t layer, const Tensor& h, nn::ForwardContext& ctx) {
  if (ctx.setup == nullptr) return h;
  if (const composition::Block* groups = nn::independent_row_groups(ctx)) {
    // One adapter per row: each group's first adapter intervenes on its rows.
    std::vector<Tensor> parts;
    bool any = false;
    nn::for_each_row_group(*groups, [&](const composition::Block& member, std::int64_t begin, std::int64_t end) {
      ReftModuleImpl* module = find(member.first(), layer);
      any = any || module != nullptr;
      parts.push_back(module ? module->forward(h.slice(0, begin, end)) : h.slice(0, begin, end));
    });
    return any ? torch::cat(parts, 0) : h;
  }
  // As the reference: the first adapter of the active setup intervenes.
  ReftModuleImpl* module = find(ctx.setup->first(), layer);
  return module ? module->forward(h) : h;
}

// ---- the method -----------------------------------------------------------------------------

MethodSpec reft_method() {
  MethodSpec spec;
  spec.name = "reft";
  spec.architecture = "reft";
  spec.presets = {{"loreft", json::object()},
                  {"noreft", {{"orthogonality", false}}},
                  {"direft", {{"orthogonality", false}, {"subtract_projection", false}}}};
  spec.normalize = [](const json& options, const std::string& source) {
    return ReftConfig::from_json(options, source).to_json();
  };
  spec.attach = [](const std::string& adapter, const json& values, models::BaseModelImpl& model) {
    const std::string source = "adapter '" + adapter + "'";
    const ReftConfig config = ReftConfig::from_json(values, source);
    const std::int64_t hidden = model.config().hidden_size;
    auto hook = model.hooks().get_or_create<ReftHook>("refts", [] { return std::make_shared<ReftHook>(); });
    for (std::int64_t layer = 0; layer < model.config().num_hidden_layers; ++layer) {
      if (config.applies_to(layer)) hook->insert(adapter, layer, std::make_shared<ReftModuleImpl>(config, hidden, source));
    }
  };
  spec.key_aliases = [](const json&) { return std::vector<std::pair<std::string, std::string>>(); };
  return spec;
}

}  // namespace adapters::methods
