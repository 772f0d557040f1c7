// The Llama-style decoders: Llama, Mistral, Qwen2, Gemma, Ministral, each one row of kStyles below (a further
// Llama-style model_type is one more row, not more model code). Token embeddings (Gemma: times
// sqrt(hidden)), pre-norm blocks with RMSNorm (input_layernorm -> self-attention with half-split
// rotary positions and grouped-query heads -> residual site; post_attention_layernorm -> gated MLP
// down(act(gate(x)) * up(x)) -> residual site), a final norm, and the LM head (tied per config).
// Rotary scaling from rope_parameters (transformers 5) or rope_theta + rope_scaling (4.x); the
// sliding window of Mistral (every layer) and Qwen2 (the layers layer_types marks) in the mask.
#include <torch/torch.h>

#include <cmath>

#include "adapters/core/error.h"
#include "adapters/models/architectures.h"
#include "adapters/models/blocks.h"
#include "adapters/models/decoder_common.h"
#include "adapters/nn/mask.h"
#include "adapters/nn/module_dict.h"

namespace adapters::models {
namespace {

using blocks::RMSNorm;
using nn::ForwardContext;
using torch::Tensor;

// Where config.sliding_window applies: nowhere; every layer; the layers layer_types marks (else,
// with use_sliding_window, those from max_window_layers on: Qwen2's rule); the layers layer_types
// marks, else every layer (Ministral's rule).
enum class Window { None, EveryLayer, LayerTypes, LayerTypesElseEvery };

// What sets one Llama-style model_type apart from Llama.
struct Style {
  const char* model_type;
  const char* model_class;  // the reference's flexible-head class
  bool qkv_bias;            // q/k/v projections always have biases (Qwen2); else config attention_bias
  bool o_bias_from_config;  // o_proj has a bias when attention_bias says so (false: never, Qwen2)
  bool gemma_norm;          // RMSNorm scales by (1 + weight)
  bool scale_embeddings;    // embeddings times sqrt(hidden_size)
  Window window;            // where config.sliding_window applies
};

const Style kStyles[] = {
    // model_type  class                  qkv_bias o_bias gemma  scale  window
    {"llama", "LlamaAdapterModel", false, true, false, false, Window::None},
    {"mistral", "MistralAdapterModel", false, true, false, false, Window::EveryLayer},
    {"qwen2", "Qwen2AdapterModel", true, false, false, false, Window::LayerTypes},
    {"gemma", "GemmaAdapterModel", false, true, true, true, Window::None},
    {"ministral", "MinistralAdapterModel", false, false, false, false, Window::LayerTypesElseEvery},
};

const Style& style_of(const std::string& model_type) {
  for (const auto& s : kStyles) {
    if (model_type == s.model_type) return s;
  }
  throw Error(str("no Llama-style entry for model_type '", model_type, "'"));
}

bool config_flag(const ModelConfig& c, const char* key, bool fallback) {
  if (!c.raw.contains(key) || c.raw[key].is_null()) return fallback;
  ADAPTERS_CHECK(c.raw[key].is_boolean(), "config.json: '", key, "' must be true or false, found ", describe(c.raw[key]));
  return c.raw[key].get<bool>();
}

// rope_parameters (transformers 5) or rope_theta + rope_scaling (4.x) -> the rotary options.
nn::RotaryOptions rotary_options(const ModelConfig& c) {
  nn::RotaryOptions o{nn::RotaryLayout::HalfSplit, c.head_dim(), c.rope_theta};
  json params = json::object();
  if (c.raw.contains("rope_parameters") && c.raw["rope_parameters"].is_object()) params = c.raw["rope_parameters"];
  else if (c.raw.contains("rope_scaling") && c.raw["rope_scaling"].is_object()) params = c.raw["rope_scaling"];
  const std::string where = c.raw.contains("rope_parameters") ? "config.json: rope_parameters" : "config.json: rope_scaling";
  JsonReader r(params, where);
  if (r.has("rope_theta")) o.theta = r.get_double("rope_theta");
  if (c.raw.contains("partial_rotary_factor") && c.raw["partial_rotary_factor"].is_number()) {
    o.dim = static_cast<std::int64_t>(static_cast<double>(c.head_dim()) * c.raw["partial_rotary_factor"].get<double>());
  }
  const std::string type = r.has("rope_type") ? r.get_string("rope_type") : r.has("type") ? r.get_string("type") : "default";
  if (type == "default") return o;
  o.factor = r.get_double("factor");
  ADAPTERS_CHECK(o.factor > 0.0, where, ": 'factor' must be positive, found ", o.factor);
  if (type == "linear") {
    o.scaling = nn::RopeScaling::Linear;
  } else if (type == "dynamic") {
    o.scaling = nn::RopeScaling::Dynamic;
    o.original_max_positions = c.max_position_embeddings;
  } else if (type == "llama3") {
    o.scaling = nn::RopeScaling::Llama3;
    o.original_max_positions = r.get_int("original_max_position_embeddings");
    o.low_freq_factor = r.get_double("low_freq_factor");
    o.high_freq_factor = r.get_double("high_freq_factor");
    ADAPTERS_CHECK(o.original_max_positions > 0 && o.high_freq_factor > o.low_freq_factor, where,
                   ": llama3 needs original_max_position_embeddings > 0 and high_freq_factor > low_freq_factor");
  } else {
    throw NotSupported(str(where, ": rope_type '", type, "' is not supported"), "supported: default, linear, dynamic, llama3");
  }
  return o;
}

// The sliding window of each layer (0 = full attention).
std::vector<std::int64_t> layer_windows(const ModelConfig& c, Window rule) {
  std::vector<std::int64_t> windows(static_cast<std::size_t>(c.num_hidden_layers), 0);
  if (rule == Window::None || c.sliding_window <= 0) return windows;
  const json& types = c.raw.contains("layer_types") ? c.raw["layer_types"] : json();
  if (rule == Window::EveryLayer || (rule == Window::LayerTypesElseEvery && !types.is_array())) {
    return std::vector<std::int64_t>(windows.size(), c.sliding_window);
  }
  if (rule == Window::LayerTypes && !config_flag(c, "use_sliding_window", false)) return windows;
  const std::int64_t first_windowed = c.raw.value("max_window_layers", c.num_hidden_layers);
  for (std::size_t i = 0; i < windows.size(); ++i) {
    const bool windowed = types.is_array() && i < types.size() ? types[i] == "sliding_attention"
                                                               : static_cast<std::int64_t>(i) >= first_windowed;
    if (windowed) windows[i] = c.sliding_window;
  }
  return windows;
}

std::string activation_name(const ModelConfig& c, const Style& s) {
  // Gemma's configs of transformers 4.x name it hidden_activation.
  if (s.gemma_norm && c.raw.contains("hidden_activation") && c.raw["hidden_activation"].is_string()) {
    return c.raw["hidden_activation"].get<std::string>();
  }
  return c.hidden_act;
}

struct LlamaMLPImpl : torch::nn::Module {
  LlamaMLPImpl(const ModelConfig& c, const Style& s, std::int64_t layer)
      : act(nn::resolve_activation(activation_name(c, s), "config.json: hidden_act")) {
    const bool bias = config_flag(c, "mlp_bias", false);
    gate_proj = register_module("gate_proj", nn::AdaptedLinear(c.hidden_size, c.intermediate_size, bias, layer, nn::role::kGate));
    up_proj = register_module("up_proj", nn::AdaptedLinear(c.hidden_size, c.intermediate_size, bias, layer, nn::role::kIntermediate));
    down_proj = register_module("down_proj", nn::AdaptedLinear(c.intermediate_size, c.hidden_size, bias, layer, nn::role::kOutput));
  }
  // (B,T,C) -> (B,T,C)
  Tensor forward(const Tensor& x, ForwardContext& ctx) {
    return down_proj->forward(act(gate_proj->forward(x, ctx)) * up_proj->forward(x, ctx), ctx);
  }
  nn::Activation act;
  nn::AdaptedLinear gate_proj{nullptr}, up_proj{nullptr}, down_proj{nullptr};
};
TORCH_MODULE(LlamaMLP);

nn::AttentionOptions llama_attention(const ModelConfig& c, const Style& s, std::int64_t layer) {
  const bool attention_bias = config_flag(c, "attention_bias", false);
  nn::AttentionOptions o;
  o.hidden = c.hidden_size;
  o.heads = c.num_attention_heads;
  o.kv_heads = c.num_key_value_heads;
  o.head_dim = c.head_dim();
  o.layer = layer;
  o.q = "q_proj";
  o.k = "k_proj";
  o.v = "v_proj";
  o.o = "o_proj";
  o.qkv_bias = s.qkv_bias || attention_bias;
  o.o_bias = s.o_bias_from_config && attention_bias;
  o.dropout = c.raw.contains("attention_dropout") ? c.attention_probs_dropout_prob : 0.0;  // HF's default: none
  o.rotary = rotary_options(c);
  return o;
}

struct LlamaDecoderLayerImpl : torch::nn::Module {
  LlamaDecoderLayerImpl(const ModelConfig& c, const Style& s, std::int64_t layer) {
    self_attn = register_module("self_attn", nn::Attention(llama_attention(c, s, layer)));
    mlp = register_module("mlp", LlamaMLP(c, s, layer));
    input_layernorm = register_module("input_layernorm", RMSNorm(c.hidden_size, c.layer_norm_eps, s.gemma_norm));
    post_attention_layernorm =
        register_module("post_attention_layernorm", RMSNorm(c.hidden_size, c.layer_norm_eps, s.gemma_norm));
    attention_adapters = register_module("attention_adapters", nn::AdapterLayer(layer, nn::location::kAttention));
    output_adapters = register_module("output_adapters", nn::AdapterLayer(layer, nn::location::kOutput));
  }
  // (B,T,C) -> (B,T,C); mask: this layer's (full or sliding-window) causal mask
  Tensor forward(const Tensor& x, const Tensor& mask, const Tensor& positions, nn::LayerKV* cache, ForwardContext& ctx) {
    Tensor a = self_attn->forward({input_layernorm(x), mask, Tensor(), positions, cache}, ctx);
    Tensor h = attention_adapters->forward(a, x, nn::Norm(), ctx);
    return output_adapters->forward(mlp->forward(post_attention_layernorm(h), ctx), h, nn::Norm(), ctx);
  }
  nn::Attention self_attn{nullptr};
  LlamaMLP mlp{nullptr};
  RMSNorm input_layernorm{nullptr}, post_attention_layernorm{nullptr};
  nn::AdapterLayer attention_adapters{nullptr}, output_adapters{nullptr};
};
TORCH_MODULE(LlamaDecoderLayer);

class LlamaModelImpl : public BaseModelImpl {
 public:
  explicit LlamaModelImpl(const ModelConfig& c)
      : BaseModelImpl(c), style_(style_of(c.model_type)), windows_(layer_windows(c, style_.window)) {
    embed_tokens = register_module("embed_tokens", torch::nn::Embedding(c.vocab_size, c.hidden_size));
    layers = nn::register_layers<LlamaDecoderLayer>(*this, "layers", c.num_hidden_layers,
                                                   [&](std::int64_t i) { return LlamaDecoderLayer(c, style_, i); });
    norm = register_module("norm", RMSNorm(c.hidden_size, c.layer_norm_eps, style_.gemma_norm));
  }

