// Prefix tuning and prompt tuning by their properties: save/load round trips, ejection, flat vs
// reparametrised prefixes, leave_out, gating, masking, configs and their errors.
#include <gtest/gtest.h>

#include "adapters/io/tensors.h"
#include "adapters/methods/adapter_config.h"
#include "adapters/model.h"
#include "test_util.h"

namespace adapters::test {
namespace {

AdapterModel bert() { return load_pretrained(model_dir("bert")); }

// One row of tiny_inputs() without its padding: (1,n).
models::ModelInputs first_tokens(const models::ModelInputs& in, std::int64_t row, std::int64_t n) {
  return {in.input_ids.narrow(0, row, 1).narrow(1, 0, n).contiguous(), torch::ones({1, n}, torch::kLong), torch::Tensor()};
}

void expect_round_trip(AdapterModel& model, const std::string& name, const std::string& base_arch = "bert") {
  const auto in = tiny_inputs();
  model->set_active_adapters(name);
  const torch::Tensor before = hidden(model, in);
  TempDir tmp;
  model->save_adapter(tmp / "saved", name);
  AdapterModel other = load_pretrained(model_dir(base_arch));
  other->load_adapter(tmp / "saved", "", WeightsPreference::Safetensors, true);
  EXPECT_EQ(other->adapter_config(name), model->adapter_config(name));
  EXPECT_TRUE(torch::equal(hidden(other, in), before));
}

// ---- prefix tuning --------------------------------------------------------------------------

TEST(PrefixTuning, PlacesThePoolUnderTheBaseModelWithTheReferenceKeys) {
  AdapterModel model = bert();
  model->add_adapter("a", "prefix_tuning[prefix_length=5,bottleneck_size=16]");
  std::map<std::string, std::vector<std::int64_t>> shapes;
  for (const auto& [k, t] : model->adapter_state_dict("a")) shapes[k] = t.sizes().vec();
  const std::string p = "bert.prefix_tuning.prefix_tunings.a.self_prefix.";
  const std::map<std::string, std::vector<std::int64_t>> expected = {
      {p + "wte.weight", {5, 32}},
      {p + "control_trans.0.weight", {16, 32}},
      {p + "control_trans.0.bias", {16}},
      {p + "control_trans.2.weight", {2 * 2 * 32, 16}},
      {p + "control_trans.2.bias", {2 * 2 * 32}}};
  EXPECT_EQ(shapes, expected);
}

TEST(PrefixTuning, SaveLoadRoundTripIsBitIdenticalAndWritesThePoolOnce) {
  for (const std::string config : {"prefix_tuning[prefix_length=5,bottleneck_size=16]", "prefix_tuning_flat[prefix_length=3]",
                                   "prefix_tuning[prefix_length=4,bottleneck_size=8,use_gating=True,shared_gating=False]"}) {
    SCOPED_TRACE(config);
    AdapterModel model = bert();
    model->add_adapter("a", config);
    randomize_adapter(model, "a");
    expect_round_trip(model, "a");
    TempDir tmp;
    model->save_adapter(tmp / "saved", "a");
    const auto saved = io::read_safetensors(tmp / "saved" / "adapter.safetensors");
    EXPECT_EQ(saved.tensors.size(), model->adapter_state_dict("a").size());
    const json aliases = json::parse(saved.metadata.at("aliases"));
    std::size_t pool_tensors = 0;
    for (const auto& [k, t] : saved.tensors) pool_tensors += k.rfind("bert.prefix_tuning.", 0) == 0;
    ASSERT_EQ(aliases.size(), 2 * pool_tensors);  // every pool tensor again in each of the 2 layers
    for (auto it = aliases.begin(); it != aliases.end(); ++it) {
      EXPECT_NE(it.key().find(".attention.self.prefix_tuning.pool.prefix_tunings.a."), std::string::npos) << it.key();
      EXPECT_TRUE(saved.tensors.count(it.value().get<std::string>())) << it.value();
    }
  }
}

TEST(PrefixTuning, LoadAsRenamesPoolAndGates) {
  AdapterModel model = bert();
  model->add_adapter("a", "prefix_tuning[prefix_length=4,bottleneck_size=8,use_gating=True]", false, true);
  randomize_adapter(model, "a");
  const torch::Tensor before = hidden(model, tiny_inputs());
  TempDir tmp;
  model->save_adapter(tmp / "saved", "a");
  AdapterModel other = bert();
  other->load_adapter(tmp / "saved", "b", WeightsPreference::Safetensors, true);
  EXPECT_EQ(other->adapter_state_dict("b").size(), model->adapter_state_dict("a").size());
  EXPECT_TRUE(torch::equal(hidden(other, tiny_inputs()), before));
}

TEST(PrefixTuning, EjectGivesAFlatPrefixWithIdenticalOutputs) {
  AdapterModel model = bert();
  model->add_adapter("a", "prefix_tuning[prefix_length=5,bottleneck_size=24]", false, true);
  randomize_adapter(model, "a");
  const torch::Tensor before = hidden(model, tiny_inputs());
  model->eject_prefix_tuning("a");
  EXPECT_TRUE(torch::equal(hidden(model, tiny_inputs()), before));
  EXPECT_EQ(model->adapter_config("a").values.at("flat"), true);
  const auto state = model->adapter_state_dict("a");
  ASSERT_EQ(state.size(), 1u);
  EXPECT_EQ(state.begin()->first, "bert.prefix_tuning.prefix_tunings.a.self_prefix.control_trans");
  EXPECT_EQ(state.begin()->second.sizes(), (std::vector<std::int64_t>{5 * 2 * 2 * 32}));
  expect_round_trip(model, "a");
}

TEST(PrefixTuning, EjectRejectsOtherMethods) {
  AdapterModel model = bert();
  model->add_adapter("b", "seq_bn");
  EXPECT_NE(error_of([&] { model->eject_prefix_tuning("b"); }).find("expected a prefix_tuning adapter"), std::string::npos);
  EXPECT_NE(error_of([&] { model->eject_prefix_tuning("zzz"); }).find("no adapter named 'zzz'"), std::string::npos);
}

TEST(PrefixTuning, FlatEqualsReparametrisedWithTheSameStates) {
  AdapterModel reparam = bert();
  reparam->add_adapter("a", "prefix_tuning[prefix_length=3,bottleneck_size=8]", false, true);
  randomize_adapter(reparam, "a");
  const torch::Tensor expected = hidden(reparam, tiny_inputs());
  TempDir tmp;
  reparam->eject_prefix_tuning("a");
  reparam->save_adapter(tmp / "flat", "a");
  AdapterModel flat = bert();
  flat->add_adapter("a", "prefix_tuning_flat[prefix_length=3]", false, true);
  flat->load_adapter_state_dict("a", io::read_safetensors(tmp / "flat" / "adapter.safetensors").tensors, "test");
  EXPECT_TRUE(torch::allclose(hidden(flat, tiny_inputs()), expected, 1e-6, 1e-6));
}

TEST(PrefixTuning, LeaveOutSkipsLayersAndShrinksThePool) {
  AdapterModel model = bert();
  model->add_adapter("a", "prefix_tuning_flat[prefix_length=3,leave_out=[1]]", false, true);
  const auto state = model->adapter_state_dict("a");
  ASSERT_EQ(state.size(), 1u);
  EXPECT_EQ(state.begin()->second.numel(), 3 * 1 * 2 * 32);  // one layer holds the prefix
  EXPECT_NE(model->base().sites().attention[0]->adapter("a"), nullptr);
  EXPECT_EQ(model->base().sites().attention[1]->adapter("a"), nullptr);
  EXPECT_NE(error_of([&] { model->add_adapter("b", "prefix_tuning[leave_out=[0,1]]"); }).find("placed in no attention layer"),
            std::string::npos);
  EXPECT_FALSE(model->has_adapter("b"));
}

TEST(PrefixTuning, PaddingStaysMaskedAndPrefixIsAttended) {
  AdapterModel model = bert();
  model->add_adapter("a", "prefix_tuning[prefix_length=4,bottleneck_size=8]", false, true);
  randomize_adapter(model, "a");
  const auto in = tiny_inputs();  // row 1 has 5 real tokens, then padding
  const torch::Tensor padded = hidden(model, in).narrow(0, 1, 1).narrow(1, 0, 5);
  const torch::Tensor alone = hidden(model, first_tokens(in, 1, 5));
  EXPECT_TRUE(torch::allclose(padded, alone, 1e-5, 1e-5));
  // Without a mask the prefix still applies.
  models::ModelInputs no_mask{in.input_ids, torch::Tensor(), torch::Tensor()};
  model->deactivate_adapters();
  const torch::Tensor plain = hidden(model, no_mask);
  model->set_active_adapters("a");
  EXPECT_GT((hidden(model, no_mask) - plain).abs().max().item<double>(), 1e-3);
}

TEST(PrefixTuning, GatingHasReferenceKeysAndReportsScores) {
  AdapterModel model = bert();
  model->add_adapter("a", "prefix_tuning[prefix_length=4,bottleneck_size=8,use_gating=True,shared_gating=False]", false, true);
  const auto state = model->adapter_state_dict("a");
  for (int layer : {0, 1}) {
    const std::string g = str("bert.encoder.layer.", layer, ".attention.self.prefix_tuning.prefix_gates.a.");
    ASSERT_TRUE(state.count(g + "weight")) << g;
    EXPECT_EQ(state.at(g + "weight").sizes(), (std::vector<std::int64_t>{2, 32}));
    EXPECT_EQ(state.at(g + "bias").sizes(), (std::vector<std::int64_t>{2}));
  }
  torch::NoGradGuard no_grad;
  ForwardOptions options;
  options.output_gating_scores = true;
  const ModelOutput out = model->forward(tiny_inputs(), options);
  for (std::int64_t layer : {0, 1}) {
    const torch::Tensor& s = out.gating_scores.at("a").at(layer).at("self_prefix");
    EXPECT_EQ(s.sizes(), (std::vector<std::int64_t>{2, 2}));
    EXPECT_TRUE(((s > 0) & (s < 1)).all().item<bool>());
  }
}

TEST(PrefixTuning, WorksOnDistilBertWithItsLocationName) {
  AdapterModel model = load_pretrained(model_dir("distilbert"));
  model->add_adapter("a", "prefix_tuning[prefix_length=3,bottleneck_size=8]", false, true);
  randomize_adapter(model, "a");
  EXPECT_TRUE(model->adapter_state_dict("a").count("distilbert.prefix_tuning.prefix_tunings.a.self.wte.weight"));
  expect_round_trip(model, "a", "distilbert");
}

TEST(PrefixTuning, TrainsOnlyThePrefix) {
  AdapterModel model = bert();
  model->add_adapter("a", "prefix_tuning[prefix_length=3,bottleneck_size=8]");
  model->train_adapter("a");
  model->forward(tiny_inputs()).last_hidden_state.sum().backward();
  for (const auto& item : model->named_parameters()) {
    const bool ours = item.key().find(".prefix_tunings.a.") != std::string::npos;
    EXPECT_EQ(item.value().grad().defined(), ours) << item.key();
  }
}

TEST(PrefixTuning, ConfigPresetsAndRoundTrip) {
  const auto flat = methods::AdapterConfig::parse("prefix_tuning_flat");
  EXPECT_EQ(flat.method, "prefix_tuning");
  EXPECT_EQ(flat.values.at("flat"), true);
  EXPECT_EQ(flat.values.at("prefix_length"), 30);
  EXPECT_EQ(flat.values.at("architecture"), "prefix_tuning");
  EXPECT_EQ(methods::AdapterConfig::from_json(flat.values, "test"), flat);
}

TEST(PrefixTuning, RejectsBadOptionsNamingThem) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"prefix_tuning[prefix_length=0]", "prefix_length"},
      {"prefix_tuning[bottleneck_size=0]", "bottleneck_size"},
      {"prefix_tuning[prefix_length='x']", "prefix_length"},
      {"prefix_tuning[flat=3]", "flat"},
      {"prefix_tuning[dropout=1.5]", "dropout"},
      {"prefix_tuning[non_linearity=nope]", "non_linearity"},
      {"prefix_tuning[leave_out=3]", "leave_out"},
      {"prefix_tuning[prefix_len=3]", "prefix_len"},
  };
  for (const auto& [spec, option] : cases) {
    const std::string message = error_of([&] { methods::AdapterConfig::parse(spec); });
    EXPECT_NE(message.find(option), std::string::npos) << spec << " -> " << message;
  }
}

