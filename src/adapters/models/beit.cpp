// BEiT: patch embeddings behind a [CLS] token (absolute position embeddings optional); pre-norm
// layers with a relative position bias on the attention scores (per layer and/or shared; prefix
// columns get bias 0), a key projection without bias, and layer scale: each branch is scaled by
// lambda_1 / lambda_2, then drop path, then the residual site (attention_adapters,
// output_adapters on the layer). The pooler is the layernormed mean of the patch tokens
// (use_mean_pooling) or the [CLS] token after a final layernorm.
#include <torch/torch.h>

#include "adapters/core/error.h"

#include "adapters/models/architectures.h"
#include "adapters/models/vision.h"
#include "adapters/nn/module_dict.h"

namespace adapters::models {
namespace {

using nn::ForwardContext;
using torch::Tensor;
using nn::AdapterLayer;

struct BeitEmbeddingsImpl : torch::nn::Module {
  BeitEmbeddingsImpl(const ModelConfig& c, const vision::ImageGeometry& g) {
    cls_token = register_parameter("cls_token", torch::zeros({1, 1, c.hidden_size}));
    // Only masked image modelling (bool_masked_pos) reads it; kept so that the checkpoint loads.
    if (c.raw.value("use_mask_token", false))
      mask_token = register_parameter("mask_token", torch::zeros({1, 1, c.hidden_size}));
    patch_embeddings = register_module("patch_embeddings", vision::PatchEmbeddings(c, g));
    if (c.raw.value("use_absolute_position_embeddings", false)) {
      position_embeddings =
          register_parameter("position_embeddings", torch::zeros({1, g.num_patches() + 1, c.hidden_size}));
    }
    dropout = register_module("dropout", torch::nn::Dropout(c.hidden_dropout_prob));
  }
  // (B,3,H,W) -> (B,1+N,C)
  Tensor forward(const Tensor& pixels) {
    Tensor patches = patch_embeddings(pixels);
    Tensor h = torch::cat({cls_token.expand({patches.size(0), -1, -1}), patches}, 1);
    return dropout(position_embeddings.defined() ? h + position_embeddings : h);
  }
  Tensor cls_token, mask_token, position_embeddings;
  vision::PatchEmbeddings patch_embeddings{nullptr};
  torch::nn::Dropout dropout{nullptr};
};
TORCH_MODULE(BeitEmbeddings);

// (1+N,1+N) indices into the bias table: relative offsets between patches of the (gh,gw) grid,
// then three entries for [CLS] -> patch, patch -> [CLS] and [CLS] -> [CLS].
Tensor relative_index(std::int64_t gh, std::int64_t gw) {
  const std::int64_t distances = (2 * gh - 1) * (2 * gw - 1) + 3;
  Tensor rows = torch::arange(gh).repeat_interleave(gw), cols = torch::arange(gw).repeat(gh);  // (N) each
  Tensor dr = rows.unsqueeze(1) - rows.unsqueeze(0) + (gh - 1), dc = cols.unsqueeze(1) - cols.unsqueeze(0) + (gw - 1);
  Tensor index = torch::zeros({gh * gw + 1, gh * gw + 1}, torch::kLong);
  index.slice(0, 1).slice(1, 1).copy_(dr * (2 * gw - 1) + dc);
  index[0].fill_(distances - 3);
  index.select(1, 0).fill_(distances - 2);
  index[0][0] = distances - 1;
  return index;
}

struct BeitRelativePositionBiasImpl : torch::nn::Module {
  BeitRelativePositionBiasImpl(const ModelConfig& c, const vision::ImageGeometry& g)
      : index(relative_index(g.grid_h(), g.grid_w())) {
    const std::int64_t distances = (2 * g.grid_h() - 1) * (2 * g.grid_w() - 1) + 3;
    relative_position_bias_table =
        register_parameter("relative_position_bias_table", torch::zeros({distances, c.num_attention_heads}));
    relative_position_index = register_buffer("relative_position_index", index.clone());
  }
  // () -> (H,1+N,1+N)
  Tensor forward() {
    const Tensor& table = relative_position_bias_table;
    const auto T = index.size(0);
    return table.index_select(0, index.flatten().to(table.device())).view({T, T, -1}).permute({2, 0, 1});
  }
  Tensor relative_position_bias_table;
  // HF's buffer, kept so that the checkpoint's key loads; the index used is `index`, which a
  // whole-module dtype cast cannot round.
  Tensor relative_position_index;
  Tensor index;
};
TORCH_MODULE(BeitRelativePositionBias);

struct BeitAttentionImpl : torch::nn::Module {
  BeitAttentionImpl(const ModelConfig& c, const vision::ImageGeometry& g, std::int64_t layer) {
    nn::AttentionOptions o;
    o.hidden = c.hidden_size;
    o.heads = c.num_attention_heads;
    o.layer = layer;
    o.k_bias = false;
    o.dropout = c.attention_probs_dropout_prob;
    attention = register_module("attention", nn::Attention(o));
    if (c.raw.value("use_relative_position_bias", false)) {
      relative_position_bias = attention->register_module("relative_position_bias", BeitRelativePositionBias(c, g));
    }
    output = register_module("output",
                             vision::DenseDropout(c, c.hidden_size, c.hidden_size, layer, nn::role::kAttentionOut));
  }
  // (B,T,C) normalised, the shared bias (H,T,T) or undefined -> (B,T,C)
  Tensor forward(const Tensor& x, const Tensor& shared_bias, ForwardContext& ctx) {
    nn::AttentionCall call;
    call.hidden = x;
    Tensor bias = relative_position_bias ? relative_position_bias->forward() : Tensor();
    if (shared_bias.defined()) bias = bias.defined() ? bias + shared_bias : shared_bias;
    if (bias.defined()) {
      call.score_bias = [&bias](const nn::AttentionState& s) {  // prefix columns (on the left) get 0
        // Tokens prepended to the embeddings (prompt tuning) have no place in the patch grid.
        ADAPTERS_CHECK(s.query.size(2) == bias.size(-2), "BEiT: the relative position bias covers ", bias.size(-2),
                       " positions ([CLS] and the patches), but the attention sees ", s.query.size(2),
                       " tokens: prompt tuning (tokens before the patches) is not supported on BEiT");
        return torch::constant_pad_nd(bias, {s.key.size(2) - bias.size(-1), 0}).unsqueeze(0);  // (1,H,T,P+T)
      };
    }
    return output->forward(attention->forward(call, ctx), ctx);
  }
  nn::Attention attention{nullptr};
  BeitRelativePositionBias relative_position_bias{nullptr};
  vision::DenseDropout output{nullptr};  // HF's BeitSelfOutput
};
TORCH_MODULE(BeitAttention);

struct BeitLayerImpl : torch::nn::Module {
  BeitLayerImpl(const ModelConfig& c, const vision::ImageGeometry& g, std::int64_t layer, double drop_path)
      : drop_path(drop_path) {
    attention = register_module("attention", BeitAttention(c, g, layer));
    intermediate = register_module("intermediate", vision::Intermediate(c, layer));
    output = register_module("output",
                             vision::DenseDropout(c, c.intermediate_size, c.hidden_size, layer, nn::role::kOutput));
    layernorm_before = register_module("layernorm_before", vision::layer_norm(c));
    layernorm_after = register_module("layernorm_after", vision::layer_norm(c));
    const double scale = c.raw.value("layer_scale_init_value", 0.1);
    if (scale > 0) {
      lambda_1 = register_parameter("lambda_1", torch::full({c.hidden_size}, scale));
      lambda_2 = register_parameter("lambda_2", torch::full({c.hidden_size}, scale));
    }
    attention_adapters = register_module("attention_adapters", AdapterLayer(layer, nn::location::kAttention));
    output_adapters = register_module("output_adapters", AdapterLayer(layer, nn::location::kOutput));
  }
  // (B,T,C) -> (B,T,C)
  Tensor forward(const Tensor& h, const Tensor& shared_bias, ForwardContext& ctx) {
    Tensor a = attention->forward(layernorm_before(h), shared_bias, ctx);
    a = attention_adapters->forward(branch(a, lambda_1), h, {}, ctx);
    Tensor y = output->forward(intermediate->forward(layernorm_after(a), ctx), ctx);
    return output_adapters->forward(branch(y, lambda_2), a, {}, ctx);
  }
  // Layer scale, then drop path (per sample, training only).
  Tensor branch(Tensor x, const Tensor& lambda) const {
    if (lambda.defined()) x = x * lambda;
    if (!is_training() || drop_path == 0.0) return x;
    const double keep = 1.0 - drop_path;
    Tensor mask = torch::floor(keep + torch::rand({x.size(0), 1, 1}, x.options()));
    return x / keep * mask;
  }
  double drop_path;
  BeitAttention attention{nullptr};
  vision::Intermediate intermediate{nullptr};
  vision::DenseDropout output{nullptr};  // HF's BeitOutput
  torch::nn::LayerNorm layernorm_before{nullptr}, layernorm_after{nullptr};
  Tensor lambda_1, lambda_2;
  AdapterLayer attention_adapters{nullptr}, output_adapters{nullptr};
};
TORCH_MODULE(BeitLayer);

struct BeitEncoderImpl : torch::nn::Module {
  BeitEncoderImpl(const ModelConfig& c, const vision::ImageGeometry& g) {
    if (c.raw.value("use_shared_relative_position_bias", false)) {
      relative_position_bias = register_module("relative_position_bias", BeitRelativePositionBias(c, g));
    }
    const double rate = c.raw.value("drop_path_rate", 0.1);
    const std::int64_t L = c.num_hidden_layers;
    layers = nn::register_layers<BeitLayer>(*this, "layer", L, [&](std::int64_t i) {
      return BeitLayer(c, g, i, L > 1 ? rate * static_cast<double>(i) / static_cast<double>(L - 1) : 0.0);
    });
  }
  BeitRelativePositionBias relative_position_bias{nullptr};  // shared by every layer, or null
  std::vector<BeitLayer> layers;                             // "layer.<i>"
};
TORCH_MODULE(BeitEncoder);

struct BeitPoolerImpl : torch::nn::Module {
  explicit BeitPoolerImpl(const ModelConfig& c) {
    if (c.raw.value("use_mean_pooling", true)) layernorm = register_module("layernorm", vision::layer_norm(c));
  }
  // (B,1+N,C) -> (B,C): layernorm(mean of the patch tokens), or the [CLS] token
  Tensor forward(const Tensor& h) { return layernorm ? layernorm(h.slice(1, 1).mean(1)) : h.select(1, 0); }
  torch::nn::LayerNorm layernorm{nullptr};
};
TORCH_MODULE(BeitPooler);

class BeitModelImpl : public vision::VisionModelImpl {
 public:
  explicit BeitModelImpl(const ModelConfig& c) : VisionModelImpl(c) {
    embeddings = register_module("embeddings", BeitEmbeddings(c, geometry_));
    encoder = register_module("encoder", BeitEncoder(c, geometry_));
    if (!c.raw.value("use_mean_pooling", true)) layernorm = register_module("layernorm", vision::layer_norm(c));
    pooler = register_module("pooler", BeitPooler(c));
  }

