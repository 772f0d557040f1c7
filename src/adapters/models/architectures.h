// One function per architecture, each defined in the architecture's own file: its ArchSpec row.
#pragma once

#include "adapters/models/registry.h"

namespace adapters::models {

ArchSpec bert_arch();
ArchSpec roberta_arch();
ArchSpec xlm_roberta_arch();
ArchSpec electra_arch();
ArchSpec distilbert_arch();
ArchSpec vit_arch();
ArchSpec beit_arch();
ArchSpec albert_arch();
ArchSpec deberta_arch();
ArchSpec deberta_v2_arch();
ArchSpec gpt2_arch();
ArchSpec gptj_arch();
ArchSpec bart_arch();
ArchSpec mbart_arch();
ArchSpec t5_arch();
ArchSpec mt5_arch();
// Llama, Mistral, Qwen2, Gemma: the rows of the Llama-style table (models/llama.cpp).
std::vector<ArchSpec> llama_style_archs();

}  // namespace adapters::models
