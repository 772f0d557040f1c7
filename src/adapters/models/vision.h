// Shared pieces of the vision encoders (ViT, BEiT): the image geometry read from config.json, the
// patch embeddings (HF's patch_embeddings.projection, a strided Conv2d), the reference's
// standalone adapter-layer modules, and a base model that reads pixel_values (B,C,H,W) only and
// attends without a mask.
#pragma once

#include <torch/torch.h>

#include <string>
#include <utility>

#include "adapters/core/error.h"
#include "adapters/models/base_model.h"
#include "adapters/nn/activation.h"

namespace adapters::models::vision {

// config.json's image_size / patch_size: an integer or [height, width].
inline std::pair<std::int64_t, std::int64_t> size_pair(const ModelConfig& c, const char* key, std::int64_t fallback) {
  if (!c.raw.contains(key) || c.raw[key].is_null()) return {fallback, fallback};
  const json& v = c.raw[key];
  if (v.is_number_integer()) return {v.get<std::int64_t>(), v.get<std::int64_t>()};
  ADAPTERS_CHECK(v.is_array() && v.size() == 2 && v[0].is_number_integer() && v[1].is_number_integer(),
                 "config.json: ", key, " must be an integer or [height, width], found ", v.dump());
  return {v[0].get<std::int64_t>(), v[1].get<std::int64_t>()};
}

struct ImageGeometry {
  explicit ImageGeometry(const ModelConfig& c) : channels(c.raw.value("num_channels", std::int64_t{3})) {
    std::tie(height, width) = size_pair(c, "image_size", 224);
    std::tie(patch_h, patch_w) = size_pair(c, "patch_size", 16);
    ADAPTERS_CHECK(channels > 0 && patch_h > 0 && patch_w > 0 && height >= patch_h && width >= patch_w,
                   "config.json: expected positive num_channels and patch_size no larger than image_size, found ",
                   "num_channels ", channels, ", image_size ", height, "x", width, ", patch_size ", patch_h, "x",
                   patch_w);
  }
  std::int64_t grid_h() const { return height / patch_h; }
  std::int64_t grid_w() const { return width / patch_w; }
  std::int64_t num_patches() const { return grid_h() * grid_w(); }

  std::int64_t channels;
  std::int64_t height = 0, width = 0, patch_h = 0, patch_w = 0;
};

struct PatchEmbeddingsImpl : torch::nn::Module {
  PatchEmbeddingsImpl(const ModelConfig& c, const ImageGeometry& g) {
    const auto options =
        torch::nn::Conv2dOptions(g.channels, c.hidden_size, {g.patch_h, g.patch_w}).stride({g.patch_h, g.patch_w});
    projection = register_module("projection", torch::nn::Conv2d(options));
  }
  // (B,C,H,W) -> (B,N,hidden), patches in row-major order
  torch::Tensor forward(const torch::Tensor& pixels) {
    return projection(pixels.to(projection->weight.scalar_type())).flatten(2).transpose(1, 2);
  }
  torch::nn::Conv2d projection{nullptr};
};
TORCH_MODULE(PatchEmbeddings);

// Dense + dropout (HF's ViTSelfOutput, BeitSelfOutput, BeitOutput): (B,T,in) -> (B,T,out)
struct DenseDropoutImpl : torch::nn::Module {
  DenseDropoutImpl(const ModelConfig& c, std::int64_t in, std::int64_t out, std::int64_t layer, const char* role) {
    dense = register_module("dense", nn::AdaptedLinear(in, out, true, layer, role));
    dropout = register_module("dropout", torch::nn::Dropout(c.hidden_dropout_prob));
  }
  torch::Tensor forward(const torch::Tensor& x, nn::ForwardContext& ctx) { return dropout(dense->forward(x, ctx)); }
  nn::AdaptedLinear dense{nullptr};
  torch::nn::Dropout dropout{nullptr};
};
TORCH_MODULE(DenseDropout);

// Dense + hidden_act (HF's *Intermediate): (B,T,C) -> (B,T,I)
struct IntermediateImpl : torch::nn::Module {
  IntermediateImpl(const ModelConfig& c, std::int64_t layer)
      : act(nn::resolve_activation(c.hidden_act, "config.json: hidden_act")) {
    dense = register_module(
        "dense", nn::AdaptedLinear(c.hidden_size, c.intermediate_size, true, layer, nn::role::kIntermediate));
  }
  torch::Tensor forward(const torch::Tensor& x, nn::ForwardContext& ctx) { return act(dense->forward(x, ctx)); }
  nn::Activation act;
  nn::AdaptedLinear dense{nullptr};
};
TORCH_MODULE(Intermediate);

inline torch::nn::LayerNorm layer_norm(const ModelConfig& c) {
  return torch::nn::LayerNorm(torch::nn::LayerNormOptions({c.hidden_size}).eps(c.layer_norm_eps));
}

// A base model whose only input is pixel_values and whose attention has no mask.
class VisionModelImpl : public BaseModelImpl {
 public:
  explicit VisionModelImpl(const ModelConfig& c) : BaseModelImpl(c), geometry_(c) {}

  std::int64_t batch_size(const ModelInputs& in) const override {
    check_inputs(in);
    return in.pixel_values.size(0);
  }

 protected:
  void check_inputs(const ModelInputs& in) const override {
    const std::string where = config_.model_type + " forward";
    const ImageGeometry& g = geometry_;
    for (const auto& [what, t] : {std::pair<const char*, const torch::Tensor&>{"input_ids", in.input_ids},
                                  {"inputs_embeds", in.inputs_embeds},
                                  {"attention_mask", in.attention_mask},
                                  {"token_type_ids", in.token_type_ids},
                                  {"position_ids", in.position_ids},
                                  {"decoder_input_ids", in.decoder_input_ids}}) {
      ADAPTERS_CHECK(!t.defined(), where, ": ", config_.model_type,
                     " is a vision model and reads pixel_values only, found ", what);
    }
    ADAPTERS_CHECK(in.cache == nullptr, where, ": a vision encoder takes no key/value cache");
    const torch::Tensor& px = in.pixel_values;
    ADAPTERS_CHECK(px.defined(), where, ": pixel_values (B,", g.channels, ",", g.height, ",", g.width, ") is required");
    ADAPTERS_CHECK(px.is_floating_point(), where, ": pixel_values must be a floating-point tensor, found ",
                   px.scalar_type());
    ADAPTERS_CHECK(px.dim() == 4, where, ": pixel_values must be (B,C,H,W) = (B,", g.channels, ",", g.height, ",",
                   g.width, "), found shape ", px.sizes());
    ADAPTERS_CHECK(px.size(1) == g.channels, where, ": pixel_values must have ", g.channels,
                   " channels (config.json num_channels), found ", px.size(1), " in shape ", px.sizes());
    ADAPTERS_CHECK(px.size(2) == g.height && px.size(3) == g.width, where, ": pixel_values must be ", g.height, "x",
                   g.width, " images (config.json image_size; position encodings are not interpolated), found ",
                   px.size(2), "x", px.size(3));
  }
  torch::Tensor attention_mask(const torch::Tensor&, const LayerArgs&) const override { return {}; }

  ImageGeometry geometry_;
};

}  // namespace adapters::models::vision
