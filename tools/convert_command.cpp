// Subcommands between formats: `convert` (an adapter folder from AdapterHub to PEFT or back) and
// `merge` (LoRA-family adapters folded into the base weights, written as an HF model folder).
// Both check their result on a probe batch (same outputs as before, or the command fails and
// removes what it wrote).
#include <torch/torch.h>

#include <iostream>
#include <memory>

#include "adapters/formats/hf_model.h"
#include "adapters/formats/peft.h"
#include "adapters/hub/hub.h"
#include "adapters/io/tensors.h"
#include "adapters/model.h"
#include "commands.h"

namespace adapters::cli {

namespace {

constexpr double kTolerance = 1e-4;  // largest output difference a conversion may make (float32 sums)

json read_adapter_config(const fs::path& dir) {
  const fs::path path = dir / "adapter_config.json";
  ADAPTERS_CHECK(fs::is_regular_file(path), dir.string(), ": not an adapter folder (no adapter_config.json)");
  return parse_json_file_text(io::read_text_file(path), path.string());
}

// The base model an adapter folder names (PEFT: base_model_name_or_path, AdapterHub: model_name),
// when it is a local model folder.
fs::path named_base_model(const fs::path& adapter_dir, bool peft) {
  const json config = read_adapter_config(adapter_dir);
  const char* key = peft ? "base_model_name_or_path" : "model_name";
  const std::string source = (adapter_dir / "adapter_config.json").string();
  const json value = config.is_object() && config.contains(key) ? config[key] : json();
  if (!value.is_string() || value.get<std::string>().empty()) {
    throw Error(str(source, ": names no base model ('", key, "' is ", value.dump(), ")"), "pass --model");
  }
  const fs::path dir = value.get<std::string>();
  if (!fs::is_regular_file(dir / "config.json")) {
    throw Error(str(source, ": '", key, "' is \"", dir.string(), "\", which is not a local model folder (no config.json there)"),
                "pass --model (a model folder or a hub repo id)");
  }
  return dir;
}

fs::path base_model(const std::string& model_arg, const fs::path& adapter_dir) {
  if (!model_arg.empty()) return hub::resolve_model(model_arg);
  return named_base_model(adapter_dir, formats::is_peft_folder(adapter_dir));
}

void require_empty_output(const fs::path& out) {
  if (!fs::exists(out)) return;
  ADAPTERS_CHECK(fs::is_directory(out) && fs::is_empty(out), out.string(),
                 ": exists and is not an empty folder; choose a new output folder");
}

// A batch of the kind the model reads: 8 token ids, or one image of the configured size.
models::ModelInputs probe_inputs(const AdapterModelImpl& model) {
  models::ModelInputs in;
  if (model.arch().input == models::InputKind::Image) {
    const json& raw = model.config().raw;
    const json size = raw.value("image_size", json(224));
    const std::int64_t h = size.is_array() ? size[0].get<std::int64_t>() : size.get<std::int64_t>();
    const std::int64_t w = size.is_array() ? size[1].get<std::int64_t>() : h;
    in.pixel_values = torch::linspace(-1.0, 1.0, 3 * h * w).view({1, 3, h, w}).sin();
    return in;
  }
  const std::int64_t vocab = std::max<std::int64_t>(model.config().vocab_size, 3);
  in.input_ids = torch::arange(8, torch::kLong).remainder(vocab - 2).add(2).view({1, 8});
  // A prompt joined at the input replaces input_ids by inputs_embeds: give the decoder its own.
  if (model.arch().kind == models::ArchKind::EncoderDecoder) in.decoder_input_ids = in.input_ids.narrow(1, 0, 4);
  return in;
}

torch::Tensor hidden_with(AdapterModelImpl& model, const std::string& setup) {
  torch::NoGradGuard no_grad;
  if (setup.empty()) {
    model.deactivate_adapters();
  } else {
    model.set_active_adapters(setup);
  }
  ForwardOptions options;
  options.skip_heads = true;
  return model.forward(probe_inputs(model), options).last_hidden_state;
}

// Fails (removing `written`) when two outputs differ by more than kTolerance.
void check_same(const torch::Tensor& expected, const torch::Tensor& found, const fs::path& written, const std::string& what) {
  const double diff = expected.sizes() == found.sizes() ? (expected - found).abs().max().item<double>() : INFINITY;
  if (diff <= kTolerance) {
    std::cout << what << ": same outputs (largest difference " << diff << ")\n";
    return;
  }
  io::remove_tree(written);
  throw Error(str(what, ": the outputs differ by ", diff, " (shapes ", expected.sizes(), " and ", found.sizes(),
                  "); removed ", written.string()));
}

// Sets AdapterHub's model_name in a written adapter_config.json (save_adapter writes null).
void set_model_name(const fs::path& dir, const fs::path& model_dir) {
  const fs::path path = dir / "adapter_config.json";
  json config = parse_json_file_text(io::read_text_file(path), path.string());
  config["model_name"] = model_dir.string();
  io::write_file_atomic(path, config.dump(2));
}

struct ConvertArgs {
  std::string to, in, out, model, name;
};

void run_convert(const ConvertArgs& a) {
  const fs::path in = a.in, out = a.out;
  read_adapter_config(in);
  const bool peft_in = formats::is_peft_folder(in);
  const bool to_peft = a.to == "peft";
  ADAPTERS_CHECK(peft_in != to_peft, in.string(), ": is already a ", peft_in ? "PEFT" : "AdapterHub", " adapter folder");
  require_empty_output(out);
  const fs::path model_dir = base_model(a.model, in);
  AdapterModel model = load_pretrained(model_dir);
  const std::string name = model->load_adapter(in, a.name, WeightsPreference::Safetensors, false, /*with_head=*/false);
  if (!peft_in && fs::exists(in / "head_config.json")) {
    std::cerr << "adapters convert: note: the head saved beside the adapter is not converted (PEFT folders hold no heads)\n";
  }
  if (to_peft) {
    formats::save_peft_adapter(*model, name, out, model_dir.string());
  } else {
    model->save_adapter(out, name, /*with_head=*/false);
    set_model_name(out, model_dir);
  }
  const std::string converted = "converted_" + name;
  model->load_adapter(out, converted, WeightsPreference::Safetensors, false, false);
  check_same(hidden_with(*model, name), hidden_with(*model, converted), out, "convert " + in.string() + " -> " + out.string());
}

struct MergeArgs {
  std::string model, output, head = "default";
  std::vector<std::string> adapters;
};

void run_merge(const MergeArgs& a) {
  const fs::path out = a.output;
  require_empty_output(out);
  AdapterModel model = load_pretrained(base_model(a.model, a.adapters.front()));
  std::vector<std::string> names;
  for (std::size_t i = 0; i < a.adapters.size(); ++i) {
    names.push_back(model->load_adapter(a.adapters[i], str("merged", i), WeightsPreference::Safetensors, false, false));
  }
  std::string stack = names.front();
  if (names.size() > 1) {
    stack = "Stack(";
    for (std::size_t i = 0; i < names.size(); ++i) stack += (i ? ", " : "") + names[i];
    stack += ")";
  }
  const torch::Tensor expected = hidden_with(*model, stack);
  for (const auto& name : names) model->merge_adapter(name);
  model->deactivate_adapters();
  formats::save_pretrained(*model, out, a.head);
  AdapterModel merged = load_pretrained(out, a.head);
  check_same(expected, hidden_with(*merged, ""), out, "merge into " + out.string());
}

}  // namespace

void add_convert_command(CLI::App& app) {
  auto a = std::make_shared<ConvertArgs>();
  CLI::App* cmd = app.add_subcommand("convert", "Convert an adapter folder between the PEFT and AdapterHub formats");
  cmd->add_option("--to", a->to, "Format to write")->required()->check(CLI::IsMember({"peft", "adapterhub"}));
  cmd->add_option("IN", a->in, "Adapter folder (PEFT or AdapterHub, told apart by its files)")->required()
      ->check(CLI::ExistingDirectory);
  cmd->add_option("OUT", a->out, "Output folder (new or empty)")->required();
  cmd->add_option("--model", a->model,
                  "Base model folder or hub repo id (default: the adapter's base_model_name_or_path / model_name "
                  "when it is a local folder)");
  cmd->add_option("--name", a->name, "Adapter name (default: the saved name; PEFT's is \"default\")");
  cmd->footer(
      "Examples:\n"
      "  adapters convert --to adapterhub peft_adapter/ hub_adapter/ --model base_model/\n"
      "  adapters convert --to peft hub_adapter/ peft_adapter/ --model base_model/");
  cmd->callback([a] { run_convert(*a); });
}

void add_merge_command(CLI::App& app) {
  auto a = std::make_shared<MergeArgs>();
  CLI::App* cmd = app.add_subcommand(
      "merge", "Fold LoRA-family adapters (LoRA, DoRA, IA3, VeRA) into the base weights and write an HF model folder");
  cmd->add_option("--model", a->model,
                  "Base model folder or hub repo id (default: the first adapter's base_model_name_or_path / model_name)");
  cmd->add_option("--adapter", a->adapters, "Adapter folder, PEFT or AdapterHub (repeatable: merged in order)")
      ->required()->check(CLI::ExistingDirectory);
  cmd->add_option("--output", a->output, "Output model folder (new or empty): config.json + model.safetensors")->required();
  cmd->add_option("--head", a->head, "Head written as the config class's head (load_pretrained names it \"default\")")
      ->capture_default_str();
  cmd->footer("Example:\n  adapters merge --model base_model/ --adapter peft_lora/ --output merged_model/");
  cmd->callback([a] { run_merge(*a); });
}

}  // namespace adapters::cli
