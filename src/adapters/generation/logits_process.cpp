// Logits processors and warpers with HF 4.26's arithmetic (generation/logits_process.py), and the
// lists `generate` builds from the config.
#include "adapters/generation/logits_process.h"

#include <torch/torch.h>

#include <limits>

#include "adapters/core/error.h"

namespace adapters::generation {

namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

torch::Tensor ids_tensor(const std::vector<std::int64_t>& ids, const torch::Device& device) {
  return torch::tensor(ids, torch::kLong).to(device);
}

// scores[:, i] = -inf for every i in `ids`.
void ban_columns(torch::Tensor& scores, const std::vector<std::int64_t>& ids) {
  if (!ids.empty()) scores.index_fill_(1, ids_tensor(ids, scores.device()), kNegInf);
}

// Every score -inf except the `keep` columns, which become 0.
void force_columns(torch::Tensor& scores, const std::vector<std::int64_t>& keep) {
  scores.fill_(kNegInf);
  scores.index_fill_(1, ids_tensor(keep, scores.device()), 0.0);
}

// The tokens that would repeat an n-gram of `row` (L) (fairseq's _calc_banned_ngram_tokens for one
// hypothesis): every token that followed an earlier occurrence of the last n-1 tokens.
std::vector<std::int64_t> banned_ngram_tokens(const std::int64_t* row, std::int64_t len, std::int64_t n) {
  std::vector<std::int64_t> banned;
  if (len + 1 < n) return banned;
  const std::int64_t* tail = row + len - (n - 1);  // the last n-1 tokens
  for (std::int64_t start = 0; start + n <= len; ++start) {
    bool match = true;
    for (std::int64_t k = 0; k < n - 1 && match; ++k) match = row[start + k] == tail[k];
    if (match) banned.push_back(row[start + n - 1]);
  }
  return banned;
}

}  // namespace

torch::Tensor LogitsProcessorList::operator()(const torch::Tensor& input_ids, torch::Tensor scores) const {
  for (const auto& p : items_) scores = (*p)(input_ids, scores);
  return scores;
}

// ---- processors ---------------------------------------------------------------------------------

RepetitionPenaltyLogitsProcessor::RepetitionPenaltyLogitsProcessor(double penalty) : penalty_(penalty) {
  ADAPTERS_CHECK(penalty > 0, "repetition_penalty: expected a positive number, found ", penalty);
}

torch::Tensor RepetitionPenaltyLogitsProcessor::operator()(const torch::Tensor& input_ids,
                                                           torch::Tensor scores) const {
  torch::Tensor score = scores.gather(1, input_ids);  // (N,L)
  score = torch::where(score < 0, score * penalty_, score / penalty_);
  scores.scatter_(1, input_ids, score);
  return scores;
}

NoRepeatNGramLogitsProcessor::NoRepeatNGramLogitsProcessor(std::int64_t ngram_size) : n_(ngram_size) {
  ADAPTERS_CHECK(n_ > 0, "no_repeat_ngram_size: expected a positive integer, found ", n_);
}

torch::Tensor NoRepeatNGramLogitsProcessor::operator()(const torch::Tensor& input_ids, torch::Tensor scores) const {
  const std::int64_t rows = scores.size(0), len = input_ids.size(1);
  if (len + 1 < n_) return scores;
  torch::Tensor ids = input_ids.to(torch::kCPU).contiguous();  // (N,L)
  std::vector<std::int64_t> ban_rows, ban_cols;
  for (std::int64_t r = 0; r < rows; ++r) {
    for (std::int64_t t : banned_ngram_tokens(ids.data_ptr<std::int64_t>() + r * len, len, n_)) {
      ban_rows.push_back(r);
      ban_cols.push_back(t);
    }
  }
  if (!ban_rows.empty()) {
    scores.index_put_({ids_tensor(ban_rows, scores.device()), ids_tensor(ban_cols, scores.device())},
                      torch::full({}, kNegInf, scores.options()));
  }
  return scores;
}

MinLengthLogitsProcessor::MinLengthLogitsProcessor(std::int64_t min_length, std::vector<std::int64_t> eos_token_id)
    : min_length_(min_length), eos_(std::move(eos_token_id)) {
  ADAPTERS_CHECK(min_length_ >= 0, "min_length: expected a non-negative integer, found ", min_length_);
}

torch::Tensor MinLengthLogitsProcessor::operator()(const torch::Tensor& input_ids, torch::Tensor scores) const {
  if (input_ids.size(-1) < min_length_) ban_columns(scores, eos_);
  return scores;
}

MinNewTokensLengthLogitsProcessor::MinNewTokensLengthLogitsProcessor(std::int64_t prompt_length_to_skip,
                                                                     std::int64_t min_new_tokens,
                                                                     std::vector<std::int64_t> eos_token_id)
    : prompt_length_(prompt_length_to_skip), min_new_tokens_(min_new_tokens), eos_(std::move(eos_token_id)) {
  ADAPTERS_CHECK(prompt_length_ >= 0, "prompt_length_to_skip: expected a non-negative integer, found ",
                 prompt_length_);
  ADAPTERS_CHECK(min_new_tokens_ >= 0, "min_new_tokens: expected a non-negative integer, found ", min_new_tokens_);
}

