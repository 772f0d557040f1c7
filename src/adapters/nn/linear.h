// Linear maps with a one-row fast path. A decoding step at batch 1 multiplies one row by every
// weight; OpenBLAS runs that as a GEMM 3-6x slower than as a matrix-vector product (measured at
// GPT-2-small shapes), so one row takes addmv. Same math, same autograd; more rows take the GEMM.
#pragma once

#include <torch/torch.h>

namespace adapters::nn {

namespace detail {
inline bool one_row(const torch::Tensor& x) { return x.dim() >= 1 && x.numel() == x.size(-1); }

// (..., N) from a vector of N, in x's leading shape.
inline torch::Tensor as_rows_of(const torch::Tensor& y, const torch::Tensor& x) {
  auto shape = x.sizes().vec();
  shape.back() = y.size(0);
  return y.view(shape);
}
}  // namespace detail

// x (..., K) W^T + b, W (N,K): torch::nn::functional::linear.
inline torch::Tensor linear(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias = {}) {
  if (!detail::one_row(x)) return torch::nn::functional::linear(x, weight, bias);
  const torch::Tensor v = x.reshape({-1});
  return detail::as_rows_of(bias.defined() ? torch::addmv(bias, weight, v) : torch::mv(weight, v), x);
}

// x (..., K) W + b, W (K,N): HF's Conv1D layout.
inline torch::Tensor linear_in_out(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias = {}) {
  if (detail::one_row(x)) {
    const torch::Tensor v = x.reshape({-1});
    return detail::as_rows_of(bias.defined() ? torch::addmv(bias, weight.t(), v) : torch::mv(weight.t(), v), x);
  }
  auto shape = x.sizes().vec();
  shape.back() = weight.size(1);
  const torch::Tensor x2 = x.reshape({-1, x.size(-1)});
  return (bias.defined() ? torch::addmm(bias, x2, weight) : torch::mm(x2, weight)).view(shape);
}

// y + scale * x W^T for W (N,K), y (..., N) contiguous: a low-rank delta added onto its layer's output.
inline torch::Tensor add_linear(const torch::Tensor& y, const torch::Tensor& x, const torch::Tensor& weight, double scale) {
  if (detail::one_row(x)) return torch::addmv(y.view({-1}), weight, x.reshape({-1}), 1.0, scale).view(y.sizes());
  return torch::addmm(y.reshape({-1, y.size(-1)}), x.reshape({-1, x.size(-1)}), weight.t(), 1.0, scale).view(y.sizes());
}

}  // namespace adapters::nn
