// Text generation core: the HF 4.26 logits processors on hand-checked examples, greedy search,
// sampling and beam search over a toy bigram model (checked against the model's own logits, brute
// force and hand-computed beam scores), and generation_config.json parsing and validation.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <limits>
#include <set>
#include <tuple>

#include "adapters/generation/config.h"
#include "adapters/generation/decode.h"
#include "adapters/generation/logits_process.h"
#include "test_util.h"

namespace adapters::test {

namespace {

namespace gen = adapters::generation;

constexpr float kInf = std::numeric_limits<float>::infinity();

// Logits = table[last token] + bias[original row] (+ pos[length % P]). The only state is `origin`, the
// original batch row of every current row, which select_rows permutes as a cache would be.
class ToyModel : public gen::StepModel {
 public:
  ToyModel(torch::Tensor table, torch::Tensor bias, torch::Tensor pos = {})
      : table_(std::move(table)), bias_(std::move(bias)), pos_(std::move(pos)),
        origin_(torch::arange(bias_.size(0), torch::kLong)) {}

  torch::Tensor next_logits(const torch::Tensor& seq, const torch::Tensor& mask) override {
    EXPECT_EQ(mask.sizes(), seq.sizes());
    EXPECT_EQ(seq.size(0), origin_.size(0));
    masks.push_back(mask.clone());
    return reference(origin_, seq);
  }
  void select_rows(const torch::Tensor& rows) override {
    selects.push_back(rows.clone());
    origin_ = origin_.index_select(0, rows);
  }
  // The logits of rows that started as batch rows `origin` (N) and now hold `seq` (N,L).
  torch::Tensor reference(const torch::Tensor& origin, const torch::Tensor& seq) const {
    torch::Tensor out = table_.index_select(0, seq.select(1, -1)) + bias_.index_select(0, origin);
    if (pos_.defined()) out = out + pos_[seq.size(1) % pos_.size(0)];
    return out;
  }

  std::vector<torch::Tensor> masks, selects;

