// `adapters generate`: text generation from the command line. Loads a model folder (and its
// tokenizer), adapters and a setup, takes the options from the folder's generation_config.json and
// the flags, prints the new text as it is produced (one prompt) or one JSON line per prompt
// (--jsonl), and a final line with tokens/s.
#include <torch/torch.h>

#include <chrono>
#include <fstream>
#include <iostream>
#include <memory>

#include "adapters/core/error.h"
#include "adapters/core/json.h"
#include "adapters/generate.h"
#include "adapters/hub/hub.h"
#include "adapters/tokenizer/tokenizer.h"
#include "commands.h"

namespace adapters::cli {
namespace {

struct GenerateArgs {
  std::string model, setup, head, prompt, jsonl;
  std::vector<std::string> adapters, stops;
  std::optional<std::int64_t> max_new_tokens, num_beams, top_k, seed, min_new_tokens, no_repeat_ngram_size;
  std::optional<double> temperature, top_p, repetition_penalty;
  bool sample = false, no_cache = false;
};

// The flags given, as generate() keyword arguments over the folder's defaults.
generation::GenerationConfig options_of(const GenerateArgs& a, generation::GenerationConfig c) {
  json j = json::object();
  if (a.max_new_tokens) j["max_new_tokens"] = *a.max_new_tokens;
  if (a.min_new_tokens) j["min_new_tokens"] = *a.min_new_tokens;
  if (a.num_beams) j["num_beams"] = *a.num_beams;
  if (a.top_k) j["top_k"] = *a.top_k;
  if (a.seed) j["seed"] = *a.seed;
  if (a.no_repeat_ngram_size) j["no_repeat_ngram_size"] = *a.no_repeat_ngram_size;
  if (a.temperature) j["temperature"] = *a.temperature;
  if (a.top_p) j["top_p"] = *a.top_p;
  if (a.repetition_penalty) j["repetition_penalty"] = *a.repetition_penalty;
  // Sampling flags imply sampling, as a user of the command line means them.
  if (a.sample || a.temperature || a.top_p || a.top_k || a.seed) j["do_sample"] = true;
  if (a.no_cache) j["use_cache"] = false;
  if (!c.max_new_tokens && !c.max_length && !a.max_new_tokens) j["max_new_tokens"] = 32;
  return generation::parse_generation_config(j, "command line", c);
}

// The LM head to generate with: the active one, else the only LM head of the model.
void choose_head(AdapterModelImpl& model, const std::string& wanted) {
  if (!wanted.empty()) return model.set_active_head(wanted);
  if (model.active_head()) return;
  std::vector<std::string> lm;
  for (const auto& name : model.head_names()) {
    const std::string type = model.head(name).type();
    if (type == "causal_lm" || type == "seq2seq_lm") lm.push_back(name);
  }
  ADAPTERS_CHECK(lm.size() == 1, "generate: ", lm.empty() ? "the model has no language-model head" : "several LM heads",
                 " (give --head NAME, or load an adapter saved with its causal_lm / seq2seq_lm head)");
  model.set_active_head(lm.front());
}

// Streams a row's new text: decodes all new tokens each step and prints what was added, holding
// back an incomplete UTF-8 character (byte-level BPE) until its last byte arrives.
class TextStream {
 public:
  explicit TextStream(const tokenizer::Tokenizer& tok) : tok_(tok) {}
  void push(std::int64_t id) {
    ids_.push_back(static_cast<uint32_t>(id));
    const std::string text = tok_.decode(ids_, true);
    if (text.size() >= 3 && text.compare(text.size() - 3, 3, "\xEF\xBF\xBD") == 0) return;  // U+FFFD: wait
    if (text.size() > printed_ && text.compare(0, printed_, printed_text_) == 0) {
      std::cout << text.substr(printed_) << std::flush;
    } else if (text != printed_text_) {
      std::cout << "\n" << text << std::flush;  // a re-segmentation changed earlier text
    }
    printed_text_ = text;
    printed_ = text.size();
  }
  std::string text() const { return tok_.decode(ids_, true); }

