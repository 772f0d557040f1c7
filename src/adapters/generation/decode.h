// The model-independent decoding loops of HF transformers 4.26 `generate`: greedy search, multinomial
// sampling, beam search (BeamSearchScorer / BeamHypotheses) and beam sampling, over a StepModel that
// gives next-token logits. Shapes: B prompts, N rows being decoded (B, B * num_return_sequences or
// B * num_beams), L tokens so far, V the vocabulary.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <functional>

#include "adapters/generation/config.h"

namespace adapters::generation {

// The model as the decoding loop sees it.
class StepModel {
 public:
  virtual ~StepModel() = default;
  // Next-token logits (N,V) for every row, given all tokens so far `sequences` (N,L) int64 and the
  // attention mask over them (N,L) (decoder-only: prompt + generated; encoder-decoder: the decoder
  // tokens, the start token first). The model decides what it has cached already; it must not modify
  // its arguments. The returned tensor is handed over: the loop may change it in place.
  virtual torch::Tensor next_logits(const torch::Tensor& sequences, const torch::Tensor& attention_mask) = 0;
  // Keeps batch rows `rows` (int64 (N'), indices into the current rows, repeats allowed) of every
  // per-row state (cache, encoder outputs) in that order. Called to expand rows for beams / return
  // sequences before the first step (rows = arange(B).repeat_interleave(k), only when k > 1) and after
  // every beam-search step (beam_idx).
  virtual void select_rows(const torch::Tensor& rows) = 0;
};

struct GenerateOutput {
  torch::Tensor sequences;        // (N_out, L) int64: prompt (decoder-only) or start token (enc-dec) + new
                                  // tokens, padded with pad_token_id after EOS exactly as HF
  torch::Tensor scores;           // with output_scores: (steps, N, V) float32 processed scores (sampling:
                                  // after the warpers; beam search: HF's next_token_scores_processed)
  torch::Tensor sequences_scores; // beam search: (N_out) float32 length-normalised hypothesis scores
};

// Hooks for the caller (greedy search and sampling only): `on_tokens` is called after each step with
// the new tokens (N) (pad for finished rows), for streaming (beam search does not call it); `stop` is
// asked for each unfinished row after each step and returning true finishes that row (stop strings
// are checked this way; with num_beams > 1 it is NotSupported).
struct DecodeHooks {
  std::function<void(const torch::Tensor& next_tokens)> on_tokens;
  std::function<bool(std::int64_t row, const torch::Tensor& row_sequence)> stop;
};

// `input_ids` (B,L0): decoder-only: the (left-padded) prompt; encoder-decoder: the decoder start ids
// (B,1). `attention_mask` (B,L0) 1/0 (undefined = all ones). Chooses the mode as HF does: num_beams 1
// -> greedy or sampling, else beam search or beam sampling. pad_token_id defaults to eos_token_id[0].
GenerateOutput decode(StepModel& model, const torch::Tensor& input_ids, const torch::Tensor& attention_mask,
                      const GenerationConfig& config, const DecodeHooks& hooks = {});

// HF 4.26 `generate` step 6: max_new_tokens + input_length if set, else max_length, else 20.
std::int64_t resolve_max_length(const GenerationConfig& c, std::int64_t input_length);

// The beam-search loop itself, for any num_beams >= 1 (decode() uses it for num_beams > 1; with one
// beam and no EOS it is greedy search). Expands the rows itself (select_rows) like decode().
GenerateOutput beam_search(StepModel& model, const torch::Tensor& input_ids, const torch::Tensor& attention_mask,
                           const GenerationConfig& config);

}  // namespace adapters::generation
