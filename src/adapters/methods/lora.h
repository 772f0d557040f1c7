// The LoRA family on the adapted linear layers (hook 2): LoRA, (IA)^3, VeRA and DoRA, all
// configured by the reference's LoRAConfig (architecture "lora") plus a few extensions.
//
// Config (the keys of adapter-transformers 3.2.1, written exactly as it writes them):
//   selfattn_lora (true)       adapt the attention projections named in attn_matrices
//   attn_matrices (["q","v"])  of "q", "k", "v" (and "o", the attention output projection: an
//                              extension the reference does not have)
//   intermediate_lora (false)  adapt the feed-forward input projection
//   output_lora (false)        adapt the feed-forward output projection
//   r (8), alpha (8)           rank and scale alpha / r
//   dropout (0.0)              dropout on the LoRA input (not used by (IA)^3)
//   composition_mode ("add")   "add": y += scale * dropout(x) A^T B^T (LoRA);
//                              "scale": y *= scale * lora_B, bias included ((IA)^3; needs r = 1)
//   init_weights ("lora")      "lora" (A Kaiming-uniform, B zero), "bert" (both N(0, 0.02)),
//                              "ia3" (both ones), "vera" (selects VeRA, below)
//   use_gating (false)         a gate Linear(in, 1) per layer; mean over the sequence of its
//                              sigmoid replaces the scale (UniPELT); gated adapters cannot merge
// Extensions, written only when they differ from these defaults:
//   leave_out ([])             layers without the adapter (the newer reference has it)
//   use_rslora (false)         scale alpha / sqrt(r) instead of alpha / r (PEFT's name)
//   use_dora (false)           DoRA (PEFT's name): y = m / ||W + s B A||_row * (x (W + s B A)^T) + b,
//                              with the trainable magnitude "lora_magnitude_vector" (out), set to
//                              the row norms at creation (so a zero B leaves the model unchanged)
//   init_weights "vera"        VeRA: frozen random A (r, max in) and B (max out, r) shared by all
//                              layers of the adapter (a model-level buffer generated from
//                              projection_prng_key, as PEFT does), and per layer trainable vectors
//                              "vera_lambda_d" (r) and "vera_lambda_b" (out):
//                              y += lambda_b * ((lambda_d * (x A^T)) B^T); no alpha scale (as PEFT)
//   vera_d (0.1), vera_b (0.0) VeRA's initial lambda_d and lambda_b (the newer reference's names)
//   projection_prng_key (0)    VeRA's seed for A and B (PEFT's name)
//   target_modules (null)      PEFT's placement by module path, replacing selfattn_lora,
//                              intermediate_lora, output_lora, attn_matrices and leave_out: a list
//                              of names (a module matches when its path is the name or ends in
//                              "." + name) or one regex (matching the whole path); paths are tried
//                              under the base model and with its prefix ("model.layers.0.mlp.up_proj").
//                              A targeted layer is adapted as a whole (a fused c_attn too: one A, one B)
//   exclude_modules (null)     the same forms: matching modules are left out
//   layers_to_transform ([])   with a list of target names: only the modules whose path's last
//                              ".<name>.<i>." index is listed (PEFT's rule)
//   rank_pattern, alpha_pattern ({})  {pattern: r / alpha} for the modules whose path ends in
//                              the pattern (a regex; "^..." matches from the start), as PEFT
//   feedforward_modules (null) (IA)^3 with target_modules: the targeted modules whose path ends in
//                              one of these names (or matches this regex) scale their input
//                              instead of their output, as PEFT's IA3: y = W (l * x) + b, with
//                              lora_B of shape (1, in)
// Presets: "lora", "ia3" (k, v and intermediate, scale mode, r = 1, ones), "vera" (r = 256, as
// PEFT), "dora" (lora with use_dora).
//
// Parameter keys follow the reference: "<linear>.loras.<name>.lora_A" (r, in), ".lora_B" (out, r)
// (no ".weight" suffix), ".gate.weight" / ".gate.bias", and for the extensions
// ".lora_magnitude_vector", ".vera_lambda_d", ".vera_lambda_b". On a fused projection (GPT-2's
// c_attn) LoRA and (IA)^3 keep the reference's MergedLinear layout: lora_A (r * n, in) and
// lora_B (n * slice, r) for the n chosen slices, (IA)^3's lora_B (n * slice, 1).
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "adapters/core/json.h"
#include "adapters/io/tensors.h"
#include "adapters/methods/registry.h"