 private:
  torch::Tensor table_, bias_, pos_, origin_;
};

// A random toy model: V tokens, B prompt rows.
ToyModel random_model(std::int64_t vocab, std::int64_t batch, double scale = 2.0) {
  torch::manual_seed(1234);
  return ToyModel(torch::randn({vocab, vocab}) * scale, torch::randn({batch, vocab}), torch::randn({5, vocab}));
}

// A table whose row `from` has logit 10 at `to` and 0 elsewhere (deterministic transitions).
torch::Tensor chain_table(std::int64_t vocab, const std::vector<std::pair<std::int64_t, std::int64_t>>& edges) {
  torch::Tensor t = torch::zeros({vocab, vocab});
  for (auto [from, to] : edges) t[from][to] = 10.0;
  return t;
}

torch::Tensor ids(std::vector<std::vector<std::int64_t>> rows) {
  std::vector<torch::Tensor> out;
  for (auto& r : rows) out.push_back(torch::tensor(r, torch::kLong));
  return torch::stack(out);
}

gen::GenerationConfig greedy(std::int64_t new_tokens) {
  gen::GenerationConfig c;
  c.max_new_tokens = new_tokens;
  return c;
}

bool same(const torch::Tensor& a, const torch::Tensor& b) { return a.sizes() == b.sizes() && a.equal(b); }

}  // namespace

// ---- processors, by hand from HF's formulas ----------------------------------------------------

TEST(GenerationProcessors, RepetitionPenaltyDividesPositiveAndMultipliesNegativeSeenScores) {
  gen::RepetitionPenaltyLogitsProcessor p(2.0);
  torch::Tensor out = p(ids({{0, 1, 1}}), torch::tensor({{1.0f, -2.0f, 3.0f, 0.5f}}));
  EXPECT_TRUE(same(out, torch::tensor({{0.5f, -4.0f, 3.0f, 0.5f}}))) << out;
}

TEST(GenerationProcessors, NoRepeatNGramBansTheTokensThatCompleteASeenNGram) {
  const torch::Tensor zeros = torch::zeros({1, 5});
  // bigrams: the last token 1 was followed by 2 before -> 2 banned.
  torch::Tensor out = gen::NoRepeatNGramLogitsProcessor(2)(ids({{1, 2, 3, 1}}), zeros.clone());
  EXPECT_TRUE(same(out, torch::tensor({{0.f, 0.f, -kInf, 0.f, 0.f}}))) << out;
  // trigrams: (1,2) was followed by 1 -> 1 banned; rows are independent.
  out = gen::NoRepeatNGramLogitsProcessor(3)(ids({{1, 2, 1, 2}, {1, 2, 3, 4}}), torch::zeros({2, 5}));
  EXPECT_TRUE(same(out, torch::tensor({{0.f, -kInf, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f, 0.f}}))) << out;
  // unigrams: every token seen is banned; too short for a 4-gram: nothing is.
  out = gen::NoRepeatNGramLogitsProcessor(1)(ids({{4, 0}}), zeros.clone());
  EXPECT_TRUE(same(out, torch::tensor({{-kInf, 0.f, 0.f, 0.f, -kInf}}))) << out;
  out = gen::NoRepeatNGramLogitsProcessor(4)(ids({{1, 1}}), zeros.clone());
  EXPECT_TRUE(same(out, zeros)) << out;
}

TEST(GenerationProcessors, MinLengthAndMinNewTokensBanEosUntilReached) {
  const torch::Tensor scores = torch::ones({1, 5});
  const torch::Tensor banned = torch::tensor({{1.f, 1.f, 1.f, 1.f, -kInf}});
  gen::MinLengthLogitsProcessor min_length(5, {4});
  EXPECT_TRUE(same(min_length(ids({{0, 1, 2, 3}}), scores.clone()), banned));        // L 4 < 5
  EXPECT_TRUE(same(min_length(ids({{0, 1, 2, 3, 3}}), scores.clone()), scores));    // L 5
  gen::MinNewTokensLengthLogitsProcessor min_new(3, 2, {4});                          // prompt 3, 2 new
  EXPECT_TRUE(same(min_new(ids({{0, 1, 2, 3}}), scores.clone()), banned));           // 1 new
  EXPECT_TRUE(same(min_new(ids({{0, 1, 2, 3, 3}}), scores.clone()), scores));       // 2 new
}

TEST(GenerationProcessors, ForcedBosAtLengthOneAndForcedEosAtMaxLengthMinusOne) {
  const torch::Tensor scores = torch::ones({2, 4});
  const torch::Tensor forced = torch::tensor({{-kInf, -kInf, 0.f, -kInf}, {-kInf, -kInf, 0.f, -kInf}});
  gen::ForcedBOSTokenLogitsProcessor bos(2);
  EXPECT_TRUE(same(bos(ids({{0}, {1}}), scores.clone()), forced));
  EXPECT_TRUE(same(bos(ids({{0, 1}, {1, 1}}), scores.clone()), scores));
  gen::ForcedEOSTokenLogitsProcessor eos(6, {2});
  EXPECT_TRUE(same(eos(ids({{0, 1, 1, 1, 1}, {1, 1, 1, 1, 1}}), scores.clone()), forced));  // L 5 = 6 - 1
  EXPECT_TRUE(same(eos(ids({{0, 1, 1, 1}, {1, 1, 1, 1}}), scores.clone()), scores));
}

TEST(GenerationProcessors, TemperatureTopKAndTopPWarpers) {
  const torch::Tensor none = ids({{0}});
  EXPECT_TRUE(same(gen::TemperatureLogitsWarper(2.0)(none, torch::tensor({{1.f, -3.f}})), torch::tensor({{0.5f, -1.5f}})));
  // top-k 2 keeps the two best (and ties with the second); min_tokens_to_keep raises k.
  torch::Tensor s = torch::tensor({{1.f, 4.f, 3.f, 2.f}});
  EXPECT_TRUE(same(gen::TopKLogitsWarper(2)(none, s.clone()), torch::tensor({{-kInf, 4.f, 3.f, -kInf}})));
  EXPECT_TRUE(same(gen::TopKLogitsWarper(1, 2)(none, s.clone()), torch::tensor({{-kInf, 4.f, 3.f, -kInf}})));
  // top-p 0.75 over p = (0.5, 0.3, 0.15, 0.05): ascending cumulative (0.05, 0.2, 0.5, 1) <= 0.25 is dropped.
  torch::Tensor logp = torch::tensor({{0.5f, 0.3f, 0.15f, 0.05f}}).log();
  torch::Tensor out = gen::TopPLogitsWarper(0.75)(none, logp.clone());
  EXPECT_TRUE(torch::isinf(out).equal(torch::tensor({{false, false, true, true}}))) << out;
  EXPECT_TRUE(out.narrow(1, 0, 2).equal(logp.narrow(1, 0, 2)));
  // min_tokens_to_keep 3 keeps the third as well.
  out = gen::TopPLogitsWarper(0.75, 3)(none, logp.clone());
  EXPECT_TRUE(torch::isinf(out).equal(torch::tensor({{false, false, false, true}}))) << out;
}

TEST(GenerationProcessors, ListsFollowHfOrderAndDefaults) {
  gen::GenerationConfig c;
  EXPECT_TRUE(gen::make_logits_processors(c, 3, 20).empty());
  c.repetition_penalty = 1.2;
  c.no_repeat_ngram_size = 2;
  c.min_length = 4;
  c.min_new_tokens = 1;
  c.eos_token_id = {1};
  c.forced_bos_token_id = 0;
  c.forced_eos_token_id = 1;
  gen::LogitsProcessorList list = gen::make_logits_processors(c, 3, 20);
  std::vector<std::string> names;
  for (std::size_t i = 0; i < list.size(); ++i) names.push_back(list[i].name());
  EXPECT_EQ(names, (std::vector<std::string>{"repetition_penalty", "no_repeat_ngram_size", "min_length",
                                             "min_new_tokens", "forced_bos_token_id", "forced_eos_token_id"}));
  // The default warper list of sampling is top_k 50 only; temperature and top_p join when set.
  EXPECT_EQ(gen::make_logits_warpers(gen::GenerationConfig{}).size(), 1u);
  c.temperature = 0.7;
  c.top_p = 0.9;
  EXPECT_EQ(gen::make_logits_warpers(c).size(), 3u);
}

// ---- greedy search -----------------------------------------------------------------------------

TEST(GenerationGreedy, PicksTheArgmaxOfTheProcessedScoresEachStep) {
  ToyModel model = random_model(7, 2);
  gen::GenerationConfig c = greedy(5);
  c.output_scores = true;
  torch::Tensor prompt = ids({{1, 2, 3}, {4, 5, 6}});
  gen::GenerateOutput out = gen::decode(model, prompt, {}, c);
  ASSERT_EQ(out.sequences.sizes(), (torch::IntArrayRef{2, 8}));
  ASSERT_EQ(out.scores.sizes(), (torch::IntArrayRef{5, 2, 7}));
  EXPECT_TRUE(out.sequences.narrow(1, 0, 3).equal(prompt));
  const torch::Tensor rows = torch::arange(2, torch::kLong);
  for (std::int64_t t = 0; t < 5; ++t) {
    torch::Tensor expected = model.reference(rows, out.sequences.narrow(1, 0, 3 + t));
    EXPECT_TRUE(torch::allclose(out.scores[t], expected)) << "step " << t;
    EXPECT_TRUE(out.sequences.select(1, 3 + t).equal(expected.argmax(-1))) << "step " << t;
  }
  EXPECT_TRUE(model.selects.empty());
  EXPECT_EQ(model.masks.size(), 5u);
}

TEST(GenerationGreedy, EosFinishesARowAndTheRestIsPad) {
  // 1 -> 2 -> EOS 5; 3 <-> 4 forever.
  ToyModel model(chain_table(6, {{1, 2}, {2, 5}, {3, 4}, {4, 3}}), torch::zeros({2, 6}));
  gen::GenerationConfig c = greedy(5);
  c.eos_token_id = {5};
  c.pad_token_id = 0;
  gen::GenerateOutput out = gen::decode(model, ids({{1}, {3}}), {}, c);
  EXPECT_TRUE(same(out.sequences, ids({{1, 2, 5, 0, 0, 0}, {3, 4, 3, 4, 3, 4}}))) << out.sequences;
  // When every row has finished the loop stops early; pad defaults to eos_token_id[0].
  ToyModel both(chain_table(6, {{1, 2}, {2, 5}}), torch::zeros({2, 6}));
  c.pad_token_id.reset();
  out = gen::decode(both, ids({{1}, {2}}), {}, c);
  EXPECT_TRUE(same(out.sequences, ids({{1, 2, 5}, {2, 5, 5}}))) << out.sequences;
  EXPECT_EQ(both.masks.size(), 2u);
}

TEST(GenerationGreedy, MaxLengthFromMaxNewTokensOrDefault20) {
  ToyModel model = random_model(5, 1);
  torch::Tensor prompt = ids({{1, 2, 3}});
  EXPECT_EQ(gen::decode(model, prompt, {}, gen::GenerationConfig{}).sequences.size(1), 20);
  gen::GenerationConfig c;
  c.max_length = 4;
  EXPECT_EQ(gen::decode(model, prompt, {}, c).sequences.size(1), 4);
  c.max_new_tokens = 6;  // wins over max_length (HF step 6)
  EXPECT_EQ(gen::decode(model, prompt, {}, c).sequences.size(1), 9);
  c.max_new_tokens.reset();
  c.max_length = 2;  // input already longer: HF still generates one token
  EXPECT_EQ(gen::decode(model, prompt, {}, c).sequences.size(1), 4);
  c.min_length = 3;
  EXPECT_NE(error_of([&] { gen::decode(model, prompt, {}, c); }).find("min_length"), std::string::npos);
}

TEST(GenerationGreedy, AttentionMaskGrowsByAColumnOfOnes) {
  ToyModel model = random_model(5, 2);
  torch::Tensor mask = torch::tensor({{1, 1, 1}, {0, 1, 1}}, torch::kLong);
  gen::decode(model, ids({{1, 2, 3}, {0, 2, 3}}), mask, greedy(3));
  ASSERT_EQ(model.masks.size(), 3u);
  for (std::int64_t t = 0; t < 3; ++t)
    EXPECT_TRUE(model.masks[t].equal(torch::cat({mask, torch::ones({2, t}, torch::kLong)}, 1))) << t;
}

TEST(GenerationGreedy, ProcessorsShapeTheLoop) {
  // EOS 5 is always the argmax; min_new_tokens holds it back for two steps.
  torch::Tensor table = torch::zeros({6, 6});
  table.select(1, 5).fill_(5.0);
  table.select(1, 1).fill_(1.0);
  ToyModel model(table, torch::zeros({1, 6}));
  gen::GenerationConfig c = greedy(6);
  c.eos_token_id = {5};
  c.min_new_tokens = 2;
  c.output_scores = true;
  gen::GenerateOutput out = gen::decode(model, ids({{0, 0}}), {}, c);
  EXPECT_TRUE(same(out.sequences, ids({{0, 0, 1, 1, 5}}))) << out.sequences;
  EXPECT_EQ(out.scores[0][0][5].item<float>(), -kInf);
  EXPECT_EQ(out.scores[2][0][5].item<float>(), 5.0f);
  // forced_eos: the token at max_length - 1 is EOS whatever the model says.
  ToyModel cycle(chain_table(6, {{3, 4}, {4, 3}}), torch::zeros({1, 6}));
  c = greedy(4);
  c.forced_eos_token_id = 5;
  out = gen::decode(cycle, ids({{3}}), {}, c);
  EXPECT_TRUE(same(out.sequences, ids({{3, 4, 3, 4, 5}}))) << out.sequences;
  // no_repeat_ngram_size 2: the 3-4 cycle can't repeat a bigram.
  c = greedy(6);
  c.no_repeat_ngram_size = 2;
  out = gen::decode(cycle, ids({{3}}), {}, c);
  auto seq = out.sequences[0];
  std::set<std::pair<std::int64_t, std::int64_t>> bigrams;
  for (std::int64_t i = 0; i + 1 < seq.size(0); ++i)
    EXPECT_TRUE(bigrams.insert({seq[i].item<std::int64_t>(), seq[i + 1].item<std::int64_t>()}).second) << seq;
  // forced_bos: the first token of an encoder-decoder start (L0 1).
  c = greedy(2);
  c.forced_bos_token_id = 2;
  out = gen::decode(cycle, ids({{3}}), {}, c);
  EXPECT_EQ(out.sequences[0][1].item<std::int64_t>(), 2);
  // repetition_penalty: the seen token's positive logit is divided.
  c = greedy(1);
  c.repetition_penalty = 4.0;
  c.output_scores = true;
  out = gen::decode(cycle, ids({{3, 4}}), {}, c);
  EXPECT_FLOAT_EQ(out.scores[0][0][3].item<float>(), 10.0f / 4.0f);
  EXPECT_FLOAT_EQ(out.scores[0][0][4].item<float>(), 0.0f);
}

TEST(GenerationHooks, StopFinishesARowAndOnTokensStreams) {
  ToyModel model = random_model(6, 2);
  gen::GenerationConfig c = greedy(5);
  c.pad_token_id = 0;
  std::vector<torch::Tensor> streamed;
  gen::DecodeHooks hooks;
  hooks.on_tokens = [&](const torch::Tensor& t) { streamed.push_back(t.clone()); };
  hooks.stop = [](std::int64_t row, const torch::Tensor& seq) { return row == 0 && seq.size(0) == 4; };
  gen::GenerateOutput out = gen::decode(model, ids({{1, 2}, {3, 4}}), {}, c, hooks);
  gen::GenerateOutput plain = gen::decode(model, ids({{1, 2}, {3, 4}}), {}, c);
  ASSERT_EQ(streamed.size(), 5u);
  EXPECT_TRUE(out.sequences[1].equal(plain.sequences[1]));
  EXPECT_TRUE(out.sequences[0].narrow(0, 0, 4).equal(plain.sequences[0].narrow(0, 0, 4)));
  EXPECT_TRUE(out.sequences[0].narrow(0, 4, 3).eq(0).all().item<bool>()) << out.sequences;
  EXPECT_TRUE(torch::stack(streamed, 1).equal(out.sequences.narrow(1, 2, 5)));
  // A stopped row with rows still running and no pad_token_id is an error; stopping all rows ends the loop.
  c.pad_token_id.reset();
  EXPECT_NE(error_of([&] { gen::decode(model, ids({{1, 2}, {3, 4}}), {}, c, hooks); }).find("pad_token_id"),
            std::string::npos);
  hooks.stop = [](std::int64_t, const torch::Tensor& seq) { return seq.size(0) == 3; };
  EXPECT_EQ(gen::decode(model, ids({{1, 2}, {3, 4}}), {}, c, hooks).sequences.size(1), 3);
  c.num_beams = 2;
  EXPECT_THROW(gen::decode(model, ids({{1, 2}, {3, 4}}), {}, c, hooks), NotSupported);
}

// ---- sampling ----------------------------------------------------------------------------------

TEST(GenerationSample, SeededIsReproducibleAndSeedsDiffer) {
  ToyModel model = random_model(20, 2, 0.3);
  gen::GenerationConfig c = greedy(12);
  c.do_sample = true;
  c.num_return_sequences = 3;
  c.seed = 1;
  torch::Tensor prompt = ids({{1, 2}, {3, 4}});
  gen::GenerateOutput a = gen::decode(model, prompt, {}, c);
  ASSERT_EQ(a.sequences.sizes(), (torch::IntArrayRef{6, 14}));
  ASSERT_EQ(model.selects.size(), 1u);
  EXPECT_TRUE(model.selects[0].equal(torch::tensor({0, 0, 0, 1, 1, 1}, torch::kLong)));
  EXPECT_TRUE(a.sequences.narrow(1, 0, 2).equal(prompt.repeat_interleave(3, 0)));
  EXPECT_FALSE(a.sequences[0].equal(a.sequences[1]));  // the return sequences of one prompt differ
  ToyModel again = random_model(20, 2, 0.3);
  EXPECT_TRUE(gen::decode(again, prompt, {}, c).sequences.equal(a.sequences));
  c.seed = 2;
  ToyModel other = random_model(20, 2, 0.3);
  EXPECT_FALSE(gen::decode(other, prompt, {}, c).sequences.equal(a.sequences));
}

TEST(GenerationSample, TopK1EqualsGreedy) {
  ToyModel model = random_model(9, 2);
  torch::Tensor prompt = ids({{1, 2}, {3, 4}});
  gen::GenerationConfig c = greedy(8);
  torch::Tensor expected = gen::decode(model, prompt, {}, c).sequences;
  c.do_sample = true;
  c.top_k = 1;
  c.temperature = 0.7;
  c.output_scores = true;
  gen::GenerateOutput out = gen::decode(model, prompt, {}, c);
  EXPECT_TRUE(out.sequences.equal(expected));
  // The sampling scores are after the warpers: one finite score per row.
  EXPECT_TRUE(torch::isfinite(out.scores).sum(-1).eq(1).all().item<bool>());
}

// ---- beam search -------------------------------------------------------------------------------

TEST(GenerationBeam, OneBeamIsGreedy) {
  ToyModel model = random_model(8, 2);
  torch::Tensor prompt = ids({{1, 2}, {3, 4}});
  gen::GenerationConfig c = greedy(6);
  torch::Tensor expected = gen::decode(model, prompt, {}, c).sequences;
  EXPECT_TRUE(gen::beam_search(model, prompt, {}, c).sequences.equal(expected));
  // With EOS and early stopping, a finished row is padded exactly like greedy's.
  ToyModel chain(chain_table(6, {{1, 2}, {2, 5}, {3, 4}, {4, 3}}), torch::zeros({2, 6}));
  c = greedy(5);
  c.eos_token_id = {5};
  c.pad_token_id = 0;
  c.early_stopping = gen::EarlyStopping::True;
  expected = gen::decode(chain, ids({{1}, {3}}), {}, c).sequences;
  EXPECT_TRUE(same(gen::beam_search(chain, ids({{1}, {3}}), {}, c).sequences, expected));
}

TEST(GenerationBeam, BeamsCoveringTheVocabularyFindTheBruteForceBest) {
  // With num_beams = V and two new tokens, every two-token continuation is scored: the best three
  // (num_return_sequences) must be the brute-force best by sum of log-probabilities / L ** length_penalty.
  const std::int64_t V = 6, L0 = 2;
  ToyModel model = random_model(V, 2);
  torch::Tensor prompt = ids({{1, 2}, {3, 4}});
  gen::GenerationConfig c = greedy(2);
  c.num_beams = V;
  c.num_return_sequences = 3;
  c.length_penalty = 1.5;
  gen::GenerateOutput out = gen::decode(model, prompt, {}, c);
  ASSERT_EQ(out.sequences.sizes(), (torch::IntArrayRef{6, 4}));
  ASSERT_EQ(out.sequences_scores.sizes(), (torch::IntArrayRef{6}));
  ASSERT_EQ(model.selects.size(), 3u);  // expansion + one per step
  EXPECT_TRUE(model.selects[0].equal(torch::arange(2, torch::kLong).repeat_interleave(V)));
  for (std::int64_t b = 0; b < 2; ++b) {
    std::vector<std::tuple<double, std::int64_t, std::int64_t>> all;
    torch::Tensor origin = torch::tensor({b}, torch::kLong);
    torch::Tensor first = model.reference(origin, prompt.narrow(0, b, 1)).to(torch::kDouble).log_softmax(-1)[0];
    for (std::int64_t x = 0; x < V; ++x) {
      torch::Tensor seq = torch::cat({prompt.narrow(0, b, 1), torch::tensor({{x}}, torch::kLong)}, 1);
      torch::Tensor second = model.reference(origin, seq).to(torch::kDouble).log_softmax(-1)[0];
      for (std::int64_t y = 0; y < V; ++y)
        all.emplace_back(first[x].item<double>() + second[y].item<double>(), x, y);
    }
    std::sort(all.rbegin(), all.rend());
    for (std::int64_t j = 0; j < 3; ++j) {
      auto [sum, x, y] = all[j];
      torch::Tensor row = out.sequences[b * 3 + j];
      EXPECT_EQ(row[2].item<std::int64_t>(), x) << "batch " << b << " rank " << j;
      EXPECT_EQ(row[3].item<std::int64_t>(), y) << "batch " << b << " rank " << j;
      EXPECT_NEAR(out.sequences_scores[b * 3 + j].item<float>(), sum / std::pow(L0 + 2.0, 1.5), 1e-4);
    }
  }
}

TEST(GenerationBeam, HandCheckedEosLengthPenaltyAndEarlyStopping) {
  // Bigram probabilities, EOS = 2: P(.|0) = (.5, .3, .2), P(.|1) = (.1, .3, .6). Prompt [0], 2 beams.
  // Step 2 candidates: [0,0] .25, [1,EOS] .18, [0,1] .15, [0,EOS] .10: [1,EOS] finishes hypothesis [0,1].
  torch::Tensor table = torch::tensor({{.5, .3, .2}, {.1, .3, .6}, {.4, .3, .3}}, torch::kFloat).log();
  auto run = [&](std::int64_t new_tokens, double length_penalty, gen::EarlyStopping es) {
    ToyModel model(table, torch::zeros({1, 3}));
    gen::GenerationConfig c = greedy(new_tokens);
    c.num_beams = 2;
    c.num_return_sequences = 2;
    c.eos_token_id = {2};
    c.length_penalty = length_penalty;
    c.early_stopping = es;
    return gen::decode(model, ids({{0}}), {}, c);
  };
  auto expect_scores = [](const gen::GenerateOutput& out, double a, double b) {
    EXPECT_NEAR(out.sequences_scores[0].item<float>(), a, 1e-5);
    EXPECT_NEAR(out.sequences_scores[1].item<float>(), b, 1e-5);
  };
  using std::log;
  // length_penalty 1: the open beams [0,0,0] and [0,0,1] beat [0,1] (ln .18 / 2).
  gen::GenerateOutput out = run(2, 1.0, gen::EarlyStopping::False);
  EXPECT_TRUE(same(out.sequences, ids({{0, 0, 0}, {0, 0, 1}}))) << out.sequences;
  expect_scores(out, log(.25) / 3, log(.15) / 3);
  // length_penalty -1 favours the short hypothesis: score = sum * len; EOS appended, the pad is EOS.
  out = run(2, -1.0, gen::EarlyStopping::False);
  EXPECT_TRUE(same(out.sequences, ids({{0, 1, 2}, {0, 0, 0}}))) << out.sequences;
  expect_scores(out, log(.18) * 2, log(.25) * 3);
  // Three steps. Step 3 candidates: [0,0,0] .125, [0,1,EOS] .09, [0,0,1] .075: a second hypothesis.
  // early_stopping true: done with two hypotheses.
  out = run(3, 1.0, gen::EarlyStopping::True);
  EXPECT_TRUE(same(out.sequences, ids({{0, 0, 1, 2}, {0, 1, 2, 2}}))) << out.sequences;
  expect_scores(out, log(.09) / 3, log(.18) / 2);
  // early_stopping false: worst -0.857 < best possible ln .125 / 3, so it runs on; the open beams win.
  out = run(3, 1.0, gen::EarlyStopping::False);
  EXPECT_TRUE(same(out.sequences, ids({{0, 0, 0, 0}, {0, 0, 0, 1}}))) << out.sequences;
  expect_scores(out, log(.125) / 4, log(.075) / 4);
}

TEST(GenerationBeam, BeamSampleIsSeededAndReturnsOneRowPerSequence) {
  ToyModel model = random_model(10, 2, 0.5);
  gen::GenerationConfig c = greedy(5);
  c.num_beams = 3;
  c.do_sample = true;
  c.num_return_sequences = 2;
  c.seed = 7;
  gen::GenerateOutput a = gen::decode(model, ids({{1, 2}, {3, 4}}), {}, c);
  ASSERT_EQ(a.sequences.sizes(), (torch::IntArrayRef{4, 7}));
  ASSERT_EQ(a.sequences_scores.size(0), 4);
  EXPECT_TRUE(model.selects[0].equal(torch::arange(2, torch::kLong).repeat_interleave(6)));
  ToyModel again = random_model(10, 2, 0.5);
  EXPECT_TRUE(gen::decode(again, ids({{1, 2}, {3, 4}}), {}, c).sequences.equal(a.sequences));
}

// ---- configuration -----------------------------------------------------------------------------

TEST(GenerationConfig, ReadsAnHfGenerationConfigAndOverridesKeyByKey) {
  json file = json::parse(R"({"bos_token_id": 0, "decoder_start_token_id": 2, "early_stopping": true,
    "eos_token_id": 2, "forced_bos_token_id": 0, "forced_eos_token_id": 2, "length_penalty": 2,
    "max_length": 142, "min_length": 56, "no_repeat_ngram_size": 3, "num_beams": 4, "pad_token_id": 1,
    "num_beam_groups": 1, "bad_words_ids": null, "transformers_version": "4.26.0", "_from_model_config": true})");
  gen::GenerationConfig c = gen::parse_generation_config(file, "generation_config.json");
  EXPECT_EQ(c.bos_token_id, 0);
  EXPECT_EQ(c.decoder_start_token_id, 2);
  EXPECT_EQ(c.early_stopping, gen::EarlyStopping::True);
  EXPECT_EQ(c.eos_token_id, std::vector<std::int64_t>{2});
  EXPECT_EQ(c.forced_bos_token_id, 0);
  EXPECT_EQ(c.forced_eos_token_id, 2);
  EXPECT_EQ(c.length_penalty, 2.0);
  EXPECT_EQ(c.max_length, 142);
  EXPECT_EQ(c.min_length, 56);
  EXPECT_EQ(c.no_repeat_ngram_size, 3);
  EXPECT_EQ(c.num_beams, 4);
  EXPECT_EQ(c.pad_token_id, 1);
  EXPECT_EQ(c.top_k, 50);
  EXPECT_FALSE(c.max_new_tokens.has_value());

