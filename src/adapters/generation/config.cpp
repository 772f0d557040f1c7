// GenerationConfig from HF generation_config.json / `generate` kwargs, and its validation.
#include "adapters/generation/config.h"

#include <cmath>
#include <functional>
#include <map>

namespace adapters::generation {

namespace {

// How one key is read, and what null resets it to.
struct Field {
  std::function<void(const JsonReader&, const std::string&, GenerationConfig&)> set;
  std::function<void(GenerationConfig&)> reset;
};

template <typename T>
std::function<void(GenerationConfig&)> reset_to_default(T GenerationConfig::*field) {
  return [field](GenerationConfig& c) { c.*field = GenerationConfig{}.*field; };
}
Field int_field(std::int64_t GenerationConfig::*field) {
  return {[field](const JsonReader& r, const std::string& key, GenerationConfig& c) { c.*field = r.get_int(key); },
          reset_to_default(field)};
}
Field opt_int_field(std::optional<std::int64_t> GenerationConfig::*field) {
  return {[field](const JsonReader& r, const std::string& key, GenerationConfig& c) { c.*field = r.get_int(key); },
          reset_to_default(field)};
}
Field double_field(double GenerationConfig::*field) {
  return {[field](const JsonReader& r, const std::string& key, GenerationConfig& c) { c.*field = r.get_double(key); },
          reset_to_default(field)};
}
Field bool_field(bool GenerationConfig::*field) {
  return {[field](const JsonReader& r, const std::string& key, GenerationConfig& c) { c.*field = r.get_bool(key); },
          reset_to_default(field)};
}

void set_eos(const JsonReader& r, const std::string& key, GenerationConfig& c) {
  const json& v = r.raw(key);
  if (v.is_number_integer()) {
    c.eos_token_id = {r.get_int(key)};
  } else if (v.is_array()) {
    c.eos_token_id = r.get_int_list(key);
  } else {
    r.fail(key, "an integer or a list of integers");
  }
}

void set_early_stopping(const JsonReader& r, const std::string& key, GenerationConfig& c) {
  const json& v = r.raw(key);
  if (v.is_boolean()) {
    c.early_stopping = v.get<bool>() ? EarlyStopping::True : EarlyStopping::False;
  } else if (v.is_string() && v.get<std::string>() == "never") {
    c.early_stopping = EarlyStopping::Never;
  } else {
    r.fail(key, "true, false or \"never\"");
  }
}

void set_seed(const JsonReader& r, const std::string& key, GenerationConfig& c) {
  std::int64_t s = r.get_int(key);
  if (s < 0) r.fail(key, "a non-negative integer");
  c.seed = static_cast<std::uint64_t>(s);
}

// The supported keys. null resets a key to its default, except top_k: HF's top_k=None means no
// top-k filtering.
const std::map<std::string, Field>& fields() {
  static const std::map<std::string, Field> table = {
      {"max_new_tokens", opt_int_field(&GenerationConfig::max_new_tokens)},
      {"max_length", opt_int_field(&GenerationConfig::max_length)},
      {"min_length", int_field(&GenerationConfig::min_length)},
      {"min_new_tokens", opt_int_field(&GenerationConfig::min_new_tokens)},
      {"do_sample", bool_field(&GenerationConfig::do_sample)},
      {"num_beams", int_field(&GenerationConfig::num_beams)},
      {"num_return_sequences", int_field(&GenerationConfig::num_return_sequences)},
      {"length_penalty", double_field(&GenerationConfig::length_penalty)},
      {"early_stopping", {set_early_stopping, reset_to_default(&GenerationConfig::early_stopping)}},
      {"temperature", double_field(&GenerationConfig::temperature)},
      {"top_k", {int_field(&GenerationConfig::top_k).set, [](GenerationConfig& c) { c.top_k = 0; }}},
      {"top_p", double_field(&GenerationConfig::top_p)},
      {"repetition_penalty", double_field(&GenerationConfig::repetition_penalty)},
      {"no_repeat_ngram_size", int_field(&GenerationConfig::no_repeat_ngram_size)},
      {"bos_token_id", opt_int_field(&GenerationConfig::bos_token_id)},
      {"pad_token_id", opt_int_field(&GenerationConfig::pad_token_id)},
      {"decoder_start_token_id", opt_int_field(&GenerationConfig::decoder_start_token_id)},
      {"forced_bos_token_id", opt_int_field(&GenerationConfig::forced_bos_token_id)},
      {"forced_eos_token_id", opt_int_field(&GenerationConfig::forced_eos_token_id)},
      {"eos_token_id", {set_eos, reset_to_default(&GenerationConfig::eos_token_id)}},
      {"use_cache", bool_field(&GenerationConfig::use_cache)},
      {"output_scores", bool_field(&GenerationConfig::output_scores)},
      {"seed", {set_seed, reset_to_default(&GenerationConfig::seed)}},
  };
  return table;
}

// HF options this library does not implement, with the test that their value is neutral (has no effect).
struct Unsupported {
  const char* key;
  std::function<bool(const json&)> neutral;
};

bool number_is(const json& v, const std::function<bool(double)>& pred) { return v.is_number() && pred(v.get<double>()); }

const std::vector<Unsupported>& unsupported_keys() {
  static const std::vector<Unsupported> table = {
      {"num_beam_groups", [](const json& v) { return number_is(v, [](double x) { return x == 1; }); }},
      {"diversity_penalty", [](const json& v) { return number_is(v, [](double x) { return x <= 0; }); }},
      {"penalty_alpha", [](const json& v) { return number_is(v, [](double x) { return x <= 0; }); }},
      {"typical_p", [](const json& v) { return number_is(v, [](double x) { return x >= 1; }); }},
      {"epsilon_cutoff", [](const json& v) { return number_is(v, [](double x) { return x <= 0 || x >= 1; }); }},
      {"eta_cutoff", [](const json& v) { return number_is(v, [](double x) { return x <= 0 || x >= 1; }); }},
      {"encoder_repetition_penalty", [](const json& v) { return number_is(v, [](double x) { return x == 1; }); }},
      {"encoder_no_repeat_ngram_size", [](const json& v) { return number_is(v, [](double x) { return x <= 0; }); }},
      {"renormalize_logits", [](const json& v) { return v.is_boolean() && !v.get<bool>(); }},
      {"remove_invalid_values", [](const json& v) { return v.is_boolean() && !v.get<bool>(); }},
      {"bad_words_ids", [](const json&) { return false; }},
      {"force_words_ids", [](const json&) { return false; }},
      {"constraints", [](const json&) { return false; }},
      {"exponential_decay_length_penalty", [](const json&) { return false; }},
      {"suppress_tokens", [](const json&) { return false; }},
      {"begin_suppress_tokens", [](const json&) { return false; }},
      {"forced_decoder_ids", [](const json&) { return false; }},
      {"max_time", [](const json&) { return false; }},
  };
  return table;
}

void reject_unsupported(const json& j, const std::string& source) {
  for (const auto& u : unsupported_keys()) {
    auto it = j.find(u.key);
    if (it == j.end() || it->is_null() || u.neutral(*it)) continue;
    throw NotSupported(str(source, ": generation option '", u.key, "' = ", describe(*it), " is not supported"),
                       "remove it or set it to its default");
  }
}

// ---- validation ---------------------------------------------------------------------------------

[[noreturn]] void bad(const std::string& option, const std::string& expected, const std::string& found) {
  throw Error(str("generation option '", option, "' expects ", expected, ", found ", found));
}

void check_token(const std::string& option, std::int64_t id, std::int64_t vocab_size) {
  if (id < 0) bad(option, "a non-negative token id", std::to_string(id));
  if (vocab_size > 0 && id >= vocab_size)
    bad(option, str("a token id below the vocabulary size ", vocab_size), std::to_string(id));
}

void validate_lengths(const GenerationConfig& c) {
  if (c.max_new_tokens && *c.max_new_tokens <= 0) bad("max_new_tokens", "a positive integer", std::to_string(*c.max_new_tokens));
  if (c.max_length && *c.max_length <= 0) bad("max_length", "a positive integer", std::to_string(*c.max_length));
  if (c.min_length < 0) bad("min_length", "a non-negative integer", std::to_string(c.min_length));
  if (c.min_new_tokens && *c.min_new_tokens < 0)
    bad("min_new_tokens", "a non-negative integer", std::to_string(*c.min_new_tokens));
}

void validate_search(const GenerationConfig& c, std::int64_t vocab_size) {
  if (c.num_beams < 1) bad("num_beams", "an integer >= 1", std::to_string(c.num_beams));
  if (vocab_size > 0 && c.num_beams > vocab_size)
    bad("num_beams", str("at most the vocabulary size ", vocab_size), std::to_string(c.num_beams));
  if (c.num_return_sequences < 1)
    bad("num_return_sequences", "an integer >= 1", std::to_string(c.num_return_sequences));
  if (c.num_beams == 1 && !c.do_sample && c.num_return_sequences > 1)
    throw Error(str("generation option 'num_return_sequences' expects 1 for greedy search, found ",
                    c.num_return_sequences),
                "set do_sample or num_beams >= num_return_sequences");
  if (c.num_beams > 1 && !c.do_sample && c.num_return_sequences > c.num_beams)
    bad("num_return_sequences", str("at most num_beams (", c.num_beams, ") for beam search"),
        std::to_string(c.num_return_sequences));
  if (!std::isfinite(c.length_penalty)) bad("length_penalty", "a finite number", str(c.length_penalty));
}

void validate_scores(const GenerationConfig& c) {
  if (c.do_sample && !(c.temperature > 0 && std::isfinite(c.temperature)))
    bad("temperature", "a positive number when sampling", str(c.temperature));
  if (c.do_sample && !(c.top_p > 0 && c.top_p <= 1)) bad("top_p", "a number in (0, 1]", str(c.top_p));
  if (c.top_k < 0) bad("top_k", "a non-negative integer (0 = no top-k filtering)", std::to_string(c.top_k));
  if (!(c.repetition_penalty > 0 && std::isfinite(c.repetition_penalty)))
    bad("repetition_penalty", "a positive number (1 = no penalty)", str(c.repetition_penalty));
  if (c.no_repeat_ngram_size < 0)
    bad("no_repeat_ngram_size", "a non-negative integer", std::to_string(c.no_repeat_ngram_size));
}

void validate_tokens(const GenerationConfig& c, std::int64_t vocab_size) {
  for (std::int64_t id : c.eos_token_id) check_token("eos_token_id", id, vocab_size);
  if (c.forced_bos_token_id) check_token("forced_bos_token_id", *c.forced_bos_token_id, vocab_size);
  if (c.forced_eos_token_id) check_token("forced_eos_token_id", *c.forced_eos_token_id, vocab_size);
  // Written into sequences only, never used to index scores: some vocabularies place them beyond V.
  if (c.pad_token_id) check_token("pad_token_id", *c.pad_token_id, 0);
  if (c.bos_token_id) check_token("bos_token_id", *c.bos_token_id, 0);
  if (c.decoder_start_token_id) check_token("decoder_start_token_id", *c.decoder_start_token_id, 0);
}

}  // namespace

std::string to_string(EarlyStopping e) {
  switch (e) {
    case EarlyStopping::False: return "false";
    case EarlyStopping::True: return "true";
    case EarlyStopping::Never: return "never";
  }
  return "?";
}

GenerationConfig parse_generation_config(const json& j, const std::string& source, GenerationConfig base) {
  JsonReader r(j, source);
  reject_unsupported(j, source);
  for (const auto& [key, field] : fields()) {
    auto it = j.find(key);
    if (it == j.end()) continue;
    if (it->is_null()) {
      field.reset(base);
    } else {
      field.set(r, key, base);
    }
  }
  return base;
}

void validate(const GenerationConfig& c, std::int64_t vocab_size) {
  validate_lengths(c);
  validate_search(c, vocab_size);
  validate_scores(c);
  validate_tokens(c, vocab_size);
}

}  // namespace adapters::generation
