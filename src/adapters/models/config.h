// Model configuration read from an HF config.json. Architectures spell the same quantity
// differently (hidden_size / dim / d_model / n_embd ...): the one key table in config.cpp maps
// every spelling onto the canonical fields below.
#pragma once

#include <filesystem>
#include <string>

#include "adapters/core/json.h"

namespace adapters::models {

struct ModelConfig {
  std::string model_type;
  std::int64_t vocab_size = 0;
  std::int64_t hidden_size = 0;
  std::int64_t num_hidden_layers = 0;
  std::int64_t num_attention_heads = 0;
  std::int64_t num_key_value_heads = 0;  // grouped-query attention; defaults to num_attention_heads
  std::int64_t explicit_head_dim = 0;    // "head_dim" / T5's "d_kv"; 0 = hidden_size / heads
  std::int64_t intermediate_size = 0;
  std::int64_t embedding_size = 0;       // factorised embeddings (ALBERT, ELECTRA); defaults to hidden_size
  std::int64_t max_position_embeddings = 512;
  std::int64_t type_vocab_size = 2;
  std::int64_t pad_token_id = 0;
  double layer_norm_eps = 1e-12;
  double hidden_dropout_prob = 0.1;
  double attention_probs_dropout_prob = 0.1;
  std::string hidden_act = "gelu";
  double initializer_range = 0.02;
  double rope_theta = 10000.0;
  std::int64_t rotary_dim = 0;          // partially rotated heads (GPT-J); 0 = the whole head
  std::int64_t sliding_window = 0;      // 0 = none
  std::int64_t num_decoder_layers = 0;  // encoder-decoder models; defaults to num_hidden_layers
  bool is_encoder_decoder = false;
  bool tie_word_embeddings = true;
  json raw;  // the whole config.json, for architecture-specific keys and for saving

  std::int64_t head_dim() const { return explicit_head_dim > 0 ? explicit_head_dim : hidden_size / num_attention_heads; }
};

// Reads the canonical fields from `config` (any spelling of the key table); `source` names the
// file in errors. Validates sizes (positive, hidden divisible by heads).
ModelConfig parse_model_config(const json& config, const std::string& source);
ModelConfig load_model_config(const std::filesystem::path& config_json);

}  // namespace adapters::models
