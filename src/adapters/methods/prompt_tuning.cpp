// Prompt tuning: config, the soft prompt and its initialisation, the embedding hook.
#include "adapters/methods/prompt_tuning.h"

#include <torch/torch.h>

#include "adapters/nn/composer.h"
#include "adapters/core/limits.h"

namespace adapters::methods {

using torch::Tensor;

namespace {

constexpr const char* kLayerName = "prompt_tuning";  // the layer's attribute under the base model
constexpr double kRandomUniformScale = 0.5;          // the reference's random_uniform_scale

// The model's input word embeddings, (vocab, E), as the architecture's table names them.
Tensor word_embeddings(const models::BaseModelImpl& model, const std::string& source) {
  const auto& c = model.config();
  const Tensor w = model.word_embeddings();
  if (w.defined() && w.dim() == 2 && w.size(0) == c.vocab_size && w.size(1) == c.embedding_size) return w;
  throw Error(str(source, ": prompt_init=\"from_string\" needs the model's word embeddings (", c.vocab_size, " x ",
                  c.embedding_size, "), found none"));
}

// The token ids of prompt_init_text, repeated and cut to prompt_length as the reference does.
Tensor prompt_token_ids(const PromptTuningConfig& config, std::int64_t vocab_size, const std::string& source) {
  if (config.prompt_init_text.is_string()) {
    throw NotSupported(str(source, ": prompt_init=\"from_string\" with a text needs the model's tokenizer, which ",
                           "this library does not load"),
                       "tokenize the text and pass the ids: prompt_init_text=[101, 2023, ...]");
  }
  std::vector<std::int64_t> ids;
  for (const auto& v : config.prompt_init_text) ids.push_back(v.get<std::int64_t>());
  for (auto id : ids) {
    ADAPTERS_CHECK(id >= 0 && id < vocab_size, source, ": prompt_init_text token id ", id, " is outside [0, ", vocab_size, ")");
  }
  std::vector<std::int64_t> out;
  while (static_cast<std::int64_t>(out.size()) < config.prompt_length) out.insert(out.end(), ids.begin(), ids.end());
  out.resize(static_cast<std::size_t>(config.prompt_length));
  return torch::tensor(out, torch::kLong);
}

}  // namespace

PromptTuningConfig PromptTuningConfig::from_json(const json& options, const std::string& source) {
  JsonReader r(options, source);
  r.reject_unknown({"architecture", "prompt_length", "prompt_init", "prompt_init_text", "combine"});
  if (r.has("architecture") && r.raw("architecture") != "prompt_tuning") r.fail("architecture", "\"prompt_tuning\"");
  PromptTuningConfig c;
  c.prompt_length = r.get_int("prompt_length", c.prompt_length);
  if (c.prompt_length < 1 || c.prompt_length > kMaxAdapterSize) r.fail("prompt_length", str("an integer in [1, ", kMaxAdapterSize, "]"));
  c.prompt_init = r.get_string("prompt_init", c.prompt_init);
  if (c.prompt_init != "random_uniform" && c.prompt_init != "from_string") {
    r.fail("prompt_init", "\"random_uniform\" or \"from_string\"");
  }
  if (r.has("prompt_init_text")) {
    c.prompt_init_text = r.raw("prompt_init_text");
    bool valid = c.prompt_init_text.is_string() || (c.prompt_init_text.is_array() && !c.prompt_init_text.empty());
    for (const auto& v : c.prompt_init_text.is_array() ? c.prompt_init_text : json::array()) valid = valid && v.is_number_integer();
    if (!valid) r.fail("prompt_init_text", "a text, a non-empty list of token ids, or null");
  }
  if (c.prompt_init == "from_string" && c.prompt_init_text.is_null()) {
    throw Error(source + ": prompt_init=\"from_string\" needs prompt_init_text");
  }
  c.combine = r.get_string("combine", c.combine);
  if (c.combine != "prefix" && c.combine != "prefix_after_bos" && c.combine != "input") {
    r.fail("combine", "\"prefix\", \"prefix_after_bos\" or \"input\"");
  }
  return c;
}

json PromptTuningConfig::to_json() const {
  return {{"architecture", "prompt_tuning"}, {"combine", combine},           {"prompt_init", prompt_init},
          {"prompt_init_text", prompt_init_text}, {"prompt_length", prompt_length}};
}

PromptTuningImpl::PromptTuningImpl(const PromptTuningConfig& config, const models::BaseModelImpl& model,
                                   const std::string& source)
    : after_bos_(config.combine == "prefix_after_bos"), at_input_(config.combine == "input") {
  const std::int64_t hidden = model.config().embedding_size;  // prompts join the embeddings (E wide on ALBERT, ELECTRA)
  prompt_embedding_ = register_module("prompt_embedding", torch::nn::Embedding(config.prompt_length, hidden));
  torch::NoGradGuard no_grad;
  if (config.prompt_init == "from_string") {
    const Tensor ids = prompt_token_ids(config, model.config().vocab_size, source);
    const Tensor rows = word_embeddings(model, source).index_select(0, ids.to(model.parameters().front().device()));
    prompt_embedding_->weight.copy_(rows);
  } else {
    prompt_embedding_->weight.uniform_(-kRandomUniformScale, kRandomUniformScale);
  }
}

Tensor PromptTuningImpl::forward(const Tensor& h, Tensor& attention_mask) {
  const std::int64_t B = h.size(0), P = prompt_embedding_->weight.size(0);
  Tensor prompt = prompt_embedding_->weight.unsqueeze(0).expand({B, P, h.size(2)});  // (B,P,C)
  auto join = [&](const Tensor& inserted, const Tensor& x) {
    return after_bos_ ? torch::cat({x.narrow(1, 0, 1), inserted, x.narrow(1, 1, x.size(1) - 1)}, 1)
                      : torch::cat({inserted, x}, 1);
  };
  if (attention_mask.defined()) attention_mask = join(torch::ones({B, P}, attention_mask.options()), attention_mask);
  return join(prompt, h);
}

PromptTuningLayerImpl::PromptTuningLayerImpl() : prompts_(nn::make_adapter_dict<PromptTuningImpl>()) {
  register_module("prompt_tunings", prompts_);
}

Tensor PromptTuningLayerImpl::embeddings(const Tensor& h, Tensor& attention_mask, nn::ForwardContext& ctx) {
  if (ctx.setup == nullptr || prompts_->empty()) return h;
  if (const composition::Block* groups = nn::independent_row_groups(ctx)) return per_row_groups(*groups, h, attention_mask);
  PromptTuningImpl* prompt = prompts_->find(ctx.setup->first());
  return prompt && !prompt->at_input() ? prompt->forward(h, attention_mask) : h;  // "input": joined by AdapterModel
}

// One adapter per row: each group joins its own prompt (none for a group without one); groups with
// shorter prompts are padded at the end with masked-out positions, so that every row's positions
// from its first token on are those of the row alone.
Tensor PromptTuningLayerImpl::per_row_groups(const composition::Block& groups, const Tensor& h, Tensor& attention_mask) {
  const Tensor mask = attention_mask.defined() ? attention_mask
                                               : torch::ones({h.size(0), h.size(1)}, h.options().dtype(torch::kLong));
  std::vector<Tensor> hs, masks;
  std::int64_t longest = 0;
  nn::for_each_row_group(groups, [&](const composition::Block& member, std::int64_t begin, std::int64_t end) {
    Tensor rows = h.slice(0, begin, end), rows_mask = mask.slice(0, begin, end);
    PromptTuningImpl* prompt = prompts_->find(member.first());
    if (prompt != nullptr && !prompt->at_input()) rows = prompt->forward(rows, rows_mask);
    longest = std::max(longest, rows.size(1));
    hs.push_back(rows);
    masks.push_back(rows_mask);
  });
  for (std::size_t i = 0; i < hs.size(); ++i) {
    const std::int64_t pad = longest - hs[i].size(1);
    if (pad == 0) continue;
    hs[i] = torch::cat({hs[i], torch::zeros({hs[i].size(0), pad, hs[i].size(2)}, hs[i].options())}, 1);
    masks[i] = torch::cat({masks[i], torch::zeros({masks[i].size(0), pad}, masks[i].options())}, 1);
  }
  attention_mask = torch::cat(masks, 0);
  return torch::cat(hs, 0);
}

void PromptTuningLayerImpl::delete_adapter(const std::string& name) { prompts_->erase(name); }

void PromptTuningLayerImpl::add(const std::string& name, std::shared_ptr<PromptTuningImpl> prompt) {
  prompts_->insert(name, std::move(prompt));
}

MethodSpec prompt_tuning_method() {
  MethodSpec spec;
  spec.name = "prompt_tuning";
  spec.architecture = "prompt_tuning";
  spec.presets = {{"prompt_tuning", json::object()}};
  spec.normalize = [](const json& options, const std::string& source) {
    return PromptTuningConfig::from_json(options, source).to_json();
  };
  spec.attach = [](const std::string& adapter, const json& values, models::BaseModelImpl& model) {
    const std::string source = "adapter '" + adapter + "'";
    const PromptTuningConfig config = PromptTuningConfig::from_json(values, source);
    auto layer = model.hooks().get_or_create<PromptTuningLayerImpl>(kLayerName, [] { return std::make_shared<PromptTuningLayerImpl>(); });
    ADAPTERS_CHECK(layer != nullptr, source, ": the model's '", kLayerName, "' hook is not a prompt-tuning layer");
    layer->add(adapter, std::make_shared<PromptTuningImpl>(config, model, source));
  };
  spec.key_aliases = [](const json&) { return std::vector<std::pair<std::string, std::string>>(); };
  return spec;
}

}  // namespace adapters::methods