 protected:
  void check_inputs(const ModelInputs& in) const override {
    BaseModelImpl::check_inputs(in);
    check_positions_fit(in, config_);
  }
  // (B,T,C); given inputs_embeds are taken as they are (transformers 5 scales Gemma's inside its
  // embedding module: input_embeddings()).
  Tensor embed(const ModelInputs& in, LayerArgs&, ForwardContext&) override {
    return in.inputs_embeds.defined() ? in.inputs_embeds : input_embeddings(in.input_ids);
  }

 public:
  // Gemma scales by sqrt(hidden) in the embeddings' dtype, as HF's scaled word embedding does.
  Tensor input_embeddings(const Tensor& input_ids) const override {
    Tensor h = torch::embedding(embed_tokens->weight, input_ids);
    if (!style_.scale_embeddings) return h;
    return h * torch::tensor(std::sqrt(static_cast<double>(config_.hidden_size)), h.options());
  }

 protected:
  // The full causal mask; layers with a sliding window get theirs from extras["sliding_mask"].
  Tensor attention_mask(const Tensor& x, const LayerArgs& args) const override {
    return causal_mask(x, args, /*add_padding_to_causal=*/false);
  }
  std::int64_t num_layers() const override { return static_cast<std::int64_t>(layers.size()); }
  Tensor layer(std::int64_t i, const Tensor& x, LayerArgs& args, ForwardContext& ctx) override {
    const std::int64_t window = windows_[static_cast<std::size_t>(i)];
    nn::LayerKV* slot = args.cache ? args.cache->layer(static_cast<std::size_t>(i)) : nullptr;
    return layers[static_cast<std::size_t>(i)]->forward(x, window > 0 ? sliding_mask(x, args, window) : args.mask,
                                                        positions(x, args), slot, ctx);
  }
  BaseModelOutput finish(const Tensor& x, const LayerArgs& args, ForwardContext&) override {
    Tensor out = norm(x);
    return {out, Tensor(), rightmost_token_summary(out, args.input_ids, configured_pad_token(config_))};
  }

