// Pretraining a base model from its config.json: BERT's / GPT-2's initialisation, and a plain-text
// corpus (one text per line) as the features of a masked-LM or causal-LM task of the Trainer.
//
//   AdapterModel model(models::load_model_config("config.json"));
//   init_weights(*model, model->config().initializer_range);
//   FeatureSet corpus = masked_lm_corpus(tokenizer, "corpus.txt", {128, 0, 2, 1}, masking_options(tokenizer, 0.15));
//   model->add_head("mlm", "masked_lm");
//   Trainer(options).train(model, corpus);
#pragma once

#include <cstdint>
#include <filesystem>

#include "adapters/model.h"
#include "adapters/train/data.h"

namespace adapters::train {

// BERT's and GPT-2's initialisation: N(0, std) matrices and embeddings, zero biases, unit norm
// weights; GPT-2 also scales its residual projections (c_proj) by 1/sqrt(2 * layers), as HF does.
void init_weights(AdapterModelImpl& model, double std);

// How corpus lines become rows: at most max_length tokens each, `bos text eos`, padded with pad.
struct CorpusLayout {
  size_t max_length = 128;
  int64_t bos = 0, eos = 2, pad = 1;
};

// Masked LM: every line encoded (no special tokens of the tokenizer's own), cut into pieces of
// max_length - 2 tokens, each piece of at least 4 tokens a row `bos piece eos`; only the piece's
// tokens may be masked. Throws naming the corpus when it cannot be read or holds no such piece.
FeatureSet masked_lm_corpus(const tokenizer::Tokenizer& tokenizer, const std::filesystem::path& corpus,
                            const CorpusLayout& layout, const MaskingOptions& masking);

// Causal LM, as GPT-2 is trained: every line `bos tokens eos`, all lines one stream, cut into
// blocks of max_length tokens (the last, shorter one dropped), every token a target, no padding.
FeatureSet causal_lm_corpus(const tokenizer::Tokenizer& tokenizer, const std::filesystem::path& corpus,
                            const CorpusLayout& layout);

}  // namespace adapters::train
