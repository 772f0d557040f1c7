// The adapter core on real (tiny) checkpoints of every architecture: loading, the adapter verbs,
// opt-in behaviour, save/load round trips and the errors on bad input.
#include <gtest/gtest.h>

#include <fstream>

#include "adapters/io/tensors.h"
#include "adapters/model.h"
#include "test_util.h"

namespace adapters::test {
namespace {

class ArchTest : public ::testing::TestWithParam<std::string> {
 protected:
  AdapterModel load() { return load_pretrained(model_dir(GetParam())); }
  models::ModelInputs inputs() const { return inputs_for(GetParam()); }
};

INSTANTIATE_TEST_SUITE_P(Archs, ArchTest, ::testing::Values("bert", "roberta", "xlm-roberta", "distilbert", "electra", "albert",
                                                            "deberta", "deberta-v2", "vit", "beit"),
                         [](const auto& info) {
                           std::string n = info.param;
                           std::replace(n.begin(), n.end(), '-', '_');
                           return n;
                         });

TEST_P(ArchTest, ParameterNamesEqualCheckpointKeys) {
  AdapterModel model = load();
  const auto checkpoint = io::read_safetensors(model_dir(GetParam()) / "model.safetensors").tensors;
  std::set<std::string> ours;
  for (const auto& item : model->named_parameters()) ours.insert(item.key());
  for (const auto& item : model->named_buffers()) ours.insert(item.key());
  std::set<std::string> theirs;
  for (const auto& [k, t] : checkpoint) theirs.insert(k);
  EXPECT_EQ(ours, theirs);
}

TEST_P(ArchTest, InactiveAdapterLeavesTheModelExactlyPlain) {
  AdapterModel model = load();
  const auto in = inputs();
  const torch::Tensor base = hidden(model, in);
  model->add_adapter("a", "seq_bn");
  randomize_adapter(model, "a");
  EXPECT_TRUE(torch::equal(hidden(model, in), base));
  model->set_active_adapters("a");
  EXPECT_GT((hidden(model, in) - base).abs().max().item<double>(), 1e-3);
  model->deactivate_adapters();
  EXPECT_TRUE(torch::equal(hidden(model, in), base));
}

TEST_P(ArchTest, DeleteRestoresTheBase) {
  AdapterModel model = load();
  const auto in = inputs();
  const torch::Tensor base = hidden(model, in);
  const auto keys_before = model->named_parameters().keys();
  model->add_adapter("a", "double_seq_bn", false, true);
  randomize_adapter(model, "a");
  EXPECT_FALSE(torch::equal(hidden(model, in), base));
  model->delete_adapter("a");
  EXPECT_FALSE(model->active_setup().has_value());
  EXPECT_EQ(model->named_parameters().keys(), keys_before);
  EXPECT_TRUE(torch::equal(hidden(model, in), base));
}

TEST_P(ArchTest, SaveThenLoadIsBitIdentical) {
  for (const char* spec : {"seq_bn", "double_seq_bn", "par_bn", "scaled_par_bn",
                           "seq_bn[ln_before=true,ln_after=true,use_gating=true,scaling=channel]"}) {
    SCOPED_TRACE(spec);
    AdapterModel model = load();
    TempDir tmp;
    model->add_adapter("a", spec, false, true);
    randomize_adapter(model, "a");
    const torch::Tensor before = hidden(model, inputs());
    model->save_adapter(tmp / "a", "a");

    AdapterModel fresh = load();
    EXPECT_EQ(fresh->load_adapter(tmp / "a", "", WeightsPreference::Safetensors, true), "a");
    EXPECT_EQ(fresh->adapter_config("a"), model->adapter_config("a"));
    const auto saved = model->adapter_state_dict("a");
    const auto loaded = fresh->adapter_state_dict("a");
    ASSERT_EQ(saved.size(), loaded.size());
    for (const auto& [key, t] : saved) EXPECT_TRUE(torch::equal(t, loaded.at(key))) << key;
    EXPECT_TRUE(torch::equal(hidden(fresh, inputs()), before));
  }
}

TEST_P(ArchTest, TrainAdapterLeavesOnlyTheAdapterTrainable) {
  AdapterModel model = load();
  model->add_adapter("a", "double_seq_bn");
  model->add_adapter("b", "seq_bn");
  model->train_adapter("a");
  EXPECT_TRUE(model->is_training());
  ASSERT_TRUE(model->active_setup().has_value());
  EXPECT_EQ(model->active_setup()->flatten(), std::vector<std::string>{"a"});
  std::int64_t trainable = 0;
  for (const auto& item : model->named_parameters()) {
    const bool is_a = item.key().find(".adapters.a.") != std::string::npos;
    EXPECT_EQ(item.value().requires_grad(), is_a) << item.key();
    trainable += item.value().requires_grad() ? item.value().numel() : 0;
  }
  EXPECT_GT(trainable, 0);
  // Gradients reach exactly the trainable parameters.
  model->forward(inputs()).last_hidden_state.pow(2).sum().backward();
  for (const auto& item : model->named_parameters()) {
    EXPECT_EQ(item.value().grad().defined(), item.value().requires_grad()) << item.key();
  }
}

// Tensors of a checkpoint the model does not use are not loaded, and a warning names them (as HF
// warns), so that a checkpoint of another architecture or class does not pass unnoticed.
TEST(ModelTest, UnusedCheckpointTensorsAreNamedInAWarning) {
  TempDir tmp;
  fs::create_directories(tmp.path() / "model");
  fs::copy_file(model_dir("bert") / "config.json", tmp.path() / "model" / "config.json");
  io::TensorMap weights = io::read_checkpoint(model_dir("bert") / "model.safetensors");
  weights["bert.encoder.layer.0.attention.self.extra_scale"] = torch::ones({4});
  io::write_safetensors(tmp.path() / "model" / "model.safetensors", weights);
  ::testing::internal::CaptureStderr();
  load_pretrained(tmp.path() / "model");
  const std::string err = ::testing::internal::GetCapturedStderr();
  EXPECT_NE(err.find("model does not use were not loaded: bert.encoder.layer.0.attention.self.extra_scale"),
            std::string::npos)
      << err;
}

TEST(ModelTest, LoadAsRenamesTheAdapter) {
  AdapterModel model = load_pretrained(model_dir("bert"));
  TempDir tmp;
  model->add_adapter("a", "seq_bn");
  randomize_adapter(model, "a");
  model->save_adapter(tmp / "a", "a");
  EXPECT_EQ(model->load_adapter(tmp / "a", "b"), "b");
  const auto a = model->adapter_state_dict("a");
  const auto b = model->adapter_state_dict("b");
  ASSERT_EQ(a.size(), b.size());
  for (const auto& [key, t] : a) {
    std::string renamed = key;
    renamed.replace(renamed.find(".adapters.a."), 12, ".adapters.b.");
    EXPECT_TRUE(torch::equal(t, b.at(renamed))) << key;
  }
}

TEST(ModelTest, ReferenceAdapterFolderLoadsFromBothWeightFiles) {
  const fs::path dir = fixtures_root() / "cases" / "bert__var_pfeiffer_lnbefore_lnafter" / "adapters" / "a";
  AdapterModel from_bin = load_pretrained(model_dir("bert"));
  AdapterModel from_st = load_pretrained(model_dir("bert"));
  from_bin->load_adapter(dir, "", WeightsPreference::Bin, true);
  from_st->load_adapter(dir, "", WeightsPreference::Safetensors, true);
  EXPECT_TRUE(torch::equal(hidden(from_bin, tiny_inputs()), hidden(from_st, tiny_inputs())));
}

TEST(ModelTest, SavedFolderMatchesTheReferenceLayout) {
  AdapterModel model = load_pretrained(model_dir("bert"));
  TempDir tmp;
  model->add_adapter("a", "seq_bn[ln_before=true]");
  model->save_adapter(tmp / "a", "a");
  const auto st = io::read_safetensors(tmp / "a" / "adapter.safetensors");
  EXPECT_TRUE(st.tensors.count("bert.encoder.layer.0.output.adapters.a.adapter_down.1.weight"));
  EXPECT_TRUE(st.tensors.count("bert.encoder.layer.0.output.adapters.a.adapter_down.0.weight"));
  const json aliases = json::parse(st.metadata.at("aliases"));
  EXPECT_EQ(aliases.at("bert.encoder.layer.0.output.adapters.a.adapter_norm_before.weight"),
            "bert.encoder.layer.0.output.adapters.a.adapter_down.0.weight");
  const json config = json::parse(io::read_text_file(tmp / "a" / "adapter_config.json"));
  EXPECT_EQ(config.at("name"), "a");
  EXPECT_EQ(config.at("model_class"), "BertAdapterModel");
  EXPECT_EQ(config.at("hidden_size"), 32);
  // The same keys as the reference's own file of the same config.
  const json reference = json::parse(io::read_text_file(
      fixtures_root() / "cases" / "bert__var_pfeiffer_lnbefore_lnafter" / "adapters" / "a" / "adapter_config.json"));
  std::set<std::string> ours, theirs;
  for (auto it = config.at("config").begin(); it != config.at("config").end(); ++it) ours.insert(it.key());
  for (auto it = reference.at("config").begin(); it != reference.at("config").end(); ++it) theirs.insert(it.key());
  EXPECT_EQ(ours, theirs);
}

TEST(ModelTest, SummaryNamesEveryAdapter) {
  AdapterModel model = load_pretrained(model_dir("bert"));
  model->add_adapter("first", "seq_bn");
  model->add_adapter("second", "double_seq_bn[reduction_factor=8]", false, true);
  const auto rows = model->adapter_summary_rows();
  ASSERT_EQ(rows.size(), 2u);
  EXPECT_EQ(rows[0].name, "first");
  EXPECT_FALSE(rows[0].active);
  EXPECT_TRUE(rows[1].active);
  // seq_bn on hidden 32: 2 layers x (32*2 + 2 + 2*32 + 32) parameters.
  EXPECT_EQ(rows[0].parameters, 2 * (32 * 2 + 2 + 2 * 32 + 32));
  EXPECT_NEAR(rows[0].percent_of_base, 100.0 * rows[0].parameters / model->base_parameter_count(), 1e-9);
  const std::string text = model->adapter_summary();
  EXPECT_NE(text.find("first"), std::string::npos);
  EXPECT_NE(text.find("bottleneck"), std::string::npos);
}

TEST(ModelTest, PerLayerReductionFactor) {
  AdapterModel model = load_pretrained(model_dir("bert"));
  model->add_adapter("a", "seq_bn[reduction_factor={'1': 8, 'default': 16}]");
  const auto sd = model->adapter_state_dict("a");
  EXPECT_EQ(sd.at("bert.encoder.layer.0.output.adapters.a.adapter_down.0.weight").size(0), 2);
  EXPECT_EQ(sd.at("bert.encoder.layer.1.output.adapters.a.adapter_down.0.weight").size(0), 4);
}

TEST(ModelTest, LeaveOutSkipsLayers) {
  AdapterModel model = load_pretrained(model_dir("bert"));
  model->add_adapter("a", "double_seq_bn[leave_out=[0]]");
  for (const auto& [key, t] : model->adapter_state_dict("a")) EXPECT_EQ(key.find("layer.0."), std::string::npos) << key;
  EXPECT_EQ(model->adapter_state_dict("a").size(), 8u);
}

// ---- bad input ------------------------------------------------------------------------------

TEST(BadInput, UnknownAdapterInSetup) {
  AdapterModel model = load_pretrained(model_dir("bert"));
  model->add_adapter("a", "seq_bn");
  const std::string msg = error_of([&] { model->set_active_adapters("Stack(a, nope)"); });
  EXPECT_NE(msg.find("unknown adapter 'nope'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("known: a"), std::string::npos) << msg;
  EXPECT_FALSE(model->active_setup().has_value());
}

TEST(BadInput, ZeroSizedBottleneck) {
  AdapterModel model = load_pretrained(model_dir("bert"));
  const std::string msg = error_of([&] { model->add_adapter("a", "seq_bn[reduction_factor=64]"); });
  EXPECT_NE(msg.find("reduction_factor"), std::string::npos) << msg;
  EXPECT_NE(msg.find("size 0"), std::string::npos) << msg;
  EXPECT_FALSE(model->has_adapter("a"));
  EXPECT_TRUE(model->adapter_names().empty());
  for (const auto& item : model->named_parameters()) EXPECT_EQ(item.key().find(".adapters."), std::string::npos);
}

TEST(BadInput, UnknownAndWronglyTypedConfigKeys) {
  AdapterModel model = load_pretrained(model_dir("bert"));
  std::string msg = error_of([&] { model->add_adapter("a", "seq_bn[reduction_factr=8]"); });
  EXPECT_NE(msg.find("unknown key 'reduction_factr'"), std::string::npos) << msg;
  msg = error_of([&] { model->add_adapter("a", "seq_bn[ln_before=yes]"); });
  EXPECT_NE(msg.find("'ln_before' expects a boolean, found \"yes\""), std::string::npos) << msg;
  msg = error_of([&] { model->add_adapter("a", "seq_bn[non_linearity=wiggle]"); });
  EXPECT_NE(msg.find("unknown activation 'wiggle'"), std::string::npos) << msg;
  msg = error_of([&] { model->add_adapter("a", "seq_bnn"); });
  EXPECT_NE(msg.find("unknown config name 'seq_bnn'"), std::string::npos) << msg;
  msg = error_of([&] { model->add_adapter("a", "seq_bn[scaling=huge]"); });
  EXPECT_NE(msg.find("'scaling' expects a number, \"learned\" or \"channel\""), std::string::npos) << msg;
  EXPECT_TRUE(model->adapter_names().empty());
}

TEST(BadInput, DuplicateAdapterName) {
  AdapterModel model = load_pretrained(model_dir("bert"));
  model->add_adapter("a", "seq_bn");
  EXPECT_NE(error_of([&] { model->add_adapter("a", "seq_bn"); }).find("already exists"), std::string::npos);
  model->add_adapter("a", "double_seq_bn", true);
  EXPECT_EQ(model->adapter_config("a").values.at("mh_adapter"), true);
}

// Writes a modified copy of a saved adapter folder.
fs::path tampered_copy(const fs::path& src, const fs::path& dst, const std::function<void(json&, io::TensorMap&)>& edit) {
  fs::create_directories(dst);
  json config = json::parse(io::read_text_file(src / "adapter_config.json"));
  auto st = io::read_safetensors(src / "adapter.safetensors");
  edit(config, st.tensors);
  io::write_file_atomic(dst / "adapter_config.json", config.dump());
  io::write_safetensors(dst / "adapter.safetensors", st.tensors);
  return dst;
}

TEST(BadInput, BrokenAdapterFolders) {
  TempDir tmp;
  {
    AdapterModel model = load_pretrained(model_dir("bert"));
    model->add_adapter("a", "seq_bn");
    model->save_adapter(tmp / "good", "a");
  }
  const std::string missing_key = "bert.encoder.layer.1.output.adapters.a.adapter_up.bias";
  struct Case {
    const char* name;
    std::function<void(json&, io::TensorMap&)> edit;
    std::string expected;
  };
  const std::vector<Case> cases = {
      {"missing", [&](json&, io::TensorMap& t) { t.erase(missing_key); }, "lacks weights: " + missing_key},
      {"shape", [](json& c, io::TensorMap&) { c["config"]["reduction_factor"] = 8; }, "has shape [2], adapter 'a' expects [4]"},
      {"extra", [](json&, io::TensorMap& t) { t["bert.encoder.layer.0.output.adapters.a.extra"] = torch::zeros({1}); }, "does not have"},
      {"unknown_key", [](json& c, io::TensorMap&) { c["config"]["bogus"] = 1; }, "unknown key 'bogus'"},
      {"typed_key", [](json& c, io::TensorMap&) { c["config"]["mh_adapter"] = "no"; }, "'mh_adapter' expects a boolean"},
      {"hidden", [](json& c, io::TensorMap&) { c["hidden_size"] = 64; }, "hidden size 64, this model has 32"},
      {"int_weights", [&](json&, io::TensorMap& t) { t[missing_key] = t[missing_key].to(torch::kLong); }, "expected a floating-point tensor"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    AdapterModel model = load_pretrained(model_dir("bert"));
    const fs::path dir = tampered_copy(tmp / "good", tmp / c.name, c.edit);
    const std::string msg = error_of([&] { model->load_adapter(dir); });
    EXPECT_NE(msg.find(c.expected), std::string::npos) << msg;
    EXPECT_FALSE(model->has_adapter("a"));  // nothing half-loaded
    for (const auto& item : model->named_parameters()) EXPECT_EQ(item.key().find(".adapters."), std::string::npos);
  }
  AdapterModel model = load_pretrained(model_dir("bert"));
  EXPECT_NE(error_of([&] { model->load_adapter(tmp / "nowhere"); }).find("adapter_config.json: file not found"), std::string::npos);
}

TEST(BadInput, FailedSaveLeavesNoFolder) {
  TempDir tmp;
  AdapterModel model = load_pretrained(model_dir("bert"));
  model->add_adapter("a", "seq_bn");
  // A parent path that is a file: the save must fail and leave nothing behind.
  std::ofstream(tmp / "file") << "x";
  EXPECT_THROW(model->save_adapter(tmp / "file" / "a", "a"), std::exception);
  // Unknown adapter: nothing written at all.
  EXPECT_THROW(model->save_adapter(tmp / "b", "b"), Error);
  EXPECT_FALSE(fs::exists(tmp / "b"));
  std::vector<fs::path> left;
  for (const auto& e : fs::directory_iterator(tmp.path())) left.push_back(e.path().filename());
  EXPECT_EQ(left, std::vector<fs::path>{"file"});
}

TEST(BadInput, SaveIntoExistingFolderReplacesFilesWhole) {
  TempDir tmp;
  AdapterModel model = load_pretrained(model_dir("bert"));
  model->add_adapter("a", "seq_bn");
  model->save_adapter(tmp / "a", "a");
  randomize_adapter(model, "a");
  model->save_adapter(tmp / "a", "a");
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(tmp / "a")) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  EXPECT_EQ(names, (std::vector<std::string>{"adapter.safetensors", "adapter_config.json"}));
  AdapterModel fresh = load_pretrained(model_dir("bert"));
  fresh->load_adapter(tmp / "a");
  for (const auto& [key, t] : model->adapter_state_dict("a")) EXPECT_TRUE(torch::equal(t, fresh->adapter_state_dict("a").at(key)));
}

TEST(BadInput, BrokenModelFolders) {
  TempDir tmp;
  fs::create_directories(tmp / "m");
  json config = json::parse(io::read_text_file(model_dir("bert") / "config.json"));
  auto write_config = [&](const json& c) { io::write_file_atomic(tmp / "m" / "config.json", c.dump()); };

  write_config(config);
  EXPECT_NE(error_of([&] { load_pretrained(tmp / "m"); }).find("no model weights found"), std::string::npos);

  auto weights = io::read_safetensors(model_dir("bert") / "model.safetensors").tensors;
  weights.erase("bert.encoder.layer.1.output.dense.weight");
  io::write_safetensors(tmp / "m" / "model.safetensors", weights);
  EXPECT_NE(error_of([&] { load_pretrained(tmp / "m"); }).find("missing weights for bert.encoder.layer.1.output.dense.weight"),
            std::string::npos);

  weights["bert.encoder.layer.1.output.dense.weight"] = torch::zeros({32, 36});
  io::write_safetensors(tmp / "m" / "model.safetensors", weights);
  EXPECT_NE(error_of([&] { load_pretrained(tmp / "m"); }).find("has shape [32, 36], the bert model expects [32, 37]"),
            std::string::npos);

  json bad = config;
  bad["num_attention_heads"] = 5;
  write_config(bad);
  EXPECT_NE(error_of([&] { load_pretrained(tmp / "m"); }).find("hidden_size 32 is not divisible by num_attention_heads 5"),
            std::string::npos);
  bad = config;
  bad["hidden_size"] = "32";
  write_config(bad);
  EXPECT_NE(error_of([&] { load_pretrained(tmp / "m"); }).find("key 'hidden_size' expects an integer, found \"32\""),
            std::string::npos);
  bad = config;
  bad.erase("num_hidden_layers");
  write_config(bad);
  EXPECT_NE(error_of([&] { load_pretrained(tmp / "m"); }).find("missing key 'num_hidden_layers'"), std::string::npos);
  bad = config;
  bad["model_type"] = "mystery";
  write_config(bad);
  EXPECT_NE(error_of([&] { load_pretrained(tmp / "m"); }).find("model_type 'mystery' is not supported"), std::string::npos);
}

TEST(BadInput, ForwardInputs) {
  AdapterModel model = load_pretrained(model_dir("bert"));
  auto in = tiny_inputs();
  in.input_ids[0][0] = 99;
  const std::string msg = error_of([&] { model->forward(in); });
  EXPECT_NE(msg.find("input_ids must lie in [0, 99), found [3, 99]"), std::string::npos) << msg;
  in = tiny_inputs();
  in.attention_mask = torch::ones({2, 7}, torch::kLong);
  EXPECT_NE(error_of([&] { model->forward(in); }).find("attention_mask must have the shape of input_ids"), std::string::npos);
}

TEST(BadInput, ModelPrefixIsOptional) {
  // A checkpoint saved from the bare base model (keys without "bert.") loads the same.
  TempDir tmp;
  fs::create_directories(tmp / "m");
  fs::copy_file(model_dir("bert") / "config.json", tmp / "m" / "config.json");
  io::TensorMap bare;
  for (const auto& [k, t] : io::read_safetensors(model_dir("bert") / "model.safetensors").tensors) bare[k.substr(5)] = t;
  io::write_safetensors(tmp / "m" / "model.safetensors", bare);
  AdapterModel a = load_pretrained(model_dir("bert"));
  AdapterModel b = load_pretrained(tmp / "m");
  EXPECT_TRUE(torch::equal(hidden(a, tiny_inputs()), hidden(b, tiny_inputs())));
}

}  // namespace
}  // namespace adapters::test
