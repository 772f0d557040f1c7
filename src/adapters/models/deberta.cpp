// DeBERTa (v1): the parts v1 and v2 share (deberta_common.h) and v1's self-attention.
//
// v1's attention projects q, k and v with one fused layer, in_proj (no bias), whose output is
// head-interleaved: column h*3D + p*D + d is head h, part p (q, k, v), dimension d. Its LoRA/IA3
// slices are nevertheless the contiguous thirds [0,HD), [HD,2HD), [2HD,3HD) of the output, as the
// reference's MergedLinear lays them out, so they do not coincide with the semantic q/k/v. q_bias
// and v_bias are added after the split; the query is divided by sqrt(D * scale_factor) before both
// the content and the c2p matmul, the position queries of p2c likewise.
#include <torch/torch.h>

#include <algorithm>
#include <cctype>
#include <cmath>

#include "adapters/core/error.h"
#include "adapters/models/architectures.h"
#include "adapters/models/blocks.h"
#include "adapters/models/deberta_common.h"
#include "adapters/nn/module_dict.h"

namespace adapters::models {
namespace deberta {

using blocks::Intermediate;
using blocks::layer_norm;
using blocks::ResidualOutput;
using nn::AdaptedLinear;
using nn::ForwardContext;
using torch::Tensor;

// ---- config ---------------------------------------------------------------------------------

namespace {

std::string trim_lower(std::string s) {
  for (auto& ch : s) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  const auto first = s.find_first_not_of(" \t\n");
  if (first == std::string::npos) return "";
  return s.substr(first, s.find_last_not_of(" \t\n") - first + 1);
}

// HF's "a|b" strings: lower-cased, split on '|', stripped.
std::vector<std::string> split_bar(const std::string& text) {
  std::vector<std::string> parts;
  std::size_t start = 0;
  while (true) {
    const auto bar = text.find('|', start);
    parts.push_back(trim_lower(text.substr(start, bar == std::string::npos ? std::string::npos : bar - start)));
    if (bar == std::string::npos) break;
    start = bar + 1;
  }
  return parts;
}

}  // namespace

ModelConfig with_defaults(ModelConfig c) {
  auto absent = [&](const char* key) { return !c.raw.contains(key) || c.raw[key].is_null(); };
  if (absent("layer_norm_eps")) c.layer_norm_eps = 1e-7;  // DebertaConfig's default
  if (absent("type_vocab_size")) c.type_vocab_size = 0;   // no token-type table by default
  return c;
}

Options parse_options(const ModelConfig& c, bool v2) {
  const std::string source = "config.json (" + c.model_type + ")";
  JsonReader r(c.raw, source);
  Options o;
  o.v2 = v2;
  o.relative_attention = r.get_bool("relative_attention", false);

  std::vector<std::string> terms;
  if (r.has("pos_att_type") && !c.raw["pos_att_type"].is_null()) {
    const json& value = c.raw["pos_att_type"];
    if (value.is_string()) {
      terms = split_bar(value.get<std::string>());
    } else {
      ADAPTERS_CHECK(value.is_array(), source, ": 'pos_att_type' must be a list such as [\"p2c\", \"c2p\"] or a string",
                     " such as \"p2c|c2p\", found ", describe(value));
      terms = r.get_string_list("pos_att_type");
    }
  }
  for (const auto& term : terms) {
    if (terms.size() == 1 && (term.empty() || term == "none")) break;  // "none": no relative terms
    ADAPTERS_CHECK(term == "c2p" || term == "p2c", source, ": 'pos_att_type' holds '", term,
                   "'; the disentangled attention knows only \"c2p\" and \"p2c\"",
                   term == "p2p" ? " (p2p is not part of the reference's DeBERTa)" : "");
    bool& flag = term == "c2p" ? o.c2p : o.p2c;
    ADAPTERS_CHECK(!flag, source, ": 'pos_att_type' lists '", term, "' twice");
    flag = true;
  }
  // v1 counts the list's entries (a lone "none" too), v2 the terms it computes.
  o.scale_factor = 1 + (v2 ? (o.c2p ? 1 : 0) + (o.p2c ? 1 : 0) : static_cast<std::int64_t>(terms.size()));

  o.max_relative_positions = r.get_int("max_relative_positions", -1);
  if (o.max_relative_positions < 1) o.max_relative_positions = c.max_position_embeddings;
  ADAPTERS_CHECK(o.max_relative_positions >= 1, source, ": max_relative_positions resolves to ",
                 o.max_relative_positions, " (from max_position_embeddings); it must be positive");
  o.position_biased_input = r.get_bool("position_biased_input", true);
  o.type_vocab_size = c.type_vocab_size;
  ADAPTERS_CHECK(o.type_vocab_size >= 0, source, ": 'type_vocab_size' must be >= 0, found ", o.type_vocab_size);
  ADAPTERS_CHECK(c.pad_token_id >= 0 && c.pad_token_id < c.vocab_size, source, ": pad_token_id ", c.pad_token_id,
                 " is not a token of the vocabulary of ", c.vocab_size);
  ADAPTERS_CHECK(c.explicit_head_dim == 0 || c.explicit_head_dim * c.num_attention_heads == c.hidden_size, source,
                 ": head_dim ", c.explicit_head_dim, " x ", c.num_attention_heads, " heads must equal hidden_size ",
                 c.hidden_size, " (the attention output projection is hidden_size x hidden_size)");

  if (!v2) {
    if (r.get_bool("talking_head", false)) {
      throw NotSupported(source + ": talking_head=true is not supported",
                         "DeBERTa's talking-head projections (head_logits_proj, head_weights_proj) are not implemented");
    }
    return o;
  }

  o.position_buckets = r.get_int("position_buckets", -1);
  if (o.relative_attention && o.position_buckets > 0) {
    ADAPTERS_CHECK(o.position_buckets >= 2 && o.position_buckets / 2 < o.max_relative_positions - 1, source,
                   ": position_buckets ", o.position_buckets, " does not fit max_relative_positions ",
                   o.max_relative_positions, " (the log buckets need 2 <= position_buckets and position_buckets / 2 < ",
                   "max_relative_positions - 1)");
  }
  o.share_att_key = r.get_bool("share_att_key", false);
  for (const auto& norm : split_bar(r.get_string("norm_rel_ebd", "none"))) {
    ADAPTERS_CHECK(norm == "none" || norm == "layer_norm", source, ": 'norm_rel_ebd' holds '", norm,
                   "'; expected \"none\" or \"layer_norm\"");
    if (norm == "layer_norm") o.norm_rel_embeddings = true;
  }
  if (r.has("attention_head_size") && !c.raw["attention_head_size"].is_null()) {
    const std::int64_t size = r.get_int("attention_head_size");
    ADAPTERS_CHECK(size * c.num_attention_heads == c.hidden_size, source, ": attention_head_size ", size, " x ",
                   c.num_attention_heads, " heads must equal hidden_size ", c.hidden_size,
                   " (the attention output projection is hidden_size x hidden_size)");
  }
  o.conv_kernel_size = r.get_int("conv_kernel_size", 0);
  o.conv_groups = r.get_int("conv_groups", 1);
  o.conv_act = r.get_string("conv_act", "tanh");
  ADAPTERS_CHECK(o.conv_kernel_size >= 0, source, ": conv_kernel_size must be >= 0, found ", o.conv_kernel_size);
  if (o.conv_kernel_size > 0) {
    ADAPTERS_CHECK(o.conv_kernel_size % 2 == 1, source, ": conv_kernel_size ", o.conv_kernel_size,
                   " must be odd (the convolution pads (k-1)/2 on each side and keeps the sequence length)");
    ADAPTERS_CHECK(o.conv_groups > 0 && c.hidden_size % o.conv_groups == 0, source, ": conv_groups ", o.conv_groups,
                   " must divide hidden_size ", c.hidden_size);
    nn::resolve_activation(o.conv_act, source + ": conv_act");
  }
  return o;
}

double Options::scale(std::int64_t head_dim) const {
  return static_cast<double>(std::sqrt(static_cast<float>(head_dim * scale_factor)));
}

namespace {

// make_log_bucket_position of the reference, in float32 as it computes it: |r| <= mid stays r,
// larger distances become sign(r) * (ceil(log(|r|/mid) / log((max-1)/mid) * (mid-1)) + mid).
Tensor log_bucket_positions(const Tensor& rel, std::int64_t bucket_size, std::int64_t max_position) {
  const std::int64_t mid = bucket_size / 2;
  Tensor sign = torch::sign(rel);
  Tensor near = rel.lt(mid).logical_and(rel.gt(-mid));
  Tensor abs_pos = torch::where(near, torch::full({}, mid - 1, rel.options()), rel.abs());
  Tensor denominator =
      torch::log(torch::scalar_tensor(static_cast<float>(static_cast<double>(max_position - 1) / static_cast<double>(mid)),
                                      torch::kFloat));
  Tensor log_pos =
      torch::ceil(torch::log(abs_pos.to(torch::kFloat) / static_cast<double>(mid)) / denominator * static_cast<double>(mid - 1)) +
      static_cast<double>(mid);
  return torch::where(abs_pos.le(mid), rel.to(torch::kFloat), log_pos * sign).to(torch::kLong);
}

}  // namespace

Tensor Options::relative_positions(std::int64_t length, const torch::Device& device) const {
  // On the CPU always: the bucket boundaries must not depend on the device's log.
  Tensor ids = torch::arange(length, torch::kLong);
  Tensor rel = ids.unsqueeze(1) - ids.unsqueeze(0);  // (T,T) i - j
  if (v2 && position_buckets > 0 && max_relative_positions > 0) {
    rel = log_bucket_positions(rel, position_buckets, max_relative_positions);
  }
  return rel.to(device);
}

// ---- attention pieces -----------------------------------------------------------------------

nn::AttentionOptions attention_options(const ModelConfig& c, std::int64_t layer) {
  nn::AttentionOptions o;
  o.hidden = c.hidden_size;
  o.heads = c.num_attention_heads;
  o.layer = layer;
  o.dropout = c.attention_probs_dropout_prob;
  o.prefix_location = nn::attention_location::kSelf;
  o.invert_prefix_mask = false;  // the reference passes invert_mask=False
  o.zero_masked_rows = true;     // XSoftmax
  return o;
}

Tensor disentangled_terms(const Tensor& q, const Tensor& k, const Tensor& pos_key, const Tensor& pos_query,
                          const Tensor& relative_pos, std::int64_t span, double divisor) {
  const std::int64_t T = relative_pos.size(0);
  Tensor score;
  if (pos_key.defined()) {
    Tensor att = torch::matmul(q, pos_key.transpose(-1, -2));  // (B,H,T,2S)
    Tensor index = torch::clamp(relative_pos + span, 0, 2 * span - 1).expand({att.size(0), att.size(1), T, T});
    score = torch::gather(att, -1, index);
    if (divisor != 1.0) score = score / divisor;
  }
  if (pos_query.defined()) {
    Tensor att = torch::matmul(k, pos_query.transpose(-1, -2));  // (B,H,T,2S), rows are keys
    Tensor index = torch::clamp(-relative_pos + span, 0, 2 * span - 1).expand({att.size(0), att.size(1), T, T});
    Tensor p2c = torch::gather(att, -1, index).transpose(-1, -2);
    if (divisor != 1.0) p2c = p2c / divisor;
    score = score.defined() ? score + p2c : p2c;
  }
  return score;
}

Tensor bias_after_prefix(const Tensor& terms, const nn::AttentionState& state) {
  const std::int64_t prefix = state.key.size(2) - terms.size(-1);
  return prefix > 0 ? torch::constant_pad_nd(terms, {prefix, 0}, 0.0) : terms;
}

namespace {

bool has_row_blocks(const composition::Block& b) {
  if (b.type == composition::BlockType::Parallel || b.type == composition::BlockType::BatchSplit) return true;
  return std::any_of(b.children.begin(), b.children.end(), has_row_blocks);
}

}  // namespace

bool row_dependent(const ForwardContext& ctx) { return ctx.setup != nullptr && has_row_blocks(*ctx.setup); }

// ---- modules --------------------------------------------------------------------------------

namespace {

struct EmbeddingsImpl : torch::nn::Module {
  EmbeddingsImpl(const ModelConfig& c, const Options& o) : max_positions(c.max_position_embeddings) {
    const auto E = c.embedding_size;
    word_embeddings = register_module(
        "word_embeddings", torch::nn::Embedding(torch::nn::EmbeddingOptions(c.vocab_size, E).padding_idx(c.pad_token_id)));
    if (o.position_biased_input) {
      position_embeddings = register_module("position_embeddings", torch::nn::Embedding(c.max_position_embeddings, E));
    }
    if (o.type_vocab_size > 0) {
      token_type_embeddings = register_module("token_type_embeddings", torch::nn::Embedding(o.type_vocab_size, E));
    }
    if (E != c.hidden_size) {
      embed_proj = register_module("embed_proj", torch::nn::Linear(torch::nn::LinearOptions(E, c.hidden_size).bias(false)));
    }
    LayerNorm = register_module("LayerNorm", layer_norm(c.hidden_size, c.layer_norm_eps));
    dropout = register_module("dropout", torch::nn::Dropout(c.hidden_dropout_prob));
    position_ids = register_buffer("position_ids", torch::arange(c.max_position_embeddings).unsqueeze(0));
  }

