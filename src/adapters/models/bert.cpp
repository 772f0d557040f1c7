// BERT-family encoders: BERT, RoBERTa, XLM-RoBERTa and the ELECTRA discriminator. Embeddings
// (ELECTRA: of embedding_size, projected by embeddings_project), post-norm layers with residual
// sites after the attention output and the feed-forward output, and the tanh pooler over the
// first token (not in ELECTRA).
#include <torch/torch.h>

#include "adapters/models/architectures.h"
#include "adapters/models/blocks.h"
#include "adapters/nn/module_dict.h"

namespace adapters::models {
namespace {

using blocks::Intermediate;
using blocks::layer_norm;
using blocks::ResidualOutput;
using nn::ForwardContext;
using torch::Tensor;

struct BertEmbeddingsImpl : torch::nn::Module {
  BertEmbeddingsImpl(const ModelConfig& c, bool roberta_positions)
      : roberta_positions(roberta_positions), pad_token_id(c.pad_token_id) {
    const auto E = c.embedding_size;
    auto word = torch::nn::EmbeddingOptions(c.vocab_size, E);
    auto position = torch::nn::EmbeddingOptions(c.max_position_embeddings, E);
    if (roberta_positions) {
      word.padding_idx(c.pad_token_id);
      position.padding_idx(c.pad_token_id);
    }
    word_embeddings = register_module("word_embeddings", torch::nn::Embedding(word));
    position_embeddings = register_module("position_embeddings", torch::nn::Embedding(position));
    token_type_embeddings = register_module("token_type_embeddings",
                                            torch::nn::Embedding(std::max<std::int64_t>(c.type_vocab_size, 1), E));
    LayerNorm = register_module("LayerNorm", layer_norm(E, c.layer_norm_eps));
    dropout = register_module("dropout", torch::nn::Dropout(c.hidden_dropout_prob));
    position_ids = register_buffer("position_ids", torch::arange(c.max_position_embeddings).unsqueeze(0));
  }

  // (B,T) -> (B,T): BERT counts from 0, RoBERTa from pad_token_id + 1 over real tokens; both after
  // the past cached positions (a PEFT prefix) that are not filler, as HF does.
  Tensor positions(const ModelInputs& in, std::int64_t T, const LayerArgs& args, const torch::TensorOptions& options) const {
    if (in.position_ids.defined()) return in.position_ids;
    if (!roberta_positions || !in.input_ids.defined()) {
      const std::int64_t start = (roberta_positions ? pad_token_id + 1 : 0) + args.past_length;
      return shifted_positions(torch::arange(start, start + T, options).unsqueeze(0), args);
    }
    Tensor mask = in.input_ids.ne(pad_token_id).to(torch::kLong);
    Tensor past = torch::full({1, 1}, args.past_length, options);
    if (args.position_shift.defined()) past = past - args.position_shift;
    return (torch::cumsum(mask, 1) + past) * mask + pad_token_id;
  }

  // (B,T) ids or (B,T,E) embeddings -> (B,T,E)
  Tensor forward(const ModelInputs& in, const LayerArgs& args) {
    Tensor h = in.inputs_embeds.defined() ? in.inputs_embeds : word_embeddings(in.input_ids);
    const auto ids = torch::TensorOptions().dtype(torch::kLong).device(h.device());
    Tensor token_types = in.token_type_ids.defined() ? in.token_type_ids : torch::zeros({h.size(0), h.size(1)}, ids);
    h = h + token_type_embeddings(token_types) + position_embeddings(positions(in, h.size(1), args, ids));
    return dropout(LayerNorm(h));
  }