// ---- prompt tuning --------------------------------------------------------------------------

TEST(PromptTuning, PrependsSoftTokensAndExtendsTheMask) {
  AdapterModel model = bert();
  model->add_adapter("p", "prompt_tuning[prompt_length=3]", false, true);
  const auto in = tiny_inputs();
  const torch::Tensor out = hidden(model, in);
  EXPECT_EQ(out.sizes(), (std::vector<std::int64_t>{2, 8 + 3, 32}));
  // Row 1's padding stays masked: its real positions equal the unpadded row's.
  const torch::Tensor alone = hidden(model, first_tokens(in, 1, 5));
  EXPECT_TRUE(torch::allclose(out.narrow(0, 1, 1).narrow(1, 0, 3 + 5), alone, 1e-5, 1e-5));
  EXPECT_EQ(model->adapter_state_dict("p").count("bert.prompt_tuning.prompt_tunings.p.prompt_embedding.weight"), 1u);
}

TEST(PromptTuning, PrefixAfterBosKeepsTheFirstToken) {
  AdapterModel model = bert();
  model->add_adapter("p", "prompt_tuning[prompt_length=2,combine=prefix_after_bos]", false, true);
  const auto in = tiny_inputs();
  const torch::Tensor out = hidden(model, in);
  EXPECT_EQ(out.sizes(), (std::vector<std::int64_t>{2, 8 + 2, 32}));
  const torch::Tensor alone = hidden(model, first_tokens(in, 1, 5));
  EXPECT_TRUE(torch::allclose(out.narrow(0, 1, 1).narrow(1, 0, 2 + 5), alone, 1e-5, 1e-5));
}

