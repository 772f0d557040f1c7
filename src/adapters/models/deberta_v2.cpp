// DeBERTa-v2 (and v3, which is the same model type): v1's layers (deberta_common.h) with separate
// query_proj / key_proj / value_proj (with bias, adapters as q / k / v), log-bucketed relative
// positions, relative embeddings normalised by encoder.LayerNorm, and the convolution after
// layer 0 when conv_kernel_size > 0. Scores are divided by sqrt(D * scale_factor) after each matmul.
//
// share_att_key: the relative embeddings are projected by query_proj and key_proj themselves, with
// their adapters (LoRA, IA3) active, as the reference does; otherwise by the plain pos_key_proj /
// pos_query_proj.
#include <torch/torch.h>

#include "adapters/models/architectures.h"
#include "adapters/models/deberta_common.h"

namespace adapters::models {
namespace deberta {
namespace {

using nn::ForwardContext;
using torch::Tensor;

nn::AttentionOptions v2_attention_options(const ModelConfig& c, const Options& o, std::int64_t layer) {
  nn::AttentionOptions a = attention_options(c, layer);
  a.q = "query_proj", a.k = "key_proj", a.v = "value_proj";
  a.qkv_bias = true;
  a.scale = 1.0 / o.scale(c.hidden_size / c.num_attention_heads);
  return a;
}

class DisentangledSelfAttentionV2Impl : public SelfAttentionImpl {
 public:
  DisentangledSelfAttentionV2Impl(const ModelConfig& c, const Options& o, std::int64_t layer)
      : SelfAttentionImpl(v2_attention_options(c, o, layer)), o_(o) {
    const std::int64_t width = options().heads * options().head_dim;
    if (o.relative_attention) {
      pos_dropout = register_module("pos_dropout", torch::nn::Dropout(c.hidden_dropout_prob));
      if (!o.share_att_key && o.c2p) pos_key_proj = register_module("pos_key_proj", torch::nn::Linear(c.hidden_size, width));
      if (!o.share_att_key && o.p2c) {
        pos_query_proj = register_module("pos_query_proj", torch::nn::Linear(c.hidden_size, width));
      }
    }
  }

  Tensor run(const Tensor& x, const LayerArgs& args, ForwardContext& ctx) override {
    nn::AttentionCall call;
    call.hidden = x;
    call.mask = args.mask;
    if (o_.relative_attention && (o_.c2p || o_.p2c)) {
      const Tensor& relative_pos = args.extras.at("relative_pos");
      const Tensor& rel_embeddings = args.extras.at("rel_embeddings");
      const std::int64_t T = x.size(1);
      call.score_bias = [&, this, T](const nn::AttentionState& s) {
        const std::int64_t heads = options().heads;
        const std::int64_t span = o_.position_buckets > 0 ? o_.position_buckets : o_.max_relative_positions;
        Tensor r = pos_dropout(rel_embeddings).narrow(0, 0, 2 * span);  // (2S,C)
        Tensor pos_key, pos_query;
        if (o_.share_att_key) {
          // Through the adapted projections: one row per batch row when adapters act on some rows only.
          Tensor rows = row_dependent(ctx) ? r.unsqueeze(0).expand({s.query.size(0), -1, -1}) : r.unsqueeze(0);
          if (o_.c2p) pos_key = split_heads(key->forward(rows, ctx), heads);
          if (o_.p2c) pos_query = split_heads(query->forward(rows, ctx), heads);
        } else {
          if (pos_key_proj) pos_key = split_heads(pos_key_proj(r.unsqueeze(0)), heads);
          if (pos_query_proj) pos_query = split_heads(pos_query_proj(r.unsqueeze(0)), heads);
        }
        auto fit = [&](const Tensor& t) { return t.defined() && t.size(0) != 1 ? nn::match_batch(t, s.query) : t; };
        Tensor keys = s.key.narrow(2, s.key.size(2) - T, T);  // the layer's own keys, after any prefix
        return bias_after_prefix(disentangled_terms(s.query, keys, fit(pos_key), fit(pos_query), relative_pos, span,
                                                    o_.scale(options().head_dim)),
                                 s);
      };
    }
    return forward(call, ctx);
  }

  torch::nn::Dropout pos_dropout{nullptr};
  torch::nn::Linear pos_key_proj{nullptr}, pos_query_proj{nullptr};

 private:
  Options o_;
};

}  // namespace
}  // namespace deberta

ArchSpec deberta_v2_arch() {
  return deberta::arch("deberta-v2", "DebertaV2AdapterModel", true,
                       [](const ModelConfig& c, const deberta::Options& o, std::int64_t layer) {
                         return std::make_shared<deberta::DisentangledSelfAttentionV2Impl>(c, o, layer);
                       });
}

}  // namespace adapters::models
