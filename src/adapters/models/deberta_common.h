// What DeBERTa (deberta.cpp) and DeBERTa-v2 (deberta_v2.cpp) share: their config keys, the
// embeddings (LayerNorm, then multiplied by the padding mask), the post-norm layer around a
// disentangled self-attention, the encoder with its relative embeddings (v2: their LayerNorm and
// the convolution after layer 0), the (B,1,T,T) mask of padded queries and keys, and the gather
// of the content-to-position (c2p) and position-to-content (p2c) terms. Internal to the two files.
//
// Each version's self-attention is an nn::Attention (dropout + the prefix site "prefix_tuning",
// location "self_prefix", mask not inverted) that adds the relative terms through
// AttentionCall::score_bias: they cover the layer's own keys only, the prefix columns get 0, and the
// softmax zeroes masked entries afterwards (XSoftmax), so a padded query attends only to a prefix.
#pragma once

#include <torch/torch.h>

#include <functional>
#include <memory>
#include <string>

#include "adapters/models/base_model.h"
#include "adapters/models/registry.h"
#include "adapters/nn/activation.h"

namespace adapters::models::deberta {

// DeBERTa's own config keys, read and checked once per model.
struct Options {
  bool v2 = false;
  bool relative_attention = false;
  bool c2p = false;                   // "c2p" in pos_att_type
  bool p2c = false;                   // "p2c" in pos_att_type
  // 1 + the pos_att_type entries (v1: every entry, v2: c2p and p2c), even without relative attention.
  std::int64_t scale_factor = 1;
  std::int64_t max_relative_positions = 0;  // resolved: < 1 in the config means max_position_embeddings
  std::int64_t position_buckets = -1;       // v2: log buckets when > 0
  bool share_att_key = false;               // v2: query_proj/key_proj also project the relative embeddings
  bool norm_rel_embeddings = false;         // v2: "layer_norm" in norm_rel_ebd
  bool position_biased_input = true;
  std::int64_t type_vocab_size = 0;
  std::int64_t conv_kernel_size = 0;  // v2: the convolution after layer 0 when > 0
  std::int64_t conv_groups = 1;
  std::string conv_act = "tanh";

  // Rows of the relative embedding table.
  std::int64_t rel_embedding_rows() const {
    return 2 * (v2 && position_buckets > 0 ? position_buckets : max_relative_positions);
  }
  // The divisor of the scores: float32 sqrt(head_dim * scale_factor), as the reference computes it.
  double scale(std::int64_t head_dim) const;
  // (T,T) int64 relative positions i - j (v2: log-bucketed).
  torch::Tensor relative_positions(std::int64_t length, const torch::Device& device) const;
};

// DeBERTa's defaults for keys whose ModelConfig default differs (layer_norm_eps 1e-7,
// type_vocab_size 0); `c` is the parsed config.
ModelConfig with_defaults(ModelConfig c);
// Reads and checks DeBERTa's own keys; throws naming the key before any weight is read.
Options parse_options(const ModelConfig& c, bool v2);

// The self-attention of one layer ("attention.self"): each version's subclass adds its projections.
class SelfAttentionImpl : public nn::AttentionImpl {
 public:
  using nn::AttentionImpl::AttentionImpl;
  // (B,T,C) -> (B,T,H*D); args.extras holds "relative_pos" (T,T) and "rel_embeddings" (R,C).
  virtual torch::Tensor run(const torch::Tensor& x, const LayerArgs& args, nn::ForwardContext& ctx) = 0;
};

using MakeSelfAttention = std::function<std::shared_ptr<SelfAttentionImpl>(std::int64_t layer)>;

// The attention options both versions start from: no output projection (attention.output.dense),
// the prefix site of the reference (location "self_prefix", the mask passed as it is), XSoftmax.
nn::AttentionOptions attention_options(const ModelConfig& c, std::int64_t layer);

// c2p + p2c (B,H,T,T) for queries q (B,H,T,D) and the layer's own keys k (B,H,T,D):
//   c2p[i,j] = q_i . pos_key[c(rel[i,j])],  p2c[i,j] = k_j . pos_query[c(-rel[j,i])],
// c(r) = clamp(r + span, 0, 2 span - 1); pos_key / pos_query (b,H,2 span,D), undefined when the
// term is off. Each term is divided by `divisor` when it is not 1 (v2; v1 scales beforehand).
torch::Tensor disentangled_terms(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& pos_key,
                                 const torch::Tensor& pos_query, const torch::Tensor& relative_pos, std::int64_t span,
                                 double divisor);

// The score bias of the attention call: `terms` (b,H,T,T) on the last T key columns of the state
// (the layer's own keys), 0 on the prefix columns before them.
torch::Tensor bias_after_prefix(const torch::Tensor& terms, const nn::AttentionState& state);

// Whether the active setup holds a block whose adapters act on some batch rows only (Parallel,
// BatchSplit): position projections through adapted layers then need one row per batch row.
bool row_dependent(const nn::ForwardContext& ctx);

// The base model (DebertaModel / DebertaV2Model) with the given version's self-attention.
std::shared_ptr<BaseModelImpl> make_model(const ModelConfig& c, const Options& options, const MakeSelfAttention& make);

// A version's self-attention for layer `layer` of the model (config with DeBERTa's defaults).
using MakeArchAttention =
    std::function<std::shared_ptr<SelfAttentionImpl>(const ModelConfig& c, const Options& o, std::int64_t layer)>;

// The ArchSpec row of either version (base prefix "deberta", no pooler, the static heads of
// DebertaFor* / DebertaV2For*).
ArchSpec arch(std::string model_type, std::string model_class, bool v2, const MakeArchAttention& make);

}  // namespace adapters::models::deberta
