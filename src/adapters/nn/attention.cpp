// The shared attention module: projections, rotary, cache, prefix site, GQA, score biases.
#include "adapters/nn/attention.h"

#include <torch/torch.h>

#include <cmath>

#include "adapters/core/error.h"
#include "adapters/nn/mask.h"

namespace adapters::nn {

using torch::Tensor;

namespace {

// (..., d) -> (..., d): (-x2, x1) of the two halves.
Tensor rotate_half(const Tensor& x) {
  const auto half = x.size(-1) / 2;
  return torch::cat({-x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1);
}

// (..., d) -> (..., d): (-x1, x0, -x3, x2, ...) of the interleaved pairs.
Tensor rotate_every_two(const Tensor& x) {
  using torch::indexing::Slice;
  Tensor even = x.index({"...", Slice(0, torch::indexing::None, 2)});
  Tensor odd = x.index({"...", Slice(1, torch::indexing::None, 2)});
  return torch::stack({-odd, even}, -1).flatten(-2);
}

// q (B,H,Tq,D) k (B,H,Tk,D) -> (B,H,Tq,Tk). One query row on the CPU (a decoding step) is a
// broadcast product and a sum: libtorch's CPU bmm runs each head's (1,D)x(D,Tk) as its own GEMM
// call, which made attention half of a GPT-2-small decoding step at batch 1.
Tensor query_key_scores(const Tensor& q, const Tensor& k) {
  if (q.size(2) == 1 && q.is_cpu()) return (q * k).sum(-1).unsqueeze(2);
  return torch::matmul(q, k.transpose(-1, -2));
}

// probs (B,H,Tq,Tk) v (B,H,Tk,D) -> (B,H,Tq,D), with the same one-row path.
Tensor weighted_values(const Tensor& probs, const Tensor& v) {
  if (probs.size(2) == 1 && probs.is_cpu()) return (probs.transpose(-1, -2) * v).sum(-2, true);
  return torch::matmul(probs, v);
}

// (d/2) float32: theta^(-2i/d), stretched as the rope type says (transformers' rope init functions).
Tensor inverse_frequencies(const RotaryOptions& r, std::int64_t dim, const Tensor& positions) {
  auto f32 = torch::TensorOptions().dtype(torch::kFloat32).device(positions.device());
  const Tensor exponents = torch::arange(0, dim, 2, f32) / static_cast<double>(dim);
  switch (r.scaling) {
    case RopeScaling::Default: return 1.0 / torch::pow(r.theta, exponents);
    case RopeScaling::Linear: return 1.0 / torch::pow(r.theta, exponents) / r.factor;
    case RopeScaling::Dynamic: {
      // NTK-aware: past the trained context the base grows with the longest position of the call.
      const double length = static_cast<double>(positions.max().item<std::int64_t>() + 1);
      const double trained = static_cast<double>(r.original_max_positions);
      if (length <= trained) return 1.0 / torch::pow(r.theta, exponents);
      const double base = r.theta * std::pow(r.factor * length / trained - (r.factor - 1.0),
                                             static_cast<double>(dim) / static_cast<double>(dim - 2));
      return 1.0 / torch::pow(base, exponents);
    }
    case RopeScaling::Llama3: {
      const Tensor inv_freq = 1.0 / torch::pow(r.theta, exponents);
      const double context = static_cast<double>(r.original_max_positions);
      const double low_wavelength = context / r.low_freq_factor, high_wavelength = context / r.high_freq_factor;
      const Tensor wavelength = 2.0 * M_PI / inv_freq;
      Tensor scaled = torch::where(wavelength > low_wavelength, inv_freq / r.factor, inv_freq);
      const Tensor smooth = (context / wavelength - r.low_freq_factor) / (r.high_freq_factor - r.low_freq_factor);
      const Tensor smoothed = (1.0 - smooth) * scaled / r.factor + smooth * scaled;
      const Tensor medium = wavelength.ge(high_wavelength).logical_and(wavelength.le(low_wavelength));
      return torch::where(medium, smoothed, scaled);
    }
  }
  return Tensor();
}

}  // namespace

Tensor apply_rotary(const Tensor& x, const Tensor& positions, const RotaryOptions& rotary) {
  if (rotary.layout == RotaryLayout::None) return x;
  const std::int64_t dim = rotary.dim > 0 ? rotary.dim : x.size(-1);
  ADAPTERS_CHECK(dim % 2 == 0 && dim <= x.size(-1), "rotary dimension ", dim, " must be even and at most the head size ",
                 x.size(-1));
  Tensor inv_freq = inverse_frequencies(rotary, dim, positions);  // (d/2)
  Tensor freqs = positions.to(torch::kFloat32).unsqueeze(-1) * inv_freq;  // (B,T,d/2)
  Tensor emb = rotary.layout == RotaryLayout::HalfSplit ? torch::cat({freqs, freqs}, -1)
                                                        : torch::repeat_interleave(freqs, 2, -1);  // (B,T,d)
  Tensor cos = emb.cos().unsqueeze(1).to(x.scalar_type()), sin = emb.sin().unsqueeze(1).to(x.scalar_type());  // (B,1,T,d)
  Tensor rot = x.narrow(-1, 0, dim);
  Tensor rotated = rot * cos + (rotary.layout == RotaryLayout::HalfSplit ? rotate_half(rot) : rotate_every_two(rot)) * sin;
  if (dim == x.size(-1)) return rotated;
  return torch::cat({rotated, x.narrow(-1, dim, x.size(-1) - dim)}, -1);
}

AttentionImpl::AttentionImpl(AttentionOptions o)
    : prefix(o.layer, o.prefix_location, o.invert_prefix_mask), options_(std::move(o)) {
  auto& c = options_;
  ADAPTERS_CHECK(c.hidden > 0 && c.heads > 0, "attention: hidden and heads must be positive");
  if (c.kv_heads == 0) c.kv_heads = c.heads;
  if (c.head_dim == 0) c.head_dim = c.hidden / c.heads;
  if (c.kv_input == 0) c.kv_input = c.hidden;
  if (c.out == 0) c.out = c.hidden;
  ADAPTERS_CHECK(c.heads % c.kv_heads == 0, "attention: num_key_value_heads ", c.kv_heads,
                 " does not divide num_attention_heads ", c.heads);
  const std::int64_t q_width = c.heads * c.head_dim, kv_width = c.kv_heads * c.head_dim;
  if (!c.qkv.empty()) {
    ADAPTERS_CHECK(!c.cross && c.kv_input == c.hidden, "attention: a fused q/k/v projection needs self-attention");
    std::vector<OutputSlice> slices = {{role::kQuery, 0, q_width},
                                       {role::kKey, q_width, kv_width},
                                       {role::kValue, q_width + kv_width, kv_width}};
    qkv = register_module(c.qkv, AdaptedLinear(c.hidden, q_width + 2 * kv_width, c.qkv_bias, c.layer, std::move(slices),
                                               c.layout));
  } else {
    if (!c.q.empty()) query = register_module(c.q, AdaptedLinear(c.hidden, q_width, c.qkv_bias, c.layer, role::kQuery, c.layout));
    if (!c.k.empty()) {
      key = register_module(c.k, AdaptedLinear(c.kv_input, kv_width, c.qkv_bias && c.k_bias, c.layer, role::kKey, c.layout));
    }
    if (!c.v.empty()) value = register_module(c.v, AdaptedLinear(c.kv_input, kv_width, c.qkv_bias, c.layer, role::kValue, c.layout));
  }
  if (!c.o.empty()) {
    output = register_module(c.o, AdaptedLinear(q_width, c.out, c.o_bias, c.layer, role::kAttentionOut, c.layout));
  }
  dropout = register_module("dropout", torch::nn::Dropout(c.dropout));
  prefix.register_in(*this);
}

Tensor AttentionImpl::split_heads(const Tensor& x, std::int64_t heads) const {
  return x.reshape({x.size(0), x.size(1), heads, options_.head_dim}).transpose(1, 2);
}

std::tuple<Tensor, Tensor, Tensor> AttentionImpl::project_fused(const Tensor& x, ForwardContext& ctx) {
  const std::int64_t q_width = options_.heads * options_.head_dim, kv_width = options_.kv_heads * options_.head_dim;
  const Tensor y = qkv->forward(x, ctx);  // (B,T,q+2kv)
  return {split_heads(y.narrow(-1, 0, q_width), options_.heads),
          split_heads(y.narrow(-1, q_width, kv_width), options_.kv_heads),
          split_heads(y.narrow(-1, q_width + kv_width, kv_width), options_.kv_heads)};
}

Tensor AttentionImpl::forward(const AttentionCall& call, ForwardContext& ctx) {
  if (qkv) {
    auto [q, k, v] = project_fused(call.hidden, ctx);
    Tensor context = attend(std::move(q), std::move(k), std::move(v), call, ctx);
    return output ? output->forward(context, ctx) : context;
  }
  ADAPTERS_CHECK(query && key && value, "attention at layer ", options_.layer,
                 ": this architecture projects q/k/v itself and must call attend()");
  Tensor q = split_heads(query->forward(call.hidden, ctx), options_.heads);
  Tensor k, v;
  if (options_.cross && call.cache != nullptr && call.cache->key.defined()) {
    k = call.cache->key;  // cross-attention keys/values are computed once per sequence
    v = call.cache->value;
  } else {
    const Tensor& source = options_.cross ? call.kv_states : call.hidden;
    ADAPTERS_CHECK(source.defined(), "cross-attention at layer ", options_.layer, " needs the encoder states");
    k = split_heads(key->forward(source, ctx), options_.kv_heads);
    v = split_heads(value->forward(source, ctx), options_.kv_heads);
  }
  Tensor context = attend(std::move(q), std::move(k), std::move(v), call, ctx);
  return output ? output->forward(context, ctx) : context;
}

void LayerKV::append(const Tensor& k, const Tensor& v) {
  const std::int64_t past = length(), total = past + k.size(2);
  if (torch::GradMode::is_enabled()) {  // training through a cache: no in-place writes
    key = past ? torch::cat({key, k}, 2) : k;
    value = past ? torch::cat({value, v}, 2) : v;
    key_buffer = value_buffer = Tensor();
    return;
  }
  if (!key_buffer.defined() || key_buffer.size(2) < total || key_buffer.size(0) != k.size(0)) {
    const std::int64_t room = std::max({capacity, total, 2 * (key_buffer.defined() ? key_buffer.size(2) : 0)});
    Tensor kb = torch::empty({k.size(0), k.size(1), room, k.size(3)}, k.options());
    Tensor vb = torch::empty({v.size(0), v.size(1), room, v.size(3)}, v.options());
    if (past) {
      kb.narrow(2, 0, past).copy_(key);
      vb.narrow(2, 0, past).copy_(value);
    }
    key_buffer = kb;
    value_buffer = vb;
  }
  key_buffer.narrow(2, past, k.size(2)).copy_(k);
  value_buffer.narrow(2, past, v.size(2)).copy_(v);
  key = key_buffer.narrow(2, 0, total);
  value = value_buffer.narrow(2, 0, total);
}

void LayerKV::select_rows(const Tensor& rows) {
  if (!key.defined()) return;
  const Tensor index = rows.to(key.device(), torch::kLong);
  if (key_buffer.defined()) {
    key_buffer = key_buffer.index_select(0, index);
    value_buffer = value_buffer.index_select(0, index);
    key = key_buffer.narrow(2, 0, key.size(2));
    value = value_buffer.narrow(2, 0, value.size(2));
  } else {
    key = key.index_select(0, index);
    value = value.index_select(0, index);
  }
}

std::pair<Tensor, Tensor> AttentionImpl::through_cache(Tensor k, Tensor v, const AttentionCall& call) const {
  LayerKV* cache = call.cache;
  if (cache == nullptr) return {std::move(k), std::move(v)};
  if (options_.cross) {
    cache->key = k;
    cache->value = v;
    return {std::move(k), std::move(v)};
  }
  cache->append(k, v);
  return {cache->key, cache->value};
}

Tensor AttentionImpl::repeat_kv(const Tensor& t) const {
  const std::int64_t n = options_.heads / options_.kv_heads;
  return n == 1 ? t : t.repeat_interleave(n, 1);
}

Tensor AttentionImpl::attend(Tensor q, Tensor k, Tensor v, const AttentionCall& call, ForwardContext& ctx) {
  if (options_.rotary.layout != RotaryLayout::None) {
    ADAPTERS_CHECK(call.position_ids.defined(), "attention at layer ", options_.layer, ": rotary embeddings need position ids");
    q = apply_rotary(q, call.position_ids, options_.rotary);
    if (!options_.cross) k = apply_rotary(k, call.position_ids, options_.rotary);
  }
  std::tie(k, v) = through_cache(std::move(k), std::move(v), call);
  AttentionState s = prefix.forward({std::move(q), std::move(k), std::move(v), call.mask, call.hidden}, ctx);
  Tensor scores = query_key_scores(s.query, repeat_kv(s.key));  // (B,H,Tq,Tk)
  if (!options_.scale) {
    scores = scores / std::sqrt(static_cast<double>(options_.head_dim));
  } else if (*options_.scale != 1.0) {
    scores = scores * *options_.scale;
  }
  if (call.score_bias) scores = scores + call.score_bias(s);
  if (s.mask.defined()) scores = scores + s.mask;
  Tensor probs = torch::softmax(scores, -1);
  if (options_.zero_masked_rows && s.mask.defined()) {
    probs = probs.masked_fill(s.mask.lt(0.5 * lowest_value(s.mask.scalar_type())), 0.0);
  }
  Tensor context = weighted_values(dropout(probs), repeat_kv(s.value)).transpose(1, 2).contiguous();  // (B,Tq,H,D)
  return context.view({context.size(0), context.size(1), options_.heads * options_.head_dim});
}

}  // namespace adapters::nn