  bool roberta_positions;
  std::int64_t pad_token_id;
  torch::nn::Embedding word_embeddings{nullptr}, position_embeddings{nullptr}, token_type_embeddings{nullptr};
  torch::nn::LayerNorm LayerNorm{nullptr};
  torch::nn::Dropout dropout{nullptr};
  // HF's buffer (0..max-1), kept so that the checkpoint's key loads; positions are computed with
  // arange instead, since a whole-module dtype cast would round this buffer too.
  Tensor position_ids;
};
TORCH_MODULE(BertEmbeddings);

nn::AttentionOptions self_attention(const ModelConfig& c, std::int64_t layer) {
  nn::AttentionOptions o;
  o.hidden = c.hidden_size;
  o.heads = c.num_attention_heads;
  o.layer = layer;
  o.dropout = c.attention_probs_dropout_prob;
  return o;  // query / key / value, no output projection (it is attention.output.dense)
}

struct BertAttentionImpl : torch::nn::Module {
  BertAttentionImpl(const ModelConfig& c, std::int64_t layer) : layer(layer) {
    self = register_module("self", nn::Attention(self_attention(c, layer)));
    output = register_module("output", ResidualOutput(c, c.hidden_size, layer, nn::role::kAttentionOut,
                                                          nn::location::kAttention));
  }
  // (B,T,C) -> (B,T,C)
  Tensor forward(const Tensor& x, const LayerArgs& args, ForwardContext& ctx) {
    nn::LayerKV* slot = args.cache ? args.cache->layer(static_cast<std::size_t>(layer)) : nullptr;  // a PEFT prefix
    return output->forward(self->forward({x, args.mask, Tensor(), Tensor(), slot}, ctx), x, ctx);
  }
  std::int64_t layer;
  nn::Attention self{nullptr};
  ResidualOutput output{nullptr};
};
TORCH_MODULE(BertAttention);

struct BertLayerImpl : torch::nn::Module {
  BertLayerImpl(const ModelConfig& c, std::int64_t layer) {
    attention = register_module("attention", BertAttention(c, layer));
    intermediate = register_module("intermediate", Intermediate(c, layer));
    output = register_module("output", ResidualOutput(c, c.intermediate_size, layer, nn::role::kOutput,
                                                           nn::location::kOutput));
  }
  Tensor forward(const Tensor& x, const LayerArgs& args, ForwardContext& ctx) {
    Tensor a = attention->forward(x, args, ctx);
    return output->forward(intermediate->forward(a, ctx), a, ctx);
  }
  BertAttention attention{nullptr};
  Intermediate intermediate{nullptr};
  ResidualOutput output{nullptr};
};
TORCH_MODULE(BertLayer);

struct BertEncoderImpl : torch::nn::Module {
  explicit BertEncoderImpl(const ModelConfig& c)
      : layers(nn::register_layers<BertLayer>(*this, "layer", c.num_hidden_layers,
                                              [&](std::int64_t i) { return BertLayer(c, i); })) {}
  std::vector<BertLayer> layers;  // "layer.<i>"
};
TORCH_MODULE(BertEncoder);

// The pooler's role: no AdapterHub config selects it; PEFT's target_modules can ("all-linear").
constexpr const char* kPoolerRole = "pooler";

struct BertPoolerImpl : torch::nn::Module {
  explicit BertPoolerImpl(const ModelConfig& c) {
    dense = register_module("dense", nn::AdaptedLinear(c.hidden_size, c.hidden_size, true, c.num_hidden_layers, kPoolerRole));
  }
  // (B,T,C) -> (B,C): tanh(dense(first token))
  Tensor forward(const Tensor& h, ForwardContext& ctx) { return torch::tanh(dense->forward(h.select(1, 0), ctx)); }
  nn::AdaptedLinear dense{nullptr};
};
TORCH_MODULE(BertPooler);

enum class Family { Bert, Roberta, Electra };

class BertModelImpl : public BaseModelImpl {
 public:
  BertModelImpl(const ModelConfig& c, Family family) : BaseModelImpl(c) {
    embeddings = register_module("embeddings", BertEmbeddings(c, family == Family::Roberta));
    if (family == Family::Electra && c.embedding_size != c.hidden_size) {
      embeddings_project = register_module("embeddings_project", torch::nn::Linear(c.embedding_size, c.hidden_size));
    }
    encoder = register_module("encoder", BertEncoder(c));
    if (family != Family::Electra) pooler = register_module("pooler", BertPooler(c));
  }

