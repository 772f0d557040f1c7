// The one attention module of every architecture: q/k/v/o projections through AdaptedLinear (HF's
// attribute names), optional rotary embeddings on q/k, a key/value cache slot, the prefix-tuning
// site, grouped-query attention, additive score biases (relative position bias, DeBERTa's
// disentangled terms), an optional scale, self- and cross-attention.
//
// Order inside one call, fixed for every architecture:
//   1. project q (B,H,Tq,D) and k, v (B,Hkv,Tk,D) (cross-attention: from the encoder states);
//   2. rotary embeddings on q and k at the call's position ids;
//   3. the cache: past keys/values are prepended and the cache keeps the result. The cache holds
//      the layer's own keys only, never prefixes, in the batch that reached the layer;
//   4. the prefix site: active prefixes are prepended in front of (cache + new) keys, the mask
//      gets their columns, and a Parallel block replicates the batch here when no earlier site
//      has. A cached step with the same setup therefore meets the same batch sizes and the same
//      prefix as the full recompute, and gives the same scores;
//   5. kv heads are repeated to H (GQA), scores = q k^T * scale + bias + mask, softmax, dropout,
//      probs v, merge heads, and the output projection when the architecture keeps it here.
// Architectures with their own projections (DeBERTa's head-interleaved in_proj) call attend()
// with q, k, v and get steps 2-5.
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/modules/dropout.h>

#include <functional>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "adapters/nn/adapted_linear.h"
#include "adapters/nn/attention_site.h"
#include "adapters/nn/context.h"

namespace adapters::nn {

// Keys and values of one attention layer cached across calls: (B,Hkv,T,D) each. Self-attention
// appends into preallocated buffers (grown geometrically, or sized once by KVCache::reserve), so a
// decoding step copies only its new tokens; key/value are views of the filled part.
struct LayerKV {
  torch::Tensor key;
  torch::Tensor value;
  torch::Tensor key_buffer, value_buffer;  // (B,Hkv,capacity,D); undefined until the first append
  std::int64_t capacity = 0;               // tokens to allocate for at the first append
  std::int64_t length() const { return key.defined() ? key.size(2) : 0; }
  // Appends k, v (B,Hkv,t,D). With autograd recording, the cache concatenates instead (no in-place
  // writes into tensors saved for backward).
  void append(const torch::Tensor& k, const torch::Tensor& v);
  // Keeps rows `rows` (beam search, expansion for return sequences).
  void select_rows(const torch::Tensor& rows);
};

// A caller-owned key/value cache: one slot per attention layer, in the model's layer order.
struct KVCache {
  std::vector<LayerKV> layers;
  std::int64_t capacity = 0;  // see reserve()
  // (B,F) 1 where one of the first F cached columns is filler (models::ModelInputs::filler: rows
  // whose soft prefixes differ in length), or undefined; the columns after F are tokens.
  torch::Tensor filler;
  // Tokens already cached (the position of the next token).
  std::int64_t length() const { return layers.empty() ? 0 : layers.front().length(); }
  LayerKV* layer(std::size_t i) {
    if (layers.size() <= i) layers.resize(i + 1);
    if (layers[i].capacity < capacity) layers[i].capacity = capacity;
    return &layers[i];
  }
  // Makes the first append of every layer allocate room for `tokens` (e.g. prompt + max_new_tokens).
  void reserve(std::int64_t tokens) { capacity = tokens; }
  void select_rows(const torch::Tensor& rows) {
    for (auto& l : layers) l.select_rows(rows);
    if (filler.defined()) filler = filler.index_select(0, rows.to(filler.device()));
  }
};

enum class RotaryLayout { None, HalfSplit, Interleaved };

// How the rotary frequencies stretch past the trained context (HF's rope_type).
enum class RopeScaling { Default, Linear, Dynamic, Llama3 };

struct RotaryOptions {
  RotaryLayout layout = RotaryLayout::None;
  std::int64_t dim = 0;  // rotated dimensions of each head (partial rotary); 0 = head_dim
  double theta = 10000.0;
  RopeScaling scaling = RopeScaling::Default;
  double factor = 1.0;                      // linear, dynamic, llama3
  std::int64_t original_max_positions = 0;  // dynamic: max_position_embeddings; llama3: the original context
  double low_freq_factor = 1.0, high_freq_factor = 4.0;  // llama3
};

// Applies rotary embeddings to x (B,H,T,D) at positions (B,T).
torch::Tensor apply_rotary(const torch::Tensor& x, const torch::Tensor& positions, const RotaryOptions& rotary);

struct AttentionOptions {
  std::int64_t hidden = 0;     // width of the query input
  std::int64_t kv_input = 0;   // width of the key/value input (cross-attention); 0 = hidden
  std::int64_t heads = 0;
  std::int64_t kv_heads = 0;   // 0 = heads
  std::int64_t head_dim = 0;   // 0 = hidden / heads
  std::int64_t out = 0;        // width of the output projection; 0 = hidden
  std::int64_t layer = 0;
  // HF attribute names of the projections; an empty name leaves the projection out (o: the
  // architecture applies its output projection elsewhere; q/k/v: it calls attend() itself).
  std::string q = "query", k = "key", v = "value", o;
  // One fused projection producing q, k and v (GPT-2's c_attn); replaces q/k/v when set.
  std::string qkv;
  WeightLayout layout = WeightLayout::OutIn;  // InOut: HF Conv1D weights (GPT-2)
  bool qkv_bias = true;
  bool k_bias = true;    // false: the key projection alone has no bias (BEiT)
  bool o_bias = true;
  std::optional<double> scale;  // multiplier of q k^T; unset = 1/sqrt(head_dim) (T5: 1.0)
  double dropout = 0.0;
  std::string prefix_location = attention_location::kSelf;
  bool invert_prefix_mask = true;  // see AttentionSite
  bool cross = false;              // keys and values come from the encoder states
  bool zero_masked_rows = false;   // DeBERTa's XSoftmax: masked entries are 0 after the softmax
  RotaryOptions rotary;
};

// An additive term on the scaled scores, (B|1,H|1,Tq,Tk), computed from the state after the
// prefix site (so Tk counts prefix columns): relative position bias, DeBERTa's c2p/p2c.
using ScoreBias = std::function<torch::Tensor(const AttentionState& state)>;

struct AttentionCall {
  torch::Tensor hidden{};        // (B,Tq,C) the attention input
  torch::Tensor mask{};          // additive (B|1,1,Tq|1,Tk) from build_attention_mask, or undefined
  torch::Tensor kv_states{};     // cross-attention: (B,Tk,Ckv) encoder states
  torch::Tensor position_ids{};  // (B,Tq): rotary positions
  LayerKV* cache = nullptr;      // this layer's cache slot, or null
  ScoreBias score_bias{};
};

class AttentionImpl : public torch::nn::Module {
 public:
  explicit AttentionImpl(AttentionOptions options);

