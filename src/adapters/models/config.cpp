// The config key table: every HF spelling of the canonical model config fields, in one place.
#include "adapters/models/config.h"

#include <variant>
#include <vector>

#include "adapters/io/tensors.h"

namespace adapters::models {
namespace {

using Field = std::variant<std::int64_t ModelConfig::*, double ModelConfig::*, std::string ModelConfig::*>;

struct KeySpelling {
  const char* canonical;
  std::vector<const char*> spellings;  // tried in order; the first present wins
  Field field;
  bool required;
};

// clang-format off
const std::vector<KeySpelling>& key_table() {
  static const std::vector<KeySpelling> table = {
    {"vocab_size",                   {"vocab_size"},                                                    &ModelConfig::vocab_size,                   false},  // none in vision models
    {"hidden_size",                  {"hidden_size", "dim", "d_model", "n_embd"},                       &ModelConfig::hidden_size,                  true},
    {"num_hidden_layers",            {"num_hidden_layers", "n_layers", "num_layers", "n_layer", "encoder_layers"},        &ModelConfig::num_hidden_layers,            true},
    {"num_attention_heads",          {"num_attention_heads", "n_heads", "num_heads", "n_head", "encoder_attention_heads"},         &ModelConfig::num_attention_heads,          true},
    {"num_key_value_heads",          {"num_key_value_heads", "num_kv_heads"},                           &ModelConfig::num_key_value_heads,          false},
    {"head_dim",                     {"head_dim", "d_kv"},                                              &ModelConfig::explicit_head_dim,            false},
    {"intermediate_size",            {"intermediate_size", "hidden_dim", "d_ff", "n_inner", "encoder_ffn_dim"},            &ModelConfig::intermediate_size,            false},
    {"embedding_size",               {"embedding_size"},                                                &ModelConfig::embedding_size,               false},
    {"max_position_embeddings",      {"max_position_embeddings", "n_positions"},                        &ModelConfig::max_position_embeddings,      false},
    {"type_vocab_size",              {"type_vocab_size"},                                               &ModelConfig::type_vocab_size,              false},
    {"pad_token_id",                 {"pad_token_id"},                                                  &ModelConfig::pad_token_id,                 false},
    {"layer_norm_eps",               {"layer_norm_eps", "layer_norm_epsilon", "rms_norm_eps"},          &ModelConfig::layer_norm_eps,               false},
    {"hidden_dropout_prob",          {"hidden_dropout_prob", "dropout", "resid_pdrop", "dropout_rate"}, &ModelConfig::hidden_dropout_prob,          false},
    {"attention_probs_dropout_prob", {"attention_probs_dropout_prob", "attention_dropout", "attn_pdrop"}, &ModelConfig::attention_probs_dropout_prob, false},
    {"hidden_act",                   {"hidden_act", "activation", "activation_function"},               &ModelConfig::hidden_act,                   false},
    {"initializer_range",            {"initializer_range", "init_std"},                                 &ModelConfig::initializer_range,            false},
    {"rope_theta",                   {"rope_theta", "rotary_emb_base"},                                 &ModelConfig::rope_theta,                   false},
    {"rotary_dim",                   {"rotary_dim"},                                                    &ModelConfig::rotary_dim,                   false},
    {"sliding_window",               {"sliding_window"},                                                &ModelConfig::sliding_window,               false},
    {"num_decoder_layers",           {"num_decoder_layers", "decoder_layers"},                          &ModelConfig::num_decoder_layers,           false},
  };
  return table;
}
// clang-format on

void assign(ModelConfig& c, const Field& field, const JsonReader& r, const std::string& key) {
  if (auto p = std::get_if<std::int64_t ModelConfig::*>(&field)) c.*(*p) = r.get_int(key);
  else if (auto p = std::get_if<double ModelConfig::*>(&field)) c.*(*p) = r.get_double(key);
  else c.*std::get<std::string ModelConfig::*>(field) = r.get_string(key);
}

void validate(const ModelConfig& c, const std::string& source) {
  auto positive = [&](const char* name, std::int64_t v) {
    ADAPTERS_CHECK(v > 0, source, ": '", name, "' must be a positive integer, found ", v);
  };
  if (c.vocab_size != 0) positive("vocab_size", c.vocab_size);  // 0: none (vision models)
  positive("hidden_size", c.hidden_size);
  positive("num_hidden_layers", c.num_hidden_layers);
  positive("num_attention_heads", c.num_attention_heads);
  positive("intermediate_size", c.intermediate_size);
  positive("num_key_value_heads", c.num_key_value_heads);
  positive("embedding_size", c.embedding_size);
  positive("num_decoder_layers", c.num_decoder_layers);
  if (c.explicit_head_dim == 0) {
    ADAPTERS_CHECK(c.hidden_size % c.num_attention_heads == 0, source, ": hidden_size ", c.hidden_size,
                   " is not divisible by num_attention_heads ", c.num_attention_heads,
                   " (give 'head_dim' when the heads do not split the hidden size)");
  } else {
    positive("head_dim", c.explicit_head_dim);
  }
  ADAPTERS_CHECK(c.num_attention_heads % c.num_key_value_heads == 0, source, ": num_key_value_heads ",
                 c.num_key_value_heads, " does not divide num_attention_heads ", c.num_attention_heads);
  ADAPTERS_CHECK(c.rotary_dim >= 0 && c.rotary_dim <= c.head_dim() && c.rotary_dim % 2 == 0, source, ": rotary_dim ",
                 c.rotary_dim, " must be even and at most the head size ", c.head_dim());
  ADAPTERS_CHECK(c.sliding_window >= 0, source, ": sliding_window must be >= 0, found ", c.sliding_window);
  auto probability = [&](const char* name, double p) {
    ADAPTERS_CHECK(p >= 0.0 && p < 1.0, source, ": '", name, "' must be a probability in [0, 1), found ", p);
  };
  probability("hidden_dropout_prob", c.hidden_dropout_prob);
  probability("attention_probs_dropout_prob", c.attention_probs_dropout_prob);
}

}  // namespace

ModelConfig parse_model_config(const json& config, const std::string& source) {
  JsonReader reader(config, source);
  ModelConfig c;
  c.model_type = reader.get_string("model_type");
  c.raw = config;
  for (const auto& entry : key_table()) {
    bool found = false;
    for (const char* key : entry.spellings) {
      if (!reader.has(key) || config[key].is_null()) continue;  // null: the default (e.g. "sliding_window": null)
      assign(c, entry.field, reader, key);
      found = true;
      break;
    }
    if (!found && entry.required) {
      std::string spellings;
      for (const char* key : entry.spellings) spellings += (spellings.empty() ? "'" : " or '") + std::string(key) + "'";
      throw Error(str(source, ": missing key ", spellings, " (", entry.canonical, ")"));
    }
  }
  if (c.intermediate_size == 0) c.intermediate_size = 4 * c.hidden_size;
  if (c.num_key_value_heads == 0) c.num_key_value_heads = c.num_attention_heads;
  if (c.embedding_size == 0) c.embedding_size = c.hidden_size;
  if (c.num_decoder_layers == 0) c.num_decoder_layers = c.num_hidden_layers;
  if (reader.has("is_encoder_decoder") && config["is_encoder_decoder"].is_boolean()) {
    c.is_encoder_decoder = config["is_encoder_decoder"].get<bool>();
  }
  if (reader.has("tie_word_embeddings")) {
    ADAPTERS_CHECK(config["tie_word_embeddings"].is_boolean(), source, ": 'tie_word_embeddings' must be true or false, found ",
                   config["tie_word_embeddings"].dump());
    c.tie_word_embeddings = config["tie_word_embeddings"].get<bool>();
  }
  validate(c, source);
  return c;
}

ModelConfig load_model_config(const std::filesystem::path& config_json) {
  const std::string source = config_json.string();
  return parse_model_config(parse_json_file_text(io::read_text_file(config_json), source), source);
}

}  // namespace adapters::models
