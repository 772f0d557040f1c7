// Flexible prediction heads: every type runs and computes its loss, heads save and load in the
// reference's files, Parallel and BatchSplit run one head per branch, custom heads register by
// name, LM heads tie their decoder to the embeddings, and static HF heads convert exactly.
#include <gtest/gtest.h>

#include "adapters/formats/keys.h"
#include "test_util.h"

namespace adapters::test {
namespace {

using composition::parse;
using nlohmann::json;

ModelOutput run(AdapterModel& model, const models::ModelInputs& in, HeadTensors extra = {}) {
  ForwardOptions options;
  options.head_inputs = std::move(extra);
  return model->forward(in, options);
}

TEST(Heads, EveryTypeProducesItsOutputsAndLoss) {
  AdapterModel model = load_pretrained(model_dir("bert"));
  model->eval();
  const auto in = tiny_inputs();
  struct Case {
    std::string type;
    json options;
    std::string output;
    std::vector<std::int64_t> shape;
    HeadTensors targets;
  };
  const std::vector<Case> cases = {
      {"classification", {{"num_labels", 3}}, "logits", {2, 3}, {{"labels", torch::tensor({0, 2})}}},
      {"classification", {{"num_labels", 1}}, "logits", {2, 1}, {{"labels", torch::tensor({0.5, -1.0})}}},
      {"multilabel_classification", {{"num_labels", 4}}, "logits", {2, 4}, {{"labels", torch::ones({2, 4})}}},
      {"tagging", {{"num_labels", 5}}, "logits", {2, 8, 5}, {{"labels", torch::zeros({2, 8}, torch::kLong)}}},
      {"question_answering", json::object(), "start_logits", {2, 8},
       {{"start_positions", torch::tensor({1, 2})}, {"end_positions", torch::tensor({3, 4})}}},
      {"masked_lm", json::object(), "logits", {2, 8, 99}, {{"labels", torch::full({2, 8}, -100, torch::kLong).index_fill_(1, torch::tensor({2}), 5)}}},
      {"causal_lm", json::object(), "logits", {2, 8, 99}, {{"labels", torch::ones({2, 8}, torch::kLong)}}},
      {"image_classification", {{"num_labels", 2}}, "logits", {2, 2}, {{"labels", torch::tensor({1, 0})}}},
  };
  for (const auto& c : cases) {
    model->add_head("h", c.type, c.options, /*overwrite_ok=*/true);
    ModelOutput plain = run(model, in);
    ASSERT_TRUE(plain.head.count(c.output)) << c.type;
    EXPECT_EQ(plain.head.at(c.output).sizes(), torch::IntArrayRef(c.shape)) << c.type;
    EXPECT_FALSE(plain.loss.defined()) << c.type;
    ModelOutput with_loss = run(model, in, c.targets);
    ASSERT_TRUE(with_loss.loss.defined()) << c.type;
    EXPECT_TRUE(std::isfinite(with_loss.loss.item<double>())) << c.type;
    EXPECT_GT(with_loss.loss.item<double>(), 0.0) << c.type;
  }
}

TEST(Heads, MultipleChoiceFlattensTheChoices) {
  AdapterModel model = load_pretrained(model_dir("bert"));
  model->eval();
  model->add_head("mc", "multiple_choice", {{"num_choices", 3}});
  torch::Tensor ids = torch::arange(48, torch::kLong).remainder(90).add(3).view({2, 3, 8});
  ModelOutput out = run(model, {ids, torch::ones_like(ids), torch::Tensor()}, {{"labels", torch::tensor({2, 0})}});
  EXPECT_EQ(out.head.at("logits").sizes(), torch::IntArrayRef({2, 3}));
  EXPECT_TRUE(out.loss.defined());
}

TEST(Heads, LabelsThatDoNotFitTheHeadAreClearErrors) {
  AdapterModel model = load_pretrained(model_dir("bert"));
  model->add_classification_head("task", 3);
  EXPECT_NE(error_of([&] { run(model, tiny_inputs(), {{"labels", torch::tensor({0, 3})}}); }).find("labels must lie in [0, 3)"),
            std::string::npos);
  model->add_classification_head("multi", 4, /*multilabel=*/true);
  EXPECT_NE(error_of([&] { run(model, tiny_inputs(), {{"labels", torch::ones({2, 3})}}); }).find("4 labels per row"),
            std::string::npos);
  EXPECT_NE(error_of([&] { model->add_head("x", "no_such_head"); }).find("unknown head type 'no_such_head'"),
            std::string::npos);
}

TEST(Heads, MaskedLmDecoderIsTiedToTheEmbeddings) {
  AdapterModel model = load_pretrained(model_dir("bert"));
  model->add_head("mlm", "masked_lm");
  auto params = model->named_parameters();
  EXPECT_TRUE(params["heads.mlm.3.weight"].is_same(params["bert.embeddings.word_embeddings.weight"]));
}

TEST(Heads, SaveAndLoadWithTheAdapter) {
  AdapterModel model = load_pretrained(model_dir("bert"));
  model->eval();
  model->add_adapter("task", "seq_bn");
  randomize_adapter(model, "task");
  model->add_classification_head("task", 3);
  model->set_active_adapters("task");
  const torch::Tensor before = run(model, tiny_inputs()).head.at("logits");
  TempDir tmp;
  model->save_adapter(tmp / "task", "task");
  EXPECT_TRUE(fs::exists(tmp / "task" / "head_config.json"));
  EXPECT_TRUE(fs::exists(tmp / "task" / "head.safetensors"));
  const json saved = json::parse(io::read_text_file(tmp / "task" / "head_config.json"));
  EXPECT_EQ(saved["config"]["head_type"], "classification");
  EXPECT_EQ(saved["config"]["num_labels"], 3);

  AdapterModel fresh = load_pretrained(model_dir("bert"));
  fresh->eval();
  fresh->load_adapter(tmp / "task", "renamed", WeightsPreference::Safetensors, /*set_active=*/true);
  ASSERT_TRUE(fresh->has_head("renamed"));
  EXPECT_TRUE(torch::allclose(run(fresh, tiny_inputs()).head.at("logits"), before, 1e-6, 1e-6));
}

TEST(Heads, ParallelRunsOneHeadPerBranch) {
  AdapterModel model = load_pretrained(model_dir("bert"));
  model->eval();
  for (const char* name : {"a", "b"}) {
    model->add_adapter(name, "seq_bn");
    randomize_adapter(model, name);
  }
  model->add_classification_head("a", 2);
  model->add_head("b", "tagging", {{"num_labels", 3}});
  model->set_active_adapters("Parallel(a, b)");
  ASSERT_TRUE(model->active_head().has_value());
  EXPECT_EQ(model->active_head()->to_string(), "Parallel(a, b)");
  const ModelOutput both = run(model, tiny_inputs());
  ASSERT_EQ(both.head_outputs.size(), 2u);
  model->set_active_adapters("a");
  EXPECT_TRUE(torch::allclose(both.head_outputs[0].at("logits"), run(model, tiny_inputs()).head.at("logits"), 1e-5, 1e-5));
  model->set_active_adapters("b");
  EXPECT_TRUE(torch::allclose(both.head_outputs[1].at("logits"), run(model, tiny_inputs()).head.at("logits"), 1e-5, 1e-5));
}

TEST(Heads, BatchSplitHeadsTakeTheirRowsAndSumTheirLosses) {
  AdapterModel model = load_pretrained(model_dir("bert"));
  model->eval();
  model->add_adapter("a", "seq_bn");
  model->add_adapter("b", "seq_bn");
  model->add_classification_head("a", 2);
  model->add_classification_head("b", 3);
  model->set_active_adapters("BatchSplit(a, b, batch_sizes=[1, 1])");
  const ModelOutput out = run(model, tiny_inputs(), {{"labels", torch::tensor({1, 2})}});
  ASSERT_EQ(out.head_outputs.size(), 2u);
  EXPECT_EQ(out.head_outputs[0].at("logits").sizes(), torch::IntArrayRef({1, 2}));
  EXPECT_EQ(out.head_outputs[1].at("logits").sizes(), torch::IntArrayRef({1, 3}));
  ASSERT_TRUE(out.loss.defined());
}

TEST(Heads, CustomHeadsRegisterByName) {
  struct MeanHead : heads::PredictionHead {
    MeanHead(const json& c, const heads::HeadContext& ctx) : PredictionHead(c) {
      proj = register_module("proj", torch::nn::Linear(ctx.model.hidden_size, c.at("num_labels").get<std::int64_t>()));
    }
    heads::HeadOutput forward(const heads::HeadInputs& in) override {
      return {{{"logits", proj(in.hidden.mean(1))}}, torch::Tensor()};
    }
    torch::nn::Linear proj{nullptr};
  };
  heads::register_head_type("mean_pool", [](const json& c, const heads::HeadContext& ctx) {
    return std::make_shared<MeanHead>(c, ctx);
  });
  AdapterModel model = load_pretrained(model_dir("bert"));
  model->add_head("m", "mean_pool", {{"num_labels", 4}});
  EXPECT_EQ(run(model, tiny_inputs()).head.at("logits").sizes(), torch::IntArrayRef({2, 4}));
  EXPECT_TRUE(model->named_parameters().contains("heads.m.proj.weight"));
}

// A BertForSequenceClassification checkpoint: the tiny model's weights plus classifier.*.
TEST(Heads, StaticHeadCheckpointConvertsWithIdenticalOutputs) {
  TempDir tmp;
  io::TensorMap weights = io::read_checkpoint(model_dir("bert") / "model.safetensors");
  torch::manual_seed(3);
  const torch::Tensor w = torch::randn({3, 32}), b = torch::randn({3});
  weights["classifier.weight"] = w;
  weights["classifier.bias"] = b;
  io::write_safetensors(tmp / "model.safetensors", weights, io::Metadata{{"format", "pt"}});
  json config = json::parse(io::read_text_file(model_dir("bert") / "config.json"));
  config["architectures"] = {"BertForSequenceClassification"};
  config["id2label"] = {{"0", "neg"}, {"1", "neu"}, {"2", "pos"}};
  io::write_file_atomic(tmp / "config.json", config.dump());

  AdapterModel model = load_pretrained(tmp.path(), "sentiment");
  ASSERT_TRUE(model->has_head("sentiment"));
  EXPECT_EQ(model->head("sentiment").config()["label2id"]["pos"], 2);
  torch::NoGradGuard no_grad;
  const ModelOutput out = model->forward(tiny_inputs());
  // BertForSequenceClassification: classifier(dropout(pooler_output)).
  const torch::Tensor expected = torch::nn::functional::linear(out.pooler_output, w, b);
  EXPECT_TRUE(torch::allclose(out.head.at("logits"), expected, 1e-6, 1e-6));
}

}  // namespace
}  // namespace adapters::test
