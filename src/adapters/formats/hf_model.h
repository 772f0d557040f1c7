// Writing a model as an HF model folder (config.json + model.safetensors) that HF's from_pretrained
// and load_pretrained read: the base model's weights under the keys of the HF class its config
// names (with or without the base-model prefix, as that class has it), the static head of that
// class, tied weights left out as HF leaves them out. Merged LoRA-family adapters are part of the
// weights written; an adapter that is attached but not merged is refused, because an HF folder
// cannot hold it and writing the bare base weights would lose it without a word.
#pragma once

#include <filesystem>
#include <string>

#include "adapters/io/tensors.h"
#include "adapters/model.h"

namespace adapters::formats {

namespace fs = std::filesystem;

// The attribute under which the HF class named by config.json's "architectures" holds the base
// model, i.e. the prefix of the base model's keys in that class's checkpoints: "" for a bare base
// class (BertModel, LlamaModel) and for T5's classes that keep encoder and decoder at the top
// (T5ForConditionalGeneration), else (the reference's *AdapterModel classes too) the architecture's
// base prefix ("model", "transformer", "bert").
// Without "architectures": "" for encoders, the LM class's prefix for decoders and encoder-decoders.
std::string hf_base_prefix(const AdapterModelImpl& model);

// The tensors save_pretrained writes, by HF key: every base-model parameter (merged adapters
// included, adapter parameters excluded) and, when the config's class has a static head and the
// model has the head `head` of that type, its weights under the class's names (a decoder tied to
// the input embeddings is left out, as HF does). Throws adapters::Error naming every adapter that
// is attached but not merged, and when `head` is not the config class's head type.
io::TensorMap hf_state_dict(const AdapterModelImpl& model, const std::string& head = "default");

// Writes config.json (the config as loaded, ModelConfig::raw) and model.safetensors to `dir`, all
// or nothing (formats/folder.h): a failure leaves no half-written folder or file, and a file that
// is a symbolic link is replaced, never written through. Other files in `dir` are left alone.
void save_pretrained(const AdapterModelImpl& model, const fs::path& dir, const std::string& head = "default");

}  // namespace adapters::formats
