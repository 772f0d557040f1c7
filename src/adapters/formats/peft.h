// The PEFT adapter format (Hugging Face PEFT 0.x): a folder with adapter_config.json (with a
// "peft_type") and adapter_model.safetensors (or adapter_model.bin), tensors keyed
// "base_model.model.<module path>.lora_A.weight". Read into this library's methods: every field
// that changes the math is honoured or refused with a named error, never ignored.
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

}  // namespace adapters::formats
