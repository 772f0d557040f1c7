// The shared architecture layer: every registered architecture exposes a complete set of hook
// sites, the one mask builder, rotary embeddings and grouped-query attention behave as specified,
// a config that contradicts itself is refused before any weight is read, and ELECTRA holding a
// BERT model's weights is that BERT model.
#include <gtest/gtest.h>

#include <fstream>
#include <set>

#include "adapters/io/tensors.h"
#include "adapters/models/registry.h"
#include "adapters/nn/attention.h"
#include "adapters/nn/mask.h"
#include "test_util.h"

namespace adapters::test {
namespace {

using composition::Block;

// ---- hook sites -----------------------------------------------------------------------------

std::vector<std::string> registered_with_a_test_model() {
  std::vector<std::string> types;
  for (const auto& spec : models::architectures()) {
    if (fs::exists(model_dir(spec.model_type) / "config.json")) types.push_back(spec.model_type);
  }
  return types;
}

// Module paths of every plain torch::nn::Linear under the base model: a linear layer that adapters
// cannot reach. Only poolers, embedding projections and relative-position projections may be plain.
std::vector<std::string> plain_linear_layers(const models::BaseModelImpl& base) {
  std::vector<std::string> plain;
  for (const auto& item : base.named_modules("", false)) {
    if (dynamic_cast<torch::nn::LinearImpl*>(item.value().get()) == nullptr) continue;
    const std::string& path = item.key();
    const bool allowed = path.find("pooler") != std::string::npos || path.find("embedding") != std::string::npos ||
                         path.find("pos_") != std::string::npos || path.find("prefix_tuning") != std::string::npos ||
                         path.find("attention.dense") != std::string::npos;  // ALBERT's, as the reference
    if (!allowed) plain.push_back(path);
  }
  return plain;
}

TEST(HookSites, EveryLayerOfEveryArchitectureHasItsSites) {
  const auto types = registered_with_a_test_model();
  ASSERT_GE(types.size(), 5u);
  for (const auto& type : types) {
    SCOPED_TRACE(type);
    AdapterModel model = load_pretrained(model_dir(type));
    const auto& sites = model->base().sites();
    std::map<std::int64_t, std::set<std::string>> roles, residual;
    std::map<std::int64_t, int> attention;
    for (auto* linear : sites.linear) {
      for (const auto& slice : linear->slices()) {
        if (slice.role != "pooler") roles[linear->layer()].insert(slice.role);  // the pooler is after the layers
      }
    }
    for (auto* site : sites.residual) residual[site->layer()].insert(site->location());
    for (auto* site : sites.attention) ++attention[site->layer()];
    ASSERT_FALSE(roles.empty());
    for (const auto& [layer, found] : roles) {
      SCOPED_TRACE(layer);
      EXPECT_TRUE(found.count("q") && found.count("k") && found.count("v")) << "q/k/v projections";
      EXPECT_TRUE(found.count("intermediate") && found.count("output")) << "feed-forward projections";
      // Decoder layers of encoder-decoder models also have the cross-attention's sites.
      const bool cross = model->arch().kind == models::ArchKind::EncoderDecoder &&
                         layer >= model->config().num_hidden_layers;
      std::set<std::string> expected = {nn::location::kAttention, nn::location::kOutput};
      if (cross) expected.insert(nn::location::kCrossAttention);
      EXPECT_EQ(residual[layer], expected);
      EXPECT_EQ(attention[layer], cross ? 2 : 1);
    }
    EXPECT_EQ(plain_linear_layers(model->base()), std::vector<std::string>());
  }
}

TEST(HookSites, SitesAreFoundInLayerOrder) {
  AdapterModel model = load_pretrained(model_dir("bert"));
  const auto& sites = model->base().sites();
  ASSERT_EQ(sites.linear.size(), 13u);  // 2 layers x q, k, v, o, intermediate, output; the pooler's dense
  EXPECT_EQ(sites.linear_paths.back(), "pooler.dense");
  EXPECT_EQ(sites.linear_paths.front(), "encoder.layer.0.attention.self.query");
  ASSERT_EQ(sites.residual.size(), 4u);
  for (std::size_t i = 1; i < sites.linear.size(); ++i) EXPECT_LE(sites.linear[i - 1]->layer(), sites.linear[i]->layer());
  EXPECT_EQ(sites.residual[0]->location(), nn::location::kAttention);
  EXPECT_EQ(sites.residual[1]->location(), nn::location::kOutput);
  EXPECT_EQ(sites.residual[2]->layer(), 1);
}

// ---- composition and heads on every architecture ----------------------------------------------

class EveryArchitecture : public ::testing::TestWithParam<std::string> {
 protected:
  AdapterModel load_with_two_adapters() {
    AdapterModel model = load_pretrained(model_dir(GetParam()));
    torch::manual_seed(3);
    for (const char* name : {"a", "b"}) {
      model->add_adapter(name, "seq_bn");
      randomize_adapter(model, name, 0.2);
    }
    model->eval();
    return model;
  }
  torch::Tensor run(AdapterModel& model, const std::string& setup) {
    const Block b = composition::parse(setup);
    torch::NoGradGuard no_grad;
    return model->forward(inputs_for(GetParam()), {&b}).last_hidden_state;
  }
};

TEST_P(EveryArchitecture, ParallelAndBatchSplitEqualTheMembersRunAlone) {
  AdapterModel model = load_with_two_adapters();
  const auto a = run(model, "a"), b = run(model, "b");
  const auto parallel = run(model, "Parallel(a, b)");
  const auto B = a.size(0);
  ASSERT_EQ(parallel.size(0), 2 * B);
  EXPECT_TRUE(torch::allclose(parallel.narrow(0, 0, B), a, 1e-5, 1e-6));
  EXPECT_TRUE(torch::allclose(parallel.narrow(0, B, B), b, 1e-5, 1e-6));
  const auto split = run(model, "BatchSplit(a, b, batch_sizes=[1, 1])");
  EXPECT_TRUE(torch::allclose(split.narrow(0, 0, 1), a.narrow(0, 0, 1), 1e-5, 1e-6));
  EXPECT_TRUE(torch::allclose(split.narrow(0, 1, 1), b.narrow(0, 1, 1), 1e-5, 1e-6));
}

TEST_P(EveryArchitecture, StackAndFuseComposeTheMembers) {
  AdapterModel model = load_with_two_adapters();
  const auto a = run(model, "a");
  EXPECT_GT((run(model, "Stack(a, b)") - a).abs().max().item<double>(), 1e-4);
  model->add_adapter_fusion(composition::parse("Fuse(a, b)"));
  EXPECT_GT((run(model, "Fuse(a, b)") - a).abs().max().item<double>(), 1e-4);
}

TEST_P(EveryArchitecture, AClassificationHeadTrainsItsAdapter) {
  AdapterModel model = load_pretrained(model_dir(GetParam()));
  const bool image = model->arch().input == models::InputKind::Image;
  model->add_adapter("a", "lora");
  model->add_head("a", image ? "image_classification" : "classification", {{"num_labels", 3}});
  model->train_adapter("a");
  ForwardOptions options;
  options.head_inputs["labels"] = torch::tensor({0, 2}, torch::kLong);
  ModelOutput out = model->forward(inputs_for(GetParam()), options);
  EXPECT_EQ(out.head.at("logits").sizes(), torch::IntArrayRef({2, 3}));
  out.loss.backward();
  for (const auto& [key, t] : model->adapter_state_dict("a")) EXPECT_TRUE(t.grad().defined()) << key;
}

INSTANTIATE_TEST_SUITE_P(Archs, EveryArchitecture,
                         ::testing::Values("bert", "roberta", "xlm-roberta", "distilbert", "electra", "albert", "deberta",
                                           "deberta-v2", "vit", "beit", "gpt2", "gptj", "bart", "mbart", "t5", "llama",
                                           "mistral", "qwen2", "gemma"),
                         [](const auto& info) {
                           std::string n = info.param;
                           std::replace(n.begin(), n.end(), '-', '_');
                           return n;
                         });

// DeBERTa's in_proj fuses q, k and v; VeRA and DoRA do not support fused projections yet: a clear
// error when the adapter is added, and the model is left as it was.
TEST(FusedProjections, VeraAndDoraAreRefusedClearly) {
  AdapterModel model = load_pretrained(model_dir("deberta"));
  for (const char* spec : {"vera", "dora"}) {
    EXPECT_NE(error_of([&] { model->add_adapter("a", spec); }).find("on a fused projection"), std::string::npos) << spec;
    EXPECT_FALSE(model->has_adapter("a"));
  }
  EXPECT_NO_THROW(model->add_adapter("a", "lora"));
}

// ---- the mask builder -----------------------------------------------------------------------

bool attends(const torch::Tensor& mask, std::int64_t b, std::int64_t q, std::int64_t k) {
  return mask.index({b, 0, q, k}).item<float>() == 0.0f;
}

TEST(MaskBuilder, PaddingOnlyIsHfsExtendedMask) {
  nn::MaskSpec spec;
  spec.padding = torch::tensor({{1, 1, 0}}, torch::kLong);
  spec.query_length = spec.key_length = 3;
  const auto mask = nn::build_attention_mask(spec, torch::kFloat32, torch::kCPU);
  EXPECT_EQ(mask.sizes(), torch::IntArrayRef({1, 1, 1, 3}));
  EXPECT_EQ(mask[0][0][0][2].item<float>(), std::numeric_limits<float>::lowest());
  EXPECT_FALSE(nn::build_attention_mask({torch::Tensor(), 3, 3}, torch::kFloat32, torch::kCPU).defined());
}

TEST(MaskBuilder, CausalWithCacheOffsetSlidingWindowAndPadding) {
  nn::MaskSpec spec;
  spec.padding = torch::tensor({{0, 1, 1, 1, 1}}, torch::kLong);  // left padding
  spec.query_length = 2;
  spec.key_length = 5;
  spec.past_length = 3;  // queries at positions 3 and 4
  spec.causal = true;
  spec.sliding_window = 3;
  const auto mask = nn::build_attention_mask(spec, torch::kFloat32, torch::kCPU);
  ASSERT_EQ(mask.sizes(), torch::IntArrayRef({1, 1, 2, 5}));
  // query at 3 sees 1..3 (window 3), query at 4 sees 2..4; position 0 is padding anyway.
  const std::vector<std::vector<bool>> expected = {{false, true, true, true, false}, {false, false, true, true, true}};
  for (int q = 0; q < 2; ++q) {
    for (int k = 0; k < 5; ++k) EXPECT_EQ(attends(mask, 0, q, k), expected[q][k]) << q << "," << k;
  }
}

TEST(MaskBuilder, PaddedQueriesAndPrefixColumns) {
  nn::MaskSpec spec;
  spec.padding = torch::tensor({{1, 0}}, torch::kLong);
  spec.query_length = spec.key_length = 2;
  spec.mask_padded_queries = true;
  const auto mask = nn::build_attention_mask(spec, torch::kFloat32, torch::kCPU);
  EXPECT_TRUE(attends(mask, 0, 0, 0));
  EXPECT_FALSE(attends(mask, 0, 1, 0));  // the padded query sees nothing
  const auto with_prefix = nn::prepend_mask_columns(mask, 3);
  ASSERT_EQ(with_prefix.sizes(), torch::IntArrayRef({1, 1, 2, 5}));
  for (int q = 0; q < 2; ++q) {
    for (int k = 0; k < 3; ++k) EXPECT_TRUE(attends(with_prefix, 0, q, k));  // prefix columns always attended
  }
}

// ---- attention ------------------------------------------------------------------------------

TEST(Rotary, PositionZeroIsTheIdentityAndScoresDependOnlyOnDistance) {
  for (auto layout : {nn::RotaryLayout::HalfSplit, nn::RotaryLayout::Interleaved}) {
    nn::RotaryOptions rotary{layout, 6, 10000.0};
    torch::manual_seed(0);
    const auto q = torch::randn({1, 1, 1, 8}), k = torch::randn({1, 1, 1, 8});
    auto at = [&](const torch::Tensor& x, std::int64_t p) { return nn::apply_rotary(x, torch::tensor({{p}}), rotary); };
    EXPECT_TRUE(torch::allclose(at(q, 0), q));
    // The last 2 dimensions (partial rotary) pass through unchanged.
    EXPECT_TRUE(torch::equal(at(q, 5).narrow(-1, 6, 2), q.narrow(-1, 6, 2)));
    auto score = [&](std::int64_t m, std::int64_t n) { return (at(q, m) * at(k, n)).sum().item<double>(); };
    EXPECT_NEAR(score(7, 3), score(11, 7), 1e-5);
    EXPECT_GT(std::abs(score(7, 3) - score(3, 7)), 1e-4);
  }
}

TEST(Attention, GroupedQueryAttentionEqualsRepeatedKeyValueHeads) {
  torch::manual_seed(0);
  nn::AttentionOptions gqa;
  gqa.hidden = 16, gqa.heads = 4, gqa.kv_heads = 2, gqa.o = "o_proj";
  nn::Attention grouped(gqa);
  nn::AttentionOptions full = gqa;
  full.kv_heads = 4;
  nn::Attention plain(full);
  torch::NoGradGuard no_grad;
  plain->query->weight.copy_(grouped->query->weight);
  plain->query->bias.copy_(grouped->query->bias);
  plain->output->weight.copy_(grouped->output->weight);
  plain->output->bias.copy_(grouped->output->bias);
  // kv head j serves query heads 2j and 2j+1: repeat each kv head's rows twice.
  for (auto [g, p] : {std::pair{grouped->key, plain->key}, std::pair{grouped->value, plain->value}}) {
    p->weight.copy_(g->weight.view({2, 1, 4, 16}).expand({2, 2, 4, 16}).reshape({16, 16}));
    p->bias.copy_(g->bias.view({2, 1, 4}).expand({2, 2, 4}).reshape({16}));
  }
  const auto x = torch::randn({2, 5, 16});
  nn::ForwardContext ctx;
  EXPECT_TRUE(torch::allclose(grouped->forward({x}, ctx), plain->forward({x}, ctx), 1e-5, 1e-6));
}

TEST(Attention, CachedStepsEqualTheFullCausalRecompute) {
  torch::manual_seed(0);
  nn::AttentionOptions o;
  o.hidden = 16, o.heads = 4, o.kv_heads = 1, o.o = "o_proj";
  o.rotary = {nn::RotaryLayout::HalfSplit, 0, 10000.0};
  nn::Attention attention(o);
  attention->eval();
  torch::NoGradGuard no_grad;
  const auto x = torch::randn({1, 6, 16});
  const auto positions = torch::arange(6).unsqueeze(0);
  auto causal = [](std::int64_t past, std::int64_t q) {
    nn::MaskSpec spec;
    spec.query_length = q, spec.key_length = past + q, spec.past_length = past, spec.causal = true;
    return nn::build_attention_mask(spec, torch::kFloat32, torch::kCPU);
  };
  nn::ForwardContext ctx;
  const auto full = attention->forward({x, causal(0, 6), {}, positions}, ctx);
  nn::LayerKV cache;
  std::vector<torch::Tensor> steps = {attention->forward({x.narrow(1, 0, 4), causal(0, 4), {}, positions.narrow(1, 0, 4), &cache}, ctx)};
  for (std::int64_t t = 4; t < 6; ++t) {
    steps.push_back(attention->forward({x.narrow(1, t, 1), causal(t, 1), {}, positions.narrow(1, t, 1), &cache}, ctx));
  }
  EXPECT_EQ(cache.length(), 6);
  EXPECT_TRUE(torch::allclose(torch::cat(steps, 1), full, 1e-5, 1e-6));
}

TEST(Attention, AReservedCacheAppendsInPlaceAndReordersRows) {
  nn::KVCache cache;
  cache.reserve(8);
  nn::LayerKV* slot = cache.layer(0);
  torch::NoGradGuard no_grad;
  const auto k0 = torch::randn({2, 1, 3, 4}), v0 = torch::randn({2, 1, 3, 4});
  slot->append(k0, v0);
  const void* storage = slot->key_buffer.data_ptr();
  EXPECT_EQ(slot->key_buffer.size(2), 8);
  const auto k1 = torch::randn({2, 1, 1, 4}), v1 = torch::randn({2, 1, 1, 4});
  slot->append(k1, v1);
  EXPECT_EQ(slot->key_buffer.data_ptr(), storage) << "a step within the reserved room must not reallocate";
  EXPECT_TRUE(torch::equal(slot->key, torch::cat({k0, k1}, 2)));
  EXPECT_EQ(cache.length(), 4);
  cache.select_rows(torch::tensor({1, 1, 0}));
  EXPECT_TRUE(torch::equal(slot->value, torch::cat({v0, v1}, 2).index_select(0, torch::tensor({1, 1, 0}))));
  for (int i = 0; i < 5; ++i) slot->append(torch::zeros({3, 1, 1, 4}), torch::zeros({3, 1, 1, 4}));  // grows past 8
  EXPECT_EQ(cache.length(), 9);
  EXPECT_GE(slot->key_buffer.size(2), 9);
}

// ---- configs --------------------------------------------------------------------------------

TEST(ArchConfig, ContradictingKeysAreRefusedBeforeWeightsAreRead) {
  const json base = {{"model_type", "bert"}, {"vocab_size", 10}, {"hidden_size", 8}, {"num_hidden_layers", 1},
                     {"num_attention_heads", 2}, {"intermediate_size", 16}};
  auto error = [&](const json& changes) {
    json c = base;
    c.update(changes);
    return error_of([&] { models::parse_model_config(c, "config.json"); });
  };
  EXPECT_NE(error({{"num_attention_heads", 3}}).find("not divisible by num_attention_heads 3"), std::string::npos);
  EXPECT_NE(error({{"num_key_value_heads", 3}}).find("num_key_value_heads 3 does not divide"), std::string::npos);
  EXPECT_NE(error({{"rotary_dim", 7}, {"head_dim", 4}}).find("rotary_dim 7"), std::string::npos);
  EXPECT_EQ(error({{"num_attention_heads", 3}, {"head_dim", 4}}), "");  // an explicit head size needs no divisibility
  EXPECT_EQ(error({{"sliding_window", nullptr}}), "");                  // null is the default
  // A BERT-family model's projections are hidden_size wide: a contradicting head_dim is refused
  // when the model is built, before any weight is read.
  json bert = base;
  bert["head_dim"] = 3;
  EXPECT_NE(error_of([&] { AdapterModel m(models::parse_model_config(bert, "config.json")); })
                .find("head_dim 3 x num_attention_heads 2 = 6, expected hidden_size 8"),
            std::string::npos);
  json text = base;
  text.erase("vocab_size");
  EXPECT_NE(error_of([&] { AdapterModel m(models::parse_model_config(text, "config.json")); }).find("'vocab_size'"),
            std::string::npos);
}

// ---- ELECTRA --------------------------------------------------------------------------------

// An ELECTRA folder holding the BERT fixture's weights (embedding_size = hidden, no pooler).
fs::path electra_from_bert(const TempDir& tmp) {
  const fs::path dir = tmp / "electra-from-bert";
  fs::create_directories(dir);
  json config = json::parse(io::read_text_file(model_dir("bert") / "config.json"));
  config["model_type"] = "electra";
  config["architectures"] = {"ElectraModel"};
  config["embedding_size"] = config["hidden_size"];
  std::ofstream(dir / "config.json") << config.dump(2);
  io::TensorMap weights;
  for (const auto& [key, t] : io::read_safetensors(model_dir("bert") / "model.safetensors").tensors) {
    if (key.find(".pooler.") != std::string::npos) continue;
    weights["electra" + key.substr(key.find('.'))] = t;
  }
  io::write_safetensors(dir / "model.safetensors", weights);
  return dir;
}

TEST(Electra, WithBertWeightsItIsTheBertModel) {
  TempDir tmp;
  AdapterModel bert = load_pretrained(model_dir("bert"));
  AdapterModel electra = load_pretrained(electra_from_bert(tmp));
  EXPECT_EQ(electra->arch().base_prefix, "electra");
  EXPECT_TRUE(torch::equal(hidden(electra, tiny_inputs()), hidden(bert, tiny_inputs())));
  // The same adapter weights give the same outputs too.
  bert->add_adapter("a", "double_seq_bn", false, true);
  randomize_adapter(bert, "a");
  bert->save_adapter(tmp / "a", "a");
  electra->load_adapter(tmp / "a", "", WeightsPreference::Safetensors, true);
  EXPECT_TRUE(torch::allclose(hidden(electra, tiny_inputs()), hidden(bert, tiny_inputs()), 1e-6, 1e-6));
}

TEST(Electra, FactorisedEmbeddingsAreProjected) {
  AdapterModel model = load_pretrained(model_dir("electra"));
  EXPECT_TRUE(model->named_parameters().contains("electra.embeddings_project.weight"));
  const auto out = model->forward(tiny_inputs());
  EXPECT_EQ(out.last_hidden_state.sizes(), torch::IntArrayRef({2, 8, 32}));
  EXPECT_FALSE(out.pooler_output.defined());
}

}  // namespace
}  // namespace adapters::test