  // (B,Tq,C) -> (B,Tq,out) (or (B,Tq,H*D) without an output projection)
  torch::Tensor forward(const AttentionCall& call, ForwardContext& ctx);
  // Steps 2-5 for projections made by the caller: q (B,H,Tq,D), k and v (B,Hkv,Tk,D).
  torch::Tensor attend(torch::Tensor q, torch::Tensor k, torch::Tensor v, const AttentionCall& call,
                       ForwardContext& ctx);

  // (B,T,heads*D) -> (B,heads,T,D)
  torch::Tensor split_heads(const torch::Tensor& x, std::int64_t heads) const;

  const AttentionOptions& options() const { return options_; }

  AdaptedLinear query{nullptr}, key{nullptr}, value{nullptr}, output{nullptr};
  AdaptedLinear qkv{nullptr};  // the fused projection, when the options name one
  torch::nn::Dropout dropout{nullptr};
  AttentionSite prefix;

 private:
  // (B,T,C) -> q (B,H,T,D), k and v (B,Hkv,T,D) from the fused projection.
  std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> project_fused(const torch::Tensor& x, ForwardContext& ctx);
  // The cached keys/values with k, v appended (and stored back); cross-attention computes them once.
  std::pair<torch::Tensor, torch::Tensor> through_cache(torch::Tensor k, torch::Tensor v, const AttentionCall& call) const;
  torch::Tensor repeat_kv(const torch::Tensor& t) const;

  AttentionOptions options_;
};
TORCH_MODULE(Attention);

}  // namespace adapters::nn
