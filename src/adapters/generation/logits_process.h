// Logits processors and sampling warpers of HF transformers 4.26 (generation/logits_process.py), with
// the same arithmetic, and the lists `generate` builds from a GenerationConfig in HF's order.
// Every processor takes the tokens so far `input_ids` (N,L) int64 and the scores (N,V) float32 of the
// next token; it may change `scores` in place and returns the result.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "adapters/generation/config.h"

namespace adapters::generation {

class LogitsProcessor {
 public:
  virtual ~LogitsProcessor() = default;
  virtual torch::Tensor operator()(const torch::Tensor& input_ids, torch::Tensor scores) const = 0;
  virtual std::string name() const = 0;
};

// Processors applied one after the other.
class LogitsProcessorList {
 public:
  void add(std::shared_ptr<const LogitsProcessor> p) { items_.push_back(std::move(p)); }
  torch::Tensor operator()(const torch::Tensor& input_ids, torch::Tensor scores) const;
  bool empty() const { return items_.empty(); }
  std::size_t size() const { return items_.size(); }
  const LogitsProcessor& operator[](std::size_t i) const { return *items_[i]; }

 private:
  std::vector<std::shared_ptr<const LogitsProcessor>> items_;
};

// Seen tokens: score < 0 -> score * penalty, else score / penalty (CTRL).
class RepetitionPenaltyLogitsProcessor : public LogitsProcessor {
 public:
  explicit RepetitionPenaltyLogitsProcessor(double penalty);
  torch::Tensor operator()(const torch::Tensor& input_ids, torch::Tensor scores) const override;
  std::string name() const override { return "repetition_penalty"; }

 private:
  double penalty_;
};

// Bans every token that would complete an n-gram already present in the row (fairseq's rule).
class NoRepeatNGramLogitsProcessor : public LogitsProcessor {
 public:
  explicit NoRepeatNGramLogitsProcessor(std::int64_t ngram_size);
  torch::Tensor operator()(const torch::Tensor& input_ids, torch::Tensor scores) const override;
  std::string name() const override { return "no_repeat_ngram_size"; }

 private:
  std::int64_t n_;
};

// EOS scores -inf while the total length L < min_length.
class MinLengthLogitsProcessor : public LogitsProcessor {
 public:
  MinLengthLogitsProcessor(std::int64_t min_length, std::vector<std::int64_t> eos_token_id);
  torch::Tensor operator()(const torch::Tensor& input_ids, torch::Tensor scores) const override;
  std::string name() const override { return "min_length"; }

 private:
  std::int64_t min_length_;
  std::vector<std::int64_t> eos_;
};

// EOS scores -inf while L - prompt_length_to_skip < min_new_tokens.
class MinNewTokensLengthLogitsProcessor : public LogitsProcessor {
 public:
  MinNewTokensLengthLogitsProcessor(std::int64_t prompt_length_to_skip, std::int64_t min_new_tokens,
                                    std::vector<std::int64_t> eos_token_id);
  torch::Tensor operator()(const torch::Tensor& input_ids, torch::Tensor scores) const override;
  std::string name() const override { return "min_new_tokens"; }

 private:
  std::int64_t prompt_length_;
  std::int64_t min_new_tokens_;
  std::vector<std::int64_t> eos_;
};

// At L == 1 every score is -inf but the forced token's, which is 0.
class ForcedBOSTokenLogitsProcessor : public LogitsProcessor {
 public:
  explicit ForcedBOSTokenLogitsProcessor(std::int64_t bos_token_id) : bos_(bos_token_id) {}
  torch::Tensor operator()(const torch::Tensor& input_ids, torch::Tensor scores) const override;
  std::string name() const override { return "forced_bos_token_id"; }

 private:
  std::int64_t bos_;
};

// At L == max_length - 1 every score is -inf but the forced tokens', which are 0.
class ForcedEOSTokenLogitsProcessor : public LogitsProcessor {
 public:
  ForcedEOSTokenLogitsProcessor(std::int64_t max_length, std::vector<std::int64_t> eos_token_id);
  torch::Tensor operator()(const torch::Tensor& input_ids, torch::Tensor scores) const override;
  std::string name() const override { return "forced_eos_token_id"; }

 private:
  std::int64_t max_length_;
  std::vector<std::int64_t> eos_;
};

// scores / temperature.
class TemperatureLogitsWarper : public LogitsProcessor {
 public:
  explicit TemperatureLogitsWarper(double temperature);
  torch::Tensor operator()(const torch::Tensor& input_ids, torch::Tensor scores) const override;
  std::string name() const override { return "temperature"; }

 private:
  double temperature_;
};

// Keeps the max(top_k, min_tokens_to_keep) best scores (and ties with the last of them), -inf elsewhere.
class TopKLogitsWarper : public LogitsProcessor {
 public:
  TopKLogitsWarper(std::int64_t top_k, std::int64_t min_tokens_to_keep = 1);
  torch::Tensor operator()(const torch::Tensor& input_ids, torch::Tensor scores) const override;
  std::string name() const override { return "top_k"; }

 private:
  std::int64_t top_k_;
};

// Nucleus filtering: drops the tokens whose ascending cumulative probability is <= 1 - top_p.
class TopPLogitsWarper : public LogitsProcessor {
 public:
  TopPLogitsWarper(double top_p, std::int64_t min_tokens_to_keep = 1);
  torch::Tensor operator()(const torch::Tensor& input_ids, torch::Tensor scores) const override;
  std::string name() const override { return "top_p"; }

 private:
  double top_p_;
  std::int64_t min_tokens_to_keep_;
};

// HF 4.26 `_get_logits_processor` for the options we support, in its order: repetition_penalty,
// no_repeat_ngram_size, min_length, min_new_tokens, forced_bos_token_id, forced_eos_token_id.
// `input_length` is the length of input_ids at the first step; `max_length` the resolved total.
LogitsProcessorList make_logits_processors(const GenerationConfig& c, std::int64_t input_length,
                                           std::int64_t max_length);

// HF 4.26 `_get_logits_warper`: temperature, top_k, top_p (min_tokens_to_keep 2 for beam sampling).
LogitsProcessorList make_logits_warpers(const GenerationConfig& c);

}  // namespace adapters::generation
