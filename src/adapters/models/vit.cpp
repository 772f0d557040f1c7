// ViT: patch embeddings behind a [CLS] token plus absolute position embeddings; pre-norm layers
// whose residual sites (the layer's attention_adapters, output.output_adapters) take the branch
// output and the un-normalised stream, with no norm; the final layernorm and the tanh pooler over
// [CLS].
#include <torch/torch.h>

#include "adapters/models/architectures.h"
#include "adapters/models/vision.h"
#include "adapters/nn/module_dict.h"

namespace adapters::models {
namespace {

using nn::AdaptedLinear;
using nn::ForwardContext;
using torch::Tensor;
using nn::AdapterLayer;

struct ViTEmbeddingsImpl : torch::nn::Module {
  ViTEmbeddingsImpl(const ModelConfig& c, const vision::ImageGeometry& g) {
    cls_token = register_parameter("cls_token", torch::zeros({1, 1, c.hidden_size}));
    position_embeddings =
        register_parameter("position_embeddings", torch::zeros({1, g.num_patches() + 1, c.hidden_size}));
    patch_embeddings = register_module("patch_embeddings", vision::PatchEmbeddings(c, g));
    dropout = register_module("dropout", torch::nn::Dropout(c.hidden_dropout_prob));
  }
  // (B,3,H,W) -> (B,1+N,C)
  Tensor forward(const Tensor& pixels) {
    Tensor patches = patch_embeddings(pixels);
    Tensor h = torch::cat({cls_token.expand({patches.size(0), -1, -1}), patches}, 1);
    return dropout(h + position_embeddings);
  }
  Tensor cls_token, position_embeddings;
  vision::PatchEmbeddings patch_embeddings{nullptr};
  torch::nn::Dropout dropout{nullptr};
};
TORCH_MODULE(ViTEmbeddings);

struct ViTAttentionImpl : torch::nn::Module {
  ViTAttentionImpl(const ModelConfig& c, std::int64_t layer) {
    nn::AttentionOptions o;
    o.hidden = c.hidden_size;
    o.heads = c.num_attention_heads;
    o.layer = layer;
    o.qkv_bias = c.raw.value("qkv_bias", true);
    o.dropout = c.attention_probs_dropout_prob;
    attention = register_module("attention", nn::Attention(o));
    output = register_module("output",
                             vision::DenseDropout(c, c.hidden_size, c.hidden_size, layer, nn::role::kAttentionOut));
  }
  // (B,T,C) normalised -> (B,T,C), no mask
  Tensor forward(const Tensor& x, ForwardContext& ctx) {
    nn::AttentionCall call;
    call.hidden = x;
    return output->forward(attention->forward(call, ctx), ctx);
  }
  nn::Attention attention{nullptr};
  vision::DenseDropout output{nullptr};  // HF's ViTSelfOutput
};
TORCH_MODULE(ViTAttention);

struct ViTOutputImpl : torch::nn::Module {
  ViTOutputImpl(const ModelConfig& c, std::int64_t layer) {
    dense = register_module("dense", AdaptedLinear(c.intermediate_size, c.hidden_size, true, layer, nn::role::kOutput));
    dropout = register_module("dropout", torch::nn::Dropout(c.hidden_dropout_prob));
    output_adapters = register_module("output_adapters", AdapterLayer(layer, nn::location::kOutput));
  }
  // (B,T,I), residual (B,T,C) -> (B,T,C)
  Tensor forward(const Tensor& x, const Tensor& residual, ForwardContext& ctx) {
    return output_adapters->forward(dropout(dense->forward(x, ctx)), residual, {}, ctx);
  }
  AdaptedLinear dense{nullptr};
  torch::nn::Dropout dropout{nullptr};
  AdapterLayer output_adapters{nullptr};
};
TORCH_MODULE(ViTOutput);

struct ViTLayerImpl : torch::nn::Module {
  ViTLayerImpl(const ModelConfig& c, std::int64_t layer) {
    attention = register_module("attention", ViTAttention(c, layer));
    intermediate = register_module("intermediate", vision::Intermediate(c, layer));
    output = register_module("output", ViTOutput(c, layer));
    layernorm_before = register_module("layernorm_before", vision::layer_norm(c));
    layernorm_after = register_module("layernorm_after", vision::layer_norm(c));
    attention_adapters = register_module("attention_adapters", AdapterLayer(layer, nn::location::kAttention));
  }
  // (B,T,C) -> (B,T,C)
  Tensor forward(const Tensor& h, ForwardContext& ctx) {
    Tensor a = attention_adapters->forward(attention->forward(layernorm_before(h), ctx), h, {}, ctx);
    return output->forward(intermediate->forward(layernorm_after(a), ctx), a, ctx);
  }
  ViTAttention attention{nullptr};
  vision::Intermediate intermediate{nullptr};
  ViTOutput output{nullptr};
  torch::nn::LayerNorm layernorm_before{nullptr}, layernorm_after{nullptr};
  AdapterLayer attention_adapters{nullptr};
};
TORCH_MODULE(ViTLayer);

struct ViTEncoderImpl : torch::nn::Module {
  explicit ViTEncoderImpl(const ModelConfig& c)
      : layers(nn::register_layers<ViTLayer>(*this, "layer", c.num_hidden_layers,
                                             [&](std::int64_t i) { return ViTLayer(c, i); })) {}
  std::vector<ViTLayer> layers;  // "layer.<i>"
};
TORCH_MODULE(ViTEncoder);

struct ViTPoolerImpl : torch::nn::Module {
  explicit ViTPoolerImpl(const ModelConfig& c) {
    dense = register_module("dense", torch::nn::Linear(c.hidden_size, c.hidden_size));
  }
  // (B,T,C) -> (B,C): tanh(dense([CLS]))
  Tensor forward(const Tensor& h) { return torch::tanh(dense(h.select(1, 0))); }
  torch::nn::Linear dense{nullptr};
};
TORCH_MODULE(ViTPooler);

class ViTModelImpl : public vision::VisionModelImpl {
 public:
  explicit ViTModelImpl(const ModelConfig& c) : VisionModelImpl(c) {
    embeddings = register_module("embeddings", ViTEmbeddings(c, geometry_));
    encoder = register_module("encoder", ViTEncoder(c));
    layernorm = register_module("layernorm", vision::layer_norm(c));
    pooler = register_module("pooler", ViTPooler(c));
  }