TEST(PromptTuning, SaveLoadRoundTripIsBitIdentical) {
  AdapterModel model = bert();
  model->add_adapter("p", "prompt_tuning[prompt_length=4]");
  expect_round_trip(model, "p");
}

TEST(PromptTuning, FromStringCopiesTheWordEmbeddingsOfTheTokenIds) {
  AdapterModel model = bert();
  model->add_adapter("p", "prompt_tuning[prompt_length=5,prompt_init=from_string,prompt_init_text=[7,8,9]]");
  const torch::Tensor words = model->named_parameters()["bert.embeddings.word_embeddings.weight"];
  const torch::Tensor expected = words.index_select(0, torch::tensor({7, 8, 9, 7, 8}, torch::kLong));
  EXPECT_TRUE(torch::equal(model->adapter_state_dict("p").begin()->second, expected));
  try {
    model->add_adapter("q", "prompt_tuning[prompt_init=from_string,prompt_init_text='a text']");
    FAIL() << "a text needs a tokenizer";
  } catch (const NotSupported& e) {
    EXPECT_NE(std::string(e.what()).find("tokenizer"), std::string::npos);
  }
}

TEST(PromptTuning, GradientsReachOnlyThePrompt) {
  AdapterModel model = bert();
  model->add_adapter("p", "prompt_tuning[prompt_length=3]");
  model->train_adapter("p");
  model->forward(tiny_inputs()).last_hidden_state.sum().backward();
  for (const auto& item : model->named_parameters()) {
    const bool ours = item.key() == "bert.prompt_tuning.prompt_tunings.p.prompt_embedding.weight";
    EXPECT_EQ(item.value().grad().defined(), ours) << item.key();
    if (ours) EXPECT_GT(item.value().grad().abs().sum().item<double>(), 0.0);
  }
}

TEST(PromptTuning, RejectsBadOptionsNamingThem) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"prompt_tuning[prompt_length=0]", "prompt_length"},
      {"prompt_tuning[prompt_init=zeros]", "prompt_init"},
      {"prompt_tuning[prompt_init=from_string]", "prompt_init_text"},
      {"prompt_tuning[prompt_init_text=[1, 'x']]", "prompt_init_text"},
      {"prompt_tuning[combine=suffix]", "combine"},
      {"prompt_tuning[random_uniform_scale=0.1]", "random_uniform_scale"},
  };
  for (const auto& [spec, option] : cases) {
    const std::string message = error_of([&] { methods::AdapterConfig::parse(spec); });
    EXPECT_NE(message.find(option), std::string::npos) << spec << " -> " << message;
  }
  AdapterModel model = bert();
  EXPECT_NE(error_of([&] { model->add_adapter("p", "prompt_tuning[prompt_init=from_string,prompt_init_text=[500]]"); })
                .find("outside [0, 99)"),
            std::string::npos);
}

}  // namespace
}  // namespace adapters::test
