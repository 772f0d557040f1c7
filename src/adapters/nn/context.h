// ForwardContext: everything a forward pass needs to know about adapters, passed explicitly down
// forward() (no global or thread-local state, so two threads can run two setups on one model).
#pragma once

#include <torch/types.h>

#include <functional>
#include <map>
#include <string>
#include <vector>

#include "adapters/composition/setup.h"

namespace adapters::nn {

// A normalisation applied at a residual site (the sublayer's LayerNorm); empty for none.
using Norm = std::function<torch::Tensor(const torch::Tensor&)>;

// Scores by adapter (or fusion) name -> layer -> location.
using ScoreCache = std::map<std::string, std::map<std::int64_t, std::map<std::string, torch::Tensor>>>;

// Key and value states of a prefix at one attention layer: (B,H,P,D) each.
struct PrefixKV {
  torch::Tensor key;
  torch::Tensor value;
};

struct ForwardContext {
  // The active setup, normalised (a single adapter is Stack(a)); null: the plain model.
  const composition::Block* setup = nullptr;

  // Prefix states computed once per forward by the model-level prefix pool:
  // adapter -> location ("self_prefix", ...) -> one entry per layer.
  std::map<std::string, std::map<std::string, std::vector<PrefixKV>>> prefix_states;

  // Parallel: the batch of the model's input, and whether a site has replicated it already.
  std::int64_t input_batch_size = 0;
  bool adapters_parallelized = false;
  // The model's pad token: the reference pads shorter prefixes of Parallel members with it.
  std::int64_t pad_token_id = 0;
  // One adapter per row (forward_per_row): the setup's BatchSplit members are row groups that each
  // run exactly as if alone. Residual sites apply each member's own pre- and post-processing (a
  // member without an adapter here: the plain residual), prefixes of different lengths are padded
  // and masked out, model-level hooks (prompts, ReFT) act per member. Without it BatchSplit follows
  // the reference (its first adapter's pre-processing and last adapter's post-processing for all).
  bool rows_independent = false;

  bool output_gating_scores = false;
  bool output_fusion_attentions = false;
  ScoreCache gating_scores;
  ScoreCache fusion_attentions;
};

}  // namespace adapters::nn
