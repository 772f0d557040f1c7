// Adapter config strings and presets, and the setup-string parser.
#include <gtest/gtest.h>

#include "adapters/composition/setup.h"
#include "adapters/methods/adapter_config.h"
#include "adapters/models/config.h"
#include "test_util.h"

namespace adapters::test {
namespace {

using methods::AdapterConfig;

TEST(AdapterConfigTest, PresetsMatchTheReferenceConfigs) {
  // Every bottleneck case of the reference: the preset named by config_id gives its exact config.
  const std::map<std::string, std::string> cases = {{"bert__pfeiffer", "pfeiffer"},
                                                    {"bert__houlsby", "houlsby"},
                                                    {"bert__parallel", "parallel"},
                                                    {"bert__scaled_parallel", "scaled_parallel"}};
  for (const auto& [case_name, preset] : cases) {
    const json spec = json::parse(io::read_text_file(fixtures_root() / "cases" / case_name / "case.json"));
    const json& expected = spec.at("adapters").at(0).at("config");
    EXPECT_EQ(AdapterConfig::parse(preset).values, expected) << preset;
    EXPECT_EQ(AdapterConfig::from_json(expected, "test").values, expected) << preset;
  }
}

TEST(AdapterConfigTest, NewAndLegacyNamesAgree) {
  EXPECT_EQ(AdapterConfig::parse("seq_bn"), AdapterConfig::parse("pfeiffer"));
  EXPECT_EQ(AdapterConfig::parse("double_seq_bn"), AdapterConfig::parse("houlsby"));
  EXPECT_EQ(AdapterConfig::parse("par_bn"), AdapterConfig::parse("parallel"));
  EXPECT_EQ(AdapterConfig::parse("scaled_par_bn"), AdapterConfig::parse("scaled_parallel"));
  EXPECT_NE(AdapterConfig::parse("seq_bn"), AdapterConfig::parse("double_seq_bn"));
}

TEST(AdapterConfigTest, OverridesParseLiterals) {
  const auto c = AdapterConfig::parse("seq_bn[reduction_factor=8, non_linearity=gelu, ln_before=True, leave_out=[0, 1], "
                                      "scaling=0.5, use_gating=false]");
  EXPECT_EQ(c.method, "bottleneck");
  EXPECT_EQ(c.values.at("reduction_factor"), 8);
  EXPECT_EQ(c.values.at("non_linearity"), "gelu");
  EXPECT_EQ(c.values.at("ln_before"), true);
  EXPECT_EQ(c.values.at("leave_out"), json::array({0, 1}));
  EXPECT_EQ(c.values.at("scaling"), 0.5);
  const auto per_layer = AdapterConfig::parse("pfeiffer[reduction_factor={'0': 2, '1': 8, 'default': 16}]");
  EXPECT_EQ(per_layer.values.at("reduction_factor"), json::parse(R"({"0": 2, "1": 8, "default": 16})"));
  EXPECT_EQ(AdapterConfig::parse("seq_bn[scaling=channel]").values.at("scaling"), "channel");
  EXPECT_EQ(AdapterConfig::parse("seq_bn[residual_before_ln=post_add]").values.at("residual_before_ln"), "post_add");
  EXPECT_EQ(AdapterConfig::parse("seq_bn[dropout=0.1]").values.at("dropout"), 0.1);
  EXPECT_FALSE(AdapterConfig::parse("seq_bn").values.contains("dropout"));
}

TEST(AdapterConfigTest, BadStrings) {
  EXPECT_NE(error_of([] { AdapterConfig::parse("seq_bn[reduction_factor]"); }).find("expected key=value"), std::string::npos);
  EXPECT_NE(error_of([] { AdapterConfig::parse("seq_bn[reduction_factor=8"); }).find("expected ']'"), std::string::npos);
  EXPECT_NE(error_of([] { AdapterConfig::parse("seq_bn[reduction_factor=-1]"); }).find("positive number"), std::string::npos);
  EXPECT_NE(error_of([] { AdapterConfig::parse("seq_bn[reduction_factor='x']"); }).find("reduction_factor"), std::string::npos);
  EXPECT_NE(error_of([] { AdapterConfig::parse("seq_bn[mh_adapter=false,output_adapter=false]"); }).find("placed nowhere"),
            std::string::npos);
  EXPECT_NE(error_of([] { AdapterConfig::parse("seq_bn[init_weights=zeros]"); }).find("'init_weights' expects"), std::string::npos);
  EXPECT_NE(error_of([] { AdapterConfig::parse("seq_bn[residual_before_ln=post_add,original_ln_before=false]"); })
                .find("post_add"),
            std::string::npos);
}

TEST(AdapterConfigTest, EveryReferencePresetParses) {
  for (const char* name : {"seq_bn", "pfeiffer", "double_seq_bn", "houlsby", "par_bn", "parallel", "scaled_par_bn",
                           "scaled_parallel", "seq_bn_inv", "pfeiffer+inv", "double_seq_bn_inv", "houlsby+inv",
                           "compacter", "compacter++", "prefix_tuning", "prefix_tuning_flat", "prompt_tuning", "lora",
                           "ia3", "vera", "dora", "loreft", "noreft", "direft", "mam", "unipelt"}) {
    EXPECT_NO_THROW(AdapterConfig::parse(name)) << name;
  }
}

TEST(AdapterConfigTest, UnknownArchitectureIsBadInput) {
  const std::string msg = error_of([] { AdapterConfig::from_json(json{{"architecture", "nonsense"}}, "x"); });
  EXPECT_NE(msg.find("unknown adapter architecture \"nonsense\""), std::string::npos) << msg;
  try {
    AdapterConfig::from_json(json{{"architecture", "nonsense"}}, "x");
  } catch (const NotSupported&) {
    ADD_FAILURE() << "a made-up architecture is bad input, not an unsupported feature";
  } catch (const Error&) {
  }
}

TEST(SetupTest, ParsesAndRoundTrips) {
  using composition::parse;
  for (const char* text : {"a", "Stack(a, b)", "Fuse(a, b, c)", "Stack(a, Fuse(b, c))", "Split(a, b, split_index=3)",
                           "BatchSplit(a, b, batch_sizes=[1, 2])", "Parallel(a, b)", "Average(a, b, weights=[0.7, 0.3])",
                           "Stack(lang, Parallel(x, y))"}) {
    const auto block = parse(text);
    EXPECT_EQ(block.to_string(), text);
    EXPECT_EQ(parse(block.to_string()), block);
  }
  const auto b = parse("  Stack( a ,Fuse(b,c) ) ");
  EXPECT_EQ(b.flatten(), (std::vector<std::string>{"a", "b", "c"}));
  EXPECT_EQ(b.first(), "a");
  EXPECT_EQ(b.last(), "c");
  EXPECT_EQ(b.children[1].fusion_name(), "b,c");
  EXPECT_EQ(composition::normalize_active(parse("a")).to_string(), "Stack(a)");
}

TEST(SetupTest, ErrorsNameThePosition) {
  using composition::parse;
  EXPECT_NE(error_of([] { parse("Stack(a, b"); }).find("expected ',' or ')' at position 10"), std::string::npos);
  EXPECT_NE(error_of([] { parse("Stak(a)"); }).find("unknown block 'Stak'"), std::string::npos);
  EXPECT_NE(error_of([] { parse("Split(a, b, split_index=x)"); }).find("expected a number at position 24"), std::string::npos);
  EXPECT_NE(error_of([] { parse("Stack(a, b, weights=[1])"); }).find("unknown option 'weights' for Stack"), std::string::npos);
  EXPECT_NE(error_of([] { parse("Stack()"); }).find("needs at least one member"), std::string::npos);
  EXPECT_NE(error_of([] { parse("a b"); }).find("unexpected 'b' after the setup at position 2"), std::string::npos);
}

TEST(ModelConfigTest, KeyTableMapsEverySpelling) {
  const auto bert = models::load_model_config(model_dir("bert") / "config.json");
  const auto distil = models::load_model_config(model_dir("distilbert") / "config.json");
  EXPECT_EQ(bert.hidden_size, 32);
  EXPECT_EQ(distil.hidden_size, 32);
  EXPECT_EQ(distil.num_attention_heads, bert.num_attention_heads);
  EXPECT_EQ(distil.num_hidden_layers, bert.num_hidden_layers);
  EXPECT_EQ(distil.intermediate_size, 37);
  EXPECT_EQ(distil.hidden_dropout_prob, 0.1);
  EXPECT_EQ(distil.attention_probs_dropout_prob, 0.1);
  EXPECT_EQ(distil.hidden_act, "gelu");
}

}  // namespace

// Input that drives recursion is bounded where it is read: a JSON document nested past 128 levels
// (copying or printing it would overflow the stack) is refused naming the file; a setup string
// nested past 32 blocks is refused, its message quoting an excerpt, not the whole input.
TEST(Hardening, DeeplyNestedJsonIsRefusedNamingTheFile) {
  TempDir tmp;
  const std::size_t depth = 1000000;
  io::write_file_atomic(tmp / "config.json", "{\"model_type\": \"bert\", \"x\": " + std::string(depth, '[') +
                                                 std::string(depth, ']') + "}");
  const std::string e = error_of([&] { models::load_model_config(tmp / "config.json"); });
  EXPECT_NE(e.find("nested deeper than 128 levels"), std::string::npos) << e.substr(0, 300);
  EXPECT_NE(e.find((tmp / "config.json").string()), std::string::npos) << e.substr(0, 300);
  EXPECT_LT(e.size(), 600u);
  // 100 levels are still read.
  io::write_file_atomic(tmp / "ok.json", "{\"model_type\": \"bert\", \"x\": " + std::string(100, '[') + std::string(100, ']') + "}");
  EXPECT_NO_THROW(parse_json_file_text(io::read_text_file(tmp / "ok.json"), "ok.json"));
}

TEST(Hardening, DeeplyNestedSetupStringsAreRefusedWithAnExcerpt) {
  std::string setup;
  for (int i = 0; i < 100000; ++i) setup += "Stack(";
  setup += "a" + std::string(100000, ')');
  const std::string e = error_of([&] { composition::parse(setup); });
  EXPECT_NE(e.find("nested deeper than 32 levels"), std::string::npos) << e.substr(0, 300);
  EXPECT_LT(e.size(), 400u);
  EXPECT_NO_THROW(composition::parse("Stack(Fuse(a, b), Parallel(c, Stack(d, e)))"));
}


// A config.json claiming sizes its checkpoint does not hold is refused before the model is built:
// vocab_size 10^9 on the tiny BERT would otherwise allocate 128 GB.
TEST(Hardening, AConfigClaimingSizesItsCheckpointLacksIsRefusedBeforeBuilding) {
  TempDir tmp;
  fs::copy(model_dir("bert"), tmp / "m", fs::copy_options::recursive);
  json config = json::parse(io::read_text_file(tmp / "m" / "config.json"));
  for (const auto& [key, value] : {std::pair<const char*, std::int64_t>{"vocab_size", 1000000000}, {"hidden_size", 4096},
                                   {"intermediate_size", 1 << 20}, {"num_hidden_layers", 100000}}) {
    json edited = config;
    edited[key] = value;
    io::write_file_atomic(tmp / "m" / "config.json", edited.dump());
    const std::string e = error_of([&] { load_pretrained(tmp / "m"); });
    EXPECT_NE(e.find((tmp / "m" / "config.json").string()), std::string::npos) << e;
    EXPECT_NE(e.find(key == std::string("num_hidden_layers") ? "at most 4096 layers" : key), std::string::npos) << e;
  }
  io::write_file_atomic(tmp / "m" / "config.json", config.dump());
  EXPECT_NO_THROW(load_pretrained(tmp / "m"));
}


// Sizes in adapter and head configs are bounded before anything is allocated: a rank, bottleneck,
// prefix length or label count of 10^9 is refused naming the key.
TEST(Hardening, AdapterAndHeadSizesAreBounded) {
  AdapterModel model = load_pretrained(model_dir("bert"));
  for (const auto& [spec, key] : {std::pair<const char*, const char*>{"lora[r=1000000000]", "'r'"},
                                  {"prefix_tuning[prefix_length=1000000000]", "'prefix_length'"},
                                  {"prompt_tuning[prompt_length=1000000000]", "'prompt_length'"},
                                  {"loreft[r=1000000000]", "'r'"},
                                  {"seq_bn[reduction_factor=0.00000001]", "reduction_factor"}}) {
    const std::string e = error_of([&] { model->add_adapter("x", spec); });
    EXPECT_NE(e.find(key), std::string::npos) << spec << ": " << e;
    EXPECT_FALSE(model->has_adapter("x")) << spec;
  }
  EXPECT_NE(error_of([&] { model->add_classification_head("h", 1000000000); }).find("num_labels / num_choices must be at most 1048576"),
            std::string::npos);
  EXPECT_NE(error_of([&] { model->add_head("h", "masked_lm", {{"vocab_size", 1000000000}}); }).find("'vocab_size' must be an integer in [1, 1048576]"),
            std::string::npos);
  EXPECT_NE(error_of([&] { model->add_head("h", "classification", {{"num_labels", 2}, {"layers", 1000000}}); }).find("'layers'"),
            std::string::npos);
  model->add_adapter("ok", "lora[r=8]");
}

}  // namespace adapters::test
