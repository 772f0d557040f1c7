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

namespace adapters {

// The defaults a model folder gives generation: config.json's token ids (bos, eos, pad,
// decoder_start, forced_bos, forced_eos), then generation_config.json when present.
generation::GenerationConfig load_generation_config(const fs::path& model_dir, const models::ModelConfig& config);
// The token ids of config.json alone (for models built in code).
generation::GenerationConfig generation_defaults(const models::ModelConfig& config);

// Generates from `input_ids` (B,T) (decoder-only models: left-padded prompts; encoder-decoder
// models: the source) with the active adapters and heads. Throws before any work when the model
// cannot generate with its setup (no LM head, a Split/BatchSplit setup, a prompt longer than its
// positions, ...) or the options are invalid.
generation::GenerateOutput generate(AdapterModelImpl& model, const torch::Tensor& input_ids,
                                    const torch::Tensor& attention_mask, const generation::GenerationConfig& config,
                                    const generation::DecodeHooks& hooks = {});

}  // namespace adapters