  // (B,T) ids or (B,T,E) embeddings -> (B,T,C); `mask` (B,T) zeroes padded positions after the norm.
  Tensor forward(const ModelInputs& in, const Tensor& mask) {
    Tensor h = in.inputs_embeds.defined() ? in.inputs_embeds : word_embeddings(in.input_ids);
    const auto ids = torch::TensorOptions().dtype(torch::kLong).device(h.device());
    if (position_embeddings) {
      ADAPTERS_CHECK(h.size(1) <= max_positions, "deberta forward: ", h.size(1),
                     " tokens exceed max_position_embeddings ", max_positions, " of the absolute position embeddings");
      Tensor positions = in.position_ids.defined() ? in.position_ids : torch::arange(h.size(1), ids).unsqueeze(0);
      h = h + position_embeddings(positions);
    }
    if (token_type_embeddings) {
      h = h + token_type_embeddings(in.token_type_ids.defined() ? in.token_type_ids
                                                                : torch::zeros({h.size(0), h.size(1)}, ids));
    }
    if (embed_proj) h = embed_proj(h);
    h = LayerNorm(h);
    if (mask.defined()) h = h * mask.unsqueeze(2).to(h.scalar_type());
    return dropout(h);
  }

  std::int64_t max_positions;
  torch::nn::Embedding word_embeddings{nullptr}, position_embeddings{nullptr}, token_type_embeddings{nullptr};
  torch::nn::Linear embed_proj{nullptr};
  torch::nn::LayerNorm LayerNorm{nullptr};
  torch::nn::Dropout dropout{nullptr};
  Tensor position_ids;  // HF's buffer, kept so that the checkpoint's key loads
};
TORCH_MODULE(Embeddings);

struct AttentionBlockImpl : torch::nn::Module {
  AttentionBlockImpl(const ModelConfig& c, std::int64_t layer, std::shared_ptr<SelfAttentionImpl> attention) {
    self = register_module("self", std::move(attention));
    output = register_module("output", ResidualOutput(c, c.hidden_size, layer, nn::role::kAttentionOut,
                                                      nn::location::kAttention));
  }
  Tensor forward(const Tensor& x, const LayerArgs& args, ForwardContext& ctx) {
    return output->forward(self->run(x, args, ctx), x, ctx);
  }
  std::shared_ptr<SelfAttentionImpl> self;
  ResidualOutput output{nullptr};
};
TORCH_MODULE(AttentionBlock);

struct LayerImpl : torch::nn::Module {
  LayerImpl(const ModelConfig& c, std::int64_t layer, std::shared_ptr<SelfAttentionImpl> self) {
    attention = register_module("attention", AttentionBlock(c, layer, std::move(self)));
    intermediate = register_module("intermediate", Intermediate(c, layer));
    output = register_module("output", ResidualOutput(c, c.intermediate_size, layer, nn::role::kOutput,
                                                      nn::location::kOutput));
  }
  Tensor forward(const Tensor& x, const LayerArgs& args, ForwardContext& ctx) {
    Tensor a = attention->forward(x, args, ctx);
    return output->forward(intermediate->forward(a, ctx), a, ctx);
  }
  AttentionBlock attention{nullptr};
  Intermediate intermediate{nullptr};
  ResidualOutput output{nullptr};
};
TORCH_MODULE(Layer);

// v2's ConvLayer: after layer 0, LayerNorm(layer-0 output + act(conv(encoder input))) * mask.
struct ConvLayerImpl : torch::nn::Module {
  ConvLayerImpl(const ModelConfig& c, const Options& o)
      : act(nn::resolve_activation(o.conv_act, "config.json: conv_act")) {
    const std::int64_t k = o.conv_kernel_size;
    conv = register_module("conv", torch::nn::Conv1d(torch::nn::Conv1dOptions(c.hidden_size, c.hidden_size, k)
                                                         .padding((k - 1) / 2)
                                                         .groups(o.conv_groups)));
    LayerNorm = register_module("LayerNorm", layer_norm(c.hidden_size, c.layer_norm_eps));
    dropout = register_module("dropout", torch::nn::Dropout(c.hidden_dropout_prob));
  }
  // hidden: the encoder input (B,T,C); residual: layer 0's output; mask (B,T) or undefined.
  Tensor forward(const Tensor& hidden, const Tensor& residual, const Tensor& mask) {
    Tensor out = conv(hidden.permute({0, 2, 1}).contiguous()).permute({0, 2, 1}).contiguous();
    if (mask.defined()) out = out.masked_fill(mask.eq(0).unsqueeze(-1), 0.0);
    out = act(dropout(out));
    Tensor y = LayerNorm(residual + out);
    return mask.defined() ? y * mask.unsqueeze(2).to(y.scalar_type()) : y;
  }
  nn::Activation act;
  torch::nn::Conv1d conv{nullptr};
  torch::nn::LayerNorm LayerNorm{nullptr};
  torch::nn::Dropout dropout{nullptr};
};
TORCH_MODULE(ConvLayer);

struct EncoderImpl : torch::nn::Module {
  EncoderImpl(const ModelConfig& c, const Options& o, const MakeSelfAttention& make)
      : layers(nn::register_layers<Layer>(*this, "layer", c.num_hidden_layers,
                                          [&](std::int64_t i) { return Layer(c, i, make(i)); })) {
    if (o.relative_attention) {
      rel_embeddings = register_module("rel_embeddings", torch::nn::Embedding(o.rel_embedding_rows(), c.hidden_size));
    }
    if (o.v2 && o.norm_rel_embeddings) LayerNorm = register_module("LayerNorm", layer_norm(c.hidden_size, c.layer_norm_eps));
    if (o.v2 && o.conv_kernel_size > 0) conv = register_module("conv", ConvLayer(c, o));
  }
  std::vector<Layer> layers;  // "layer.<i>"
  torch::nn::Embedding rel_embeddings{nullptr};
  torch::nn::LayerNorm LayerNorm{nullptr};  // v2: of the relative embeddings
  ConvLayer conv{nullptr};                  // v2
};
TORCH_MODULE(Encoder);

class DebertaModelImpl : public BaseModelImpl {
 public:
  DebertaModelImpl(const ModelConfig& c, const Options& o, const MakeSelfAttention& make)
      : BaseModelImpl(c), options_(o) {
    embeddings = register_module("embeddings", Embeddings(c, o));
    encoder = register_module("encoder", Encoder(c, o, make));
  }