 protected:
  Tensor embed(const ModelInputs& in, LayerArgs&, ForwardContext&) override {
    return embeddings->forward(in.pixel_values);
  }
  std::int64_t num_layers() const override { return static_cast<std::int64_t>(encoder->layers.size()); }
  Tensor layer(std::int64_t i, const Tensor& h, LayerArgs&, ForwardContext& ctx) override {
    Tensor shared = encoder->relative_position_bias ? encoder->relative_position_bias->forward() : Tensor();
    return encoder->layers[static_cast<std::size_t>(i)]->forward(h, shared, ctx);
  }
  BaseModelOutput finish(const Tensor& h, const LayerArgs&, ForwardContext&) override {
    Tensor seq = layernorm ? layernorm(h) : h;
    BaseModelOutput out;
    out.last_hidden_state = seq;
    out.pooler_output = pooler->forward(seq);
    return out;
  }

 private:
  BeitEmbeddings embeddings{nullptr};
  BeitEncoder encoder{nullptr};
  torch::nn::LayerNorm layernorm{nullptr};
  BeitPooler pooler{nullptr};
};

}  // namespace

ArchSpec beit_arch() {
  ArchSpec spec;
  spec.model_type = "beit";
  spec.base_prefix = "beit";
  spec.model_class = "BeitAdapterModel";
  spec.create = [](const ModelConfig& c) { return std::make_shared<BeitModelImpl>(c); };
  spec.base_roots = {"embeddings", "encoder", "layernorm", "pooler"};
  spec.word_embeddings = "";
  spec.pooler = "pooler";
  // BeitForImageClassification: classifier on the pooler output.
  spec.static_heads = {{"ForImageClassification",
                        "image_classification",
                        {{"layers", 1}, {"activation_function", nullptr}, {"use_pooler", true}},
                        {"", "classifier"}}};
  spec.module_roles = bert_module_roles();
  spec.input = InputKind::Image;
  return spec;
}

}  // namespace adapters::models
