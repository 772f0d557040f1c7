// The fixture runner: case.json -> model + adapters + setup -> outputs.safetensors, report.json.
#include "adapters/fixtures.h"

#include <torch/torch.h>

#include <chrono>
#include <regex>

#include "adapters/core/json.h"

namespace adapters::fixtures {

namespace {

json read_case(const fs::path& case_dir) {
  const fs::path path = case_dir / "case.json";
  return parse_json_file_text(io::read_text_file(path), path.string());
}

void reject_unsupported_features(const JsonReader& c) {
  if (c.get_string("mode", "eval") != "eval") throw NotSupported("training cases (mode: train) are not supported yet");
  if (c.has("head") || (c.has("heads") && !c.raw("heads").empty())) throw NotSupported("prediction heads are not supported yet");
  if (c.has("fusions") && !c.raw("fusions").empty()) throw NotSupported("AdapterFusion is not supported yet");
}

const std::set<std::string>& base_outputs() {
  static const std::set<std::string> names = {"last_hidden_state", "pooler_output"};
  return names;
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

io::TensorMap base_model_outputs(AdapterModel& model, const models::ModelInputs& inputs, const std::string& prefix) {
  ModelOutput out = model->forward(inputs);
  io::TensorMap produced = {{prefix + "last_hidden_state", out.last_hidden_state}};
  if (out.pooler_output.defined()) produced[prefix + "pooler_output"] = out.pooler_output;
  return produced;
}

models::ModelInputs read_inputs(const fs::path& case_dir) {
  io::TensorMap t = io::read_safetensors(case_dir / "inputs.safetensors").tensors;
  auto take = [&](const char* name) { return t.count(name) ? t.at(name).to(torch::kLong) : torch::Tensor(); };
  return {take("input_ids"), take("attention_mask"), take("token_type_ids")};
}

}  // namespace

CaseOutputs run_case(const fs::path& case_dir, WeightsPreference weights) {
  const json spec = read_case(case_dir);
  JsonReader c(spec, (case_dir / "case.json").string());
  reject_unsupported_features(c);
  const json& wanted = c.raw("outputs");
  for (auto it = wanted.begin(); it != wanted.end(); ++it) {
    if (!base_outputs().count(strip_merged(strip_ejected(it.key())))) throw NotSupported(str("output '", it.key(), "' is not supported yet"));
  }

  AdapterModel model = load_pretrained(case_dir / c.get_string("model_dir"));
  for (const auto& adapter : c.raw("adapters")) {
    JsonReader a(adapter, c.source() + ": adapters[]");
    model->load_adapter(case_dir / a.get_string("dir"), a.get_string("name"), weights);
  }
  if (c.has("setup")) model->set_active_adapters(c.get_string("setup"));

  model->eval();
  torch::NoGradGuard no_grad;
  const models::ModelInputs inputs = read_inputs(case_dir);
  io::TensorMap produced = base_model_outputs(model, inputs, "");
  if (wants_ejected(wanted)) {
    for (const auto& name : composition::parse(c.get_string("setup")).flatten()) model->eject_prefix_tuning(name);
    produced.merge(base_model_outputs(model, inputs, kEjected));
  }
  if (wants_merged(wanted)) {
    for (const auto& name : composition::parse(c.get_string("setup")).flatten()) model->merge_adapter(name);
    produced.merge(base_model_outputs(model, inputs, kMerged));
  }

  CaseOutputs result;
  for (auto it = wanted.begin(); it != wanted.end(); ++it) {
    ADAPTERS_CHECK(produced.count(it.key()), c.source(), ": the model produced no '", it.key(), "'");
    result.outputs[it.key()] = produced.at(it.key()).to(torch::kFloat32).contiguous();
  }
  return result;
}

std::vector<CaseResult> run(const Options& options) {
  const fs::path cases_dir = options.root / "cases";
  ADAPTERS_CHECK(fs::is_directory(cases_dir), cases_dir.string(), ": not a folder (expected ROOT/cases/<case>/case.json)");
  std::vector<std::string> names;
  const std::regex only(options.only.empty() ? ".*" : options.only);
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
      fs::create_directories(options.out / name);
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
  io::write_file_atomic(options.out / "report.json", json{{"cases", report}, {"counts", counts}}.dump(1));
  return results;
}

}  // namespace adapters::fixtures