 protected:
  void check_inputs(const ModelInputs& in) const override {
    BaseModelImpl::check_inputs(in);
    ADAPTERS_CHECK(in.cache == nullptr, config_.model_type, " forward: an encoder has no key/value cache");
  }
  Tensor embed(const ModelInputs& in, LayerArgs& args, ForwardContext&) override {
    return embeddings->forward(in, args.attention_mask);
  }
  // (B,1,T,T): query i attends key j when both are real tokens (m_i * m_j).
  Tensor attention_mask(const Tensor& h, const LayerArgs& args) const override {
    nn::MaskSpec spec;
    spec.padding = args.attention_mask;
    spec.query_length = spec.key_length = h.size(1);
    spec.mask_padded_queries = true;
    return nn::build_attention_mask(spec, h.scalar_type(), h.device());
  }
  std::int64_t num_layers() const override { return static_cast<std::int64_t>(encoder->layers.size()); }
  Tensor layer(std::int64_t i, const Tensor& h, LayerArgs& args, ForwardContext& ctx) override {
    if (options_.relative_attention && !args.extras.count("relative_pos")) {
      args.extras["relative_pos"] = options_.relative_positions(h.size(1), h.device());
      Tensor rel = encoder->rel_embeddings->weight;
      args.extras["rel_embeddings"] = encoder->LayerNorm ? encoder->LayerNorm(rel) : rel;
    }
    Tensor out = encoder->layers[static_cast<std::size_t>(i)]->forward(h, args, ctx);
    if (i == 0 && encoder->conv) out = encoder->conv->forward(h, out, args.attention_mask);
    return out;
  }

