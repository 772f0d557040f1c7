// PEFT folders beyond the golden cases: every field that changes the math is honoured
// (rank_pattern, alpha_pattern, exclude_modules, a regex target) or refused by name; bad folders
// (unknown peft_type, targets that match nothing, wrong ranks, extra tensors) are errors naming the
// file and key, with nothing half-loaded; PEFT and AdapterHub adapters live side by side.
#include <gtest/gtest.h>

#include <chrono>

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

// A regex target from a stranger's config: one that backtracking takes exponential time on
// ((.*)*x on a 40-character module path) matches in polynomial time; an over-long one is refused.
TEST_F(PeftFolder, ARegexTargetRunsInPolynomialTimeAndIsBounded) {
  config["target_modules"] = R"((.*)*(.*)*(.*)*x)";
  const auto start = std::chrono::steady_clock::now();
  EXPECT_NE(load_error().find("match no linear layer"), std::string::npos);
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(), 20.0);
  config["target_modules"] = std::string(600, 'a');
  EXPECT_NE(load_error().find("a regular expression of 600 characters (at most 512)"), std::string::npos);
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

TEST(PeftPromptTuning, JoinsBeforeTheEmbeddings) {
  AdapterModel model = load_pretrained(model_dir("llama"));
  model->load_adapter(peft_case("llama__prompt") / "adapter", "soft", WeightsPreference::Safetensors, true);
  EXPECT_EQ(hidden(model, tiny_inputs()).size(1), 8 + 4);  // the 4 virtual tokens are in the output
}

// PEFT's prefix tuning is past key/values: the output keeps the tokens' length, the tokens' positions
// follow the prefix (fixtures.peft checks the values on nine architectures); a table whose heads do
// not fit the model is refused naming adapter_config.json.
TEST(PeftPrefixTuning, FillsTheCacheAndChecksItsShape) {
  const fs::path model_path = fs::path(ADAPTERS_FIXTURES) / "peft" / "models" / "llama";
  AdapterModel model = load_pretrained(model_path);
  const torch::Tensor plain = hidden(model, tiny_inputs());
  model->load_adapter(peft_case("llama__prefix") / "adapter", "past", WeightsPreference::Safetensors, true);
  const torch::Tensor prefixed = hidden(model, tiny_inputs());
  EXPECT_EQ(prefixed.sizes(), plain.sizes());
  EXPECT_GT((prefixed - plain).abs().max().item<double>(), 1e-3);
  EXPECT_EQ(model->adapter_config("past").values.at("placement"), "past");

  const fs::path tmp = fs::temp_directory_path() / "adapters_peft_prefix_bad";
  fs::remove_all(tmp);
  fs::copy(peft_case("llama__prefix") / "adapter", tmp);
  json config = json::parse(io::read_text_file(tmp / "adapter_config.json"));
  config["token_dim"] = config["token_dim"].get<std::int64_t>() * 2;
  io::write_file_atomic(tmp / "adapter_config.json", config.dump());
  const std::string error = error_of([&] { model->load_adapter(tmp, "bad"); });
  EXPECT_NE(error.find("adapter_config.json: num_attention_heads"), std::string::npos) << error;
  EXPECT_FALSE(model->has_adapter("bad"));
  fs::remove_all(tmp);
}

// Generation with PEFT prefix and prompt tuning: the prefix goes in front of the cache, the soft
// prompt before the first step's tokens (the encoder's, in encoder-decoder models), and both count
// in the positions and the mask (as PEFT's prepare_inputs_for_generation); the first step's scores
// are the forward's logits at the last position, and the cached steps give the tokens and scores of
// recomputing.
class PeftPromptGeneration : public ::testing::TestWithParam<std::tuple<std::string, std::string>> {};

TEST_P(PeftPromptGeneration, CachedStepsEqualRecomputingAndTheFirstEqualsTheForward) {
  const auto& [arch, method] = GetParam();
  const bool seq2seq = arch == "t5" || arch == "bart";
  AdapterModel model = load_pretrained(fs::path(ADAPTERS_FIXTURES) / "peft" / "models" / arch);
  model->load_adapter(peft_case(arch + "__" + method) / "adapter", "soft", WeightsPreference::Safetensors, true);
  torch::manual_seed(3);
  model->add_head("lm", seq2seq ? "seq2seq_lm" : "causal_lm");
  model->eval();
  const models::ModelInputs in = tiny_inputs();
  generation::GenerationConfig g;
  g.max_new_tokens = 4;
  g.output_scores = true;
  g.pad_token_id = 0;
  g.decoder_start_token_id = 0;
  const auto cached = generate(*model, in.input_ids, in.attention_mask, g);
  g.use_cache = false;
  const auto recomputed = generate(*model, in.input_ids, in.attention_mask, g);
  EXPECT_TRUE(torch::equal(cached.sequences, recomputed.sequences)) << cached.sequences << recomputed.sequences;
  EXPECT_LT((cached.scores - recomputed.scores).abs().max().item<double>(), 1e-4);
  // Row 0 has no padding: its first step is the forward's last position.
  torch::NoGradGuard no_grad;
  models::ModelInputs first = in;
  first.input_ids = in.input_ids.narrow(0, 0, 1);
  first.attention_mask = in.attention_mask.narrow(0, 0, 1);
  if (seq2seq) first.decoder_input_ids = torch::zeros({1, 1}, torch::kLong);
  const torch::Tensor logits = model->forward(first).head.at("logits").select(1, -1);  // (1,V)
  EXPECT_LT((cached.scores.select(0, 0).narrow(0, 0, 1) - logits).abs().max().item<double>(), 1e-4);
}

INSTANTIATE_TEST_SUITE_P(Archs, PeftPromptGeneration,
                         ::testing::Combine(::testing::Values("llama", "gpt2", "mistral", "t5", "bart"),
                                            ::testing::Values("prefix", "prompt")),
                         [](const auto& info) { return std::get<0>(info.param) + "_" + std::get<1>(info.param); });

}  // namespace
}  // namespace adapters::test
