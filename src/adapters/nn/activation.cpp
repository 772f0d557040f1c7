// The activation table: HF's ACT2FN names (lower case), plus the reference's "leakyrelu".
#include "adapters/nn/activation.h"

#include <torch/torch.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <map>

#include "adapters/core/error.h"

namespace adapters::nn {
namespace {

torch::Tensor gelu_tanh(const torch::Tensor& x) {
  const double k = std::sqrt(2.0 / M_PI);
  return 0.5 * x * (1.0 + torch::tanh(k * (x + 0.044715 * torch::pow(x, 3.0))));
}

const std::map<std::string, Activation>& table() {
  static const std::map<std::string, Activation> t = {
      {"gelu", [](const torch::Tensor& x) { return torch::gelu(x); }},
      {"gelu_new", gelu_tanh},
      {"gelu_pytorch_tanh", gelu_tanh},
      {"gelu_fast", gelu_tanh},
      {"quick_gelu", [](const torch::Tensor& x) { return x * torch::sigmoid(1.702 * x); }},
      {"relu", [](const torch::Tensor& x) { return torch::relu(x); }},
      {"relu6", [](const torch::Tensor& x) { return torch::clamp(x, 0.0, 6.0); }},
      {"leakyrelu", [](const torch::Tensor& x) { return torch::leaky_relu(x, 0.01); }},
      {"leaky_relu", [](const torch::Tensor& x) { return torch::leaky_relu(x, 0.01); }},
      {"swish", [](const torch::Tensor& x) { return torch::silu(x); }},
      {"silu", [](const torch::Tensor& x) { return torch::silu(x); }},
      {"mish", [](const torch::Tensor& x) { return torch::mish(x); }},
      {"tanh", [](const torch::Tensor& x) { return torch::tanh(x); }},
      {"sigmoid", [](const torch::Tensor& x) { return torch::sigmoid(x); }},
      {"linear", [](const torch::Tensor& x) { return x; }},
  };
  return t;
}

}  // namespace

Activation resolve_activation(const std::string& name, const std::string& context) {
  std::string lower = name;
  std::transform(lower.begin(), lower.end(), lower.begin(), [](unsigned char c) { return std::tolower(c); });
  auto it = table().find(lower);
  if (it == table().end()) {
    std::string known;
    for (const auto& n : activation_names()) known += (known.empty() ? "" : ", ") + n;
    throw Error(str(context, ": unknown activation '", name, "'"), "known: " + known);
  }
  return it->second;
}

std::vector<std::string> activation_names() {
  std::vector<std::string> names;
  for (const auto& [n, f] : table()) names.push_back(n);
  return names;
}

}  // namespace adapters::nn
