// Text generation with an AdapterModel: the model side of generation/decode.h. Checks the model,
// its active adapter setup and LM heads before any work, keeps the key/value cache (self-attention
// grows per step; cross-attention keys/values are computed once; prefix-tuning prefixes sit in
// front of the cache and are never cached), runs an encoder-decoder's encoder once, and replicates
// the batch once for a Parallel setup (rows [0:B] go through the first branch and its head, as the
// reference's generate does).
#pragma once

#include <filesystem>

#include "adapters/generation/config.h"
#include "adapters/generation/decode.h"
#include "adapters/model.h"
#include "adapters/per_row.h"

namespace adapters {

// The soft prompt's length of PEFT prompt tuning (combine "input") when `setup` starts with one, else 0.
std::int64_t input_prompt_length(const AdapterModelImpl& model, const Block* setup);

// The defaults a model folder gives generation: config.json's token ids (bos, eos, pad,
// decoder_start, forced_bos, forced_eos), then generation_config.json when present.
generation::GenerationConfig load_generation_config(const fs::path& model_dir, const models::ModelConfig& config);
// The token ids of config.json alone (for models built in code).
generation::GenerationConfig generation_defaults(const models::ModelConfig& config);

// The model side of decoding (generation::StepModel): one forward per step over the key/value
// cache (or over the whole sequence without it), the encoder run once for encoder-decoder models,
// the logits of the last position of each row, from one LM head or a Parallel of them. Rows are
// the decoding rows (prompts x Parallel channels x beams). generate() checks the model and options
// first; use this directly only on a model generate() accepts.
class ModelStepper : public generation::StepModel {
 public:
  ModelStepper(AdapterModelImpl& model, std::int64_t channels, bool use_cache, std::int64_t max_length);
  // Encoder-decoder models: runs the encoder once over the source (B,Ts) (a Parallel block
  // replicates the rows) and keeps its states for every step.
  void encode(const torch::Tensor& input_ids, const torch::Tensor& attention_mask, std::int64_t decoder_start);
  // (N,V) float32 logits of the next token after `sequences` (N,L).
  torch::Tensor next_logits(const torch::Tensor& sequences, const torch::Tensor& attention_mask) override;
  void select_rows(const torch::Tensor& rows) override;
  // One adapter per decoding row (grouped: each adapter's rows contiguous, as generate() orders
  // them); rows keep their adapter through select_rows.
  void set_row_adapters(std::vector<std::string> adapter_per_row);

 private:
  // The forward options of a step: the row groups' BatchSplit when rows have adapters of their own.
  ForwardOptions step_options();
  // The soft tokens of the steps' setup over `rows` rows, and the lengths they put before the tokens.
  SoftTokens step_soft_tokens(std::int64_t rows) const;
  void set_soft_tokens(const SoftTokens& soft);

  AdapterModelImpl& model_;
  std::int64_t channels_;
  bool use_cache_;
  bool encoder_decoder_;
  bool positions_from_mask_;
  nn::KVCache cache_;
  std::int64_t past_prefix_ = 0;   // PEFT prefix tuning's tokens in front of the cache
  std::int64_t input_prompt_ = 0;  // PEFT prompt tuning's soft tokens (decoder-only: in the cache)
  std::int64_t prefix_ = 0;        // the cache's tokens before the sequences' own
  std::int64_t max_length_ = 0;
  torch::Tensor prefix_mask_;      // (N,prefix_) 1 = an attended prefix column, 0 = a row's filler
  torch::Tensor encoder_states_, encoder_mask_;
  std::vector<std::string> row_adapters_;
  Block row_setup_;
};

// Generates from `input_ids` (B,T) (decoder-only models: left-padded prompts; encoder-decoder
// models: the source) with the active adapters and heads. Throws before any work when the model
// cannot generate with its setup (no LM head, a Split/BatchSplit setup, a prompt longer than its
// positions, ...) or the options are invalid. `adapter_per_row` (one name per prompt, kNoAdapter
// for none) runs each prompt with its own adapter in the one batch, instead of the active setup:
// every prompt's tokens equal generating it alone with its adapter; outputs keep the prompts' order.
generation::GenerateOutput generate(AdapterModelImpl& model, const torch::Tensor& input_ids,
                                    const torch::Tensor& attention_mask, const generation::GenerationConfig& config,
                                    const generation::DecodeHooks& hooks = {},
                                    const std::vector<std::string>& adapter_per_row = {});

}  // namespace adapters