 private:
  const tokenizer::Tokenizer& tok_;
  std::vector<uint32_t> ids_;
  std::string printed_text_;
  std::size_t printed_ = 0;
};

std::vector<std::string> read_prompts(const std::string& path) {
  std::ifstream in(path);
  ADAPTERS_CHECK(in.good(), path, ": cannot read the prompts file");
  std::vector<std::string> prompts;
  std::string line;
  for (std::size_t n = 1; std::getline(in, line); ++n) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const json j = parse_json_file_text(line, str(path, ":", n));
    ADAPTERS_CHECK(j.is_object() && j.contains("prompt") && j["prompt"].is_string(), path, ":", n,
                   ": expected an object with a string \"prompt\", found ", line.substr(0, 80));
    prompts.push_back(j["prompt"].get<std::string>());
  }
  ADAPTERS_CHECK(!prompts.empty(), path, ": no prompts");
  return prompts;
}

void run_generate(const GenerateArgs& a) {
  ADAPTERS_CHECK(a.prompt.empty() != a.jsonl.empty(), "generate: give exactly one of --prompt and --jsonl");
  const fs::path dir = hub::resolve_model(a.model);
  AdapterModel model = load_pretrained(dir);
  const auto tok = tokenizer::Tokenizer::from_pretrained(dir);
  for (const auto& adapter : a.adapters) model->load_adapter(adapter);
  if (!a.setup.empty()) {
    model->set_active_adapters(a.setup);
  } else if (!a.adapters.empty()) {
    model->set_active_adapters(model->adapter_names().back());
  }
  choose_head(*model, a.head);
  const generation::GenerationConfig config = options_of(a, load_generation_config(dir, model->config()));

  const std::vector<std::string> prompts = a.jsonl.empty() ? std::vector<std::string>{a.prompt} : read_prompts(a.jsonl);
  const bool decoder_only = model->arch().kind == models::ArchKind::Decoder;
  const bool stream = prompts.size() == 1 && config.num_beams == 1 && config.num_return_sequences == 1;
  std::int64_t produced = 0;
  double seconds = 0.0;
  for (const auto& prompt : prompts) {
    // Decoder-only prompts carry no end-of-text marker: the model continues them.
    auto enc = tok.encode(prompt, !decoder_only);
    ADAPTERS_CHECK(!enc.ids.empty(), "generate: the prompt '", prompt.substr(0, 40), "' has no tokens");
    std::vector<std::int64_t> ids(enc.ids.begin(), enc.ids.end());
    const torch::Tensor input_ids = torch::tensor(ids, torch::kLong).unsqueeze(0);
    TextStream text(tok);
    generation::DecodeHooks hooks;
    if (stream) hooks.on_tokens = [&](const torch::Tensor& next) { text.push(next[0].item<std::int64_t>()); };
    if (!a.stops.empty()) {
      const std::int64_t from = decoder_only ? input_ids.size(1) : 1;
      hooks.stop = [&, from](std::int64_t, const torch::Tensor& row) {
        const torch::Tensor fresh = row.slice(0, from).to(torch::kCPU);
        std::vector<uint32_t> out(fresh.data_ptr<std::int64_t>(), fresh.data_ptr<std::int64_t>() + fresh.numel());
        const std::string s = tok.decode(out, true);
        for (const auto& stop : a.stops) {
          if (s.find(stop) != std::string::npos) return true;
        }
        return false;
      };
    }
    const auto start = std::chrono::steady_clock::now();
    const auto out = generate(*model, input_ids, torch::Tensor(), config, hooks);
    seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    const std::int64_t from = decoder_only ? input_ids.size(1) : 1;
    json results = json::array();
    for (std::int64_t r = 0; r < out.sequences.size(0); ++r) {
      const torch::Tensor fresh = out.sequences[r].slice(0, from).to(torch::kCPU);
      std::vector<uint32_t> new_ids(fresh.data_ptr<std::int64_t>(), fresh.data_ptr<std::int64_t>() + fresh.numel());
      produced += static_cast<std::int64_t>(new_ids.size());
      results.push_back(tok.decode(new_ids, true));
    }
    if (stream) {
      std::cout << '\n';
    } else if (!a.jsonl.empty()) {
      std::cout << json{{"prompt", prompt}, {"generated", results}}.dump() << '\n';
    } else {
      for (const auto& r : results) std::cout << r.get<std::string>() << '\n';
    }
  }
  std::cerr << str(produced, " tokens in ", seconds, " s: ", seconds > 0 ? static_cast<double>(produced) / seconds : 0.0,
                   " tokens/s") << '\n';
}

}  // namespace

void add_generate_command(CLI::App& app) {
  auto a = std::make_shared<GenerateArgs>();
  CLI::App* cmd = app.add_subcommand("generate", "Generate text with a causal-LM or seq2seq-LM model and adapters");
  cmd->add_option("--model", a->model, "HF model folder (with its tokenizer) or hub repo id")->required();
  cmd->add_option("--adapter", a->adapters, "AdapterHub folder to load (repeatable; saved heads load too)");
  cmd->add_option("--setup", a->setup, "Active adapter setup, e.g. \"Stack(a,b)\" (default: the last adapter)");
  cmd->add_option("--head", a->head, "Head (setup) to generate with (default: the model's only LM head)");
  cmd->add_option("--prompt", a->prompt, "The prompt");
  cmd->add_option("--jsonl", a->jsonl, "Prompts, one JSON object {\"prompt\": ...} per line");
  cmd->add_option("--max-new-tokens", a->max_new_tokens, "New tokens at most (default: generation_config.json, else 32)");
  cmd->add_option("--min-new-tokens", a->min_new_tokens, "New tokens before EOS may end a row");
  cmd->add_option("--num-beams", a->num_beams, "Beam search with this many beams");
  cmd->add_option("--temperature", a->temperature, "Sampling temperature (implies sampling)");
  cmd->add_option("--top-p", a->top_p, "Nucleus sampling mass in (0, 1] (implies sampling)");
  cmd->add_option("--top-k", a->top_k, "Sample among the k best tokens (implies sampling)");
  cmd->add_option("--seed", a->seed, "Seed of the sampler (implies sampling; reproducible)");
  cmd->add_option("--repetition-penalty", a->repetition_penalty, "Penalty > 1 for tokens already present");
  cmd->add_option("--no-repeat-ngram-size", a->no_repeat_ngram_size, "Never repeat an n-gram of this size");
  cmd->add_option("--stop", a->stops, "Stop a row when its text contains this string (repeatable)");
  cmd->add_flag("--sample", a->sample, "Sample instead of greedy decoding");
  cmd->add_flag("--no-cache", a->no_cache, "Recompute every step instead of using the key/value cache");
  cmd->callback([a] { run_generate(*a); });
}

}  // namespace adapters::cli
