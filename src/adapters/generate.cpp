// The model side of generation: setup checks, the step model over the cache, Parallel replication.
#include "adapters/generate.h"

#include <torch/torch.h>

#include "adapters/core/error.h"
#include "adapters/core/json.h"
#include "adapters/io/tensors.h"
#include "adapters/methods/prefix_tuning.h"
#include "adapters/per_row.h"

namespace adapters {

using composition::BlockType;
using generation::GenerationConfig;
using torch::Tensor;

namespace {

// Token-id keys a model's config.json gives generation (HF's GenerationConfig.from_model_config).
const char* const kTokenKeys[] = {"bos_token_id",          "eos_token_id",        "pad_token_id",
                                  "decoder_start_token_id", "forced_bos_token_id", "forced_eos_token_id"};

void check_setup_can_generate(const composition::Block& b, const std::string& setup) {
  ADAPTERS_CHECK(b.type != BlockType::Split && b.type != BlockType::BatchSplit, "generate: the adapter setup ", setup,
                 " contains ", b.type == BlockType::Split ? "Split (it splits the sequence, which grows per step)"
                                                           : "BatchSplit (beams and returned sequences reorder the rows)",
                 "; generate with Stack, Fuse, Parallel or Average");
  for (const auto& c : b.children) check_setup_can_generate(c, setup);
}

// Which heads produce the logits: the active head setup, one LM head or a Parallel of them (one per
// branch of the adapter setup's Parallel).
void check_heads_can_generate(const AdapterModelImpl& model, std::int64_t channels) {
  const auto& heads = model.active_head();
  const char* wanted = model.arch().kind == models::ArchKind::EncoderDecoder ? "seq2seq_lm" : "causal_lm";
  ADAPTERS_CHECK(heads.has_value(), "generate: the model has no active head; add or load a ", wanted,
                 " head (add_head(name, \"", wanted, "\")) and activate it");
  std::vector<std::string> names = heads->is_adapter() ? std::vector<std::string>{heads->name} : heads->flatten();
  ADAPTERS_CHECK(heads->is_adapter() || heads->type == BlockType::Parallel, "generate: head setup ", heads->to_string(),
                 " cannot generate (expected one LM head, or a Parallel of them)");
  ADAPTERS_CHECK(static_cast<std::int64_t>(names.size()) == channels, "generate: ", names.size(),
                 " active heads for an adapter setup with ", channels, " Parallel branch(es); give one LM head per branch");
  for (const auto& name : names) {
    const std::string type = model.head(name).type();
    ADAPTERS_CHECK(type == "causal_lm" || type == "seq2seq_lm", "generate: head '", name, "' is a ", type,
                   " head; generation needs a language-model head (", wanted, ")");
  }
}

std::int64_t config_token(const models::ModelConfig& c, const char* key) {
  return c.raw.contains(key) && c.raw[key].is_number_integer() ? c.raw[key].get<std::int64_t>() : -1;
}

}  // namespace

namespace {

// Prompt tuning joined after the embeddings (AdapterHub's combine) has no place in a cached step.
[[noreturn]] void refuse_prompt_after_embeddings(const AdapterModelImpl& model, const std::string& name) {
  throw NotSupported(str("generate: adapter '", name, "' is a prompt-tuning adapter joined after the embeddings ",
                         "(combine \"", model.adapter_config(name).values.value("combine", ""), "\"); generating ",
                         "with it is not supported"),
                     "PEFT's placement (combine \"input\") generates");
}

}  // namespace

std::int64_t input_prompt_length(const AdapterModelImpl& model, const Block* setup) {
  return soft_tokens(model, setup, 0).prompt;
}

ModelStepper::ModelStepper(AdapterModelImpl& model, std::int64_t channels, bool use_cache, std::int64_t max_length)
    : model_(model), channels_(channels), use_cache_(use_cache),
      encoder_decoder_(model.arch().kind == models::ArchKind::EncoderDecoder),
      positions_from_mask_(model.arch().generation_positions_from_mask), max_length_(max_length) {
  set_soft_tokens(soft_tokens(model, model.active_setup() ? &*model.active_setup() : nullptr, 0));
}

void ModelStepper::set_soft_tokens(const SoftTokens& soft) {
  past_prefix_ = soft.past;
  input_prompt_ = soft.prompt;
  prefix_ = past_prefix_ + (encoder_decoder_ ? 0 : input_prompt_);  // the encoder holds a seq2seq model's prompt
  cache_.reserve(prefix_ + max_length_);  // one allocation per layer: steps copy only their new tokens
}

SoftTokens ModelStepper::step_soft_tokens(std::int64_t rows) const {
  if (!row_adapters_.empty()) return soft_tokens(model_, &row_setup_, rows);
  return soft_tokens(model_, model_.active_setup() ? &*model_.active_setup() : nullptr, rows);
}

void ModelStepper::encode(const Tensor& input_ids, const Tensor& attention_mask, std::int64_t decoder_start) {
  models::ModelInputs in;
  in.input_ids = input_ids;
  in.attention_mask = attention_mask;
  in.decoder_input_ids = torch::full({input_ids.size(0), 1}, decoder_start, input_ids.options());
  ForwardOptions options = step_options();
  options.skip_heads = true;
  const ModelOutput out = model_.forward(in, options);
  encoder_states_ = out.encoder_last_hidden_state;
  Tensor mask = attention_mask;
  if (mask.defined() && input_prompt_ > 0) {  // the encoder's states hold each row's soft prompt
    mask = step_soft_tokens(mask.size(0)).join_prompt_mask(mask, mask.size(0), mask.size(1), mask.device());
  }
  encoder_mask_ = mask.defined() ? mask.repeat({channels_, 1}) : Tensor();
}

Tensor ModelStepper::next_logits(const Tensor& sequences, const Tensor& attention_mask) {
  // Tokens of `sequences` in the cache (a PEFT prefix sits in front of them).
  const std::int64_t seen = use_cache_ ? std::max<std::int64_t>(0, cache_.length() - prefix_) : 0;
  models::ModelInputs in;
  if (encoder_decoder_) {
    in.encoder_hidden_states = encoder_states_;
    in.attention_mask = encoder_mask_;
    in.decoder_input_ids = sequences.slice(1, seen);
  } else {
    in.input_ids = sequences.slice(1, seen);
    // PEFT's prepare_inputs_for_generation: the prefix's positions are attended and counted (a
    // row's filler, when its prefix or prompt is shorter than another row's, neither).
    if (prefix_ > 0 && attention_mask.defined() && !prefix_mask_.defined()) {
      const SoftTokens soft = step_soft_tokens(attention_mask.size(0));
      const auto device = attention_mask.device();
      prefix_mask_ = (1 - torch::cat({soft.past_filler(device), soft.prompt_filler(device)}, 1)).to(attention_mask.scalar_type());
    }
    const Tensor mask = prefix_ > 0 && attention_mask.defined() ? torch::cat({prefix_mask_, attention_mask}, 1) : attention_mask;
    in.attention_mask = mask;
    if (positions_from_mask_ && mask.defined()) {
      // HF's prepare_inputs_for_generation: positions count the real tokens of each row.
      // The first step's inputs hold a PEFT prompt (not yet in the cache) with the tokens.
      const std::int64_t first = seen == 0 ? past_prefix_ : prefix_ + seen;
      Tensor positions = mask.cumsum(-1) - 1;
      in.position_ids = positions.masked_fill(mask.eq(0), 1).slice(1, first);
    }
  }
  in.cache = use_cache_ ? &cache_ : nullptr;
  ForwardOptions options = step_options();
  options.inputs_replicated_for_parallel = channels_ > 1;
  const ModelOutput out = model_.forward(in, options);
  Tensor logits;
  if (out.head_outputs.empty()) {
    logits = out.head.at("logits");
  } else {
    std::vector<Tensor> parts;
    for (const auto& h : out.head_outputs) parts.push_back(h.at("logits"));
    logits = torch::cat(parts, 0);
  }
  return logits.select(1, logits.size(1) - 1).to(torch::kFloat32);  // (N,V)
}

void ModelStepper::select_rows(const Tensor& rows) {
  const Tensor index = rows.to(torch::kLong);
  auto take = [&](Tensor& t) {
    if (t.defined()) t = t.index_select(0, index.to(t.device()));
  };
  take(encoder_states_);
  take(encoder_mask_);
  take(prefix_mask_);
  cache_.select_rows(index);
  if (!row_adapters_.empty()) {
    std::vector<std::string> names;
    const Tensor cpu = index.cpu();
    for (std::int64_t i = 0; i < cpu.size(0); ++i) names.push_back(row_adapters_.at(static_cast<std::size_t>(cpu[i].item<std::int64_t>())));
    set_row_adapters(std::move(names));
  }
}

void ModelStepper::set_row_adapters(std::vector<std::string> adapter_per_row) {
  RowGroups groups = group_rows(adapter_per_row);
  // Beams and returned sequences stay within their prompt's rows, so grouped rows stay grouped.
  ADAPTERS_CHECK(groups.identity, "generate: decoding rows lost their grouping by adapter (internal error)");
  row_adapters_ = std::move(adapter_per_row);
  row_setup_ = std::move(groups.setup);
  set_soft_tokens(soft_tokens(model_, &row_setup_, static_cast<std::int64_t>(row_adapters_.size())));
}

ForwardOptions ModelStepper::step_options() {
  ForwardOptions options;
  if (row_adapters_.empty()) return options;
  options.setup = &row_setup_;
  options.rows_independent = true;
  return options;
}

GenerationConfig generation_defaults(const models::ModelConfig& config) {
  json tokens = json::object();
  for (const char* key : kTokenKeys) {
    if (config.raw.contains(key) && !config.raw[key].is_null()) tokens[key] = config.raw[key];
  }
  return generation::parse_generation_config(tokens, "config.json");
}

GenerationConfig load_generation_config(const fs::path& model_dir, const models::ModelConfig& config) {
  GenerationConfig c = generation_defaults(config);
  const fs::path path = model_dir / "generation_config.json";
  if (!fs::exists(path)) return c;
  return generation::parse_generation_config(parse_json_file_text(io::read_text_file(path), path.string()),
                                             path.string(), c);
}

namespace {

// Rows of a per-row generation run grouped by adapter: the caller's rows reordered, the hooks and
// outputs mapped back. Decoding row r of k per prompt belongs to prompt r / k.
struct GroupedPrompts {
  RowGroups groups;
  std::vector<std::string> names;  // per grouped prompt

