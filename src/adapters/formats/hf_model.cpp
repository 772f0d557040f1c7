// save_pretrained: the base model (merged adapters included) and the static head of the config's
// HF class as an HF model folder, keyed as that class keys its checkpoints.
#include "adapters/formats/hf_model.h"

#include <torch/torch.h>

#include <set>

#include "adapters/core/error.h"
#include "adapters/core/log.h"
#include "adapters/formats/folder.h"
#include "adapters/formats/keys.h"
#include "adapters/models/registry.h"

namespace adapters::formats {

namespace {

constexpr const char* kConfigFile = "config.json";
constexpr const char* kWeightsFile = "model.safetensors";

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// The HF class config.json names ("architectures"[0]), or "" when it names none.
std::string hf_class(const models::ModelConfig& config) {
  const json& raw = config.raw;
  if (!raw.contains("architectures") || !raw["architectures"].is_array() || raw["architectures"].empty() ||
      !raw["architectures"][0].is_string()) {
    return "";
  }
  return raw["architectures"][0].get<std::string>();
}

// T5's HF classes keep shared / encoder / decoder at the top, except the two classification
// classes, which wrap a T5Model as "transformer".
bool t5_top_level(const std::string& model_type, const std::string& cls) {
  if (model_type != "t5" && model_type != "mt5") return false;
  return !ends_with(cls, "ForSequenceClassification") && !ends_with(cls, "ForTokenClassification");
}

// Every adapter that is attached but not folded into the weights.
std::vector<std::string> unmerged_adapters(const AdapterModelImpl& model) {
  const std::vector<std::string> merged = model.merged_adapters();
  std::vector<std::string> out;
  for (const auto& name : model.adapter_names()) {
    if (std::find(merged.begin(), merged.end(), name) == merged.end()) out.push_back(name);
  }
  return out;
}

void refuse_unmerged(const AdapterModelImpl& model) {
  const std::vector<std::string> names = unmerged_adapters(model);
  if (names.empty()) return;
  std::string list;
  for (const auto& n : names) list += (list.empty() ? "'" : ", '") + n + "' (" + model.adapter_config(n).method + ")";
  throw Error(str("save_pretrained: adapter ", list, " is attached but not merged into the weights; an HF model folder "
                  "holds base weights only, so it would be lost"),
              "merge_adapter(name) folds a LoRA-family adapter in; delete_adapter(name) drops one; save_adapter "
              "writes an adapter folder");
}

// Parameter keys of every adapter (merged ones too: their parameters are not base weights).
std::set<std::string> adapter_keys(const AdapterModelImpl& model) {
  std::set<std::string> keys;
  for (const auto& name : model.adapter_names()) {
    for (const auto& item : model.adapter_state_dict(name)) keys.insert(item.first);
  }
  return keys;
}

// The base model's parameters under HF's names.
void add_base_weights(const AdapterModelImpl& model, io::TensorMap& out) {
  const std::set<std::string> skip = adapter_keys(model);
  const std::string ours = model.arch().base_prefix + ".";
  const std::string hf = hf_base_prefix(model);
  const std::string theirs = hf.empty() ? "" : hf + ".";
  for (const auto& item : model.named_parameters()) {
    const std::string& key = item.key();
    if (key.rfind(ours, 0) != 0 || skip.count(key) || is_fusion_key(key)) continue;
    out[theirs + key.substr(ours.size())] = item.value().detach();
  }
}

// "heads.<head>.<i>.<param>" -> (i, param).
std::pair<std::size_t, std::string> head_position(const std::string& key, const std::string& head) {
  const std::string prefix = str(kHeadsPrefix, head, ".");
  const std::string rest = key.substr(prefix.size());
  const auto dot = rest.find('.');
  ADAPTERS_CHECK(key.rfind(prefix, 0) == 0 && dot != std::string::npos && dot > 0, "head '", head,
                 "': unexpected parameter key '", key, "'");
  return {static_cast<std::size_t>(std::stoul(rest.substr(0, dot))), rest.substr(dot + 1)};
}

bool is_lm(const models::StaticHeadSpec& spec) {
  return spec.head_type == "masked_lm" || spec.head_type == "causal_lm" || spec.head_type == "seq2seq_lm";
}

// The head of the config's HF class under that class's names (the inverse of the static-head
// conversion of load_pretrained). An LM decoder bias goes where HF keeps it (cls.predictions.bias,
// lm_head.bias); a decoder that is the input embeddings is left out.
void add_static_head(const AdapterModelImpl& model, const std::string& head, io::TensorMap& out) {
  const std::string cls = hf_class(model.config());
  const models::StaticHeadSpec* spec = cls.empty() ? nullptr : models::find_static_head(model.arch(), cls);
  if (spec == nullptr) return;
  const bool tied_lm = is_lm(*spec) && model.config().tie_word_embeddings;
  if (!model.has_head(head)) {
    if (!tied_lm) {
      log::warn(str("save_pretrained: config.json names ", cls, ", whose head the model does not have (no head '", head,
                    "'): HF will initialise that head randomly"));
    }
    return;
  }
  ADAPTERS_CHECK(model.head(head).type() == spec->head_type, "save_pretrained: head '", head, "' is a ",
                 model.head(head).type(), " head; config.json names ", cls, ", whose head is a ", spec->head_type, " head");
  const torch::Tensor embeddings = model.base().word_embeddings();
  const std::size_t last = spec->layers.size() - 1;
  for (const auto& [key, tensor] : model.head_state_dict(head)) {
    const auto [i, param] = head_position(key, head);
    ADAPTERS_CHECK(i < spec->layers.size() && !spec->layers[i].empty(), "save_pretrained: head '", head, "' has '", key,
                   "', which ", cls, " has no place for");
    const std::string& module = spec->layers[i];
    if (tied_lm && i == last && param == "weight" && embeddings.defined() &&
        tensor.data_ptr() == embeddings.data_ptr() && tensor.sizes() == embeddings.sizes()) {
      continue;  // HF ties it to the input embeddings
    }
    if (is_lm(*spec) && i == last && param == "bias") {
      const auto dot = module.rfind('.');
      out[(dot == std::string::npos ? module : module.substr(0, dot)) + ".bias"] = tensor.detach();
      continue;
    }
    out[module + "." + param] = tensor.detach();
  }
}

}  // namespace

std::string hf_base_prefix(const AdapterModelImpl& model) {
  const models::ArchSpec& arch = model.arch();
  const std::string cls = hf_class(model.config());
  if (cls.empty()) {
    if (arch.kind == models::ArchKind::Encoder) return "";
    return t5_top_level(model.config().model_type, "") ? "" : arch.base_prefix;
  }
  // The reference's flexible-head classes (BertAdapterModel, T5AdapterModel) hold the base model
  // under its prefix.
  if (ends_with(cls, "AdapterModel")) return arch.base_prefix;
  if (t5_top_level(model.config().model_type, cls)) return "";
  const bool bare = ends_with(cls, "Model") && !ends_with(cls, "HeadModel") && !ends_with(cls, "HeadsModel");
  return bare ? "" : arch.base_prefix;
}

io::TensorMap hf_state_dict(const AdapterModelImpl& model, const std::string& head) {
  refuse_unmerged(model);
  io::TensorMap out;
  add_base_weights(model, out);
  add_static_head(model, head, out);
  return out;
}

void save_pretrained(const AdapterModelImpl& model, const fs::path& dir, const std::string& head) {
  const io::TensorMap tensors = hf_state_dict(model, head);
  const std::string config = model.config().raw.dump(2);
  write_folder_atomically(dir, {{kConfigFile, [&](const fs::path& p) { io::write_file_atomic(p, config); }},
                                {kWeightsFile, [&](const fs::path& p) {
                                   io::write_safetensors(p, tensors, io::Metadata{{"format", "pt"}});
                                 }}});
}

}  // namespace adapters::formats