 protected:
  Tensor embed(const ModelInputs& in, LayerArgs&, ForwardContext&) override {
    return embeddings->forward(in.pixel_values);
  }
  std::int64_t num_layers() const override { return static_cast<std::int64_t>(encoder->layers.size()); }
  Tensor layer(std::int64_t i, const Tensor& h, LayerArgs&, ForwardContext& ctx) override {
    return encoder->layers[static_cast<std::size_t>(i)]->forward(h, ctx);
  }
  BaseModelOutput finish(const Tensor& h, const LayerArgs&, ForwardContext&) override {
    Tensor seq = layernorm(h);
    BaseModelOutput out;
    out.last_hidden_state = seq;
    out.pooler_output = pooler->forward(seq);
    return out;
  }

 private:
  ViTEmbeddings embeddings{nullptr};
  ViTEncoder encoder{nullptr};
  torch::nn::LayerNorm layernorm{nullptr};
  ViTPooler pooler{nullptr};
};

}  // namespace

ArchSpec vit_arch() {
  ArchSpec spec;
  spec.model_type = "vit";
  spec.base_prefix = "vit";
  spec.model_class = "ViTAdapterModel";
  spec.create = [](const ModelConfig& c) { return std::make_shared<ViTModelImpl>(c); };
  spec.base_roots = {"embeddings", "encoder", "layernorm", "pooler"};
  spec.word_embeddings = "";
  spec.pooler = "pooler";
  // ViTForImageClassification: classifier on the final-layernormed [CLS] token.
  spec.static_heads = {{"ForImageClassification",
                        "image_classification",
                        {{"layers", 1}, {"activation_function", nullptr}, {"use_pooler", false}},
                        {"", "classifier"}}};
  spec.module_roles = bert_module_roles();
  spec.input = InputKind::Image;
  return spec;
}

}  // namespace adapters::models