 protected:
  // (B,T,E): the embedding hook (prompt tuning, invertible adapters) acts in embedding space, as
  // on ALBERT; ELECTRA projects to (B,T,C) when the first layer starts.
  Tensor embed(const ModelInputs& in, LayerArgs& args, ForwardContext&) override {
    return embeddings->forward(in, args);
  }
  std::int64_t num_layers() const override { return static_cast<std::int64_t>(encoder->layers.size()); }
  Tensor layer(std::int64_t i, const Tensor& h, LayerArgs& args, ForwardContext& ctx) override {
    const Tensor x = i == 0 && embeddings_project ? embeddings_project(h) : h;  // (B,T,C)
    return encoder->layers[static_cast<std::size_t>(i)]->forward(x, args, ctx);
  }
  BaseModelOutput finish(const Tensor& h, const LayerArgs&, ForwardContext& ctx) override {
    return {h, pooler ? pooler->forward(h, ctx) : Tensor()};
  }

 private:
  BertEmbeddings embeddings{nullptr};
  torch::nn::Linear embeddings_project{nullptr};
  BertEncoder encoder{nullptr};
  BertPooler pooler{nullptr};
};

ArchSpec bert_family_arch(std::string model_type, std::string prefix, std::string model_class, Family family) {
  ArchSpec spec;
  spec.model_type = std::move(model_type);
  spec.base_prefix = std::move(prefix);
  spec.model_class = std::move(model_class);
  spec.create = [family](const ModelConfig& c) { return std::make_shared<BertModelImpl>(c, family); };
  spec.base_roots = {"embeddings", "embeddings_project", "encoder", "pooler"};
  spec.word_embeddings = "embeddings.word_embeddings.weight";
  spec.pooler = family == Family::Electra ? "" : "pooler";
  spec.static_heads = bert_static_heads();
  spec.module_roles = bert_module_roles();
  return spec;
}

// RoBERTa's and ELECTRA's classification heads: dropout, dense, activation, dropout, out_proj on
// the first token; RoBERTa's LM head is lm_head.{dense,layer_norm,decoder}.
std::vector<StaticHeadSpec> with_classifier(std::vector<StaticHeadSpec> heads, const char* activation) {
  for (auto& h : heads) {
    if (h.class_suffix != "ForSequenceClassification") continue;
    h.config = {{"layers", 2}, {"activation_function", activation}, {"use_pooler", false}};
    h.layers = {"", "classifier.dense", "", "", "classifier.out_proj"};
  }
  return heads;
}

ArchSpec roberta_like(std::string model_type, std::string model_class) {
  ArchSpec spec = bert_family_arch(std::move(model_type), "roberta", std::move(model_class), Family::Roberta);
  spec.static_heads = with_classifier(spec.static_heads, "tanh");
  for (auto& h : spec.static_heads) {
    if (h.class_suffix == "ForMaskedLM") h.layers = {"lm_head.dense", "", "lm_head.layer_norm", "lm_head.decoder"};
  }
  return spec;
}

}  // namespace

ArchSpec bert_arch() { return bert_family_arch("bert", "bert", "BertAdapterModel", Family::Bert); }
ArchSpec roberta_arch() { return roberta_like("roberta", "RobertaAdapterModel"); }
ArchSpec xlm_roberta_arch() { return roberta_like("xlm-roberta", "XLMRobertaAdapterModel"); }

ArchSpec electra_arch() {
  ArchSpec spec = bert_family_arch("electra", "electra", "ElectraAdapterModel", Family::Electra);
  std::vector<StaticHeadSpec> heads;
  for (auto& h : with_classifier(spec.static_heads, "gelu")) {
    if (h.class_suffix != "ForMaskedLM") heads.push_back(h);  // ELECTRA's generator head is another model
  }
  spec.static_heads = heads;
  return spec;
}

}  // namespace adapters::models