namespace adapters {
class AdapterModelImpl;
}

namespace adapters::methods {

struct LoRAConfig {
  bool selfattn_lora = true;
  bool intermediate_lora = false;
  bool output_lora = false;
  std::vector<std::int64_t> leave_out;
  std::int64_t r = 8;
  json alpha = 8;  // a positive number, kept as given (the reference writes an int)
  double dropout = 0.0;
  std::vector<std::string> attn_matrices = {"q", "v"};
  std::string composition_mode = "add";
  std::string init_weights = "lora";
  bool use_gating = false;
  bool use_rslora = false;
  bool use_dora = false;
  double vera_d = 0.1;
  double vera_b = 0.0;
  std::int64_t projection_prng_key = 0;
  json target_modules;  // null: placement by role
  json exclude_modules;
  std::vector<std::int64_t> layers_to_transform;
  json rank_pattern = json::object();
  json alpha_pattern = json::object();
  json feedforward_modules;

  static LoRAConfig from_json(const json& options, const std::string& source);
  json to_json() const;

  bool is_ia3() const { return composition_mode == "scale"; }
  bool is_vera() const { return init_weights == "vera"; }
  bool is_dora() const { return use_dora; }
  // "lora", "ia3", "vera" or "dora".
  std::string variant() const;
  // alpha / r (alpha / sqrt(r) with use_rslora); 1 for VeRA.
  double scaling() const;
  // Whether the adapter adapts the output slice of this role at this layer (placement by role).
  bool places_at(const std::string& role, std::int64_t layer) const;
  bool targets_modules() const { return !target_modules.is_null(); }
  // With target_modules: whether the module known by these paths (under the base model, with its
  // prefix) is adapted, and its config (r and alpha from rank_pattern / alpha_pattern).
  bool targets(const std::vector<std::string>& paths) const;
  LoRAConfig for_module(const std::vector<std::string>& paths) const;
  // (IA)^3 with target_modules: whether this module scales its input (feedforward_modules).
  bool scales_input(const std::vector<std::string>& paths) const;
};

MethodSpec lora_method();

// ---- averaging (the LoRA-family part of AdapterModel::average_adapter) -----------------------
//
// The tensors of a new adapter `new_name` combining the LoRA-family adapters `names` with
// `weights` (used as given: normalising them is the caller's business), keyed as the new
// adapter's parameters. The new adapter has the config of averaged_lora_config(first config).
// Strategies, as the newer reference's LoRALayer.average_adapter:
//   "linear"                     every parameter: sum_i w_i * p_i (A and B averaged separately)
//   "lora_linear_only_negate_b"  lora_B: sum_i w_i * B_i, lora_A: sum_i |w_i| * A_i (Zhang et al.
//                                2023); only for adapters whose parameters are lora_A / lora_B
//   "lora_delta_w_svd"           per layer dW = sum_i w_i * s_i * B_i A_i, then a rank-svd_rank
//                                SVD dW = U S V^T gives A = V^T, B = U S / s_new, where s_i and
//                                s_new are the inputs' and the new adapter's scales. (The
//                                reference ignores the scales, which changes dW by r / svd_rank
//                                when the rank changes; with s folded in, dW is kept.) Plain
//                                LoRA only (no (IA)^3, VeRA, DoRA, gating, fused layers).
// Errors name the adapter, the strategy and what does not fit (different method or placement).
io::TensorMap average_lora_weights(const AdapterModelImpl& model, const std::string& new_name,
                                   const std::vector<std::string>& names, const std::vector<double>& weights,
                                   const std::string& combine_strategy,
                                   std::optional<std::int64_t> svd_rank = std::nullopt);

// The config of the averaged adapter: `config` (the first input's, validated) with r = svd_rank
// for "lora_delta_w_svd"; otherwise unchanged.
json averaged_lora_config(const json& config, const std::string& combine_strategy,
                          std::optional<std::int64_t> svd_rank = std::nullopt);

// The combine strategies above, for messages and for the generic entry point.
const std::vector<std::string>& lora_combine_strategies();

}  // namespace adapters::methods
