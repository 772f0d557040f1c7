// What every architecture provides: a base model (the HF *Model, e.g. BertModel) whose module tree
// mirrors HF's attribute names. The base model owns the forward skeleton
//     check inputs -> model hooks' prepare -> embed -> embedding hook -> attention mask
//       -> for each layer: layer, then the layer-output hook -> finish (final norm, pooler)
// (encoder-decoder models run it twice, encoder then decoder: models/seq2seq.h)
// and finds its hook sites (adapted linear layers, residual sites, attention sites) by walking its
// own module tree, so an architecture only builds modules and fills in embed/layer/finish. Methods
// find their places through sites(); a model knows nothing about any method.
#pragma once

#include <torch/nn/module.h>

#include <map>
#include <vector>

#include "adapters/models/config.h"
#include "adapters/nn/adapted_linear.h"
#include "adapters/nn/attention.h"
#include "adapters/nn/attention_site.h"
#include "adapters/nn/context.h"
#include "adapters/nn/mask.h"
#include "adapters/nn/model_hooks.h"
#include "adapters/nn/residual_site.h"

namespace adapters::models {

// The inputs of every architecture; each uses the ones it needs and rejects what it cannot take.
struct ModelInputs {
  torch::Tensor input_ids{};               // (B,T) int64
  torch::Tensor attention_mask{};          // (B,T) 1 = attend, 0 = padding; undefined = all ones
  torch::Tensor token_type_ids{};          // (B,T) or undefined
  torch::Tensor position_ids{};            // (B,T) or undefined (the architecture's default positions)
  torch::Tensor inputs_embeds{};           // (B,T,C) instead of input_ids
  torch::Tensor pixel_values{};            // (B,3,H,W) vision models
  torch::Tensor decoder_input_ids{};       // (B,Td) encoder-decoder models
  torch::Tensor decoder_attention_mask{};  // (B,Td)
  torch::Tensor encoder_hidden_states{};   // (B,Ts,C) precomputed encoder output
  // (B,T) 1 where a column is filler: the rows of one batch whose soft tokens (PEFT prompts and
  // prefixes, one adapter per row) differ in length are left-filled to the longest. Filler is
  // masked out and not counted in positions; undefined = none. The cache keeps it (KVCache::filler).
  torch::Tensor filler{};
  nn::KVCache* cache = nullptr;            // caller-owned key/value cache, grown by the call
};

struct BaseModelOutput {
  torch::Tensor last_hidden_state{};          // (B,T,C)
  torch::Tensor pooler_output{};              // (B,C), undefined for models without a pooler
  // (B,C) what sequence-level heads read when the architecture says (GPT-2: the last real
  // token; BART: the last EOS); undefined = the heads' default (pooler or first token).
  torch::Tensor sequence_summary{};
  // (B,T,C) what heads read instead of last_hidden_state when defined (T5 with tied embeddings:
  // the decoder output rescaled by d_model^-0.5, as the reference's T5AdapterModel does).
  torch::Tensor head_input{};
  torch::Tensor encoder_last_hidden_state{};  // encoder-decoder models
  nn::KVCache* cache = nullptr;               // the cache the call grew, when one was given
};

// Every hook site of a model, in module-tree order (which is layer order).
struct HookSites {
  std::vector<nn::ResidualSite*> residual;
  std::vector<nn::AdaptedLinearImpl*> linear;
  std::vector<std::string> linear_paths;  // each linear site's module path under the base model
  std::vector<nn::AttentionSite*> attention;
};

// What the layers of one forward pass (of one stack: the encoder's or the decoder's) share.
struct LayerArgs {
  const ModelInputs* inputs = nullptr;  // the model's inputs as given
  torch::Tensor input_ids;       // (B,T) this stack's token ids, or undefined
  torch::Tensor attention_mask;  // (B,T) 1/0 after the embedding hook (prompt tokens included), or undefined
  torch::Tensor mask;            // additive (B|1,1,Tq|1,Tk), or undefined
  torch::Tensor position_ids;    // (B,T) or undefined
  nn::KVCache* cache = nullptr;
  std::int64_t past_length = 0;  // tokens in the cache before this call
  // (B,past+T) filler columns of the cache and this call (ModelInputs::filler), already masked out
  // of attention_mask; position_shift (B,1) counts them: default positions are shifted back by it
  // (shifted_positions). Both undefined when there is no filler.
  torch::Tensor filler, position_shift;
  torch::Tensor encoder_hidden_states;  // (B,Ts,C) decoders of encoder-decoder models
  torch::Tensor encoder_mask;           // additive (B,1,1,Ts) over the encoder states, or undefined
  // Per-forward state of an architecture (relative positions, a shared bias), by name.
  std::map<std::string, torch::Tensor> extras;
};

class BaseModelImpl : public torch::nn::Module {
 public:
  explicit BaseModelImpl(ModelConfig config) : config_(std::move(config)), hooks_(*this) {}

