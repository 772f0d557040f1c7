// PEFT folders beyond the golden cases: every field that changes the math is honoured
// (rank_pattern, alpha_pattern, exclude_modules, a regex target) or refused by name; bad folders
// (unknown peft_type, targets that match nothing, wrong ranks, extra tensors) are errors naming the
// file and key, with nothing half-loaded; PEFT and AdapterHub adapters live side by side.
#include <gtest/gtest.h>

#include "adapters/formats/peft.h"
#include "adapters/generate.h"
#include "test_util.h"

namespace adapters::test {
namespace {

fs::path peft_case(const std::string& name) { return fs::path(ADAPTERS_FIXTURES) / "peft" / "cases" / name; }

class PeftFolder : public ::testing::Test {
 protected:
  void SetUp() override {
    model = load_pretrained(model_dir("llama"));
    config = json::parse(io::read_text_file(peft_case("llama__lora") / "adapter" / "adapter_config.json"));
    tensors = io::read_safetensors(peft_case("llama__lora") / "adapter" / "adapter_model.safetensors").tensors;
  }
  // Writes the (edited) config and tensors as a PEFT folder and loads it as `name`.
  void load(const std::string& name = "p") {
    fs::create_directories(tmp / name);
    io::write_file_atomic(tmp / name / "adapter_config.json", config.dump());
    io::write_safetensors(tmp / name / "adapter_model.safetensors", tensors);
    model->load_adapter(tmp / name, name, WeightsPreference::Safetensors, true);
  }
  std::string load_error() {
    const std::string e = error_of([&] { load(); });
    EXPECT_FALSE(model->has_adapter("p")) << "half-loaded after: " << e;
    return e;
  }
  AdapterModel model{nullptr};
  json config;
  io::TensorMap tensors;
  TempDir tmp;
};

TEST_F(PeftFolder, LoadsAsTheDefaultNameAndBesideAnAdapterHubAdapter) {
  model->add_adapter("hub", "seq_bn");
  EXPECT_EQ(model->load_adapter(peft_case("llama__lora") / "adapter"), "default");
  EXPECT_TRUE(model->has_adapter("hub"));
  EXPECT_EQ(model->adapter_config("default").values.at("target_modules"), json({"q_proj", "v_proj"}));
}

TEST_F(PeftFolder, RankAndAlphaPatternsAreHonoured) {
  load("plain");
  const torch::Tensor plain = hidden(model, tiny_inputs());
  config["alpha_pattern"] = {{"layers.1.self_attn.v_proj", 32}};
  load("alpha");
  EXPECT_GT((hidden(model, tiny_inputs()) - plain).abs().max().item<double>(), 1e-4);  // one layer's scale 4x
  config["alpha_pattern"] = json::object();
  config["rank_pattern"] = {{"q_proj", 2}};
  for (auto& [key, t] : tensors) {
    if (key.find("q_proj.lora_A") != std::string::npos) t = t.narrow(0, 0, 2).contiguous();
    if (key.find("q_proj.lora_B") != std::string::npos) t = t.narrow(1, 0, 2).contiguous();
  }
  load();
  const auto state = model->adapter_state_dict("p");
  EXPECT_EQ(state.at("model.layers.0.self_attn.q_proj.loras.p.lora_A").size(0), 2);
  EXPECT_EQ(state.at("model.layers.0.self_attn.v_proj.loras.p.lora_A").size(0), 4);
}

TEST_F(PeftFolder, ARegexTargetAndExcludedModules) {
  config["target_modules"] = R"(.*layers\.1\.self_attn\.(q|v)_proj)";
  for (auto it = tensors.begin(); it != tensors.end();) it = it->first.find("layers.0.") != std::string::npos ? tensors.erase(it) : std::next(it);
  load();
  EXPECT_EQ(model->adapter_state_dict("p").size(), 4u);  // q and v of layer 1: A and B each
  model->delete_adapter("p");
  config["target_modules"] = {"q_proj", "v_proj"};
  config["exclude_modules"] = {"v_proj"};
  tensors = io::read_safetensors(peft_case("llama__lora") / "adapter" / "adapter_model.safetensors").tensors;
  EXPECT_NE(load_error().find("weights that adapter 'p' does not have"), std::string::npos);  // the v_proj tensors
}

TEST_F(PeftFolder, BadFoldersAreErrorsNamingTheKey) {
  config["peft_type"] = "LOHA";
  EXPECT_NE(load_error().find("unknown peft_type 'LOHA'"), std::string::npos);
  config["peft_type"] = "LORA";
  config["target_modules"] = {"query_key_value"};
  EXPECT_NE(load_error().find("match no linear layer"), std::string::npos);
  config["target_modules"] = {"q_proj", "v_proj"};
  config["r"] = 8;
  EXPECT_NE(load_error().find("lora_A"), std::string::npos);  // the saved rank 4 does not fit r = 8
  config["r"] = 4;
  tensors["base_model.model.model.layers.0.self_attn.q_proj.lora_C.weight"] = torch::zeros({4, 32});
  EXPECT_NE(load_error().find("lora_C"), std::string::npos);
}

TEST_F(PeftFolder, FieldsWeCannotHonourAreRefusedByName) {
  for (const auto& [key, value] : std::vector<std::pair<std::string, json>>{
           {"bias", "all"}, {"modules_to_save", {"lm_head"}}, {"layer_replication", {{0, 1}}}, {"use_qalora", true}}) {
    json saved = config;
    config[key] = value;
    try {
      load();
      ADD_FAILURE() << key << " was accepted";
    } catch (const NotSupported& e) {
      EXPECT_NE(std::string(e.what()).find(key), std::string::npos) << e.what();
    }
    EXPECT_FALSE(model->has_adapter("p"));
    config = saved;
  }
}

TEST(PeftPromptTuning, JoinsBeforeTheEmbeddingsAndRefusesGeneration) {
  AdapterModel model = load_pretrained(model_dir("llama"));
  model->load_adapter(peft_case("llama__prompt") / "adapter", "soft", WeightsPreference::Safetensors, true);
  EXPECT_EQ(hidden(model, tiny_inputs()).size(1), 8 + 4);  // the 4 virtual tokens are in the output
  generation::GenerationConfig g;
  g.max_new_tokens = 2;
  try {
    generate(*model, tiny_inputs().input_ids, tiny_inputs().attention_mask, g);
    ADD_FAILURE() << "generation with a soft prompt was accepted";
  } catch (const NotSupported& e) {
    EXPECT_NE(std::string(e.what()).find("prompt-tuning adapter"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace adapters::test
