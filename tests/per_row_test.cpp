// One adapter per batch row: every row of a mixed batch (two adapters and rows without one, in
// mixed order) equals running that row alone with its adapter, for every method family (the LoRA
// family, bottleneck adapters with their own pre/post-processing, Compacter, invertible adapters,
// AdapterHub prefix and prompt tuning with different lengths per row, PEFT's prefix tuning (past
// key/values) and prompt tuning (joined at the input) with different lengths per row, ReFT, unions,
// two methods mixed) on encoders, decoders and encoder-decoders, and the gradients of a mixed batch
// equal each adapter's gradients on its own rows; generate() per row equals generating each prompt
// alone; bad rows are errors.
#include <gtest/gtest.h>

#include <fstream>

#include "adapters/generate.h"
#include "adapters/per_row.h"
#include "test_util.h"

namespace adapters::test {
namespace {

struct Case {
  std::string arch, method_a, method_b;
  // The rows' soft tokens are filled on the left (PEFT prompts in decoder-only models): a row's own
  // columns are the last ones of the mixed output, not the first.
  bool filled_on_left = false;
};

void PrintTo(const Case& c, std::ostream* os) { *os << c.arch << " " << c.method_a << " / " << c.method_b; }

class PerRow : public ::testing::TestWithParam<Case> {
 protected:
  void SetUp() override {
    model = load_pretrained(model_dir(GetParam().arch));
    torch::manual_seed(5);
    for (const auto& [name, method] : {std::pair{"a", GetParam().method_a}, std::pair{"b", GetParam().method_b}}) {
      model->add_adapter(name, method);
      randomize_adapter(model, name, 0.2);
    }
    model->eval();
    in = tiny_inputs();
    in.input_ids = torch::cat({in.input_ids, in.input_ids.flip(1), in.input_ids.roll(3, 1)}, 0);  // (6,8)
    in.attention_mask = torch::cat({in.attention_mask, torch::ones({4, 8}, torch::kLong)}, 0);
    if (model->arch().kind == models::ArchKind::EncoderDecoder) in.decoder_input_ids = in.input_ids.roll(1, 1);
  }
  // Row r of `in` alone, with `adapter` ("" = none).
  torch::Tensor alone(std::int64_t r, const std::string& adapter) {
    models::ModelInputs one;
    one.input_ids = in.input_ids.narrow(0, r, 1);
    one.attention_mask = in.attention_mask.narrow(0, r, 1);
    if (in.decoder_input_ids.defined()) one.decoder_input_ids = in.decoder_input_ids.narrow(0, r, 1);
    const Block setup = Block::adapter(adapter);
    ForwardOptions options;
    if (!adapter.empty()) options.setup = &setup;
    if (adapter.empty()) model->deactivate_adapters();
    return model->forward(one, options).last_hidden_state;
  }
  // (1,L,1) 1 at the real tokens of row r in a row-alone output of length L (prompts, which come
  // first, are real), 0 at padding: the comparison ignores what padded positions hold.
  torch::Tensor padding_of(std::int64_t r, std::int64_t length) const {
    const torch::Tensor m = in.attention_mask.narrow(0, r, 1).to(torch::kFloat);
    const std::int64_t prompt = length - m.size(1);
    return torch::cat({torch::ones({1, prompt}), m}, 1).unsqueeze(-1);
  }
  AdapterModel model{nullptr};
  models::ModelInputs in;
  const std::vector<std::string> rows = {"b", kNoAdapter, "a", "a", kNoAdapter, "b"};
};

// Row r of the mixed output at the columns of the row alone (`length` of them): prompts make rows
// longer, and shorter ones are filled at the end (the row's own columns come first) or, for PEFT
// prompts in decoder-only models, at the start (they come last).
torch::Tensor own_columns(const torch::Tensor& mixed, std::int64_t r, std::int64_t length, bool filled_on_left) {
  EXPECT_GE(mixed.size(1), length) << "row " << r;
  return mixed.narrow(0, r, 1).narrow(1, filled_on_left ? mixed.size(1) - length : 0, length);
}

TEST_P(PerRow, EachRowEqualsTheRowAloneWithItsAdapter) {
  torch::NoGradGuard no_grad;
  const torch::Tensor mixed = forward_per_row(*model, in, rows).last_hidden_state;
  ASSERT_EQ(mixed.size(0), 6);
  for (std::int64_t r = 0; r < 6; ++r) {
    const std::string& name = rows[static_cast<std::size_t>(r)];
    const torch::Tensor expected = alone(r, name == kNoAdapter ? "" : name);
    const torch::Tensor got = own_columns(mixed, r, expected.size(1), GetParam().filled_on_left);
    // Real positions only: padded tokens attend to nothing meaningful in either run.
    const torch::Tensor real = padding_of(r, expected.size(1));
    EXPECT_LT(((got - expected).abs() * real).max().item<double>(), 1e-5) << "row " << r << " (" << name << ")";
  }
}

TEST_P(PerRow, GradientsEqualEachAdapterOnItsRows) {
  model->train_adapter(Block::of(composition::BlockType::Stack, {Block::adapter("a"), Block::adapter("b")}));
  model->eval();  // no dropout: the comparison is exact
  std::vector<std::int64_t> lengths;
  {
    torch::NoGradGuard no_grad;
    for (std::int64_t r = 0; r < 6; ++r) {
      const std::string& name = rows[static_cast<std::size_t>(r)];
      lengths.push_back(alone(r, name == kNoAdapter ? "" : name).size(1));
    }
  }
  const torch::Tensor mixed = forward_per_row(*model, in, rows).last_hidden_state;
  torch::Tensor loss = torch::zeros({});
  for (std::int64_t r = 0; r < 6; ++r) {
    loss = loss + (own_columns(mixed, r, lengths[static_cast<std::size_t>(r)], GetParam().filled_on_left) *
                   padding_of(r, lengths[static_cast<std::size_t>(r)]))
                      .pow(2)
                      .sum();
  }
  loss.backward();
  std::map<std::string, torch::Tensor> grads;
  for (const auto& item : model->named_parameters()) {
    if (item.value().grad().defined()) grads[item.key()] = item.value().grad().clone();
  }
  model->zero_grad();
  for (std::int64_t r = 0; r < 6; ++r) {
    const std::string& name = rows[static_cast<std::size_t>(r)];
    if (name != kNoAdapter) (alone(r, name) * padding_of(r, lengths[static_cast<std::size_t>(r)])).pow(2).sum().backward();
  }
  ASSERT_FALSE(grads.empty());
  for (const auto& [key, g] : grads) {
    const torch::Tensor& separate = model->named_parameters()[key].grad();
    if (!separate.defined()) {
      EXPECT_EQ(g.abs().max().item<double>(), 0.0) << key;
      continue;
    }
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
      out.push_back({arch, method, method});
    }
  }
  const std::string short_prefix = "prefix_tuning[prefix_length=3,bottleneck_size=16]";
  const std::string long_prefix = "prefix_tuning_flat[prefix_length=5]";
  for (const char* arch : {"bert", "llama", "t5", "gpt2"}) {
    out.push_back({arch, "seq_bn", "double_seq_bn"});  // different pre/post-processing per row
    out.push_back({arch, "par_bn", "seq_bn"});
    out.push_back({arch, short_prefix, long_prefix});  // prefixes of different lengths
    out.push_back({arch, "seq_bn", "lora"});
    out.push_back({arch, "loreft", "mam"});
  }
  out.push_back({"bert", "compacter[reduction_factor=8]", "seq_bn_inv"});
  out.push_back({"bert", "prompt_tuning[prompt_length=3]", "prompt_tuning[prompt_length=5]"});
  out.push_back({"bert", "unipelt", short_prefix});
  // PEFT: prefixes in the key/value cache and prompts at the input, of two lengths, and both mixed.
  const std::string past_short = "prefix_tuning_flat[placement=past,prefix_length=2]";
  const std::string past_long = "prefix_tuning_flat[placement=past,prefix_length=5]";
  const std::string input_short = "prompt_tuning[combine=input,prompt_length=2]";
  const std::string input_long = "prompt_tuning[combine=input,prompt_length=4]";
  for (const char* arch : {"bert", "roberta", "gpt2", "llama", "t5", "bart"}) {
    const bool decoder_only = std::string(arch) == "gpt2" || std::string(arch) == "llama";
    out.push_back({arch, past_short, past_long});
    out.push_back({arch, input_short, input_long, decoder_only});
    out.push_back({arch, past_long, input_short, decoder_only});
  }
  return out;
}

INSTANTIATE_TEST_SUITE_P(Methods, PerRow, ::testing::ValuesIn(cases()), [](const auto& info) {
  std::string n = info.param.arch + "_" + std::to_string(info.index);
  return n;
});

// A sliding window counts columns: PEFT prefix rows beside PEFT prompt rows of other lengths would
// put filler between a row's prefix and its tokens, so Mistral refuses that mix instead of
// stretching the window.
TEST(PerRowErrors, SlidingWindowRefusesFillerBetweenAPrefixAndItsTokens) {
  json config = json::parse(std::ifstream(model_dir("mistral") / "config.json"));
  config["sliding_window"] = 4;
  AdapterModel model(models::parse_model_config(config, "config.json"));
  model->add_adapter("past", "prefix_tuning_flat[placement=past,prefix_length=3]");
  model->add_adapter("prompt", "prompt_tuning[combine=input,prompt_length=2]");
  const std::string error = error_of([&] { forward_per_row(*model, tiny_inputs(), {"past", "prompt"}); });
  EXPECT_NE(error.find("sliding-window model cannot run rows of PEFT prefix tuning and rows of PEFT prompt tuning"),
            std::string::npos)
      << error;
  // Either kind alone fills only on the left: allowed.
  EXPECT_NO_THROW(forward_per_row(*model, tiny_inputs(), {"past", kNoAdapter}));
  EXPECT_NO_THROW(forward_per_row(*model, tiny_inputs(), {"prompt", kNoAdapter}));
}

TEST(PerRowErrors, WrongLengthAndUnknownAdaptersAreNamed) {
  AdapterModel model = load_pretrained(model_dir("bert"));
  model->add_adapter("a", "lora");
  const models::ModelInputs in = tiny_inputs();
  EXPECT_NE(error_of([&] { forward_per_row(*model, in, {"a"}); }).find("1 entries for a batch of 2 rows"), std::string::npos);
  EXPECT_NE(error_of([&] { forward_per_row(*model, in, {"a", "zz"}); }).find("adapter_per_row[1]: no adapter named 'zz'"),
            std::string::npos);
}

// generate() with one adapter per prompt gives each prompt the tokens (and scores) of generating it
// alone with its adapter: greedy and beam search, prefill and every cached step, on decoder-only
// and encoder-decoder models, with bottleneck adapters, AdapterHub prefixes of two lengths and
// LoRA, or with PEFT prefixes of two lengths, a PEFT prompt and LoRA.
struct GenerationCase {
  std::string arch;
  int beams;
  bool peft = false;
};

class PerRowGeneration : public ::testing::TestWithParam<GenerationCase> {};

TEST_P(PerRowGeneration, EachPromptGetsTheTokensOfGeneratingItAlone) {
  const auto& p = GetParam();
  const bool seq2seq = p.arch == "t5" || p.arch == "bart";
  AdapterModel model = load_pretrained(model_dir(p.arch));
  torch::manual_seed(11);
  const std::vector<std::pair<std::string, std::string>> adapters =
      p.peft ? std::vector<std::pair<std::string, std::string>>{
                   {"bn", "prompt_tuning[combine=input,prompt_length=3]"},
                   {"short", "prefix_tuning_flat[placement=past,prefix_length=2]"},
                   {"long", "prefix_tuning_flat[placement=past,prefix_length=4]"},
                   {"lo", "lora[r=4,attn_matrices=['q','k','v','o']]"}}
             : std::vector<std::pair<std::string, std::string>>{
                   {"bn", "seq_bn"}, {"short", "prefix_tuning[prefix_length=2,bottleneck_size=16]"},
                   {"long", "prefix_tuning_flat[prefix_length=4]"}, {"lo", "lora[r=4,attn_matrices=['q','k','v','o']]"}};
  for (const auto& [name, method] : adapters) {
    model->add_adapter(name, method);
    randomize_adapter(model, name, 0.2);
  }
  model->add_head("lm", seq2seq ? "seq2seq_lm" : "causal_lm");
  torch::Tensor ids = torch::tensor({{5, 17, 23, 42, 8, 61}, {98, 98, 12, 33, 71, 9}, {7, 7, 7, 20, 30, 40},
                                     {3, 4, 5, 6, 7, 8}, {9, 9, 10, 11, 12, 13}}, torch::kLong);
  torch::Tensor mask = torch::ones_like(ids);
  mask[1][0] = 0;  // decoder-only prompts are left-padded; the encoder takes them padded too
  mask[1][1] = 0;
  mask[4][0] = 0;
  const std::vector<std::string> rows = {"short", "bn", kNoAdapter, "long", "lo"};
  generation::GenerationConfig c;
  c.max_new_tokens = 5;
  c.pad_token_id = 1;
  c.decoder_start_token_id = 2;
  c.repetition_penalty = 1.3;
  c.num_beams = p.beams;
  c.num_return_sequences = p.beams;
  c.output_scores = p.beams == 1;
  const auto mixed = generate(*model, ids, mask, c, {}, rows);
  for (std::int64_t r = 0; r < 5; ++r) {
    const std::string& name = rows[static_cast<std::size_t>(r)];
    if (name == kNoAdapter) {
      model->deactivate_adapters();
    } else {
      model->set_active_adapters(Block::adapter(name));
    }
    const auto alone = generate(*model, ids.narrow(0, r, 1), mask.narrow(0, r, 1), c);
    const torch::Tensor got = mixed.sequences.narrow(0, r * p.beams, p.beams);
    ASSERT_EQ(got.sizes(), alone.sequences.sizes()) << "prompt " << r;
    EXPECT_TRUE(torch::equal(got, alone.sequences)) << "prompt " << r << " (" << name << ")\n" << got << "\n" << alone.sequences;
    if (c.output_scores) {
      const torch::Tensor scores = mixed.scores.narrow(1, r, 1);
      const torch::Tensor finite = alone.scores.isfinite();
      EXPECT_TRUE(torch::equal(scores.isfinite(), finite)) << "prompt " << r;
      EXPECT_LT((scores - alone.scores).masked_fill(~finite, 0).abs().max().item<double>(), 1e-4) << "prompt " << r;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Archs, PerRowGeneration,
                         ::testing::Values(GenerationCase{"gpt2", 1}, GenerationCase{"llama", 1}, GenerationCase{"t5", 1},
                                           GenerationCase{"llama", 2}, GenerationCase{"t5", 2},
                                           GenerationCase{"gpt2", 1, true}, GenerationCase{"llama", 2, true},
                                           GenerationCase{"t5", 1, true}, GenerationCase{"bart", 2, true}),
                         [](const auto& info) {
                           return info.param.arch + "_beams" + std::to_string(info.param.beams) + (info.param.peft ? "_peft" : "");
                         });

}  // namespace
}  // namespace adapters::test