  // Decoding rows (N = B*k) in the caller's order -> their grouped rows.
  Tensor grouped_rows(std::int64_t n) const {
    const std::int64_t B = groups.order.size(0), k = n / B;
    return (groups.inverse.unsqueeze(1) * k + torch::arange(k).unsqueeze(0)).reshape({-1});
  }
  std::int64_t caller_row(std::int64_t grouped, std::int64_t n) const {
    const std::int64_t k = n / groups.order.size(0);
    return groups.order[grouped / k].item<std::int64_t>() * k + grouped % k;
  }
  // `k` decoding rows per prompt (greedy search and sampling, the modes that call the hooks).
  generation::DecodeHooks wrap(const generation::DecodeHooks& hooks, std::int64_t k) const {
    generation::DecodeHooks out;
    if (hooks.on_tokens) {
      out.on_tokens = [this, hooks](const Tensor& next) {
        hooks.on_tokens(next.index_select(0, grouped_rows(next.size(0)).to(next.device())));
      };
    }
    if (hooks.stop) {
      out.stop = [this, hooks, k](std::int64_t row, const Tensor& seq) {
        return hooks.stop(caller_row(row, k * groups.order.size(0)), seq);
      };
    }
    return out;
  }
  void restore(generation::GenerateOutput& out) const {
    auto back = [&](Tensor& t, std::int64_t dim) {
      if (t.defined()) t = t.index_select(dim, grouped_rows(t.size(dim)).to(t.device()));
    };
    back(out.sequences, 0);
    back(out.scores, 1);
    back(out.sequences_scores, 0);
  }
};

}  // namespace

generation::GenerateOutput generate(AdapterModelImpl& model, const Tensor& input_ids, const Tensor& attention_mask,
                                    const GenerationConfig& config, const generation::DecodeHooks& hooks,
                                    const std::vector<std::string>& adapter_per_row) {
  const auto& arch = model.arch();
  const models::ModelConfig& mc = model.config();
  ADAPTERS_CHECK(arch.kind != models::ArchKind::Encoder, "generate: ", mc.model_type,
                 " is an encoder; generation needs a decoder-only or encoder-decoder model");
  ADAPTERS_CHECK(input_ids.defined() && input_ids.dim() == 2 && input_ids.size(0) > 0 && input_ids.size(1) > 0,
                 "generate: input_ids must be a non-empty (B,T) tensor");
  if (attention_mask.defined()) {
    ADAPTERS_CHECK(attention_mask.sizes() == input_ids.sizes(), "generate: attention_mask must have the shape of input_ids ",
                   input_ids.sizes(), ", found ", attention_mask.sizes());
  }
  generation::validate(config, mc.vocab_size);
  std::int64_t channels = 1;
  std::optional<GroupedPrompts> grouped;
  if (!adapter_per_row.empty()) {
    check_adapter_per_row(model, adapter_per_row, input_ids.size(0));
    for (const auto& name : adapter_per_row) {
      if (name == kNoAdapter) continue;
      const methods::AdapterConfig& config = model.adapter_config(name);
      if (config.method == "prompt_tuning" && !is_input_prompt(config)) refuse_prompt_after_embeddings(model, name);
    }
    grouped.emplace();
    grouped->groups = group_rows(adapter_per_row);
    for (std::int64_t i = 0; i < input_ids.size(0); ++i) {
      grouped->names.push_back(adapter_per_row.at(static_cast<std::size_t>(grouped->groups.order[i].item<std::int64_t>())));
    }
  } else if (const auto& setup = model.active_setup()) {
    check_setup_can_generate(*setup, setup->to_string());
    for (const auto& name : setup->flatten()) {
      if (model.has_adapter(name) && model.adapter_config(name).method == "prompt_tuning" &&
          input_prompt_length(model, &*setup) == 0) {
        refuse_prompt_after_embeddings(model, name);
      }
    }
    channels = composition::parallel_channels(*setup);
  }
  check_heads_can_generate(model, channels);

  const bool encoder_decoder = arch.kind == models::ArchKind::EncoderDecoder;
  const std::int64_t prompt = encoder_decoder ? 1 : input_ids.size(1);
  const std::int64_t max_length = generation::resolve_max_length(config, prompt);
  const std::int64_t positions = mc.max_position_embeddings;
  const bool learned_positions = mc.model_type != "t5" && mc.model_type != "mt5";
  if (learned_positions) {
    ADAPTERS_CHECK(!encoder_decoder || input_ids.size(1) <= positions, "generate: the source has ", input_ids.size(1),
                   " tokens, the model has ", positions, " positions");
    ADAPTERS_CHECK(max_length <= positions, "generate: ", encoder_decoder ? "" : "the prompt and ", "up to ",
                   max_length, " tokens do not fit the model's ", positions,
                   " positions (shorten the prompt or lower max_new_tokens)");
  }

  // Generation runs in eval mode (no dropout); the model's mode is restored afterwards.
  struct EvalMode {
    AdapterModelImpl& m;
    bool was_training;
    explicit EvalMode(AdapterModelImpl& model) : m(model), was_training(model.is_training()) { m.eval(); }
    ~EvalMode() { m.train(was_training); }
  } eval_mode(model);
  torch::NoGradGuard no_grad;
  const torch::Device device = model.parameters().front().device();
  Tensor ids = input_ids.to(device, torch::kLong);
  Tensor mask = attention_mask.defined() ? attention_mask.to(device, torch::kLong) : torch::ones_like(ids);
  ModelStepper stepper(model, channels, config.use_cache, max_length);
  if (grouped) {
    ids = ids.index_select(0, grouped->groups.order.to(device));
    mask = mask.index_select(0, grouped->groups.order.to(device));
    stepper.set_row_adapters(grouped->names);
    if (grouped->groups.identity) grouped.reset();  // nothing to map back
  }
  const generation::DecodeHooks step_hooks = grouped ? grouped->wrap(hooks, config.num_return_sequences) : hooks;
  auto finish = [&](generation::GenerateOutput out) {
    if (grouped) grouped->restore(out);
    return out;
  };
  if (!encoder_decoder) {
    return finish(generation::decode(stepper, ids.repeat({channels, 1}), mask.repeat({channels, 1}), config, step_hooks));
  }

  std::int64_t start = config.decoder_start_token_id.value_or(config_token(mc, "decoder_start_token_id"));
  if (start < 0 && config.bos_token_id) start = *config.bos_token_id;
  ADAPTERS_CHECK(start >= 0 && start < mc.vocab_size, "generate: ", mc.model_type,
                 " needs decoder_start_token_id (in generation_config.json, config.json or the call), found none");
  stepper.encode(ids, mask, start);
  const Tensor decoder_ids = torch::full({ids.size(0) * channels, 1}, start, ids.options());
  return finish(generation::decode(stepper, decoder_ids, Tensor(), config, step_hooks));
}

}  // namespace adapters