  // Checks the inputs, lets the model hooks prepare, then run(); architectures fill in the
  // virtual steps below.
  BaseModelOutput forward(const ModelInputs& inputs, nn::ForwardContext& ctx);

  const ModelConfig& config() const { return config_; }
  // The hook sites, found from the module tree after construction.
  const HookSites& sites() const;
  // Model-level hooks (prefix pool, prompt tuning, invertible adapters, ReFT).
  nn::ModelHooks& hooks() { return hooks_; }

  // Removes the adapter from every hook site and model-level hook.
  void delete_adapter(const std::string& name);

  // The input embedding matrix (V,E) named by the architecture's table; undefined when it has none.
  torch::Tensor word_embeddings() const;
  // (B,T) -> (B,T,E): what HF's input embedding module (get_input_embeddings()) gives for these
  // ids, i.e. what a caller passing inputs_embeds must pass: the rows of word_embeddings(), scaled
  // where the architecture's embedding module scales (Gemma, BART with scale_embedding).
  virtual torch::Tensor input_embeddings(const torch::Tensor& input_ids) const;

  // Rows of the batch these inputs describe.
  virtual std::int64_t batch_size(const ModelInputs& inputs) const;

 protected:
  // Throws a clear error for inputs this architecture cannot take (default: text inputs).
  virtual void check_inputs(const ModelInputs& inputs) const;
  // One stack: embed -> embedding hook -> attention mask -> layers -> finish.
  virtual BaseModelOutput run(const ModelInputs& inputs, nn::ForwardContext& ctx);
  // Layers [begin, end) (model-global indices), each followed by the layer-output hook.
  torch::Tensor run_layers(torch::Tensor h, std::int64_t begin, std::int64_t end, LayerArgs& args,
                           nn::ForwardContext& ctx);
  // The LayerArgs of a stack over `input_ids` (undefined: inputs.inputs_embeds) with the given mask,
  // the inputs' cache and `filler` (this stack's ModelInputs::filler): the cache's and the call's
  // filler columns are masked out and counted in position_shift.
  static LayerArgs stack_args(const ModelInputs& inputs, const torch::Tensor& input_ids,
                              const torch::Tensor& attention_mask, const torch::Tensor& filler);
  // The cache keeps the stack's filler columns (LayerArgs::filler) for the calls that continue it.
  static void remember_filler(const LayerArgs& args);
  // Causal self-attention over the cache and the new tokens, with the padding of args.attention_mask.
  static torch::Tensor causal_mask(const torch::Tensor& h, const LayerArgs& args, bool add_padding_to_causal);
  // The embeddings (B,T,C); may set args.attention_mask / position_ids / extras.
  virtual torch::Tensor embed(const ModelInputs& inputs, LayerArgs& args, nn::ForwardContext& ctx) = 0;
  // The additive attention mask the layers use (default: padding only, (B,1,1,T)).
  virtual torch::Tensor attention_mask(const torch::Tensor& h, const LayerArgs& args) const;
  virtual std::int64_t num_layers() const = 0;
  virtual torch::Tensor layer(std::int64_t i, const torch::Tensor& h, LayerArgs& args, nn::ForwardContext& ctx) = 0;
  // After the last layer: final norm, pooler (default: the hidden states as they are, no pooler).
  virtual BaseModelOutput finish(const torch::Tensor& h, const LayerArgs& args, nn::ForwardContext& ctx);

  ModelConfig config_;
  nn::ModelHooks hooks_;

 private:
  mutable HookSites sites_;
  mutable bool sites_found_ = false;
};

// Walks `module`'s tree and lists every adapted linear layer, residual site and attention site.
HookSites find_hook_sites(const torch::nn::Module& module);

// Default positions (1|B,T) moved back by the filler before each row's tokens (LayerArgs::position_shift):
// every row gets the positions it has alone. Filler columns themselves (masked out) clamp to 0.
inline torch::Tensor shifted_positions(const torch::Tensor& positions, const LayerArgs& args) {
  return args.position_shift.defined() ? (positions - args.position_shift).clamp_min(0) : positions;
}

}  // namespace adapters::models
