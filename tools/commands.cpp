// Subcommands: fixtures (the golden-case runner), info (model and adapter summary), demo (the
// main job until training lands: add, activate, save, reload adapters and show their effect).
#include "commands.h"

#include <torch/torch.h>

#include <iomanip>
#include <iostream>
#include <memory>

#include "adapters/fixtures.h"
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

// A fixed, readable batch of token ids for demonstrations: (2,8).
models::ModelInputs demo_inputs(std::int64_t vocab_size) {
  torch::Tensor ids = torch::arange(16, torch::kLong).remainder(vocab_size - 1).add(1).view({2, 8});
  torch::Tensor mask = torch::ones({2, 8}, torch::kLong);
  mask.index_put_({1, torch::indexing::Slice(6, torch::indexing::None)}, 0);
  return {ids, mask, torch::Tensor()};
}

double max_abs_diff(const torch::Tensor& a, const torch::Tensor& b) { return (a - b).abs().max().item<double>(); }

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
  cmd->add_option("--model", *model_dir, "HF model folder")->required()->check(CLI::ExistingDirectory);
  cmd->add_option("--adapter", *adapter_dirs, "AdapterHub folder to load (repeatable)");
  cmd->add_option("--adapter-config", *configs, "Adapter config to add, e.g. \"lora[r=8]\" (repeatable)");
  cmd->callback([=] {
    AdapterModel model = load_pretrained(*model_dir);
    for (const auto& dir : *adapter_dirs) model->load_adapter(dir);
    for (std::size_t i = 0; i < configs->size(); ++i) model->add_adapter(str("adapter", i), (*configs)[i]);
    const auto& c = model->config();
    std::cout << "model_type " << c.model_type << ", " << c.num_hidden_layers << " layers, hidden " << c.hidden_size
              << ", " << c.num_attention_heads << " heads, " << model->base_parameter_count() << " parameters\n"
              << model->adapter_summary();
  });
}

void add_demo_command(CLI::App& app) {
  auto model_dir = std::make_shared<std::string>();
  auto out_dir = std::make_shared<std::string>("build/demo");
  CLI::App* cmd = app.add_subcommand("demo", "Add, activate, save and reload adapters on a model; print their effect");
  cmd->add_option("--model", *model_dir, "HF model folder")->required()->check(CLI::ExistingDirectory);
  cmd->add_option("--out", *out_dir, "Where the adapters are saved");
  cmd->callback([=] {
    torch::manual_seed(0);
    AdapterModel model = load_pretrained(*model_dir);
    torch::NoGradGuard no_grad;
    const auto inputs = demo_inputs(model->config().vocab_size);
    const torch::Tensor base = model->forward(inputs).last_hidden_state;
    std::cout << std::fixed << std::setprecision(6);
    for (const char* spec : {"seq_bn", "double_seq_bn[reduction_factor=8]", "par_bn", "scaled_par_bn"}) {
      const std::string name = std::string(spec).substr(0, std::string(spec).find('['));
      model->add_adapter(name, spec);
      // Give the adapter visible weights (par_bn starts as the identity).
      for (auto& [key, t] : model->adapter_state_dict(name)) t.normal_(0.0, 0.2);
      model->set_active_adapters(name);
      const torch::Tensor with = model->forward(inputs).last_hidden_state;
      const fs::path dir = fs::path(*out_dir) / name;
      model->save_adapter(dir, name);
      model->load_adapter(dir, name + "_reloaded");
      model->set_active_adapters(name + "_reloaded");
      const torch::Tensor reloaded = model->forward(inputs).last_hidden_state;
      std::cout << std::left << std::setw(36) << spec << " saved to " << dir.string() << "  change vs base "
                << max_abs_diff(with, base) << "  reload diff " << max_abs_diff(with, reloaded) << '\n';
    }
    model->deactivate_adapters();
    std::cout << "no adapter active: diff vs base " << max_abs_diff(model->forward(inputs).last_hidden_state, base) << "\n"
              << model->adapter_summary();
  });
}

}  // namespace adapters::cli
