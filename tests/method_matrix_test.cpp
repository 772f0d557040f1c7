// The arch x method matrix: every adapter method on every architecture, checked for the
// properties every method must have: the save/load round trip is bit-identical, averaging two
// copies of one adapter with weights (0.5, 0.5) reproduces it, deleting restores the plain model;
// methods that start as the identity leave the outputs unchanged, and mergeable ones compute the
// same merged and unmerged.
#include <gtest/gtest.h>

#include "test_util.h"

namespace adapters::test {
namespace {

struct MethodCase {
  const char* spec;
  bool identity_at_init;  // the reference's initialisation makes the adapter a no-op
  bool mergeable;         // merge_adapter folds it into the base weights
};

// clang-format off
const std::vector<MethodCase>& method_cases() {
  static const std::vector<MethodCase> cases = {
    {"seq_bn",                   false, false},
    {"double_seq_bn",            false, false},
    {"par_bn",                   true,  false},
    {"scaled_par_bn",            true,  false},
    {"seq_bn[scaling=channel,use_gating=true,ln_before=true,ln_after=true]", false, false},
    // The presets' reduction factor 32 gives a bottleneck of 1 on hidden 32, which phm_dim 4
    // cannot divide (the reference rejects it too): use 8.
    {"compacter[reduction_factor=8]",   false, false},
    {"compacter++[reduction_factor=8]", false, false},
    {"seq_bn_inv",               false, false},
    {"double_seq_bn_inv",        false, false},
    {"prefix_tuning",            false, false},
    {"prefix_tuning_flat",       false, false},
    {"prompt_tuning",            false, false},
    {"lora",                     true,  true},
    {"lora[use_rslora=true,r=4,alpha=16,attn_matrices=['q','k','v'],intermediate_lora=true,output_lora=true]", true, true},
    {"ia3",                      true,  true},
    {"vera",                     true,  true},
    {"dora",                     true,  true},
    {"loreft",                   false, false},
    {"noreft",                   false, false},
    {"direft",                   false, false},
    {"mam",                      false, false},
    {"unipelt",                  false, false},
    {"prefix_tuning|lora",       false, false},
  };
  return cases;
}
// clang-format on

void PrintTo(const MethodCase& m, std::ostream* os) { *os << m.spec; }

// Combinations refused with a clear error, tested where the refusal is: BEiT's relative position
// bias has no place for prompt tokens (tests/vision_test.cpp), nor has a generating model's cache
// (the decoders and encoder-decoders); VeRA and DoRA do not support fused projections yet, and
// DeBERTa's in_proj and GPT-2's c_attn are ones (tests/architecture_test.cpp).
bool refused(const std::string& arch, const std::string& spec) {
  const bool generative = arch == "gpt2" || arch == "gptj" || arch == "bart" || arch == "mbart" || arch == "t5" ||
                          arch == "llama" || arch == "mistral" || arch == "qwen2" || arch == "gemma";
  return ((arch == "beit" || generative) && spec == "prompt_tuning") ||
         ((arch == "deberta" || arch == "gpt2") && (spec == "vera" || spec == "dora"));
}

using Param = std::tuple<std::string, MethodCase>;

class MethodMatrix : public ::testing::TestWithParam<Param> {
 protected:
  AdapterModel load() { return load_pretrained(model_dir(std::get<0>(GetParam()))); }
  models::ModelInputs inputs() const { return inputs_for(std::get<0>(GetParam())); }
  const MethodCase& method() { return std::get<1>(GetParam()); }
  void SetUp() override {
    if (refused(std::get<0>(GetParam()), method().spec)) GTEST_SKIP() << "refused by the architecture (tested apart)";
  }
};

bool same(const torch::Tensor& a, const torch::Tensor& b) { return a.sizes() == b.sizes() && torch::equal(a, b); }

TEST_P(MethodMatrix, IdentityInitLeavesOutputsUnchanged) {
  if (!method().identity_at_init) GTEST_SKIP() << "not identity-initialised";
  AdapterModel model = load();
  const torch::Tensor base = hidden(model, inputs());
  model->add_adapter("a", method().spec, false, true);
  EXPECT_LT((hidden(model, inputs()) - base).abs().max().item<double>(), 1e-6);
}

TEST_P(MethodMatrix, ActiveAdapterChangesOutputsAndDeleteRestores) {
  AdapterModel model = load();
  const torch::Tensor base = hidden(model, inputs());
  model->add_adapter("a", method().spec, false, true);
  randomize_adapter(model, "a", 0.2);
  const torch::Tensor with = hidden(model, inputs());
  EXPECT_FALSE(same(with, base));
  model->delete_adapter("a");
  EXPECT_TRUE(same(hidden(model, inputs()), base));
}

TEST_P(MethodMatrix, SaveLoadRoundTripIsBitIdentical) {
  AdapterModel model = load();
  TempDir tmp;
  model->add_adapter("a", method().spec, false, true);
  randomize_adapter(model, "a", 0.2);
  const torch::Tensor before = hidden(model, inputs());
  model->save_adapter(tmp / "a", "a");
  AdapterModel fresh = load();
  fresh->load_adapter(tmp / "a", "", WeightsPreference::Safetensors, true);
  EXPECT_EQ(fresh->adapter_config("a"), model->adapter_config("a"));
  const auto saved = model->adapter_state_dict("a");
  const auto loaded = fresh->adapter_state_dict("a");
  ASSERT_EQ(saved.size(), loaded.size());
  for (const auto& [key, t] : saved) EXPECT_TRUE(same(t, loaded.at(key))) << key;
  EXPECT_TRUE(same(hidden(fresh, inputs()), before));
}

TEST_P(MethodMatrix, AveragingTwoCopiesReproducesTheAdapter) {
  AdapterModel model = load();
  model->add_adapter("a", method().spec);
  randomize_adapter(model, "a", 0.2);
  model->average_adapter("avg", {"a", "a"}, {0.5, 0.5});
  const auto a = model->adapter_state_dict("a");
  const auto avg = model->adapter_state_dict("avg");
  ASSERT_EQ(a.size(), avg.size());
  const Block setup_a = Block::adapter("a"), setup_avg = Block::adapter("avg");
  torch::NoGradGuard no_grad;
  const torch::Tensor out_a = model->forward(inputs(), {&setup_a}).last_hidden_state;
  const torch::Tensor out_avg = model->forward(inputs(), {&setup_avg}).last_hidden_state;
  EXPECT_LT((out_a - out_avg).abs().max().item<double>(), 1e-6);
}

TEST_P(MethodMatrix, MergedEqualsUnmerged) {
  if (!method().mergeable) GTEST_SKIP() << "not mergeable";
  AdapterModel model = load();
  model->add_adapter("a", method().spec, false, true);
  randomize_adapter(model, "a", 0.2);
  const torch::Tensor unmerged = hidden(model, inputs());
  model->merge_adapter("a");
  // Merging changes the order of float operations: equal up to rounding, which scales with the
  // size of the outputs (T5's stream is unnormalised: several times BERT's).
  const torch::Tensor merged = hidden(model, inputs());
  const double scale = std::max(1.0, unmerged.abs().max().item<double>());
  EXPECT_LT((merged - unmerged).abs().max().item<double>(), 1e-4 * scale) << "outputs up to " << scale;
  model->reset_adapter();
  EXPECT_LT((hidden(model, inputs()) - unmerged).abs().max().item<double>(), 1e-6);
}

// "m<index>__<arch>": the architecture last after a double underscore, so that CTest can run one
// architecture's row as one process (tests/CMakeLists.txt: --gtest_filter=*__<arch>).
std::string param_name(const ::testing::TestParamInfo<Param>& info) {
  std::string n = "m" + std::to_string(info.index) + "__" + std::get<0>(info.param);
  for (auto& c : n) {
    if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
  }
  return n;
}

INSTANTIATE_TEST_SUITE_P(All, MethodMatrix,
                         ::testing::Combine(::testing::Values("bert", "roberta", "xlm-roberta", "distilbert", "electra", "albert",
                                                                 "deberta", "deberta-v2", "vit", "beit", "gpt2", "gptj",
                                                                 "bart", "mbart", "t5", "llama", "mistral", "qwen2",
                                                                 "gemma"),
                                            ::testing::ValuesIn(method_cases())),
                         param_name);

TEST(UnionTest, PresetsAndStringForm) {
  using methods::AdapterConfig;
  const auto mam = AdapterConfig::parse("mam");
  EXPECT_EQ(mam.method, "union");
  ASSERT_EQ(mam.values.at("configs").size(), 2u);
  EXPECT_EQ(mam.values.at("configs")[0].at("bottleneck_size"), 800);
  EXPECT_EQ(AdapterConfig::parse("mam[bottleneck_size=64]").values.at("configs")[0].at("bottleneck_size"), 64);
  const auto unipelt = AdapterConfig::parse("unipelt");
  ASSERT_EQ(unipelt.values.at("configs").size(), 3u);
  for (const auto& c : unipelt.values.at("configs")) EXPECT_EQ(c.at("use_gating"), true);
  // The reference's own saved union configs are read back unchanged.
  for (const char* name : {"bert__mam", "bert__unipelt", "bert__var_union_prefix_lora"}) {
    const json spec = json::parse(io::read_text_file(fixtures_root() / "cases" / name / "case.json"));
    const json& expected = spec.at("adapters").at(0).at("config");
    EXPECT_EQ(AdapterConfig::from_json(expected, name).values, expected) << name;
  }
  EXPECT_EQ(AdapterConfig::parse("prefix_tuning|par_bn").values, AdapterConfig::parse("mam[bottleneck_size=512]").values);
}

TEST(UnionTest, RejectsWhatTheReferenceRejects) {
  using methods::AdapterConfig;
  EXPECT_NE(error_of([] { AdapterConfig::parse("seq_bn|par_bn"); }).find("different places"), std::string::npos);
  EXPECT_NE(error_of([] { AdapterConfig::parse("lora|ia3"); }).find("same adapter architecture 'lora'"), std::string::npos);
  EXPECT_NE(error_of([] { AdapterConfig::parse("prefix_tuning|prefix_tuning_flat"); }).find("same adapter architecture"),
            std::string::npos);
  // Bottlenecks at different places combine; a leave_out defers the decision as in the reference.
  EXPECT_NO_THROW(AdapterConfig::parse("seq_bn|double_seq_bn[output_adapter=false]"));
  EXPECT_NO_THROW(AdapterConfig::parse("seq_bn|seq_bn[leave_out=[0]]"));
  EXPECT_NE(error_of([] {
              AdapterConfig::from_json(json::parse(R"({"architecture": "union", "configs": [{"architecture": "union", "configs": []}]})"), "x");
            }).find("nesting config unions is not allowed"),
            std::string::npos);
  EXPECT_NE(error_of([] { AdapterConfig::parse("mam[r=3]"); }).find("no member of the union has the option 'r'"),
            std::string::npos);
}

TEST(AverageTest, WeightsAndErrors) {
  AdapterModel model = load_pretrained(model_dir("bert"));
  model->add_adapter("a", "seq_bn");
  model->add_adapter("b", "seq_bn");
  model->add_adapter("c", "double_seq_bn");
  randomize_adapter(model, "a");
  randomize_adapter(model, "b");
  model->average_adapter("neg", {"a", "b"}, {1.5, -0.5}, "linear", false);
  const auto a = model->adapter_state_dict("a"), b = model->adapter_state_dict("b"), neg = model->adapter_state_dict("neg");
  for (const auto& [key, t] : neg) {
    std::string ka = key, kb = key;
    ka.replace(ka.find(".neg."), 5, ".a.");
    kb.replace(kb.find(".neg."), 5, ".b.");
    EXPECT_TRUE(torch::allclose(t, 1.5 * a.at(ka) - 0.5 * b.at(kb), 1e-6, 1e-6)) << key;
  }
  EXPECT_NE(error_of([&] { model->average_adapter("x", {"a", "c"}); }).find("different configs"), std::string::npos);
  EXPECT_NE(error_of([&] { model->average_adapter("x", {"a", "b"}, {1.0, -1.0}); }).find("sum to 0"), std::string::npos);
  EXPECT_NE(error_of([&] { model->average_adapter("x", {"a", "b"}, {1.0}); }).find("2 adapters but 1 weights"), std::string::npos);
  EXPECT_NE(error_of([&] { model->average_adapter("x", {"a", "b"}, {}, "lora_delta_w_svd"); }).find("combine_strategy"),
            std::string::npos);
  EXPECT_FALSE(model->has_adapter("x"));
}

}  // namespace
}  // namespace adapters::test
