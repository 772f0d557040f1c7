// What the decoder architectures (GPT-2, GPT-J, BART's and T5's decoders) share: HF's causal-mask
// buffers, the position check, default positions, the last-real-token summary that sequence heads
// read, and the static heads of HF's decoder-only model classes.
#pragma once

#include <torch/torch.h>

#include "adapters/core/error.h"
#include "adapters/models/registry.h"
#include "adapters/nn/residual_site.h"

namespace adapters::models {

// HF's attn.bias (1,1,P,P) uint8 lower triangle and attn.masked_bias, kept so that checkpoints
// load key for key; the masks come from the shared mask builder.
inline void register_causal_buffers(torch::nn::Module& attention, std::int64_t positions, double masked_bias) {
  attention.register_buffer("bias", torch::tril(torch::ones({positions, positions}, torch::kUInt8)).view({1, 1, positions, positions}));
  attention.register_buffer("masked_bias", torch::tensor(masked_bias));
}

// Learned or rotary positions end at max_position_embeddings: a longer input is an error.
inline void check_positions_fit(const ModelInputs& in, const ModelConfig& c) {
  const torch::Tensor& t = in.input_ids.defined() ? in.input_ids : in.inputs_embeds;
  if (!t.defined()) return;
  const std::int64_t past = in.cache ? in.cache->length() : 0;
  ADAPTERS_CHECK(past + t.size(1) <= c.max_position_embeddings, c.model_type, " forward: ", past + t.size(1),
                 " tokens (", past, " cached + ", t.size(1), " new) exceed the model's ", c.max_position_embeddings,
                 " positions (max_position_embeddings / n_positions)");
}

// (B|1,T) the positions of this call: the given ones, else past .. past+T-1 (less each row's filler).
inline torch::Tensor positions(const torch::Tensor& x, const LayerArgs& args) {
  if (args.position_ids.defined() && args.position_ids.size(1) == x.size(1)) return args.position_ids;
  return shifted_positions(torch::arange(args.past_length, args.past_length + x.size(1),
                                         torch::TensorOptions().dtype(torch::kLong).device(x.device())).unsqueeze(0),
                           args);
}

// (B,C): the hidden state of each row's last non-padding token, as the reference's GPT-2/GPT-J
// classification reads it (count of tokens != pad, minus one; the last token without a pad id).
inline torch::Tensor last_token_summary(const torch::Tensor& h, const torch::Tensor& input_ids, std::int64_t pad_token_id) {
  const std::int64_t B = h.size(0), T = h.size(1);
  if (!input_ids.defined() || pad_token_id < 0 || input_ids.size(1) != T) return h.select(1, T - 1);
  torch::Tensor last = nn::match_batch(input_ids.ne(pad_token_id).sum(-1) - 1, h.select(2, 0).select(1, 0));  // (B)
  last = torch::where(last.lt(0), last + T, last);
  return h.index({torch::arange(B, last.options()), last});
}

// (B,C): the hidden state of each row's rightmost non-padding token, as transformers 5's sequence
// classification reads it (Llama and its kin; the last token without a pad id).
inline torch::Tensor rightmost_token_summary(const torch::Tensor& h, const torch::Tensor& input_ids, std::int64_t pad_token_id) {
  const std::int64_t B = h.size(0), T = h.size(1);
  if (!input_ids.defined() || pad_token_id < 0 || input_ids.size(1) != T) return h.select(1, T - 1);
  const torch::Tensor real = input_ids.ne(pad_token_id).to(torch::kLong);
  torch::Tensor last = (torch::arange(T, real.options()) * real).argmax(-1);  // (B)
  last = nn::match_batch(last, h.select(2, 0).select(1, 0));
  return h.index({torch::arange(B, last.options()), last});
}

// The pad token when config.json names one, else -1.
inline std::int64_t configured_pad_token(const ModelConfig& c) {
  return c.raw.contains("pad_token_id") && c.raw["pad_token_id"].is_number_integer() ? c.pad_token_id : -1;
}

// HF's decoder-only heads: *ForSequenceClassification (`score`, no bias, last real token),
// *ForTokenClassification (`token_classifier`: GPT-2's `classifier`, Llama's `score`),
// *ForQuestionAnswering and the LM head (`lm_head`).
inline std::vector<StaticHeadSpec> decoder_static_heads(bool lm_bias, const char* token_classifier = "classifier") {
  return {
      {"ForSequenceClassification", "classification",
       {{"layers", 1}, {"activation_function", nullptr}, {"use_pooler", false}, {"bias", false}}, {"", "score"}},
      {"ForTokenClassification", "tagging", {{"layers", 1}, {"activation_function", nullptr}}, {"", token_classifier}},
      {"ForQuestionAnswering", "question_answering",
       {{"layers", 1}, {"activation_function", nullptr}, {"num_labels", 2}}, {"", "qa_outputs"}},
      {"LMHeadModel", "causal_lm", {{"layers", 1}, {"activation_function", nullptr}, {"bias", lm_bias}}, {"lm_head"}},
      {"ForCausalLM", "causal_lm", {{"layers", 1}, {"activation_function", nullptr}, {"bias", lm_bias}}, {"lm_head"}},
  };
}

// Methods whose hook has no place in a generating model yet.
inline std::map<std::string, std::string> generative_unsupported_methods() {
  return {{"prompt_tuning",
           "soft prompt tokens are prepended to every forward, which a cached generation step cannot take"}};
}

}  // namespace adapters::models