 private:
  Options options_;
  Embeddings embeddings{nullptr};
  Encoder encoder{nullptr};
};

}  // namespace

std::shared_ptr<BaseModelImpl> make_model(const ModelConfig& c, const Options& options, const MakeSelfAttention& make) {
  return std::make_shared<DebertaModelImpl>(c, options, make);
}

// ---- v1's self-attention --------------------------------------------------------------------

namespace {

nn::AttentionOptions v1_attention_options(const ModelConfig& c, std::int64_t layer) {
  nn::AttentionOptions o = attention_options(c, layer);
  o.q = o.k = o.v = "";  // in_proj, below
  o.scale = 1.0;         // the query arrives divided by sqrt(D * scale_factor)
  return o;
}

class DisentangledSelfAttentionImpl : public SelfAttentionImpl {
 public:
  DisentangledSelfAttentionImpl(const ModelConfig& c, const Options& o, std::int64_t layer)
      : SelfAttentionImpl(v1_attention_options(c, layer)), o_(o) {
    const std::int64_t width = options().heads * options().head_dim;
    in_proj = register_module("in_proj", AdaptedLinear(c.hidden_size, 3 * width, false, layer,
                                                       std::vector<nn::OutputSlice>{{nn::role::kQuery, 0, width},
                                                                                    {nn::role::kKey, width, width},
                                                                                    {nn::role::kValue, 2 * width, width}}));
    q_bias = register_parameter("q_bias", torch::zeros({width}));
    v_bias = register_parameter("v_bias", torch::zeros({width}));
    if (o.relative_attention) {
      pos_dropout = register_module("pos_dropout", torch::nn::Dropout(c.hidden_dropout_prob));
      if (o.c2p) pos_proj = register_module("pos_proj", torch::nn::Linear(torch::nn::LinearOptions(c.hidden_size, width).bias(false)));
      if (o.p2c) pos_q_proj = register_module("pos_q_proj", torch::nn::Linear(c.hidden_size, width));
    }
  }

