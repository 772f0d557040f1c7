// The LoRA family (lora, ia3, vera, dora) on the adapted linear layers: identity at init, merge
// and reset, save/load, averaging, rsLoRA, gating, Stack, fused projections and bad input.
#include <gtest/gtest.h>

#include "adapters/methods/lora.h"
#include "adapters/models/base_model.h"
#include "adapters/nn/adapted_linear.h"
#include "test_util.h"

namespace adapters::test {
namespace {

using methods::LoRAConfig;
using torch::Tensor;

const std::vector<std::string>& family() {
  static const std::vector<std::string> specs = {"lora", "ia3", "vera", "dora"};
  return specs;
}

// Configs with every option that changes the computation, for the merge and round-trip tests.
const std::vector<std::string>& variants() {
  static const std::vector<std::string> specs = {
      "lora",
      "ia3",
      "vera",
      "dora",
      "lora[r=4,alpha=16,attn_matrices=['q','k','v'],intermediate_lora=true,output_lora=true]",
      "lora[r=4,alpha=8,use_rslora=true,init_weights=bert]",
      "ia3[attn_matrices=['q','v'],output_lora=true]",
      "vera[r=16,attn_matrices=['q','k','v','o'],intermediate_lora=true,output_lora=true]",
      "dora[r=2,alpha=4,intermediate_lora=true,leave_out=[1]]",
  };
  return specs;
}

std::map<std::string, Tensor> base_weights(AdapterModel& model) {
  std::map<std::string, Tensor> out;
  for (const auto& item : model->base().named_parameters()) {
    if (item.key().find(".loras.") == std::string::npos) out[item.key()] = item.value().detach().clone();
  }
  return out;
}

void expect_close(const Tensor& a, const Tensor& b, double tol, const std::string& what) {
  ASSERT_EQ(a.sizes(), b.sizes()) << what;
  EXPECT_LE((a - b).abs().max().item<double>(), tol) << what;
}

class LoRAArchTest : public ::testing::TestWithParam<std::string> {
 protected:
  AdapterModel load() { return load_pretrained(model_dir(GetParam())); }
};

INSTANTIATE_TEST_SUITE_P(Archs, LoRAArchTest, ::testing::Values("bert", "distilbert", "roberta"),
                         [](const auto& info) { return info.param; });

TEST_P(LoRAArchTest, IdentityInitialisedAdaptersLeaveOutputsUnchanged) {
  for (const auto& spec : family()) {
    SCOPED_TRACE(spec);
    AdapterModel model = load();
    const Tensor base = hidden(model, tiny_inputs());
    model->add_adapter("a", spec, false, true);
    EXPECT_FALSE(model->adapter_state_dict("a").empty());
    const Tensor with = hidden(model, tiny_inputs());
    if (spec == "dora") {
      expect_close(with, base, 1e-6, spec);  // m / ||W|| is 1 up to rounding
    } else {
      EXPECT_TRUE(torch::equal(with, base));
    }
    // With random weights the adapter does change the outputs.
    randomize_adapter(model, "a");
    EXPECT_GT((hidden(model, tiny_inputs()) - base).abs().max().item<double>(), 1e-3);
  }
}

TEST_P(LoRAArchTest, MergedEqualsUnmergedAndResetRestoresTheWeightsExactly) {
  for (const auto& spec : variants()) {
    SCOPED_TRACE(spec);
    AdapterModel model = load();
    const auto original = base_weights(model);
    const Tensor plain = hidden(model, tiny_inputs());
    model->add_adapter("a", spec, false, true);
    randomize_adapter(model, "a");
    const Tensor unmerged = hidden(model, tiny_inputs());

    model->merge_adapter("a");
    EXPECT_EQ(model->merged_adapters(), std::vector<std::string>{"a"});
    expect_close(hidden(model, tiny_inputs()), unmerged, 2e-4, "merged, active");
    model->merge_adapter("a");  // merging again changes nothing
    expect_close(hidden(model, tiny_inputs()), unmerged, 2e-4, "merged twice");
    model->deactivate_adapters();  // the merged weights carry the adapter
    expect_close(hidden(model, tiny_inputs()), unmerged, 2e-4, "merged, inactive");

    model->reset_adapter();
    EXPECT_TRUE(model->merged_adapters().empty());
    for (const auto& [key, t] : base_weights(model)) EXPECT_TRUE(torch::equal(t, original.at(key))) << key;
    EXPECT_TRUE(torch::equal(hidden(model, tiny_inputs()), plain));
    model->set_active_adapters("a");
    EXPECT_TRUE(torch::equal(hidden(model, tiny_inputs()), unmerged));
  }
}

TEST_P(LoRAArchTest, SaveThenLoadIsBitIdentical) {
  for (const auto& spec : variants()) {
    SCOPED_TRACE(spec);
    AdapterModel model = load();
    TempDir tmp;
    model->add_adapter("a", spec, false, true);
    randomize_adapter(model, "a");
    const Tensor before = hidden(model, tiny_inputs());
    model->save_adapter(tmp / "a", "a");

    AdapterModel fresh = load();
    EXPECT_EQ(fresh->load_adapter(tmp / "a", "", WeightsPreference::Safetensors, true), "a");
    EXPECT_EQ(fresh->adapter_config("a"), model->adapter_config("a"));
    const auto saved = model->adapter_state_dict("a");
    const auto loaded = fresh->adapter_state_dict("a");
    ASSERT_EQ(saved.size(), loaded.size());
    for (const auto& [key, t] : saved) EXPECT_TRUE(torch::equal(t, loaded.at(key))) << key;
    EXPECT_TRUE(torch::equal(hidden(fresh, tiny_inputs()), before));
  }
}

TEST_P(LoRAArchTest, AveragingTwoCopiesReproducesTheAdapter) {
  for (const auto& spec : variants()) {
    SCOPED_TRACE(spec);
    AdapterModel model = load();
    TempDir tmp;
    model->add_adapter("a", spec, false, true);
    randomize_adapter(model, "a");
    const Tensor expected = hidden(model, tiny_inputs());
    model->save_adapter(tmp / "a", "a");
    model->load_adapter(tmp / "a", "b");

    const auto tensors = methods::average_lora_weights(*model, "avg", {"a", "b"}, {0.5, 0.5}, "linear");
    const json config = methods::averaged_lora_config(model->adapter_config("a").values, "linear");
    model->add_adapter("avg", methods::AdapterConfig{"lora", config});
    model->load_adapter_state_dict("avg", tensors, "average");
    const auto a = model->adapter_state_dict("a");
    const auto avg = model->adapter_state_dict("avg");
    ASSERT_EQ(a.size(), avg.size());
    for (const auto& [key, t] : a) {
      std::string k = key;
      k.replace(k.find(".a."), 3, ".avg.");
      EXPECT_TRUE(torch::allclose(avg.at(k), t)) << key;
    }
    model->set_active_adapters("avg");
    expect_close(hidden(model, tiny_inputs()), expected, 1e-6, "linear average");
  }
}

TEST(LoRATraining, GradientsReachExactlyTheAdapter) {
  for (const std::string spec : {"lora[dropout=0.1]", "ia3", "vera[r=16,dropout=0.1]", "dora[dropout=0.1]",
                                 "lora[use_gating=true]"}) {
    SCOPED_TRACE(spec);
    AdapterModel model = load_pretrained(model_dir("bert"));
    model->add_adapter("a", spec);
    model->train_adapter("a");
    std::int64_t trainable = 0;
    for (const auto& item : model->named_parameters()) {
      const bool is_a = item.key().find(".loras.a.") != std::string::npos;
      EXPECT_EQ(item.value().requires_grad(), is_a) << item.key();
      trainable += is_a ? 1 : 0;
    }
    EXPECT_GT(trainable, 0);
    model->forward(tiny_inputs()).last_hidden_state.pow(2).sum().backward();
    for (const auto& item : model->named_parameters()) {
      EXPECT_EQ(item.value().grad().defined(), item.value().requires_grad()) << item.key();
    }
  }
}

// ---- averaging strategies -------------------------------------------------------------------

// Per layer s * B A of a plain LoRA adapter, keyed by the layer's prefix.
std::map<std::string, Tensor> delta_w(AdapterModel& model, const std::string& name) {
  const double s = LoRAConfig::from_json(model->adapter_config(name).values, name).scaling();
  const auto sd = model->adapter_state_dict(name);
  std::map<std::string, Tensor> out;
  for (const auto& [key, a] : sd) {
    const auto at = key.find(".loras." + name + ".lora_A");
    if (at == std::string::npos) continue;
    const std::string prefix = key.substr(0, at);
    out[prefix] = s * torch::matmul(sd.at(prefix + ".loras." + name + ".lora_B"), a);
  }
  return out;
}

TEST(LoRAAverage, SvdReproducesDeltaW) {
  // Rank 4 adapters averaged at svd_rank 4 (same scale) and 6 (another scale, folded in).
  for (std::int64_t rank : {4, 6}) {
    SCOPED_TRACE(rank);
    AdapterModel model = load_pretrained(model_dir("bert"));
    TempDir tmp;
    model->add_adapter("a", "lora[r=4,alpha=8,attn_matrices=['q','k','v'],output_lora=true]", false, true);
    randomize_adapter(model, "a");
    const Tensor expected = hidden(model, tiny_inputs());
    model->save_adapter(tmp / "a", "a");
    model->load_adapter(tmp / "a", "b");

    const auto tensors = methods::average_lora_weights(*model, "svd", {"a", "b"}, {0.5, 0.5}, "lora_delta_w_svd", rank);
    const json config = methods::averaged_lora_config(model->adapter_config("a").values, "lora_delta_w_svd", rank);
    EXPECT_EQ(config.at("r"), rank);
    model->add_adapter("svd", methods::AdapterConfig{"lora", config});
    model->load_adapter_state_dict("svd", tensors, "average");
    const auto want = delta_w(model, "a");
    const auto got = delta_w(model, "svd");
    ASSERT_EQ(want.size(), got.size());
    for (const auto& [prefix, d] : want) expect_close(got.at(prefix), d, 1e-4, prefix);
    model->set_active_adapters("svd");
    expect_close(hidden(model, tiny_inputs()), expected, 1e-4, "svd average");
  }
}

TEST(LoRAAverage, NegateBWeightsBOnly) {
  AdapterModel model = load_pretrained(model_dir("bert"));
  model->add_adapter("a", "lora");
  model->add_adapter("b", "lora");
  randomize_adapter(model, "a");
  randomize_adapter(model, "b");
  const auto out = methods::average_lora_weights(*model, "n", {"a", "b"}, {-0.5, 1.5}, "lora_linear_only_negate_b");
  const auto a = model->adapter_state_dict("a");
  const auto b = model->adapter_state_dict("b");
  const std::string p = "bert.encoder.layer.0.attention.self.query.loras.";
  expect_close(out.at(p + "n.lora_A"), 0.5 * a.at(p + "a.lora_A") + 1.5 * b.at(p + "b.lora_A"), 1e-6, "A uses |w|");
  expect_close(out.at(p + "n.lora_B"), -0.5 * a.at(p + "a.lora_B") + 1.5 * b.at(p + "b.lora_B"), 1e-6, "B uses w");
  const auto lin = methods::average_lora_weights(*model, "n", {"a", "b"}, {-0.5, 1.5}, "linear");
  expect_close(lin.at(p + "n.lora_A"), -0.5 * a.at(p + "a.lora_A") + 1.5 * b.at(p + "b.lora_A"), 1e-6, "linear A");
}

TEST(LoRAAverage, RejectsWhatDoesNotFit) {
  AdapterModel model = load_pretrained(model_dir("bert"));
  model->add_adapter("l", "lora");
  model->add_adapter("l4", "lora[r=4]");
  model->add_adapter("i", "ia3");
  model->add_adapter("g", "lora[use_gating=true]");
  model->add_adapter("bn", "seq_bn");
  auto msg = error_of([&] { methods::average_lora_weights(*model, "x", {"l", "bn"}, {0.5, 0.5}, "linear"); });
  EXPECT_NE(msg.find("'bn' is a bottleneck adapter"), std::string::npos) << msg;
  msg = error_of([&] { methods::average_lora_weights(*model, "x", {"l", "i"}, {0.5, 0.5}, "linear"); });
  EXPECT_NE(msg.find("'i' is ia3"), std::string::npos) << msg;
  msg = error_of([&] { methods::average_lora_weights(*model, "x", {"l", "l4"}, {0.5, 0.5}, "linear"); });
  EXPECT_NE(msg.find("shape"), std::string::npos) << msg;
  msg = error_of([&] { methods::average_lora_weights(*model, "x", {"l", "l"}, {0.5, 0.5}, "mean"); });
  EXPECT_NE(msg.find("unknown combine strategy"), std::string::npos) << msg;
  msg = error_of([&] { methods::average_lora_weights(*model, "x", {"l", "l"}, {0.5, 0.5}, "lora_delta_w_svd"); });
  EXPECT_NE(msg.find("svd_rank"), std::string::npos) << msg;
  msg = error_of([&] { methods::average_lora_weights(*model, "x", {"i", "i"}, {0.5, 0.5}, "lora_delta_w_svd", 1); });
  EXPECT_NE(msg.find("plain LoRA"), std::string::npos) << msg;
  msg = error_of([&] { methods::average_lora_weights(*model, "x", {"g", "g"}, {0.5, 0.5}, "lora_linear_only_negate_b"); });
  EXPECT_NE(msg.find("neither lora_A nor lora_B"), std::string::npos) << msg;
  msg = error_of([&] { methods::average_lora_weights(*model, "x", {"l", "l"}, {0.5}, "linear"); });
  EXPECT_NE(msg.find("weights"), std::string::npos) << msg;
}

// ---- config ---------------------------------------------------------------------------------

TEST(LoRAConfigTest, ConfigStringsAndPresets) {
  const auto c = methods::AdapterConfig::parse("lora[r=4,alpha=16,attn_matrices=['q','k','v']]");
  EXPECT_EQ(c.method, "lora");
  EXPECT_EQ(c.values.at("r"), 4);
  EXPECT_EQ(c.values.at("alpha"), 16);
  EXPECT_EQ(c.values.at("attn_matrices"), json({"q", "k", "v"}));
  EXPECT_EQ(c.values.at("architecture"), "lora");
  // The presets are the reference's configs, key for key.
  for (const char* name : {"lora", "ia3"}) {
    const json fixture = json::parse(io::read_text_file(fixtures_root() / "cases" / (std::string("bert__") + name) /
                                                        "adapters" / "a" / "adapter_config.json"))
                             .at("config");
    EXPECT_EQ(methods::AdapterConfig::parse(name).values, fixture) << name;
    EXPECT_EQ(methods::AdapterConfig::from_json(fixture, "fixture").values, fixture) << name;
  }
  EXPECT_EQ(methods::AdapterConfig::parse("vera").values.at("init_weights"), "vera");
  EXPECT_EQ(methods::AdapterConfig::parse("vera").values.at("vera_d"), 0.1);
  EXPECT_EQ(methods::AdapterConfig::parse("dora").values.at("use_dora"), true);
  EXPECT_FALSE(methods::AdapterConfig::parse("lora").values.contains("use_rslora"));
}

TEST(LoRAConfigTest, RsLoRAScale) {
  EXPECT_DOUBLE_EQ(LoRAConfig::from_json({{"r", 4}, {"alpha", 8}}, "t").scaling(), 2.0);
  EXPECT_DOUBLE_EQ(LoRAConfig::from_json({{"r", 4}, {"alpha", 8}, {"use_rslora", true}}, "t").scaling(), 4.0);
  EXPECT_DOUBLE_EQ(LoRAConfig::from_json({{"r", 16}, {"alpha", 8}, {"use_rslora", true}}, "t").scaling(), 2.0);
  // In the model: rsLoRA with alpha 8 and r 4 equals plain LoRA with alpha 16 and r 4.
  AdapterModel model = load_pretrained(model_dir("bert"));
  model->add_adapter("rs", "lora[r=4,alpha=8,use_rslora=true]");
  model->add_adapter("plain", "lora[r=4,alpha=16]");
  randomize_adapter(model, "rs");
  const auto rs = model->adapter_state_dict("rs");
  torch::NoGradGuard no_grad;
  for (auto& [key, t] : model->adapter_state_dict("plain")) {
    std::string k = key;
    k.replace(k.find(".plain."), 7, ".rs.");
    t.copy_(rs.at(k));
  }
  model->set_active_adapters("rs");
  const Tensor with_rs = hidden(model, tiny_inputs());
  model->set_active_adapters("plain");
  EXPECT_TRUE(torch::allclose(with_rs, hidden(model, tiny_inputs()), 1e-6, 1e-6));
}

TEST(LoRAConfigTest, BadInput) {
  auto config_error = [](const std::string& spec) { return error_of([&] { methods::AdapterConfig::parse(spec); }); };
  std::string msg = config_error("lora[r=0]");
  EXPECT_NE(msg.find("'r'"), std::string::npos) << msg;
  msg = config_error("lora[attn_matrices=['q','x']]");
  EXPECT_NE(msg.find("\"x\""), std::string::npos) << msg;
  msg = config_error("lora[attn_matrices=['q','q']]");
  EXPECT_NE(msg.find("twice"), std::string::npos) << msg;
  EXPECT_FALSE(config_error("lora[r='eight']").empty());
  EXPECT_FALSE(config_error("lora[alpha=true]").empty());
  EXPECT_FALSE(config_error("lora[alpha=-1]").empty());
  EXPECT_FALSE(config_error("lora[attn_matrices='q']").empty());
  EXPECT_FALSE(config_error("lora[selfattn_lora=3]").empty());
  EXPECT_FALSE(config_error("lora[dropout=1.5]").empty());
  EXPECT_FALSE(config_error("lora[composition_mode=mul]").empty());
  EXPECT_FALSE(config_error("lora[init_weights=xavier]").empty());
  EXPECT_FALSE(config_error("lora[rank=8]").empty());  // unknown key
  msg = config_error("ia3[r=2]");
  EXPECT_NE(msg.find("r = 1"), std::string::npos) << msg;
  msg = config_error("lora[selfattn_lora=false]");
  EXPECT_NE(msg.find("placed nowhere"), std::string::npos) << msg;
  EXPECT_FALSE(config_error("dora[composition_mode=scale,r=1]").empty());
  EXPECT_FALSE(config_error("vera[use_dora=true]").empty());
  // A bad config leaves the model without a half-added adapter.
  AdapterModel model = load_pretrained(model_dir("bert"));
  EXPECT_FALSE(error_of([&] { model->add_adapter("a", "lora[r=-3]"); }).empty());
  EXPECT_FALSE(model->has_adapter("a"));
}

// ---- merging --------------------------------------------------------------------------------

TEST(LoRAMerge, NonMergeableAdaptersAreClearErrors) {
  AdapterModel model = load_pretrained(model_dir("bert"));
  model->add_adapter("bn", "seq_bn");
  model->add_adapter("g", "lora[use_gating=true]");
  const auto original = base_weights(model);
  std::string msg = error_of([&] { model->merge_adapter("bn"); });
  EXPECT_NE(msg.find("'bn'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("bottleneck"), std::string::npos) << msg;
  msg = error_of([&] { model->merge_adapter("g"); });
  EXPECT_NE(msg.find("'g'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("gate"), std::string::npos) << msg;
  msg = error_of([&] { model->merge_adapter("nope"); });
  EXPECT_NE(msg.find("'nope'"), std::string::npos) << msg;
  EXPECT_TRUE(model->merged_adapters().empty());
  for (const auto& [key, t] : base_weights(model)) EXPECT_TRUE(torch::equal(t, original.at(key))) << key;
}

TEST(LoRAMerge, StackedDeltasAddUpAndMergeInOrder) {
  AdapterModel model = load_pretrained(model_dir("bert"));
  model->add_adapter("a", "lora[attn_matrices=['q','k','v']]");
  model->add_adapter("b", "ia3");
  randomize_adapter(model, "a");
  randomize_adapter(model, "b");
  model->set_active_adapters("Stack(a, b)");
  const Tensor stacked = hidden(model, tiny_inputs());
  model->merge_adapter("a");
  expect_close(hidden(model, tiny_inputs()), stacked, 2e-4, "a merged, b unmerged");
  model->merge_adapter("b");
  expect_close(hidden(model, tiny_inputs()), stacked, 2e-4, "both merged");
  EXPECT_EQ(model->merged_adapters(), (std::vector<std::string>{"a", "b"}));
  // Deleting a merged adapter unmerges it.
  model->delete_adapter("b");
  EXPECT_EQ(model->merged_adapters(), std::vector<std::string>{"a"});
  model->set_active_adapters("a");
  const Tensor only_a = hidden(model, tiny_inputs());
  model->reset_adapter();
  expect_close(hidden(model, tiny_inputs()), only_a, 2e-4, "a unmerged");
  // LoRA-family adapters also compose in Parallel: the batch doubles.
  model->add_adapter("c", "lora");
  const Block parallel = composition::parse("Parallel(a, c)");
  ForwardOptions options;
  options.setup = &parallel;
  torch::NoGradGuard no_grad;
  EXPECT_EQ(model->forward(tiny_inputs(), options).last_hidden_state.size(0), 4);
}

TEST(LoRAMerge, MergedWeightsMatchTheReference) {
  // The reference's merged weights (W only; its IA3 merge forgets the bias, which these files
  // do not hold).
  for (const char* name : {"bert__merge_lora", "bert__merge_ia3"}) {
    SCOPED_TRACE(name);
    const fs::path dir = fixtures_root() / "cases" / name;
    AdapterModel model = load_pretrained(dir / "../../models/bert");
    model->load_adapter(dir / "adapters" / "a", "", WeightsPreference::Safetensors, true);
    model->merge_adapter("a");
    const auto merged = io::read_safetensors(dir / "merged_weights.safetensors").tensors;
    const auto params = model->named_parameters();
    ASSERT_FALSE(merged.empty());
    for (const auto& [key, t] : merged) {
      ASSERT_NE(params.find(key), nullptr) << key;
      expect_close(params[key], t, 1e-6, key);
    }
  }
}

// ---- gating ---------------------------------------------------------------------------------

TEST(LoRAGating, GateReplacesTheScaleAndReportsScores) {
  AdapterModel model = load_pretrained(model_dir("bert"));
  model->add_adapter("a", "lora[use_gating=true]", false, true);
  randomize_adapter(model, "a");
  const auto sd = model->adapter_state_dict("a");
  EXPECT_EQ(sd.at("bert.encoder.layer.0.attention.self.query.loras.a.gate.weight").sizes(),
            (std::vector<std::int64_t>{1, 32}));
  EXPECT_EQ(sd.at("bert.encoder.layer.0.attention.self.query.loras.a.gate.bias").sizes(), (std::vector<std::int64_t>{1}));
  ForwardOptions options;
  options.output_gating_scores = true;
  const ModelOutput out = model->forward(tiny_inputs(), options);
  const Tensor scores = out.gating_scores.at("a").at(0).at("selfattn_lora");
  EXPECT_EQ(scores.sizes(), (std::vector<std::int64_t>{2, 2}));  // (batch, q and v)
  EXPECT_TRUE((scores > 0).all().item<bool>() && (scores < 1).all().item<bool>());
  // The delta scaled by the gate: a layer computed by hand.
  torch::NoGradGuard no_grad;
  auto* q = model->base().sites().linear.front();
  ASSERT_EQ(q->role(), "q");
  const Tensor x = torch::randn({2, 5, 32});
  nn::ForwardContext ctx;
  const Block setup = composition::normalize_active(Block::adapter("a"));
  ctx.setup = &setup;
  const std::string p = "bert.encoder.layer.0.attention.self.query.loras.a.";
  const Tensor gate = torch::sigmoid(torch::nn::functional::linear(x, sd.at(p + "gate.weight"), sd.at(p + "gate.bias"))).mean(1);
  const Tensor want = torch::nn::functional::linear(x, q->weight, q->bias) +
                      torch::matmul(torch::matmul(x, sd.at(p + "lora_A").t()), sd.at(p + "lora_B").t()) * gate.unsqueeze(-1);
  expect_close(q->forward(x, ctx), want, 1e-5, "gated layer");
}

// ---- dtypes and devices ---------------------------------------------------------------------

// The family in bfloat16 on the CPU, and in float32 on CUDA (when there is one): same outputs as
// float32 on the CPU, merged or not, and adapters added to a moved model follow it.
TEST(LoRADevice, Bfloat16AndCuda) {
  std::vector<torch::Device> devices = {torch::kCPU};
  if (torch::cuda::is_available()) devices.push_back(torch::kCUDA);
  for (const auto& device : devices) {
    for (const auto& spec : family()) {
      SCOPED_TRACE(spec + " on " + device.str());
      AdapterModel model = load_pretrained(model_dir("bert"));
      model->add_adapter("a", spec, false, true);
      randomize_adapter(model, "a");
      const Tensor reference = hidden(model, tiny_inputs());
      if (device.is_cuda()) {
        model->to(device);
        model->add_adapter("b", spec);  // added after the move: lives on the device
        for (const auto& [key, t] : model->adapter_state_dict("b")) EXPECT_EQ(t.device().type(), device.type()) << key;
        expect_close(hidden(model, tiny_inputs()).cpu(), reference, 1e-4, "cuda");
        model->merge_adapter("a");
        expect_close(hidden(model, tiny_inputs()).cpu(), reference, 1e-4, "cuda, merged");
        model->reset_adapter();
      } else {
        model->to(torch::kBFloat16);
        const Tensor half = hidden(model, tiny_inputs());
        EXPECT_EQ(half.scalar_type(), torch::kBFloat16);
        expect_close(half.to(torch::kFloat), reference, 0.15, "bfloat16");
        model->merge_adapter("a");
        expect_close(hidden(model, tiny_inputs()).to(torch::kFloat), reference, 0.15, "bfloat16, merged");
        model->reset_adapter();
        EXPECT_TRUE(torch::equal(hidden(model, tiny_inputs()), half));
      }
    }
  }
}

// ---- fused projections ----------------------------------------------------------------------

// A tiny model whose sites are one fused q,k,v projection and the same three projections apart,
// so that the method's own placement code runs on both.
class FusedTestModel : public models::BaseModelImpl {
 public:
  explicit FusedTestModel(const models::ModelConfig& c) : BaseModelImpl(c) {
    // Its sites are found from the module tree: c_attn, q, k, v in registration order.
    fused = register_module("c_attn", nn::AdaptedLinear(8, 12, true, 0,
                                                        std::vector<nn::OutputSlice>{{"q", 0, 4}, {"k", 4, 4}, {"v", 8, 4}}));
    q = register_module("q", nn::AdaptedLinear(8, 4, true, 0, "q"));
    k = register_module("k", nn::AdaptedLinear(8, 4, true, 0, "k"));
    v = register_module("v", nn::AdaptedLinear(8, 4, true, 0, "v"));
    torch::NoGradGuard no_grad;
    fused->weight.copy_(torch::cat({q->weight, k->weight, v->weight}));
    fused->bias.copy_(torch::cat({q->bias, k->bias, v->bias}));
  }
  nn::AdaptedLinear fused{nullptr}, q{nullptr}, k{nullptr}, v{nullptr};

 protected:
  torch::Tensor embed(const models::ModelInputs&, models::LayerArgs&, nn::ForwardContext&) override { return {}; }
  std::int64_t num_layers() const override { return 0; }
  torch::Tensor layer(std::int64_t, const torch::Tensor& h, models::LayerArgs&, nn::ForwardContext&) override { return h; }
};

TEST(LoRAFused, OneDeltaPerFusedLayerEqualsThreeSeparateOnes) {
  const auto config = models::parse_model_config(
      {{"model_type", "bert"}, {"vocab_size", 10}, {"hidden_size", 8}, {"num_hidden_layers", 1},
       {"num_attention_heads", 2}, {"intermediate_size", 16}, {"max_position_embeddings", 16}},
      "fused test");
  for (const std::string spec : {"lora[r=2,attn_matrices=['q','k','v']]", "lora[r=2,attn_matrices=['q','v']]",
                                 "ia3[attn_matrices=['k','v']]", "lora[r=2,attn_matrices=['k'],use_gating=true]"}) {
    SCOPED_TRACE(spec);
    torch::manual_seed(0);
    FusedTestModel model(config);
    const auto c = methods::AdapterConfig::parse(spec);
    methods::method_spec("lora").attach("a", c.values, model);
    auto* delta = model.fused->adapter("a");
    ASSERT_NE(delta, nullptr);
    // Give the separate layers random weights and copy them into the fused layer's grouped layout.
    torch::NoGradGuard no_grad;
    std::vector<Tensor> as, bs, gw, gb;
    for (auto* l : {model.q.get(), model.k.get(), model.v.get()}) {
      if (auto* d = l->adapter("a")) {
        for (auto& item : d->named_parameters()) item.value().normal_(0.0, 0.5);
        auto p = d->named_parameters();
        if (p.find("lora_A")) as.push_back(p["lora_A"]);
        bs.push_back(p["lora_B"]);
        if (p.find("gate.weight")) {
          gw.push_back(p["gate.weight"]);
          gb.push_back(p["gate.bias"]);
        }
      }
    }
    auto fp = delta->named_parameters();
    if (!as.empty()) fp["lora_A"].copy_(torch::cat(as));
    fp["lora_B"].copy_(torch::cat(bs));
    if (!gw.empty()) {
      fp["gate.weight"].copy_(torch::cat(gw));
      fp["gate.bias"].copy_(torch::cat(gb));
    }
    const Tensor x = torch::randn({3, 5, 8});
    nn::ForwardContext ctx;
    const Block setup = composition::normalize_active(Block::adapter("a"));
    ctx.setup = &setup;
    const Tensor separate = torch::cat({model.q->forward(x, ctx), model.k->forward(x, ctx), model.v->forward(x, ctx)}, -1);
    expect_close(model.fused->forward(x, ctx), separate, 1e-5, "fused vs separate");
    if (c.values.at("use_gating") == false) {
      model.fused->merge_adapter("a");
      expect_close(model.fused->forward(x, ctx), separate, 1e-5, "fused merged");
      model.fused->reset_merged();
    }
  }
}

}  // namespace
}  // namespace adapters::test
