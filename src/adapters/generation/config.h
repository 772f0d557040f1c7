// Text generation options: HF's GenerationConfig (transformers 4.26, as adapter-transformers 3.2.1
// uses it) for greedy search, multinomial sampling and beam search; read from generation_config.json
// or `generate` keyword arguments, and checked before any work.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "adapters/core/json.h"

namespace adapters::generation {

// HF's `early_stopping`: false (the heuristic of BeamHypotheses.is_done), true (stop a batch row once
// num_beams hypotheses are finished) or "never" (HF >= 4.27: the best attainable score is judged at
// max_length, so beam search only stops when no better hypothesis can appear).
enum class EarlyStopping { False, True, Never };

struct GenerationConfig {
  std::optional<std::int64_t> max_new_tokens;   // HF: max_length = max_new_tokens + input length (wins over max_length)
  std::optional<std::int64_t> max_length;       // total length (HF default 20 when neither is given)
  std::int64_t min_length = 0;                  // total length, as HF's MinLengthLogitsProcessor
  std::optional<std::int64_t> min_new_tokens;
  bool do_sample = false;
  std::int64_t num_beams = 1;
  std::int64_t num_return_sequences = 1;
  double length_penalty = 1.0;
  EarlyStopping early_stopping = EarlyStopping::False;
  double temperature = 1.0;
  std::int64_t top_k = 50;                      // 0 = no top-k filtering (HF: top_k None or 0)
  double top_p = 1.0;
  double repetition_penalty = 1.0;
  std::int64_t no_repeat_ngram_size = 0;
  std::optional<std::int64_t> bos_token_id, pad_token_id, decoder_start_token_id, forced_bos_token_id,
      forced_eos_token_id;
  std::vector<std::int64_t> eos_token_id;       // HF accepts an int or a list
  bool use_cache = true;
  bool output_scores = false;
  std::optional<std::uint64_t> seed;            // sampling: a generator seeded with it (reproducible)
};

// The HF default max_length when neither max_length nor max_new_tokens is set.
constexpr std::int64_t kDefaultMaxLength = 20;

// Reads HF generation_config.json / `generate` kwargs keys (the names of GenerationConfig, plus `seed`).
// Keys HF does not know are ignored (transformers_version, _from_model_config, ...), as are HF's output
// switches (return_dict_in_generate, output_attentions, output_hidden_states). HF options this library
// does not implement (num_beam_groups, penalty_alpha, typical_p, bad_words_ids, forced_decoder_ids, ...)
// throw NotSupported when set to anything but their neutral value. null resets a key to its default,
// except top_k where null means no top-k filtering (as in HF). Wrong types are errors naming `source`
// and the key. Keys present in `j` override `base` one by one.
GenerationConfig parse_generation_config(const json& j, const std::string& source, GenerationConfig base = {});

// Checks before any work (errors name the option, what was expected and what was found). With
// vocab_size <= 0 the checks that need the vocabulary (num_beams, token ids) are skipped.
void validate(const GenerationConfig& c, std::int64_t vocab_size);

// "false", "true", "never".
std::string to_string(EarlyStopping e);

}  // namespace adapters::generation