  json kwargs = json::parse(R"({"num_beams": 1, "max_new_tokens": 10, "eos_token_id": [2, 3],
    "early_stopping": "never", "top_k": null, "pad_token_id": null, "do_sample": true, "top_p": 0.9,
    "temperature": 0.5, "seed": 42})");
  gen::GenerationConfig o = gen::parse_generation_config(kwargs, "generate", c);
  EXPECT_EQ(o.num_beams, 1);
  EXPECT_EQ(o.max_new_tokens, 10);
  EXPECT_EQ(o.max_length, 142);  // kept from the base
  EXPECT_EQ(o.eos_token_id, (std::vector<std::int64_t>{2, 3}));
  EXPECT_EQ(o.early_stopping, gen::EarlyStopping::Never);
  EXPECT_EQ(o.top_k, 0);  // null: no top-k filtering
  EXPECT_FALSE(o.pad_token_id.has_value());
  EXPECT_TRUE(o.do_sample);
  EXPECT_EQ(o.top_p, 0.9);
  EXPECT_EQ(o.temperature, 0.5);
  EXPECT_EQ(o.seed, 42u);
  EXPECT_EQ(o.no_repeat_ngram_size, 3);
}

TEST(GenerationConfig, WrongTypesAndUnsupportedOptionsAreErrors) {
  auto message = [](const char* text) {
    return error_of([&] { gen::parse_generation_config(json::parse(text), "generation_config.json"); });
  };
  for (const char* text : {R"({"num_beams": "4"})", R"({"do_sample": 1})", R"({"eos_token_id": "x"})",
                           R"({"eos_token_id": [1, "2"]})", R"({"early_stopping": "sometimes"})",
                           R"({"top_p": "high"})", R"({"max_new_tokens": 1.5})", R"({"seed": -1})"}) {
    std::string m = message(text);
    std::string key = json::parse(text).begin().key();
    EXPECT_NE(m.find("generation_config.json"), std::string::npos) << text << " -> " << m;
    EXPECT_NE(m.find("'" + key + "'"), std::string::npos) << text << " -> " << m;
  }
  EXPECT_NE(message(R"([1, 2])").find("expected a JSON object"), std::string::npos);
  EXPECT_THROW(gen::parse_generation_config(json::parse(R"({"num_beam_groups": 2})"), "g"), NotSupported);
  EXPECT_THROW(gen::parse_generation_config(json::parse(R"({"bad_words_ids": [[5]]})"), "g"), NotSupported);
  EXPECT_NO_THROW(gen::parse_generation_config(json::parse(R"({"typical_p": 1.0, "renormalize_logits": false})"), "g"));
}

