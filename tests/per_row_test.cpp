// One adapter per batch row: every row of a mixed batch (two adapters and rows without one, in
// mixed order) equals running that row alone with its adapter, for every method of the LoRA family
// (on an encoder and a decoder), and the gradients of a mixed batch equal each adapter's gradients
// on its own rows; other methods are refused; bad rows are errors.
#include <gtest/gtest.h>

#include "adapters/per_row.h"
#include "test_util.h"

namespace adapters::test {
namespace {

struct Case {
  std::string arch, method;
};

void PrintTo(const Case& c, std::ostream* os) { *os << c.arch << " " << c.method; }

class PerRow : public ::testing::TestWithParam<Case> {
 protected:
  void SetUp() override {
    model = load_pretrained(model_dir(GetParam().arch));
    torch::manual_seed(5);
    for (const char* name : {"a", "b"}) {
      model->add_adapter(name, GetParam().method);
      randomize_adapter(model, name, 0.2);
    }
    model->eval();
    in = tiny_inputs();
    in.input_ids = torch::cat({in.input_ids, in.input_ids.flip(1), in.input_ids.roll(3, 1)}, 0);  // (6,8)
    in.attention_mask = torch::cat({in.attention_mask, torch::ones({4, 8}, torch::kLong)}, 0);
  }
  // Row r of `in` alone, with `adapter` ("" = none).
  torch::Tensor alone(std::int64_t r, const std::string& adapter) {
    models::ModelInputs one;
    one.input_ids = in.input_ids.narrow(0, r, 1);
    one.attention_mask = in.attention_mask.narrow(0, r, 1);
    const Block setup = Block::adapter(adapter);
    ForwardOptions options;
    if (!adapter.empty()) options.setup = &setup;
    if (adapter.empty()) model->deactivate_adapters();
    return model->forward(one, options).last_hidden_state;
  }
  AdapterModel model{nullptr};
  models::ModelInputs in;
  const std::vector<std::string> rows = {"b", kNoAdapter, "a", "a", kNoAdapter, "b"};
};

TEST_P(PerRow, EachRowEqualsTheRowAloneWithItsAdapter) {
  torch::NoGradGuard no_grad;
  const torch::Tensor mixed = forward_per_row(*model, in, rows).last_hidden_state;
  ASSERT_EQ(mixed.size(0), 6);
  for (std::int64_t r = 0; r < 6; ++r) {
    const std::string& name = rows[static_cast<std::size_t>(r)];
    const torch::Tensor expected = alone(r, name == kNoAdapter ? "" : name);
    EXPECT_LT((mixed.narrow(0, r, 1) - expected).abs().max().item<double>(), 1e-5) << "row " << r << " (" << name << ")";
  }
}

TEST_P(PerRow, GradientsEqualEachAdapterOnItsRows) {
  model->train_adapter(Block::of(composition::BlockType::Stack, {Block::adapter("a"), Block::adapter("b")}));
  model->eval();  // no dropout: the comparison is exact
  forward_per_row(*model, in, rows).last_hidden_state.pow(2).sum().backward();
  std::map<std::string, torch::Tensor> mixed;
  for (const auto& item : model->named_parameters()) {
    if (item.value().grad().defined()) mixed[item.key()] = item.value().grad().clone();
  }
  model->zero_grad();
  for (std::int64_t r = 0; r < 6; ++r) {
    const std::string& name = rows[static_cast<std::size_t>(r)];
    if (name != kNoAdapter) alone(r, name).pow(2).sum().backward();
  }
  ASSERT_FALSE(mixed.empty());
  for (const auto& [key, g] : mixed) {
    const torch::Tensor& separate = model->named_parameters()[key].grad();
    ASSERT_TRUE(separate.defined()) << key;
    // Equal up to float32 rounding (batched and one-row products sum in different orders); a row
    // given the wrong adapter moves a gradient by its own size.
    EXPECT_LT((g - separate).abs().max().item<double>(), 1e-3 * std::max(1.0, separate.abs().max().item<double>())) << key;
  }
}

std::vector<Case> cases() {
  std::vector<Case> out;
  for (const char* arch : {"bert", "llama"}) {
    for (const char* method : {"lora", "lora[use_rslora=true,r=4,attn_matrices=['q','k','v','o'],output_lora=true]", "ia3",
                               "vera", "dora"}) {
      out.push_back({arch, method});
    }
  }
  return out;
}

INSTANTIATE_TEST_SUITE_P(Methods, PerRow, ::testing::ValuesIn(cases()), [](const auto& info) {
  std::string n = info.param.arch + "_" + std::to_string(info.index);
  return n;
});

// Bottleneck, prefix and ReFT sites apply one adapter's pre- and post-processing to the whole
// batch; until they run per group, one adapter per row refuses them instead of approximating.
TEST(PerRowErrors, MethodsBeyondTheLoRAFamilyAreRefused) {
  AdapterModel model = load_pretrained(model_dir("bert"));
  model->add_adapter("a", "seq_bn");
  model->add_adapter("b", "lora");
  try {
    forward_per_row(*model, tiny_inputs(), {"a", "b"});
    FAIL() << "expected NotSupported";
  } catch (const NotSupported& e) {
    EXPECT_NE(std::string(e.what()).find("adapter 'a' is a bottleneck adapter"), std::string::npos) << e.what();
  }
}

TEST(PerRowErrors, WrongLengthAndUnknownAdaptersAreNamed) {
  AdapterModel model = load_pretrained(model_dir("bert"));
  model->add_adapter("a", "lora");
  const models::ModelInputs in = tiny_inputs();
  EXPECT_NE(error_of([&] { forward_per_row(*model, in, {"a"}); }).find("1 entries for a batch of 2 rows"), std::string::npos);
  EXPECT_NE(error_of([&] { forward_per_row(*model, in, {"a", "zz"}); }).find("adapter_per_row[1]: no adapter named 'zz'"),
            std::string::npos);
}

}  // namespace
}  // namespace adapters::test
