// Subcommands: fixtures (the golden-case runner) and info (model and adapter summary). The
// training subcommands are in train_commands.cpp.
#include "commands.h"

#include <torch/torch.h>

#include <iomanip>
#include <iostream>
#include <memory>

#include "adapters/fixtures.h"
#include "adapters/hub/hub.h"
#include "adapters/model.h"

namespace adapters::cli {

namespace {

void print_counts(const std::vector<fixtures::CaseResult>& results) {
  int ok = 0, error = 0, unsupported = 0;
  for (const auto& r : results) {
    if (r.status == "ok") ++ok;
    else if (r.status == "error") ++error;
    else ++unsupported;
    if (r.status == "error") std::cout << "error       " << r.name << ": " << r.message << '\n';
  }
  std::cout << results.size() << " cases: " << ok << " ran, " << error << " errors, " << unsupported << " unsupported\n";
}

}  // namespace

void add_fixtures_command(CLI::App& app) {
  auto opts = std::make_shared<fixtures::Options>();
  auto weights = std::make_shared<std::string>("bin");
  CLI::App* cmd = app.add_subcommand("fixtures", "Run golden fixture cases and write their outputs and report.json");
  cmd->add_option("ROOT", opts->root, "Fixture root holding cases/<case>/case.json")->required()->check(CLI::ExistingDirectory);
  cmd->add_option("--out", opts->out, "Output folder")->required();
  cmd->add_option("--only", opts->only, "Regex on case names");
  cmd->add_option("--weights", *weights, "Weight file to read when a folder has both")->check(CLI::IsMember({"bin", "safetensors"}));
  cmd->callback([opts, weights] {
    opts->weights = *weights == "bin" ? WeightsPreference::Bin : WeightsPreference::Safetensors;
    print_counts(fixtures::run(*opts));
    std::cout << "report: " << (opts->out / "report.json").string() << '\n';
  });
}

void add_info_command(CLI::App& app) {
  auto model_dir = std::make_shared<std::string>();
  auto adapter_dirs = std::make_shared<std::vector<std::string>>();
  auto configs = std::make_shared<std::vector<std::string>>();
  CLI::App* cmd = app.add_subcommand("info", "Show a model's architecture and its adapters");
  cmd->add_option("--model", *model_dir, "HF model folder or hub repo id org/name[@revision]")->required();
  cmd->add_option("--adapter", *adapter_dirs, "AdapterHub folder to load (repeatable)");
  cmd->add_option("--adapter-config", *configs, "Adapter config to add, e.g. \"lora[r=8]\" (repeatable)");
  cmd->callback([=] {
    AdapterModel model = load_pretrained(hub::resolve_model(*model_dir));
    for (const auto& dir : *adapter_dirs) model->load_adapter(dir);
    for (std::size_t i = 0; i < configs->size(); ++i) model->add_adapter(str("adapter", i), (*configs)[i]);
    const auto& c = model->config();
    std::cout << "model_type " << c.model_type << ", " << c.num_hidden_layers << " layers, hidden " << c.hidden_size
              << ", " << c.num_attention_heads << " heads, " << model->base_parameter_count() << " parameters\n"
              << model->adapter_summary();
    for (const auto& head : model->head_names()) {
      std::cout << "head " << head << ": " << model->head(head).config().dump() << '\n';
    }
  });
}

}  // namespace adapters::cli