  Tensor run(const Tensor& x, const LayerArgs& args, ForwardContext& ctx) override {
    const std::int64_t T = x.size(1), heads = options().heads, D = options().head_dim;
    Tensor qp = in_proj->forward(x, ctx);                                             // (B,T,3HD), interleaved
    auto qkv = qp.view({qp.size(0), T, heads, 3 * D}).permute({0, 2, 1, 3}).chunk(3, -1);  // (B,H,T,D) each
    const double scale = o_.scale(D);
    Tensor q = (qkv[0] + q_bias.view({1, heads, 1, D})) / scale;
    Tensor v = qkv[2] + v_bias.view({1, heads, 1, D});
    nn::AttentionCall call;
    call.hidden = x;
    call.mask = args.mask;
    if (o_.relative_attention && (o_.c2p || o_.p2c)) {
      const Tensor& relative_pos = args.extras.at("relative_pos");
      const Tensor& rel_embeddings = args.extras.at("rel_embeddings");
      call.score_bias = [&, this, T, heads, scale](const nn::AttentionState& s) {
        const std::int64_t span = std::min(T, o_.max_relative_positions), max_rel = o_.max_relative_positions;
        Tensor r = pos_dropout(rel_embeddings).narrow(0, max_rel - span, 2 * span).unsqueeze(0);  // (1,2S,C)
        Tensor pos_key = pos_proj ? split_heads(pos_proj(r), heads) : Tensor();
        Tensor pos_query = pos_q_proj ? split_heads(pos_q_proj(r), heads) / scale : Tensor();
        Tensor keys = s.key.narrow(2, s.key.size(2) - T, T);  // the layer's own keys, after any prefix
        return bias_after_prefix(disentangled_terms(s.query, keys, pos_key, pos_query, relative_pos, span, 1.0), s);
      };
    }
    return attend(std::move(q), qkv[1], std::move(v), call, ctx);
  }

