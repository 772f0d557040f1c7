// Compacter, invertible adapters and ReFT on the tiny BERT checkpoint: shared parameters, save/load
// round trips, invertibility of the coupling blocks, the properties of ReFT's interventions, and
// the errors on bad input.
#include <gtest/gtest.h>

#include "adapters/formats/keys.h"
#include "adapters/io/tensors.h"
#include "adapters/methods/adapter_config.h"
#include "adapters/methods/compacter.h"
#include "adapters/methods/invertible.h"
#include "adapters/methods/reft.h"
#include "test_util.h"

namespace adapters::test {
namespace {

using methods::AdapterConfig;
using torch::Tensor;

AdapterModel bert() { return load_pretrained(model_dir("bert")); }

std::set<std::string> keys_of(const io::TensorMap& tensors) {
  std::set<std::string> keys;
  for (const auto& [k, t] : tensors) keys.insert(k);
  return keys;
}

// Saves adapter `name`, loads it into a fresh model and checks the outputs are bit-identical.
void expect_round_trip(AdapterModel& model, const std::string& name) {
  const auto in = tiny_inputs();
  const Tensor plain = hidden(model, in);
  model->set_active_adapters(name);
  const Tensor before = hidden(model, in);
  EXPECT_GT((before - plain).abs().max().item<double>(), 1e-4) << "the adapter should change the outputs";
  TempDir dir;
  model->save_adapter(dir / "saved", name);
  AdapterModel other = bert();
  other->load_adapter(dir / "saved", "", WeightsPreference::Safetensors, true);
  EXPECT_TRUE(torch::equal(hidden(other, in), before));
  const auto a = model->adapter_state_dict(name), b = other->adapter_state_dict(name);
  ASSERT_EQ(keys_of(a), keys_of(b));
  for (const auto& [key, t] : a) EXPECT_TRUE(torch::equal(t, b.at(key))) << key;
}

// ---- Compacter --------------------------------------------------------------------------------

TEST(Compacter, KroneckerProductMatchesTheDefinition) {
  const Tensor a = torch::randn({2, 2, 3}), b = torch::randn({2, 4, 5});
  const Tensor k = methods::kronecker_product(a, b);
  ASSERT_EQ(k.sizes().vec(), (std::vector<std::int64_t>{2, 8, 15}));
  for (int n = 0; n < 2; ++n) {
    EXPECT_TRUE(torch::allclose(k[n], torch::kron(a[n], b[n])));
  }
}

TEST(Compacter, SharedParametersLiveOnceUnderTheModel) {
  AdapterModel model = bert();
  model->add_adapter("a", "compacter++[reduction_factor=8,shared_W_phm=True]");
  const auto keys = keys_of(model->adapter_state_dict("a"));
  EXPECT_TRUE(keys.count("bert.shared_parameters.a.phm_rule"));
  EXPECT_TRUE(keys.count("bert.shared_parameters.a.W_down_left"));
  EXPECT_TRUE(keys.count("bert.shared_parameters.a.W_up_right"));
  EXPECT_TRUE(keys.count("bert.encoder.layer.1.output.adapters.a.adapter_up.b"));
  for (const auto& k : keys) {
    EXPECT_TRUE(k.find("W_left") == std::string::npos && k.find("layer.0.output.adapters.a.adapter_up.phm") == std::string::npos)
        << k;
  }
  // Changing the one shared rule moves every layer's output.
  randomize_adapter(model, "a");
  model->set_active_adapters("a");
  const auto in = tiny_inputs();
  const Tensor before = hidden(model, in);
  {
    torch::NoGradGuard no_grad;
    model->named_parameters()["bert.shared_parameters.a.phm_rule"].mul_(2.0);
  }
  EXPECT_GT((hidden(model, in) - before).abs().max().item<double>(), 1e-4);
  model->delete_adapter("a");
  for (const auto& item : model->named_parameters()) EXPECT_EQ(item.key().find("shared_parameters"), std::string::npos);
}

TEST(Compacter, SaveLoadRoundTripWithSharedParameters) {
  for (const std::string spec : {"compacter[reduction_factor=8]", "compacter++[reduction_factor=8,shared_W_phm=True]",
                                 "compacter[reduction_factor=8,factorized_phm_rule=True,phm_rank=2]",
                                 "compacter++[reduction_factor=8,shared_W_phm=True,factorized_phm_W=False]",
                                 "compacter[reduction_factor=8,shared_phm_rule=False,phm_bias=False]"}) {
    SCOPED_TRACE(spec);
    AdapterModel model = bert();
    model->add_adapter("a", spec);
    randomize_adapter(model, "a");
    expect_round_trip(model, "a");
  }
}

TEST(Compacter, SharedParametersAreSavedApartAsTheReferenceDoes) {
  AdapterModel model = bert();
  model->add_adapter("a", "compacter[reduction_factor=8]");
  TempDir dir;
  model->save_adapter(dir / "a", "a");
  const auto adapter = io::read_safetensors(dir / "a" / "adapter.safetensors").tensors;
  const auto shared = io::read_safetensors(dir / "a" / "shared_parameters.safetensors").tensors;
  EXPECT_EQ(keys_of(shared), std::set<std::string>{"bert.shared_parameters.a.phm_rule"});
  for (const auto& [k, t] : adapter) EXPECT_FALSE(formats::is_shared_parameter(k)) << k;
  EXPECT_EQ(keys_of(adapter), keys_of(io::read_safetensors(fixtures_root() / "cases" / "bert__compacter" / "adapters" /
                                                         "a" / "adapter.safetensors")
                                         .tensors));
}

TEST(Compacter, MissingSharedFileLoadsWithFreshSharedParameters) {
  TempDir dir;
  const fs::path src = fixtures_root() / "cases" / "bert__compacter" / "adapters" / "a";
  fs::create_directories(dir / "a");
  for (const char* f : {"adapter_config.json", "adapter.safetensors"}) fs::copy_file(src / f, dir / "a" / f);
  AdapterModel model = bert();
  EXPECT_EQ(model->load_adapter(dir / "a", "x"), "x");
  EXPECT_TRUE(model->adapter_state_dict("x").count("bert.shared_parameters.x.phm_rule"));
}

TEST(Compacter, LoadAsRenamesTheSharedParameters) {
  AdapterModel model = bert();
  model->load_adapter(fixtures_root() / "cases" / "bert__compacter" / "adapters" / "a", "renamed");
  const auto shared = io::read_safetensors(fixtures_root() / "cases" / "bert__compacter" / "adapters" / "a" /
                                           "shared_parameters.safetensors")
                          .tensors;
  EXPECT_TRUE(torch::equal(model->adapter_state_dict("renamed").at("bert.shared_parameters.renamed.phm_rule"),
                           shared.at("bert.shared_parameters.a.phm_rule")));
}

TEST(Compacter, BadInput) {
  AdapterModel model = bert();
  // The preset's reduction factor 32 gives a bottleneck of 1 on hidden 32: not divisible by phm_dim 4.
  std::string e = error_of([&] { model->add_adapter("a", "compacter"); });
  EXPECT_NE(e.find("phm_dim 4"), std::string::npos) << e;
  EXPECT_NE(e.find("adapter 'a'"), std::string::npos) << e;
  e = error_of([&] { model->add_adapter("a", "compacter[reduction_factor=8,phm_dim=3]"); });
  EXPECT_NE(e.find("phm_dim 3"), std::string::npos) << e;
  EXPECT_FALSE(model->has_adapter("a"));
  for (const auto& item : model->named_parameters()) EXPECT_EQ(item.key().find(".a."), std::string::npos) << item.key();
  e = error_of([&] { AdapterConfig::parse("compacter[phm_dimension=4]"); });
  EXPECT_NE(e.find("phm_dimension"), std::string::npos) << e;
  e = error_of([&] { AdapterConfig::parse("compacter[phm_c_init=zeros]"); });
  EXPECT_NE(e.find("phm_c_init"), std::string::npos) << e;
  e = error_of([&] { AdapterConfig::parse("compacter[phm_dim=0]"); });
  EXPECT_NE(e.find("phm_dim"), std::string::npos) << e;
  e = error_of([&] { AdapterConfig::parse("compacter[init_weights=mam_adapter]"); });
  EXPECT_NE(e.find("mam_adapter"), std::string::npos) << e;
}

// ---- invertible adapters ------------------------------------------------------------------------

void randomize(torch::nn::Module& m) {
  torch::NoGradGuard no_grad;
  for (auto& p : m.parameters()) p.normal_(0.0, 0.3);
}

TEST(Invertible, CouplingBlocksAreInvertible) {
  for (std::int64_t channels : {32, 33}) {
    methods::NiceCouplingBlockImpl nice(channels, "relu", 2, "test");
    methods::GlowCouplingBlockImpl glow(channels, "gelu", 2, "test");
    for (methods::InvertibleBlock* block : {static_cast<methods::InvertibleBlock*>(&nice), static_cast<methods::InvertibleBlock*>(&glow)}) {
      randomize(*block);
      const Tensor x = torch::randn({2, 5, channels}, torch::kFloat64);
      block->to(torch::kFloat64);
      const Tensor y = block->forward(x);
      EXPECT_GT((y - x).abs().max().item<double>(), 1e-3);
      EXPECT_TRUE(torch::allclose(block->inverse(y), x, 1e-9, 1e-9));
      EXPECT_TRUE(torch::allclose(block->forward(block->inverse(x)), x, 1e-9, 1e-9));
    }
  }
}

TEST(Invertible, ParameterNamesFollowTheReference) {
  AdapterModel model = bert();
  model->add_adapter("a", "pfeiffer+inv");
  const auto keys = keys_of(model->adapter_state_dict("a"));
  const auto ref = keys_of(io::read_safetensors(fixtures_root() / "cases" / "bert__pfeiffer_plus_inv" / "adapters" /
                                                "a" / "adapter.safetensors")
                               .tensors);
  EXPECT_EQ(keys, ref);
  model->add_adapter("g", "houlsby+inv[inv_adapter=glow]");
  EXPECT_TRUE(model->adapter_state_dict("g").count("bert.invertible_adapters.g.s1.0.weight"));
  EXPECT_TRUE(model->adapter_state_dict("g").count("bert.invertible_adapters.g.s2.2.bias"));
}

TEST(Invertible, HookTransformsEmbeddingsAndInvertsBeforeTheHead) {
  AdapterModel model = bert();
  model->add_adapter("a", "seq_bn_inv[inv_adapter=glow]");
  randomize_adapter(model, "a");
  const Block setup = composition::normalize_active(composition::parse("a"));
  nn::ForwardContext ctx;
  ctx.setup = &setup;
  const Tensor h = torch::randn({2, 4, 32});
  Tensor mask = torch::ones({2, 4}, torch::kLong);
  torch::NoGradGuard no_grad;
  const Tensor y = model->base().hooks().embeddings(h, mask, ctx);
  EXPECT_GT((y - h).abs().max().item<double>(), 1e-3);
  EXPECT_TRUE(torch::allclose(model->base().hooks().before_lm_head(y, ctx), h, 1e-4, 1e-5));
  nn::ForwardContext plain;
  EXPECT_TRUE(torch::equal(model->base().hooks().embeddings(h, mask, plain), h));
}

TEST(Invertible, SaveLoadRoundTrip) {
  for (const std::string spec : {"pfeiffer+inv", "double_seq_bn_inv[inv_adapter=glow,inv_adapter_reduction_factor=4]"}) {
    SCOPED_TRACE(spec);
    AdapterModel model = bert();
    model->add_adapter("a", spec);
    randomize_adapter(model, "a", 0.1);
    expect_round_trip(model, "a");
  }
}

TEST(Invertible, BadInput) {
  std::string e = error_of([] { AdapterConfig::parse("seq_bn[inv_adapter=real_nvp]"); });
  EXPECT_NE(e.find("inv_adapter"), std::string::npos) << e;
  e = error_of([] { AdapterConfig::parse("seq_bn[inv_adapter=nice]"); });
  EXPECT_NE(e.find("inv_adapter_reduction_factor"), std::string::npos) << e;
  AdapterModel model = bert();
  e = error_of([&] { model->add_adapter("a", "pfeiffer+inv[inv_adapter_reduction_factor=64]"); });
  EXPECT_NE(e.find("inv_adapter_reduction_factor"), std::string::npos) << e;
  EXPECT_FALSE(model->has_adapter("a"));
}

// ---- ReFT -------------------------------------------------------------------------------------

methods::ReftConfig reft_config(const std::string& spec) {
  return methods::ReftConfig::from_json(AdapterConfig::parse(spec).values, spec);
}

TEST(Reft, PresetsAndConfigRoundTrip) {
  const AdapterConfig lo = AdapterConfig::parse("loreft");
  EXPECT_EQ(lo.method, "reft");
  EXPECT_EQ(lo.values.at("orthogonality"), true);
  EXPECT_EQ(AdapterConfig::parse("noreft").values.at("orthogonality"), false);
  EXPECT_EQ(AdapterConfig::parse("direft").values.at("subtract_projection"), false);
  const AdapterConfig custom = AdapterConfig::parse("loreft[r=4,layers=[0],suffix_positions=2,tied_weights=True]");
  EXPECT_EQ(AdapterConfig::from_json(custom.values, "saved"), custom);
}

TEST(Reft, OrthogonalProjectionHasOrthonormalRows) {
  methods::ReftUnitImpl unit(reft_config("loreft[r=4]"), 32, "test");
  auto check = [&] {
    const Tensor R = unit.projection_weight().detach();
    ASSERT_EQ(R.sizes().vec(), (std::vector<std::int64_t>{4, 32}));
    EXPECT_TRUE(torch::allclose(torch::matmul(R, R.t()), torch::eye(4), 1e-5, 1e-5));
  };
  check();
  {
    torch::NoGradGuard no_grad;
    for (auto& item : unit.named_parameters()) {
      if (item.key().find("original") != std::string::npos) item.value().add_(torch::randn_like(item.value()) * 0.5);
    }
  }
  check();  // any value of the parameter gives an orthonormal R
}

TEST(Reft, ZeroInterventionIsTheIdentity) {
  const Tensor x = torch::randn({2, 6, 32});
  torch::NoGradGuard no_grad;
  // DiReFT with a zero source adds nothing.
  methods::ReftModuleImpl di(reft_config("direft[dropout=0.0]"), 32, "test");
  for (auto& item : di.named_parameters()) {
    if (item.key().find("learned_source") != std::string::npos) item.value().zero_();
  }
  EXPECT_TRUE(torch::equal(di.forward(x), x));
  // LoReFT whose source reproduces the projection (W = R, b = 0) cancels itself.
  methods::ReftModuleImpl lo(reft_config("loreft[dropout=0.0,suffix_positions=1]"), 32, "test");
  for (const auto& unit : lo.units()) {
    auto params = unit->named_parameters();
    params["learned_source.weight"].copy_(unit->projection_weight());
    params["learned_source.bias"].zero_();
  }
  EXPECT_TRUE(torch::allclose(lo.forward(x), x, 1e-6, 1e-5));
}

TEST(Reft, OnlyTheChosenPositionsChange) {
  for (bool tied : {false, true}) {
    methods::ReftModuleImpl m(reft_config(str("loreft[dropout=0.0,prefix_positions=2,suffix_positions=1,tied_weights=",
                                              tied ? "True" : "False", "]")),
                              32, "test");
    m.eval();
    torch::NoGradGuard no_grad;
    const Tensor x = torch::randn({2, 6, 32});
    const Tensor changed = (m.forward(x) - x).abs().amax({0, 2}) > 1e-6;  // (T)
    EXPECT_TRUE(torch::equal(changed, torch::tensor({true, true, false, false, false, true})));
  }
}

TEST(Reft, TiedWeightsShareOneUnit) {
  AdapterModel model = bert();
  model->add_adapter("t", "loreft[tied_weights=True,suffix_positions=1,layers=[1]]");
  model->add_adapter("u", "noreft[suffix_positions=1]");
  const auto tied = keys_of(model->adapter_state_dict("t"));
  EXPECT_EQ(tied, (std::set<std::string>{"bert.refts.t.1.units.0.learned_source.weight",
                                         "bert.refts.t.1.units.0.learned_source.bias",
                                         "bert.refts.t.1.units.0.projection.parametrizations.weight.original"}));
  const auto untied = keys_of(model->adapter_state_dict("u"));
  EXPECT_TRUE(untied.count("bert.refts.u.0.units.1.projection.weight"));
  EXPECT_EQ(untied.size(), 2u * 2u * 3u);  // layers x units x (source weight, bias, projection)
}

TEST(Reft, ModelForwardAndSaveLoadRoundTrip) {
  for (const std::string spec : {"loreft[suffix_positions=2,r=2]", "noreft[layers=[1],non_linearity=tanh]",
                                 "direft[tied_weights=True,suffix_positions=1]"}) {
    SCOPED_TRACE(spec);
    AdapterModel model = bert();
    model->add_adapter("a", spec);
    model->eval();
    expect_round_trip(model, "a");
  }
}

TEST(Reft, BadInput) {
  std::string e = error_of([] { AdapterConfig::parse("loreft[r=0]"); });
  EXPECT_NE(e.find("'r'"), std::string::npos) << e;
  e = error_of([] { AdapterConfig::parse("loreft[rank=2]"); });
  EXPECT_NE(e.find("rank"), std::string::npos) << e;
  e = error_of([] { AdapterConfig::parse("loreft[prefix_positions=0]"); });
  EXPECT_NE(e.find("prefix_positions"), std::string::npos) << e;
  e = error_of([] { AdapterConfig::parse("loreft[non_linearity=wiggle]"); });
  EXPECT_NE(e.find("wiggle"), std::string::npos) << e;
  AdapterModel model = bert();
  e = error_of([&] { model->add_adapter("a", "loreft[r=33]"); });
  EXPECT_NE(e.find("r 33"), std::string::npos) << e;
  EXPECT_FALSE(model->has_adapter("a"));
  model->add_adapter("b", "loreft[prefix_positions=9]", false, true);
  e = error_of([&] { hidden(model, tiny_inputs()); });
  EXPECT_NE(e.find("9 prefix"), std::string::npos) << e;
}

}  // namespace
}  // namespace adapters::test
