// Activation functions by the names HF configs and adapter configs use ("gelu", "gelu_new",
// "relu", "swish", "tanh", ...), resolved once, with a clear error for unknown names.
#pragma once

#include <torch/types.h>

#include <functional>
#include <string>
#include <vector>

namespace adapters::nn {

using Activation = std::function<torch::Tensor(const torch::Tensor&)>;

// `context` names the config key in errors ("config.json: hidden_act").
Activation resolve_activation(const std::string& name, const std::string& context);
std::vector<std::string> activation_names();

}  // namespace adapters::nn