  AdaptedLinear in_proj{nullptr};
  Tensor q_bias, v_bias;
  torch::nn::Dropout pos_dropout{nullptr};
  torch::nn::Linear pos_proj{nullptr}, pos_q_proj{nullptr};

 private:
  Options o_;
};

}  // namespace

namespace {

// The static heads of DebertaFor* / DebertaV2For*: the classifier sits behind the ContextPooler
// (dropout, pooler.dense, gelu), which becomes the flexible head's first layer.
std::vector<StaticHeadSpec> static_heads(bool v2) {
  std::vector<StaticHeadSpec> heads = bert_static_heads();
  const json pooled = {{"layers", 2}, {"activation_function", "gelu"}, {"use_pooler", false}};
  const std::vector<std::string> layers = {"", "pooler.dense", "", "", "classifier"};
  for (auto& h : heads) {
    if (h.class_suffix != "ForSequenceClassification") continue;
    h.config = pooled;
    h.layers = layers;
  }
  if (v2) heads.push_back({"ForMultipleChoice", "multiple_choice", pooled, layers});
  return heads;
}

}  // namespace

ArchSpec arch(std::string model_type, std::string model_class, bool v2, const MakeArchAttention& make) {
  ArchSpec spec;
  spec.model_type = std::move(model_type);
  spec.base_prefix = "deberta";
  spec.model_class = std::move(model_class);
  spec.create = [v2, make](const ModelConfig& config) {
    const ModelConfig c = with_defaults(config);
    const Options o = parse_options(c, v2);
    return make_model(c, o, [c, o, make](std::int64_t layer) { return make(c, o, layer); });
  };
  spec.base_roots = {"embeddings", "encoder"};
  spec.word_embeddings = "embeddings.word_embeddings.weight";
  spec.static_heads = static_heads(v2);
  if (v2) {
    spec.module_roles = {{"query_proj", nn::role::kQuery}, {"key_proj", nn::role::kKey}, {"value_proj", nn::role::kValue}};
  } else {
    spec.module_roles = {{"in_proj", "q,k,v"}};  // fused: the layer's role() (its slices' roles joined)
  }
  spec.module_roles["attention.output.dense"] = nn::role::kAttentionOut;
  spec.module_roles["intermediate.dense"] = nn::role::kIntermediate;
  spec.module_roles["output.dense"] = nn::role::kOutput;
  return spec;
}

}  // namespace deberta

ArchSpec deberta_arch() {
  return deberta::arch("deberta", "DebertaAdapterModel", false,
                       [](const ModelConfig& c, const deberta::Options& o, std::int64_t layer) {
                         return std::make_shared<deberta::DisentangledSelfAttentionImpl>(c, o, layer);
                       });
}

}  // namespace adapters::models
