// AdapterModel::average_adapter: a new adapter as a weighted combination of adapters of one config.
#include <torch/torch.h>

#include <cmath>

#include "adapters/formats/keys.h"
#include "adapters/methods/lora.h"
#include "adapters/model.h"

namespace adapters {

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
  if (config.method == "lora") {
    // The LoRA family has strategies of its own (methods/lora.h).
    const std::optional<std::int64_t> rank = svd_rank > 0 ? std::optional<std::int64_t>(svd_rank) : std::nullopt;
    const io::TensorMap tensors = methods::average_lora_weights(*this, name, sources, weights, combine_strategy, rank);
    add_adapter(name, methods::AdapterConfig{config.method, methods::averaged_lora_config(config.values, combine_strategy, rank)});
    try {
      load_adapter_state_dict(name, tensors, "average_adapter '" + name + "'");
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

}  // namespace adapters