torch::Tensor MinNewTokensLengthLogitsProcessor::operator()(const torch::Tensor& input_ids,
                                                            torch::Tensor scores) const {
  if (input_ids.size(-1) - prompt_length_ < min_new_tokens_) ban_columns(scores, eos_);
  return scores;
}

torch::Tensor ForcedBOSTokenLogitsProcessor::operator()(const torch::Tensor& input_ids, torch::Tensor scores) const {
  if (input_ids.size(-1) == 1) force_columns(scores, {bos_});
  return scores;
}

ForcedEOSTokenLogitsProcessor::ForcedEOSTokenLogitsProcessor(std::int64_t max_length,
                                                             std::vector<std::int64_t> eos_token_id)
    : max_length_(max_length), eos_(std::move(eos_token_id)) {}

torch::Tensor ForcedEOSTokenLogitsProcessor::operator()(const torch::Tensor& input_ids, torch::Tensor scores) const {
  if (input_ids.size(-1) == max_length_ - 1) force_columns(scores, eos_);
  return scores;
}

// ---- warpers ------------------------------------------------------------------------------------

TemperatureLogitsWarper::TemperatureLogitsWarper(double temperature) : temperature_(temperature) {
  ADAPTERS_CHECK(temperature > 0, "temperature: expected a positive number, found ", temperature);
}

torch::Tensor TemperatureLogitsWarper::operator()(const torch::Tensor&, torch::Tensor scores) const {
  return scores.div_(temperature_);
}

TopKLogitsWarper::TopKLogitsWarper(std::int64_t top_k, std::int64_t min_tokens_to_keep)
    : top_k_(std::max(top_k, min_tokens_to_keep)) {
  ADAPTERS_CHECK(top_k > 0, "top_k: expected a positive integer, found ", top_k);
}

torch::Tensor TopKLogitsWarper::operator()(const torch::Tensor&, torch::Tensor scores) const {
  const std::int64_t k = std::min(top_k_, scores.size(-1));
  torch::Tensor kth = std::get<0>(scores.topk(k)).narrow(-1, k - 1, 1);  // (N,1)
  return scores.masked_fill_(scores < kth, kNegInf);
}

TopPLogitsWarper::TopPLogitsWarper(double top_p, std::int64_t min_tokens_to_keep)
    : top_p_(top_p), min_tokens_to_keep_(min_tokens_to_keep) {
  ADAPTERS_CHECK(top_p >= 0 && top_p <= 1, "top_p: expected a number in (0, 1], found ", top_p);
}

torch::Tensor TopPLogitsWarper::operator()(const torch::Tensor&, torch::Tensor scores) const {
  auto [sorted_logits, sorted_indices] = scores.sort(/*dim=*/-1, /*descending=*/false);  // (N,V)
  torch::Tensor cumulative = sorted_logits.softmax(-1).cumsum(-1);
  torch::Tensor remove = cumulative <= (1 - top_p_);  // ascending: the improbable head
  if (min_tokens_to_keep_ > 1) {
    const std::int64_t keep = std::min(min_tokens_to_keep_, remove.size(-1));
    remove.narrow(-1, remove.size(-1) - keep, keep).fill_(false);
  }
  torch::Tensor to_remove = remove.scatter(1, sorted_indices, remove);
  return scores.masked_fill_(to_remove, kNegInf);
}

// ---- the lists of `generate` --------------------------------------------------------------------

LogitsProcessorList make_logits_processors(const GenerationConfig& c, std::int64_t input_length,
                                           std::int64_t max_length) {
  LogitsProcessorList list;
  if (c.repetition_penalty != 1.0) list.add(std::make_shared<RepetitionPenaltyLogitsProcessor>(c.repetition_penalty));
  if (c.no_repeat_ngram_size > 0) list.add(std::make_shared<NoRepeatNGramLogitsProcessor>(c.no_repeat_ngram_size));
  if (c.min_length > 0 && !c.eos_token_id.empty())
    list.add(std::make_shared<MinLengthLogitsProcessor>(c.min_length, c.eos_token_id));
  if (c.min_new_tokens && *c.min_new_tokens > 0 && !c.eos_token_id.empty())
    list.add(std::make_shared<MinNewTokensLengthLogitsProcessor>(input_length, *c.min_new_tokens, c.eos_token_id));
  if (c.forced_bos_token_id) list.add(std::make_shared<ForcedBOSTokenLogitsProcessor>(*c.forced_bos_token_id));
  if (c.forced_eos_token_id)
    list.add(std::make_shared<ForcedEOSTokenLogitsProcessor>(max_length, std::vector<std::int64_t>{*c.forced_eos_token_id}));
  return list;
}

LogitsProcessorList make_logits_warpers(const GenerationConfig& c) {
  LogitsProcessorList list;
  const std::int64_t min_tokens_to_keep = c.num_beams > 1 ? 2 : 1;
  if (c.temperature != 1.0) list.add(std::make_shared<TemperatureLogitsWarper>(c.temperature));
  if (c.top_k != 0) list.add(std::make_shared<TopKLogitsWarper>(c.top_k, min_tokens_to_keep));
  if (c.top_p < 1.0) list.add(std::make_shared<TopPLogitsWarper>(c.top_p, min_tokens_to_keep));
  return list;
}

}  // namespace adapters::generation
