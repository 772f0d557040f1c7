// Composition blocks: Parallel equals running each member alone, BatchSplit equals running each
// slice alone, Average is the weighted sum, Split cuts the sequence; setup strings and JSON
// round-trip; nesting rules and bad input give clear errors. Bottleneck, LoRA-family and prefix
// adapters all go through the same driver.
#include <gtest/gtest.h>

#include "adapters/composition/setup.h"
#include "test_util.h"

namespace adapters::test {
namespace {

using composition::Block;
using composition::parse;

AdapterModel model_with(const std::vector<std::pair<std::string, std::string>>& adapters, const std::string& arch = "bert") {
  AdapterModel model = load_pretrained(model_dir(arch));
  torch::manual_seed(7);
  for (const auto& [name, config] : adapters) {
    model->add_adapter(name, config);
    randomize_adapter(model, name, 0.2);
  }
  model->eval();
  return model;
}

torch::Tensor run(AdapterModel& model, const std::string& setup, const models::ModelInputs& in) {
  torch::NoGradGuard no_grad;
  const Block b = parse(setup);
  ForwardOptions options;
  options.setup = &b;
  return model->forward(in, options).last_hidden_state;
}

models::ModelInputs rows(const models::ModelInputs& in, std::int64_t begin, std::int64_t end) {
  return {in.input_ids.slice(0, begin, end), in.attention_mask.slice(0, begin, end), torch::Tensor()};
}

models::ModelInputs three_rows() {
  torch::Tensor ids = torch::arange(24, torch::kLong).remainder(97).add(2).view({3, 8});
  torch::Tensor mask = torch::ones({3, 8}, torch::kLong);
  mask[2].narrow(0, 6, 2).zero_();
  return {ids, mask, torch::Tensor()};
}

struct Family {
  const char* name;
  const char* a;
  const char* b;
};

class EveryFamily : public ::testing::TestWithParam<Family> {};

TEST_P(EveryFamily, ParallelEqualsEachMemberAlone) {
  const Family f = GetParam();
  AdapterModel model = model_with({{"a", f.a}, {"b", f.b}});
  const auto in = three_rows();
  const torch::Tensor both = run(model, "Parallel(a, b)", in);
  ASSERT_EQ(both.size(0), 6);
  EXPECT_TRUE(torch::allclose(both.slice(0, 0, 3), run(model, "a", in), 1e-5, 1e-5));
  EXPECT_TRUE(torch::allclose(both.slice(0, 3, 6), run(model, "b", in), 1e-5, 1e-5));
  EXPECT_FALSE(torch::allclose(run(model, "a", in), run(model, "b", in), 1e-3, 1e-3));
}

TEST_P(EveryFamily, BatchSplitEqualsEachSliceAlone) {
  const Family f = GetParam();
  AdapterModel model = model_with({{"a", f.a}, {"b", f.b}});
  const auto in = three_rows();
  const torch::Tensor split = run(model, "BatchSplit(a, b, batch_sizes=[1, 2])", in);
  EXPECT_TRUE(torch::allclose(split.slice(0, 0, 1), run(model, "a", rows(in, 0, 1)), 1e-5, 1e-5));
  EXPECT_TRUE(torch::allclose(split.slice(0, 1, 3), run(model, "b", rows(in, 1, 3)), 1e-5, 1e-5));
}

INSTANTIATE_TEST_SUITE_P(Composition, EveryFamily,
                         // As in the reference, a block's members share the residual handling of its
                         // first adapter, so bottleneck members here share their placement options.
                         ::testing::Values(Family{"bottleneck", "seq_bn", "seq_bn[reduction_factor=4,non_linearity=gelu]"},
                                           Family{"houlsby", "double_seq_bn", "double_seq_bn[reduction_factor=4]"},
                                           Family{"lora", "lora[r=4,alpha=8]", "lora[r=2,attn_matrices=['q','k','v']]"},
                                           Family{"ia3", "ia3", "ia3[intermediate_lora=False]"},
                                           Family{"prefix", "prefix_tuning[prefix_length=4]",
                                                  "prefix_tuning[prefix_length=4,bottleneck_size=16]"}),
                         [](const auto& info) { return std::string(info.param.name); });

TEST(Composition, ParallelNestsStackAndIsPerBranchForLoRA) {
  AdapterModel model = model_with({{"a", "lora"}, {"b", "lora[r=4]"}, {"c", "lora[r=2]"}});
  const auto in = tiny_inputs();
  const torch::Tensor out = run(model, "Parallel(Stack(a, b), c)", in);
  EXPECT_TRUE(torch::allclose(out.slice(0, 0, 2), run(model, "Stack(a, b)", in), 1e-5, 1e-5));
  EXPECT_TRUE(torch::allclose(out.slice(0, 2, 4), run(model, "c", in), 1e-5, 1e-5));
}

TEST(Composition, LoraStackSumsTheDeltas) {
  // Stack(a, b) of LoRA adapters adds both deltas: so does merging both.
  AdapterModel model = model_with({{"a", "lora"}, {"b", "lora[r=4]"}});
  const auto in = tiny_inputs();
  const torch::Tensor stacked = run(model, "Stack(a, b)", in);
  model->merge_adapter("a");
  model->merge_adapter("b");
  model->deactivate_adapters();
  EXPECT_TRUE(torch::allclose(stacked, hidden(model, in), 1e-4, 1e-4));
}

TEST(Composition, AverageIsTheWeightedSumForLoRA) {
  // LoRA is linear in its delta, so Average(a, b) over LoRA equals the averaged adapter.
  AdapterModel model = model_with({{"a", "lora[r=4]"}, {"b", "lora[r=4]"}});
  const auto in = tiny_inputs();
  const torch::Tensor averaged_block = run(model, "Average(a, b, weights=[0.7, 0.3])", in);
  // The same adapters with lora_B scaled by the weights, stacked: base + 0.7 da + 0.3 db.
  torch::Tensor expected;
  {
    AdapterModel m = model_with({{"a", "lora[r=4]"}, {"b", "lora[r=4]"}});
    torch::NoGradGuard no_grad;
    for (auto& [key, t] : m->adapter_state_dict("a")) {
      if (key.find("lora_B") != std::string::npos) t.mul_(0.7);
    }
    for (auto& [key, t] : m->adapter_state_dict("b")) {
      if (key.find("lora_B") != std::string::npos) t.mul_(0.3);
    }
    expected = run(m, "Stack(a, b)", in);
  }
  EXPECT_TRUE(torch::allclose(averaged_block, expected, 1e-4, 1e-4));
}

TEST(Composition, AverageOfBottlenecksWeighsTheirOutputs) {
  AdapterModel model = model_with({{"a", "par_bn"}, {"b", "par_bn[reduction_factor=4]"}});
  const auto in = tiny_inputs();
  // With one layer's worth of difference the result lies strictly between the members.
  const torch::Tensor all_a = run(model, "Average(a, b, weights=[1, 0])", in);
  EXPECT_TRUE(torch::allclose(all_a, run(model, "a", in), 1e-5, 1e-5));
  const torch::Tensor all_b = run(model, "Average(a, b, weights=[0, 1])", in);
  EXPECT_TRUE(torch::allclose(all_b, run(model, "b", in), 1e-5, 1e-5));
  EXPECT_FALSE(torch::allclose(run(model, "Average(a, b)", in), all_a, 1e-4, 1e-4));
}

TEST(Composition, SplitCutsTheSequence) {
  AdapterModel model = model_with({{"a", "seq_bn"}, {"b", "seq_bn[reduction_factor=4]"}});
  const auto in = tiny_inputs();
  const torch::Tensor split = run(model, "Split(a, b, split_index=3)", in);
  EXPECT_EQ(split.sizes(), run(model, "a", in).sizes());
  EXPECT_FALSE(torch::allclose(split, run(model, "a", in), 1e-4, 1e-4));
  EXPECT_FALSE(torch::allclose(split, run(model, "b", in), 1e-4, 1e-4));
}

TEST(Composition, FuseOutputsAttentionOverItsAdapters) {
  AdapterModel model = model_with({{"a", "seq_bn"}, {"b", "seq_bn"}});
  model->add_adapter_fusion(parse("Fuse(a, b)"), "dynamic", false, true);
  torch::NoGradGuard no_grad;
  ForwardOptions options;
  options.output_fusion_attentions = true;
  ModelOutput out = model->forward(tiny_inputs(), options);
  ASSERT_TRUE(out.fusion_attentions.count("a,b"));
  const auto& layers = out.fusion_attentions.at("a,b");
  ASSERT_EQ(layers.size(), 2u);
  const torch::Tensor scores = layers.at(0).at("output_adapter");  // (B,T,N)
  EXPECT_EQ(scores.sizes(), torch::IntArrayRef({2, 8, 2}));
  EXPECT_TRUE(torch::allclose(scores.sum(-1), torch::ones({2, 8}), 1e-5, 1e-5));
}

TEST(Composition, FusionSavesAndLoads) {
  AdapterModel model = model_with({{"a", "seq_bn"}, {"b", "seq_bn"}});
  model->add_adapter_fusion(parse("Fuse(a, b)"), "dynamic", false, true);
  {
    torch::NoGradGuard no_grad;
    for (auto& [key, t] : model->adapter_fusion_state_dict("a,b")) t.normal_(0.0, 0.3);
  }
  const torch::Tensor before = hidden(model, tiny_inputs());
  TempDir tmp;
  model->save_adapter_setup(tmp.path(), parse("Fuse(a, b)"));
  AdapterModel fresh = load_pretrained(model_dir("bert"));
  const Block setup = fresh->load_adapter_setup(tmp.path());
  EXPECT_EQ(setup, parse("Fuse(a, b)"));
  EXPECT_TRUE(fresh->has_adapter_fusion("a,b"));
  EXPECT_TRUE(torch::allclose(hidden(fresh, tiny_inputs()), before, 1e-6, 1e-6));
  EXPECT_TRUE(fs::exists(tmp / "a,b" / "adapter_fusion_config.json"));
  EXPECT_TRUE(fs::exists(tmp / "adapter_setup.json"));
}

TEST(Composition, TrainAdapterFusionTrainsOnlyTheFusion) {
  AdapterModel model = model_with({{"a", "seq_bn"}, {"b", "seq_bn"}});
  model->add_adapter_fusion(parse("Fuse(a, b)"));
  model->add_classification_head("task", 2);
  model->train_adapter_fusion(parse("Fuse(a, b)"));
  ForwardOptions options;
  options.head_inputs["labels"] = torch::tensor({0, 1}, torch::kLong);
  ModelOutput out = model->forward(tiny_inputs(), options);
  (out.loss + model->fusion_regularization_loss()).backward();
  for (const auto& item : model->named_parameters()) {
    const bool trainable = item.key().find("adapter_fusion_layer") != std::string::npos || item.key().rfind("heads.", 0) == 0;
    EXPECT_EQ(item.value().requires_grad(), trainable) << item.key();
    if (trainable) EXPECT_TRUE(item.value().grad().defined()) << item.key();
  }
}

// The reference names a fusion after the last adapter of each child: Fuse(Stack(p, q), r) fuses
// q and r, and its fusion layer is "q,r".
TEST(Composition, FuseOfAStackIsNamedAfterTheStacksLastAdapter) {
  EXPECT_EQ(parse("Fuse(Stack(p, q), r)").fusion_name(), "q,r");
  EXPECT_EQ(parse("Fuse(a, b)").fusion_name(), "a,b");
  AdapterModel model = model_with({{"p", "seq_bn"}, {"q", "seq_bn"}, {"r", "seq_bn"}});
  model->add_adapter_fusion(parse("Fuse(Stack(p, q), r)"));
  EXPECT_TRUE(model->has_adapter_fusion("q,r"));
  EXPECT_FALSE(model->has_adapter_fusion("p,q,r"));
  model->set_active_adapters("Fuse(Stack(p, q), r)");  // finds the fusion layer "q,r"
  const auto with_stack = hidden(model, tiny_inputs());
  model->set_active_adapters("Fuse(q, r)");              // the same layer, without p before q
  EXPECT_FALSE(torch::allclose(hidden(model, tiny_inputs()), with_stack, 1e-5, 1e-5));
}

// As the reference: train_adapter_fusion(setup) makes `setup` the active setup, whatever was active.
TEST(Composition, TrainAdapterFusionActivatesItsSetup) {
  AdapterModel model = model_with({{"a", "seq_bn"}, {"b", "seq_bn"}, {"x", "seq_bn"}});
  model->add_adapter_fusion(parse("Fuse(a, b)"));
  model->set_active_adapters("Stack(x, Fuse(a, b))");
  model->train_adapter_fusion(parse("Fuse(a, b)"));
  ASSERT_TRUE(model->active_setup().has_value());
  EXPECT_EQ(*model->active_setup(), composition::normalize_active(parse("Fuse(a, b)")));
}

TEST(Composition, SetupStringsAndJsonRoundTrip) {
  for (const std::string text :
       {"a", "Stack(a, b)", "Stack(a, Fuse(b, c))", "Split(a, b, split_index=3)", "BatchSplit(a, b, batch_sizes=[1, 2])",
        "Average(a, b, weights=[0.7, 0.3])", "Parallel(Stack(a, b), c)", "Stack(lang, Parallel(x, y))"}) {
    const Block b = parse(text);
    EXPECT_EQ(parse(b.to_string()), b) << text;
    EXPECT_EQ(composition::from_json(composition::to_json(b), "test"), b) << text;
  }
}

TEST(Composition, NestingRulesOfTheReference) {
  EXPECT_NO_THROW(composition::validate(parse("Stack(a, Fuse(b, c))")));
  EXPECT_NO_THROW(composition::validate(parse("Parallel(Stack(a, b), BatchSplit(c, d, batch_sizes=[1, 1]))")));
  EXPECT_NE(error_of([] { composition::validate(parse("Fuse(a, Parallel(b, c))")); }).find("cannot nest Parallel"),
            std::string::npos);
  EXPECT_NE(error_of([] { composition::validate(parse("Parallel(a, Fuse(b, c))")); }).find("cannot nest Fuse"),
            std::string::npos);
  EXPECT_NE(error_of([] { composition::validate(parse("Stack(a, Split(b, Split(c, d, split_index=1), split_index=2))")); })
                .find("too deep"),
            std::string::npos);
  EXPECT_NE(error_of([] { composition::validate(parse("BatchSplit(a, b, batch_sizes=[1])")); }).find("one batch size per member"),
            std::string::npos);
  EXPECT_NE(error_of([] { composition::validate(parse("Split(a, b, split_index=0)")); }).find("split_index"),
            std::string::npos);
}

TEST(Composition, BadSetupsAreClearErrors) {
  AdapterModel model = model_with({{"a", "seq_bn"}, {"b", "seq_bn"}, {"l", "lora"}});
  const auto in = tiny_inputs();
  EXPECT_NE(error_of([&] { model->set_active_adapters("Stack(a, nope)"); }).find("unknown adapter 'nope'"), std::string::npos);
  EXPECT_NE(error_of([&] { parse("Stack(a, b"); }).find("at position 10"), std::string::npos);
  EXPECT_NE(error_of([&] { parse("Stak(a, b)"); }).find("unknown block 'Stak'"), std::string::npos);
  EXPECT_NE(error_of([&] { model->set_active_adapters("Fuse(a, b)"); }).find("no fusion layer 'a,b'"), std::string::npos);
  EXPECT_NE(error_of([&] { run(model, "BatchSplit(a, b, batch_sizes=[1, 2])", in); }).find("does not fit batch_sizes"),
            std::string::npos);
  EXPECT_NE(error_of([&] { run(model, "Split(a, b, split_index=8)", in); }).find("does not fit a sequence of length 8"),
            std::string::npos);
  EXPECT_NE(error_of([&] { model->add_adapter_fusion(parse("Fuse(a, l)")); }).find("share no residual site"),
            std::string::npos);
  // A failed call changes nothing: the previous setup stays active.
  model->set_active_adapters("a");
  EXPECT_FALSE(error_of([&] { model->set_active_adapters("Parallel(a, Fuse(a, b))"); }).empty());
  EXPECT_EQ(model->active_setup()->to_string(), "Stack(a)");
}

}  // namespace
}  // namespace adapters::test