 private:
  // (B|1,1,Tq,Tk) causal within `window` positions, built once per forward and shared by the layers.
  static Tensor sliding_mask(const Tensor& x, LayerArgs& args, std::int64_t window) {
    const std::string key = "sliding_mask." + std::to_string(window);
    if (auto it = args.extras.find(key); it != args.extras.end()) return it->second;
    // The window counts columns: filler between a row's columns (a PEFT prefix row beside a PEFT
    // prompt row) would stretch it.
    if (args.filler.defined() && args.filler.size(1) > 1 &&
        args.filler.slice(1, 1).gt(args.filler.slice(1, 0, -1)).any().item<bool>()) {
      throw NotSupported("a sliding-window model cannot run rows of PEFT prefix tuning and rows of PEFT prompt tuning "
                         "of different lengths in one batch (the filler between a row's prefix and its tokens would "
                         "count in the window)",
                         "run the prefix rows and the prompt rows as separate batches");
    }
    nn::MaskSpec spec;
    spec.padding = args.attention_mask;
    spec.query_length = x.size(1);
    spec.past_length = args.past_length;
    spec.key_length = args.past_length + x.size(1);
    spec.causal = true;
    spec.sliding_window = window;
    return args.extras[key] = nn::build_attention_mask(spec, x.scalar_type(), x.device());
  }