TEST(GenerationConfig, ValidateNamesTheOptionExpectedAndFound) {
  auto message = [](const std::function<void(gen::GenerationConfig&)>& change, std::int64_t vocab = 10) {
    gen::GenerationConfig c;
    change(c);
    return error_of([&] { gen::validate(c, vocab); });
  };
  struct Case {
    std::string option, found;
    std::function<void(gen::GenerationConfig&)> change;
  };
  std::vector<Case> cases = {
      {"max_new_tokens", "0", [](auto& c) { c.max_new_tokens = 0; }},
      {"num_beams", "0", [](auto& c) { c.num_beams = 0; }},
      {"num_beams", "11", [](auto& c) { c.num_beams = 11; }},
      {"num_return_sequences", "5", [](auto& c) { c.num_beams = 4; c.num_return_sequences = 5; }},
      {"num_return_sequences", "2", [](auto& c) { c.num_return_sequences = 2; }},  // greedy
      {"num_return_sequences", "0", [](auto& c) { c.do_sample = true; c.num_return_sequences = 0; }},
      {"top_p", "0", [](auto& c) { c.do_sample = true; c.top_p = 0; }},
      {"top_p", "1.5", [](auto& c) { c.do_sample = true; c.top_p = 1.5; }},
      {"temperature", "0", [](auto& c) { c.do_sample = true; c.temperature = 0; }},
      {"top_k", "-1", [](auto& c) { c.top_k = -1; }},
      {"repetition_penalty", "0", [](auto& c) { c.repetition_penalty = 0; }},
      {"no_repeat_ngram_size", "-2", [](auto& c) { c.no_repeat_ngram_size = -2; }},
      {"min_new_tokens", "-1", [](auto& c) { c.min_new_tokens = -1; }},
      {"eos_token_id", "10", [](auto& c) { c.eos_token_id = {10}; }},
      {"forced_bos_token_id", "-1", [](auto& c) { c.forced_bos_token_id = -1; }},
  };
  for (const auto& k : cases) {
    std::string m = message(k.change);
    EXPECT_NE(m.find("'" + k.option + "'"), std::string::npos) << k.option << ": " << m;
    EXPECT_NE(m.find("found " + k.found), std::string::npos) << k.option << ": " << m;
  }
  EXPECT_EQ(message([](auto&) {}), "");
  EXPECT_EQ(message([](auto& c) { c.num_beams = 4; c.num_return_sequences = 4; }), "");
  EXPECT_EQ(message([](auto& c) { c.temperature = 0; }), "");  // only checked when sampling
  EXPECT_EQ(message([](auto& c) { c.num_beams = 11; }, 0), "");  // vocabulary unknown
  // decode() checks the vocabulary-dependent options on the first step.
  ToyModel model = random_model(5, 1);
  gen::GenerationConfig c = greedy(2);
  c.eos_token_id = {7};
  EXPECT_NE(error_of([&] { gen::decode(model, ids({{1}}), {}, c); }).find("eos_token_id"), std::string::npos);
}

}  // namespace adapters::test
