// The fixture runner: case.json -> model + adapters + setup -> outputs.safetensors, report.json.
#include "adapters/fixtures.h"

#include <torch/torch.h>

#include <chrono>
#include <regex>

#include "adapters/core/json.h"
#include "adapters/core/regex.h"
#include "adapters/formats/folder.h"
#include "adapters/generate.h"
#include "adapters/per_row.h"

namespace adapters::fixtures {

namespace {

json read_case(const fs::path& case_dir) {
  const fs::path path = case_dir / "case.json";
  return parse_json_file_text(io::read_text_file(path), path.string());
}

constexpr const char* kEjected = "ejected.";  // outputs after eject_prefix_tuning of the setup's adapters

std::string strip_ejected(const std::string& output) {
  return output.rfind(kEjected, 0) == 0 ? output.substr(std::string(kEjected).size()) : output;
}

bool wants_ejected(const json& wanted) {
  for (auto it = wanted.begin(); it != wanted.end(); ++it) {
    if (it.key() != strip_ejected(it.key())) return true;
  }
  return false;
}

constexpr const char* kMerged = "merged.";  // outputs after merge_adapter of the setup's adapters

std::string strip_merged(const std::string& output) {
  return output.rfind(kMerged, 0) == 0 ? output.substr(std::string(kMerged).size()) : output;
}

bool wants_merged(const json& wanted) {
  for (auto it = wanted.begin(); it != wanted.end(); ++it) {
    if (it.key() != strip_merged(it.key())) return true;
  }
  return false;
}

// Every output of a forward pass by the fixtures' names: last_hidden_state, pooler_output, the
// head's outputs (logits, ...), head_outputs.<i>.<key> with several heads, and loss.
io::TensorMap named_outputs(const ModelOutput& out, const std::string& prefix) {
  io::TensorMap produced = {{prefix + "last_hidden_state", out.last_hidden_state}};
  if (out.pooler_output.defined()) produced[prefix + "pooler_output"] = out.pooler_output;
  if (out.encoder_last_hidden_state.defined()) produced[prefix + "encoder_last_hidden_state"] = out.encoder_last_hidden_state;
  for (const auto& [key, t] : out.head) produced[prefix + key] = t;
  for (std::size_t i = 0; i < out.head_outputs.size(); ++i) {
    for (const auto& [key, t] : out.head_outputs[i]) produced[str(prefix, "head_outputs.", i, ".", key)] = t;
  }
  if (out.loss.defined()) produced[prefix + "loss"] = out.loss;
  return produced;
}

struct CaseInputs {
  models::ModelInputs model;
  HeadTensors extra;  // labels, word_starts, ...
};

CaseInputs read_inputs(const fs::path& case_dir) {
  io::TensorMap t = io::read_safetensors(case_dir / "inputs.safetensors").tensors;
  auto take = [&](const char* name) {
    auto it = t.find(name);
    if (it == t.end()) return torch::Tensor();
    torch::Tensor v = it->second.to(torch::kLong);
    t.erase(it);
    return v;
  };
  CaseInputs in;
  in.model = {take("input_ids"), take("attention_mask"), take("token_type_ids")};
  in.model.decoder_input_ids = take("decoder_input_ids");
  in.model.decoder_attention_mask = take("decoder_attention_mask");
  if (auto it = t.find("pixel_values"); it != t.end()) {  // vision models: float (B,C,H,W), kept as it is
    in.model.pixel_values = it->second;
    t.erase(it);
  }
  in.extra = std::move(t);
  return in;
}

// adapter_per_row (PEFT's mixed batches): the adapter of each row, in one forward.
std::vector<std::string> adapter_per_row(const JsonReader& c) {
  return c.has("adapter_per_row") ? c.get_string_list("adapter_per_row") : std::vector<std::string>();
}

io::TensorMap forward_outputs(AdapterModel& model, const CaseInputs& inputs, const std::string& prefix,
                              const std::vector<std::string>& rows = {}) {
  ForwardOptions options;
  options.head_inputs = inputs.extra;
  return named_outputs(rows.empty() ? model->forward(inputs.model, options)
                                    : forward_per_row(*model, inputs.model, rows, options),
                       prefix);
}

// model_dir is relative to the case folder; some generators wrote it relative to the fixture root
// (ROOT/models/<arch>), which is tried second.
fs::path model_dir(const fs::path& case_dir, const JsonReader& c) {
  const std::string dir = c.get_string("model_dir");
  const fs::path from_case = case_dir / dir, from_root = case_dir.parent_path().parent_path() / dir;
  if (fs::exists(from_case / "config.json") || !fs::exists(from_root / "config.json")) return from_case;
  return from_root;
}

void load_case_parts(AdapterModel& model, const fs::path& case_dir, const JsonReader& c, WeightsPreference weights) {
  for (const auto& adapter : c.raw("adapters")) {
    JsonReader a(adapter, c.source() + ": adapters[]");
    const bool with_head = a.has("with_head") && a.raw("with_head").is_boolean() && a.raw("with_head").get<bool>();
    // A PEFT adapter is active once loaded (PeftModel.from_pretrained); AdapterHub cases name their setup.
    const bool peft = a.get_string("format", "adapterhub") == "peft";
    model->load_adapter(case_dir / a.get_string("dir"), a.get_string("name"), weights, peft, with_head);
  }
  if (c.has("fusions")) {
    for (const auto& fusion : c.raw("fusions")) {
      JsonReader f(fusion, c.source() + ": fusions[]");
      model->load_adapter_fusion(case_dir / f.get_string("dir"), weights);
    }
  }
  std::vector<json> heads;
  if (c.has("heads")) heads.assign(c.raw("heads").begin(), c.raw("heads").end());
  if (c.has("head") && c.raw("head").is_object()) heads.push_back(c.raw("head"));
  for (const auto& head : heads) {
    JsonReader h(head, c.source() + ": heads[]");
    const std::string name = h.get_string("name");
    if (!model->has_head(name)) model->load_head(case_dir / h.get_string("dir"), name, weights);
  }
}

// Training cases: one forward and backward in train mode; the gradients of every parameter that
// requires one, by name.
io::TensorMap train_step(AdapterModel& model, const JsonReader& c, const CaseInputs& inputs, io::TensorMap& produced) {
  JsonReader t(c.raw("train"), c.source() + ": train");
  const std::string method = t.get_string("method", "train_adapter");
  const Block setup = composition::parse(t.get_string("train_setup", c.get_string("setup")));
  if (method == "train_adapter_fusion") {
    model->train_adapter_fusion(setup);
  } else {
    ADAPTERS_CHECK(method == "train_adapter", c.source(), ": unknown train method '", method,
                   "' (expected train_adapter or train_adapter_fusion)");
    model->train_adapter(setup);
  }
  if (c.has("head_setup") && c.raw("head_setup").is_string()) model->set_active_head(c.get_string("head_setup"));
  ForwardOptions options;
  options.head_inputs = inputs.extra;
  ModelOutput out = model->forward(inputs.model, options);
  ADAPTERS_CHECK(out.loss.defined(), c.source(), ": the training forward produced no loss (no head or no labels)");
  out.loss.backward();
  produced = named_outputs(out, "");
  io::TensorMap grads;
  const auto reference_names = model->reference_parameter_names();
  for (const auto& item : model->named_parameters()) {
    if (!item.value().requires_grad() || !item.value().grad().defined()) continue;
    auto renamed = reference_names.find(item.key());
    grads[renamed == reference_names.end() ? item.key() : renamed->second] = item.value().grad();
  }
  return grads;
}

// Generation cases: the reference's generate(...) call with exactly the recorded options.
CaseOutputs generate_case(AdapterModel& model, const JsonReader& c, const CaseInputs& inputs) {
  const json& setup = c.raw("setup");
  if (setup.is_string()) model->set_active_adapters(setup.get<std::string>());
  if (c.has("head_setup") && c.raw("head_setup").is_string()) model->set_active_head(c.get_string("head_setup"));
  const generation::GenerationConfig config =
      generation::parse_generation_config(c.raw("generate"), c.source() + ": generate");
  const generation::GenerateOutput out = generate(*model, inputs.model.input_ids, inputs.model.attention_mask, config);
  CaseOutputs result;
  const json& wanted = c.raw("outputs");
  auto put = [&](const char* name, const torch::Tensor& t) {
    if (wanted.contains(name)) {
      ADAPTERS_CHECK(t.defined(), c.source(), ": generate produced no '", name, "'");
      result.outputs[name] = t.detach().contiguous();
    }
  };
  put("sequences", out.sequences.to(torch::kLong));
  put("scores", out.scores.defined() ? out.scores.to(torch::kFloat32) : torch::Tensor());
  put("sequences_scores", out.sequences_scores.defined() ? out.sequences_scores.to(torch::kFloat32) : torch::Tensor());
  return result;
}

}  // namespace

CaseOutputs run_case(const fs::path& case_dir, WeightsPreference weights) {
  const json spec = read_case(case_dir);
  JsonReader c(spec, (case_dir / "case.json").string());
  if (c.has("generate")) {
    AdapterModel model = load_pretrained(model_dir(case_dir, c));
    load_case_parts(model, case_dir, c, weights);
    return generate_case(model, c, read_inputs(case_dir));
  }
  const json& wanted = c.raw("outputs");
  const std::string mode = c.get_string("mode", "eval");
  ADAPTERS_CHECK(mode == "eval" || mode == "train", c.source(), ": unknown mode '", mode, "' (expected eval or train)");

  AdapterModel model = load_pretrained(model_dir(case_dir, c));
  load_case_parts(model, case_dir, c, weights);
  const CaseInputs inputs = read_inputs(case_dir);
  CaseOutputs result;
  io::TensorMap produced;
  if (mode == "train") {
    result.grads = train_step(model, c, inputs, produced);
  } else {
    if (c.has("setup")) model->set_active_adapters(c.get_string("setup"));
    if (c.has("head_setup") && c.raw("head_setup").is_string()) model->set_active_head(c.get_string("head_setup"));
    model->eval();
    torch::NoGradGuard no_grad;
    produced = forward_outputs(model, inputs, "", adapter_per_row(c));
    if (wants_ejected(wanted)) {
      for (const auto& name : composition::parse(c.get_string("setup")).flatten()) model->eject_prefix_tuning(name);
      produced.merge(forward_outputs(model, inputs, kEjected));
    }
    if (wants_merged(wanted)) {
      for (const auto& name : composition::parse(c.get_string("setup")).flatten()) model->merge_adapter(name);
      produced.merge(forward_outputs(model, inputs, kMerged));
    }
  }
  for (auto it = wanted.begin(); it != wanted.end(); ++it) {
    ADAPTERS_CHECK(produced.count(it.key()), c.source(), ": the model produced no '", it.key(), "'");
    result.outputs[it.key()] = produced.at(it.key()).detach().to(torch::kFloat32).contiguous();
  }
  for (auto& [key, g] : result.grads) g = g.detach().to(torch::kFloat32).contiguous();
  return result;
}

std::vector<CaseResult> run(const Options& options) {
  const fs::path cases_dir = options.root / "cases";
  ADAPTERS_CHECK(fs::is_directory(cases_dir), cases_dir.string(), ": not a folder (expected ROOT/cases/<case>/case.json)");
  std::vector<std::string> names;
  const std::regex only = bounded_regex(options.only.empty() ? ".*" : options.only, "fixtures --only");
  for (const auto& entry : fs::directory_iterator(cases_dir)) {
    const std::string name = entry.path().filename().string();
    if (entry.is_directory() && std::regex_search(name, only)) names.push_back(name);
  }
  std::sort(names.begin(), names.end());
  fs::create_directories(options.out);

  std::vector<CaseResult> results;
  json report = json::array();
  for (const auto& name : names) {
    const auto start = std::chrono::steady_clock::now();
    CaseResult r{name, "ok", "", 0.0};
    try {
      CaseOutputs out = run_case(cases_dir / name, options.weights);
      formats::make_real_folder(options.out / name);  // a planted link must not redirect the outputs
      io::write_safetensors(options.out / name / "outputs.safetensors", out.outputs);
      if (!out.grads.empty()) io::write_safetensors(options.out / name / "grads.safetensors", out.grads);
    } catch (const NotSupported& e) {
      r.status = "unsupported";
      r.message = e.what();
    } catch (const c10::Error& e) {
      r.status = "error";
      r.message = e.what_without_backtrace();
    } catch (const std::exception& e) {
      r.status = "error";
      r.message = e.what();
    }
    r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    report.push_back({{"case", r.name}, {"status", r.status}, {"message", r.message}, {"seconds", r.seconds}});
    results.push_back(r);
  }
  json counts = {{"ok", 0}, {"error", 0}, {"unsupported", 0}};
  for (const auto& r : results) counts[r.status] = counts[r.status].get<int>() + 1;
  // Invalid UTF-8 in a name or message is replaced (U+FFFD), so that one bad case never loses the report.
  io::write_file_atomic(options.out / "report.json",
                        json{{"cases", report}, {"counts", counts}}.dump(1, ' ', false, json::error_handler_t::replace));
  return results;
}

}  // namespace adapters::fixtures
