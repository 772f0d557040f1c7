// DeBERTa and DeBERTa-v2 beyond the fixtures: their config keys are checked before any weight is
// read, v2's log buckets (which the fixtures' 8 tokens never reach) give the reference's values,
// composition blocks keep the disentangled terms per row (v2's share_att_key projects the relative
// embeddings through the adapted query_proj/key_proj), merging changes nothing, and padded queries
// attend to a prefix only.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>

#include "adapters/composition/setup.h"
#include "adapters/models/deberta_common.h"
#include "test_util.h"

namespace adapters::test {
namespace {

json config_of(const std::string& arch) {
  return json::parse(io::read_text_file(model_dir(arch) / "config.json"));
}

// The error of building the model from `arch`'s config with `changes`; "" when it builds.
std::string build_error(const std::string& arch, const json& changes) {
  json c = config_of(arch);
  c.update(changes);
  return error_of([&] { AdapterModel model(models::parse_model_config(c, "config.json")); });
}

bool mentions(const std::string& error, const std::string& part) {
  return error.find(part) != std::string::npos;
}

TEST(DebertaConfig, ContradictingKeysAreRefusedBeforeWeightsAreRead) {
  for (const std::string arch : {"deberta", "deberta-v2"}) {
    SCOPED_TRACE(arch);
    EXPECT_EQ(build_error(arch, json::object()), "");
    EXPECT_TRUE(mentions(build_error(arch, {{"num_attention_heads", 3}}), "not divisible by num_attention_heads 3"));
    EXPECT_TRUE(mentions(build_error(arch, {{"pos_att_type", {"c2p", "p2p"}}}), "'pos_att_type' holds 'p2p'"));
    EXPECT_TRUE(mentions(build_error(arch, {{"pos_att_type", "c2p|c2p"}}), "lists 'c2p' twice"));
    EXPECT_TRUE(mentions(build_error(arch, {{"pos_att_type", 3}}), "'pos_att_type' must be a list"));
    EXPECT_EQ(build_error(arch, {{"pos_att_type", " C2P | p2c "}}), "");  // HF lower-cases and strips strings
    EXPECT_TRUE(mentions(build_error(arch, {{"pad_token_id", 99}}), "pad_token_id 99"));
    EXPECT_TRUE(mentions(build_error(arch, {{"relative_attention", "yes"}}), "relative_attention"));
  }
  EXPECT_TRUE(mentions(build_error("deberta", {{"talking_head", true}}), "talking_head"));
  EXPECT_TRUE(mentions(build_error("deberta-v2", {{"norm_rel_ebd", "layer_norm|batch_norm"}}), "'batch_norm'"));
  EXPECT_TRUE(mentions(build_error("deberta-v2", {{"conv_kernel_size", 2}}), "must be odd"));
  EXPECT_TRUE(mentions(build_error("deberta-v2", {{"conv_kernel_size", 3}, {"conv_groups", 5}}), "conv_groups 5"));
  EXPECT_TRUE(mentions(build_error("deberta-v2", {{"conv_kernel_size", 3}, {"conv_act", "nope"}}), "conv_act"));
  EXPECT_TRUE(mentions(build_error("deberta-v2", {{"position_buckets", 200}}), "position_buckets 200"));
  EXPECT_TRUE(mentions(build_error("deberta-v2", {{"attention_head_size", 4}}), "attention_head_size 4"));

  // A folder with a bad config and no weights at all: the config error comes first.
  TempDir tmp;
  json c = config_of("deberta");
  c["pos_att_type"] = "c2p|p2p";
  std::ofstream(tmp / "config.json") << c.dump(2);
  EXPECT_TRUE(mentions(error_of([&] { load_pretrained(tmp.path()); }), "pos_att_type"));
}

TEST(DebertaConfig, DefaultsAreDebertas) {
  json c = config_of("deberta");
  c.erase("layer_norm_eps");
  c.erase("type_vocab_size");
  AdapterModel model(models::parse_model_config(c, "config.json"));
  EXPECT_EQ(model->config().layer_norm_eps, 1e-7);
  EXPECT_EQ(model->config().type_vocab_size, 0);
  EXPECT_FALSE(model->named_parameters().contains("deberta.embeddings.token_type_embeddings.weight"));
}

TEST(DebertaV2, LogBucketsAreTheReferences) {
  json c = config_of("deberta-v2");  // position_buckets 16, max_relative_positions -1 -> 64
  const models::ModelConfig config = models::parse_model_config(c, "config.json");
  const auto o = models::deberta::parse_options(config, true);
  const torch::Tensor rel = o.relative_positions(100, torch::kCPU);
  // sign(r) * (ceil(7 log(|r|/8) / log(63/8)) + 8) beyond |r| = 8, r itself up to 8.
  for (std::int64_t r : {0, 1, 7, 8, 9, 12, 20, 40, 63, 64, 99}) {
    const double expected =
        r <= 8 ? static_cast<double>(r) : std::ceil(std::log(r / 8.0) / std::log(63.0 / 8.0) * 7.0) + 8.0;
    EXPECT_EQ(rel[r][0].item<std::int64_t>(), static_cast<std::int64_t>(expected)) << r;
    EXPECT_EQ(rel[0][r].item<std::int64_t>(), -static_cast<std::int64_t>(expected)) << r;
  }
  EXPECT_EQ(rel[63][0].item<std::int64_t>(), 15);  // log(63/8) / log(63/8) = 1 exactly: ceil(7) + 8
}

// ---- forward passes ----------------------------------------------------------------------------

AdapterModel model_with(const std::string& arch, const std::vector<std::pair<std::string, std::string>>& adapters) {
  AdapterModel model = load_pretrained(model_dir(arch));
  torch::manual_seed(11);
  for (const auto& [name, config] : adapters) {
    model->add_adapter(name, config);
    randomize_adapter(model, name, 0.2);
  }
  model->eval();
  return model;
}

torch::Tensor run(AdapterModel& model, const std::string& setup, const models::ModelInputs& in) {
  torch::NoGradGuard no_grad;
  const composition::Block b = composition::parse(setup);
  ForwardOptions options;
  options.setup = &b;
  return model->forward(in, options).last_hidden_state;
}

models::ModelInputs three_rows() {
  torch::Tensor ids = torch::arange(24, torch::kLong).remainder(97).add(2).view({3, 8});
  torch::Tensor mask = torch::ones({3, 8}, torch::kLong);
  mask[1].narrow(0, 6, 2).zero_();
  mask[2].narrow(0, 4, 4).zero_();
  return {ids, mask, torch::Tensor()};
}

models::ModelInputs rows(const models::ModelInputs& in, std::int64_t begin, std::int64_t end) {
  return {in.input_ids.slice(0, begin, end), in.attention_mask.slice(0, begin, end), torch::Tensor()};
}

TEST(DebertaConfig, VariantsBuildAndRun) {
  // Options the fixtures do not cover: absolute positions, token types, factorised embeddings,
  // one relative term, no relative attention, separate position projections, v2's convolution,
  // and sequences long enough for v2's log buckets and v1's clamped span.
  const std::vector<std::pair<std::string, json>> variants = {
      {"deberta", {{"position_biased_input", true}, {"type_vocab_size", 2}, {"embedding_size", 16}}},
      {"deberta", {{"pos_att_type", "c2p"}, {"max_relative_positions", 8}}},
      {"deberta", {{"relative_attention", false}}},
      {"deberta-v2", {{"share_att_key", false}, {"pos_att_type", "p2c"}}},
      {"deberta-v2", {{"share_att_key", false}}},
      {"deberta-v2", {{"conv_kernel_size", 3}, {"conv_act", "gelu"}, {"norm_rel_ebd", "none"}}},
      {"deberta-v2", {{"position_buckets", -1}, {"max_relative_positions", 24}}},
  };
  torch::Tensor ids = torch::arange(2 * 40, torch::kLong).remainder(97).add(2).view({2, 40});
  torch::Tensor mask = torch::ones({2, 40}, torch::kLong);
  mask[1].narrow(0, 30, 10).zero_();
  for (const auto& [arch, changes] : variants) {
    SCOPED_TRACE(arch + " " + changes.dump());
    json c = config_of(arch);
    c.update(changes);
    AdapterModel model(models::parse_model_config(c, "config.json"));
    model->add_adapter("p", "prefix_tuning[prefix_length=3]");
    model->add_adapter("l", "lora[attn_matrices=['q','k','v']]");
    model->eval();
    for (const std::string setup : {"p", "l"}) {
      const torch::Tensor out = run(model, setup, {ids, mask, torch::Tensor()});
      EXPECT_EQ(out.sizes(), (std::vector<std::int64_t>{2, 40, 32}));
      EXPECT_TRUE(torch::isfinite(out).all().item<bool>());
    }
  }
}

TEST(Deberta, StaticSequenceClassificationHeadBecomesTheFlexibleHead) {
  // DebertaForSequenceClassification: classifier(gelu(pooler.dense(h[:, 0]))).
  for (const std::string arch : {"deberta", "deberta-v2"}) {
    SCOPED_TRACE(arch);
    TempDir tmp;
    json c = config_of(arch);
    c["architectures"] = {arch == "deberta" ? "DebertaForSequenceClassification" : "DebertaV2ForSequenceClassification"};
    c["num_labels"] = 3;
    std::ofstream(tmp / "config.json") << c.dump(2);
    io::TensorMap weights = io::read_safetensors(model_dir(arch) / "model.safetensors").tensors;
    torch::manual_seed(3);
    const torch::Tensor pw = torch::randn({32, 32}) * 0.2, pb = torch::randn({32}) * 0.2;
    const torch::Tensor cw = torch::randn({3, 32}) * 0.2, cb = torch::randn({3}) * 0.2;
    weights["pooler.dense.weight"] = pw;
    weights["pooler.dense.bias"] = pb;
    weights["classifier.weight"] = cw;
    weights["classifier.bias"] = cb;
    io::write_safetensors(tmp / "model.safetensors", weights);
    AdapterModel model = load_pretrained(tmp.path());
    ASSERT_TRUE(model->has_head("default"));
    torch::NoGradGuard no_grad;
    ForwardOptions options;
    options.head = "default";
    const auto in = three_rows();
    const ModelOutput out = model->forward(in, options);
    const torch::Tensor first = out.last_hidden_state.select(1, 0);
    const torch::Tensor expected = torch::linear(torch::gelu(torch::linear(first, pw, pb)), cw, cb);
    EXPECT_TRUE(torch::allclose(out.head.at("logits"), expected, 1e-5, 1e-5));
  }
}


struct Case {
  const char* arch;
  const char* family;
  const char* a;
  const char* b;
};

class DebertaComposition : public ::testing::TestWithParam<Case> {};

TEST_P(DebertaComposition, ParallelAndBatchSplitEqualEachMemberAlone) {
  const Case c = GetParam();
  AdapterModel model = model_with(c.arch, {{"a", c.a}, {"b", c.b}});
  const auto in = three_rows();
  const torch::Tensor a = run(model, "a", in), b = run(model, "b", in);
  EXPECT_FALSE(torch::allclose(a, b, 1e-3, 1e-3));
  const torch::Tensor both = run(model, "Parallel(a, b)", in);
  ASSERT_EQ(both.size(0), 6);
  EXPECT_TRUE(torch::allclose(both.slice(0, 0, 3), a, 1e-5, 1e-5));
  EXPECT_TRUE(torch::allclose(both.slice(0, 3, 6), b, 1e-5, 1e-5));
  const torch::Tensor split = run(model, "BatchSplit(a, b, batch_sizes=[1, 2])", in);
  EXPECT_TRUE(torch::allclose(split.slice(0, 0, 1), run(model, "a", rows(in, 0, 1)), 1e-5, 1e-5));
  EXPECT_TRUE(torch::allclose(split.slice(0, 1, 3), run(model, "b", rows(in, 1, 3)), 1e-5, 1e-5));
}

INSTANTIATE_TEST_SUITE_P(
    Deberta, DebertaComposition,
    ::testing::Values(Case{"deberta", "lora", "lora[r=4,alpha=8]", "lora[r=2,attn_matrices=['q','k','v']]"},
                      Case{"deberta-v2", "lora", "lora[r=4,alpha=8]", "lora[r=2,attn_matrices=['q','k','v']]"},
                      Case{"deberta", "ia3", "ia3", "ia3[intermediate_lora=False]"},
                      Case{"deberta-v2", "ia3", "ia3", "ia3[intermediate_lora=False]"},
                      Case{"deberta", "prefix", "prefix_tuning[prefix_length=3]", "prefix_tuning[prefix_length=5]"},
                      Case{"deberta-v2", "prefix", "prefix_tuning[prefix_length=3]", "prefix_tuning[prefix_length=5]"}),
    [](const auto& info) {
      std::string name = std::string(info.param.arch) + "_" + info.param.family;
      for (auto& ch : name) ch = ch == '-' ? '_' : ch;
      return name;
    });

TEST(Deberta, MergingLoraAndIa3ChangesNothing) {
  for (const std::string arch : {"deberta", "deberta-v2"}) {
    for (const std::string config : {"lora[r=4,attn_matrices=['q','k','v'],intermediate_lora=True]", "ia3"}) {
      SCOPED_TRACE(arch + " " + config);
      AdapterModel model = model_with(arch, {{"a", config}});
      const auto in = three_rows();
      const torch::Tensor unmerged = run(model, "a", in);
      model->merge_adapter("a");
      EXPECT_TRUE(torch::allclose(run(model, "a", in), unmerged, 1e-5, 1e-5));
      model->deactivate_adapters();
      EXPECT_TRUE(torch::allclose(hidden(model, in), unmerged, 1e-5, 1e-5));
    }
  }
}

TEST(Deberta, PaddedQueriesAttendToThePrefixOnly) {
  // Without a prefix a padded query's attention context is 0, so its layer output does not depend on
  // the real tokens; with a prefix it attends to the prefix (and still not to the real tokens).
  for (const std::string arch : {"deberta", "deberta-v2"}) {
    SCOPED_TRACE(arch);
    AdapterModel model = model_with(arch, {{"p", "prefix_tuning[prefix_length=4]"}});
    auto in = three_rows();
    auto changed = in;
    changed.input_ids = in.input_ids.clone();
    changed.input_ids[2][0] = 50;  // a real token of row 2 (padded from position 4)
    for (const std::string setup : {"", "p"}) {
      const torch::Tensor x = setup.empty() ? hidden(model, in) : run(model, setup, in);
      const torch::Tensor y = setup.empty() ? hidden(model, changed) : run(model, setup, changed);
      EXPECT_FALSE(torch::allclose(x[2].narrow(0, 0, 4), y[2].narrow(0, 0, 4), 1e-4, 1e-4));
      // Layer 0's padded rows see only their own (zero) embedding; layer 1's see layer 0's padded rows.
      EXPECT_TRUE(torch::allclose(x[2].narrow(0, 4, 4), y[2].narrow(0, 4, 4), 1e-6, 1e-6)) << setup;
    }
    EXPECT_FALSE(torch::allclose(hidden(model, in)[2].narrow(0, 4, 4), run(model, "p", in)[2].narrow(0, 4, 4), 1e-3, 1e-3));
  }
}

}  // namespace
}  // namespace adapters::test