  const Style& style_;
  std::vector<std::int64_t> windows_;
  torch::nn::Embedding embed_tokens{nullptr};
  std::vector<LlamaDecoderLayer> layers;  // "layers.<i>"
  RMSNorm norm{nullptr};
};

ArchSpec llama_style_arch(const Style& style) {
  ArchSpec spec;
  spec.model_type = style.model_type;
  spec.base_prefix = "model";
  spec.model_class = style.model_class;
  spec.create = [](const ModelConfig& c) { return std::make_shared<LlamaModelImpl>(c); };
  spec.base_roots = {"embed_tokens", "layers", "norm"};
  spec.word_embeddings = "embed_tokens.weight";
  spec.kind = ArchKind::Decoder;
  spec.heads_split_hidden = false;  // head_dim may differ from hidden / heads (Gemma)
  spec.static_heads = decoder_static_heads(false, "score");  // LlamaForTokenClassification names it score
  spec.module_roles = {{"q_proj", nn::role::kQuery},        {"k_proj", nn::role::kKey},
                       {"v_proj", nn::role::kValue},        {"o_proj", nn::role::kAttentionOut},
                       {"gate_proj", nn::role::kGate},      {"up_proj", nn::role::kIntermediate},
                       {"down_proj", nn::role::kOutput}};
  spec.unsupported_methods = generative_unsupported_methods();
  return spec;
}

}  // namespace

std::vector<ArchSpec> llama_style_archs() {
  std::vector<ArchSpec> specs;
  for (const auto& style : kStyles) specs.push_back(llama_style_arch(style));
  return specs;
}

}  // namespace adapters::models
