// The PEFT adapter format (Hugging Face PEFT 0.x): a folder with adapter_config.json (with a
// "peft_type") and adapter_model.safetensors (or adapter_model.bin), tensors keyed
// "base_model.model.<module path>.lora_A.weight". Read into this library's methods: every field
// that changes the math is honoured or refused with a named error, never ignored. Written from
// them (save_peft_adapter): what PEFT cannot express is refused by name, never approximated.
#pragma once

#include <filesystem>
#include <string>

#include "adapters/core/json.h"
#include "adapters/methods/adapter_config.h"
#include "adapters/model.h"

namespace adapters::formats {

namespace fs = std::filesystem;

// Whether `dir` holds a PEFT adapter: its adapter_config.json names a peft_type.
bool is_peft_folder(const fs::path& dir);

// The adapter config (this library's method and options) of a PEFT adapter_config.json; `source`
// names the file in errors. Throws NotSupported for a peft_type or field we cannot honour yet.
methods::AdapterConfig from_peft_config(const json& peft, const std::string& source);

// PEFT's tensor key -> this model's key of adapter `name` ("base_model.model.model.layers.0.
// self_attn.q_proj.lora_A.weight" -> "model.layers.0.self_attn.q_proj.loras.<name>.lora_A").
std::string from_peft_key(const std::string& key, const std::string& base_prefix, const std::string& name);

// Loads the PEFT folder into `model` as adapter `name` (nothing is added when it fails).
void load_peft_adapter(AdapterModelImpl& model, const fs::path& dir, const std::string& name,
                       WeightsPreference weights = WeightsPreference::Safetensors);

// This model's key of a LoRA-family parameter of adapter `name` -> PEFT's key (the inverse of
// from_peft_key): "model.layers.0.self_attn.q_proj.loras.<name>.lora_A" ->
// "base_model.model.<hf_prefix>.layers.0.self_attn.q_proj.lora_A.weight", where `base_prefix` is
// the architecture's prefix of our keys and `hf_prefix` the one of the HF class the adapter is
// written for (formats::hf_base_prefix; "" for a bare base model). lora_B is (IA)^3's "ia3_l"
// when `ia3`.
std::string to_peft_key(const std::string& key, const std::string& base_prefix, const std::string& hf_prefix,
                        const std::string& name, bool ia3 = false);

// Writes adapter `name` as a PEFT folder: adapter_config.json and adapter_model.safetensors, all or
// nothing (formats/folder.h), so that load_peft_adapter (and PEFT) give the same outputs.
//   LoRA / rsLoRA / DoRA / (IA)^3 / VeRA: target_modules, layers_to_transform, exclude_modules as
//     the adapter has them, or, for an adapter placed AdapterHub-style (attn_matrices, ...),
//     derived from the layers it sits on (HF module names, else full module paths); r and
//     lora_alpha, with rank_pattern / alpha_pattern where modules differ. A LoRA on some slices
//     of a fused layer (GPT-2's c_attn with q and v) becomes a LoRA of rank n*r on the whole layer
//     with zero rows elsewhere (same outputs); an (IA)^3 there gets ones on the other rows; an
//     (IA)^3 scale other than 1 is folded into its vector. fan_in_fan_out is true on Conv1D layers.
//     VeRA's projections are saved (base_model.vera_A / vera_B, save_projection true).
//   prefix tuning (placement "past"): the flat table as prompt_embeddings, num_attention_heads and
//     token_dim of the model's key/value heads.
//   prompt tuning (combine "input"): prompt_embeddings with num_transformer_submodules 1 (PEFT then
//     joins the prompt to the encoder's input only, as this library does).
// task_type is null for the LoRA family and CAUSAL_LM / SEQ_2_SEQ_LM / FEATURE_EXTRACTION by the
// kind of model for prompt learning; base_model_name_or_path is null when empty.
// Throws NotSupported, naming the adapter and why, for what PEFT cannot express: bottleneck
// adapters, Compacter, ReFT, unions, prefix tuning with placement "attention", prompt tuning with
// combine "prefix" / "prefix_after_bos", gated LoRA-family adapters (use_gating). An adapter_model.bin
// of an earlier save is removed; a folder holding an AdapterHub adapter is refused.
void save_peft_adapter(const AdapterModelImpl& model, const std::string& name, const fs::path& dir,
                       const std::string& base_model_name_or_path = "");

}  // namespace adapters::formats
