// Generation with real models: the key/value cache gives the tokens of recomputing every step on
// every generative architecture and method family (prefix tuning and Parallel included); beam
// search with one beam is greedy; seeded sampling is reproducible; bad requests fail before any
// work with a clear message.
#include <gtest/gtest.h>

#include "adapters/generate.h"
#include "adapters/models/seq2seq.h"
#include "test_util.h"

namespace adapters::test {
namespace {

using generation::GenerationConfig;

bool is_seq2seq(const std::string& arch) { return arch == "bart" || arch == "mbart" || arch == "t5"; }

// (2,6) prompts; decoder-only prompts are left-padded as HF expects.
std::pair<torch::Tensor, torch::Tensor> prompts(const std::string& arch) {
  torch::Tensor ids = torch::tensor({{5, 17, 23, 42, 8, 61}, {98, 98, 12, 33, 71, 9}}, torch::kLong);
  torch::Tensor mask = torch::ones_like(ids);
  if (is_seq2seq(arch)) {
    ids = torch::tensor({{5, 17, 23, 42, 8, 2}, {12, 33, 71, 9, 2, 1}}, torch::kLong);
    mask[1][5] = 0;
  } else {
    mask[1][0] = 0;
    mask[1][1] = 0;
  }
  return {ids, mask};
}

GenerationConfig greedy(std::int64_t new_tokens, bool use_cache) {
  GenerationConfig c;
  c.max_new_tokens = new_tokens;
  c.use_cache = use_cache;
  c.output_scores = true;
  c.pad_token_id = 1;
  c.decoder_start_token_id = 2;
  c.repetition_penalty = 1.3;  // tiny random models like to repeat one token
  return c;
}

// A model of `arch` with an LM head per adapter of `setup` (one head named "lm" without adapters).
AdapterModel generative_model(const std::string& arch, const std::string& method, const std::string& setup) {
  AdapterModel model = load_pretrained(model_dir(arch));
  torch::manual_seed(11);
  const std::string head_type = is_seq2seq(arch) ? "seq2seq_lm" : "causal_lm";
  if (method.empty()) {
    model->add_head("lm", head_type);
    return model;
  }
  const Block block = composition::parse(setup);
  for (const auto& name : block.flatten()) {
    model->add_adapter(name, method);
    randomize_adapter(model, name, 0.2);
  }
  model->set_active_adapters(block);
  const std::int64_t channels = composition::parallel_channels(block);
  if (channels == 1) {
    model->add_head("lm", head_type);
  } else {
    std::vector<std::string> heads;
    for (const auto& child : block.children) {
      model->add_head(child.last(), head_type, json::object(), false, false);
      heads.push_back(child.last());
    }
    model->set_active_head("Parallel(" + heads[0] + "," + heads[1] + ")");
  }
  return model;
}

struct CacheCase {
  std::string arch, method, setup;
};

void PrintTo(const CacheCase& c, std::ostream* os) { *os << c.arch << " " << c.method << " " << c.setup; }

class CacheIdentity : public ::testing::TestWithParam<CacheCase> {};

TEST_P(CacheIdentity, CachedGreedyGivesTheTokensOfRecomputing) {
  const auto& p = GetParam();
  AdapterModel model = generative_model(p.arch, p.method, p.setup);
  const auto [ids, mask] = prompts(p.arch);
  const auto cached = generate(*model, ids, mask, greedy(8, true));
  const auto recomputed = generate(*model, ids, mask, greedy(8, false));
  ASSERT_EQ(cached.sequences.sizes(), recomputed.sequences.sizes());
  EXPECT_TRUE(torch::equal(cached.sequences, recomputed.sequences)) << cached.sequences << "\n" << recomputed.sequences;
  const auto finite = torch::isfinite(recomputed.scores);
  EXPECT_TRUE(torch::equal(torch::isfinite(cached.scores), finite));
  EXPECT_LT((cached.scores - recomputed.scores).masked_fill(finite.logical_not(), 0).abs().max().item<double>(), 1e-4);
  const std::int64_t channels = p.setup.rfind("Parallel", 0) == 0 ? 2 : 1;
  EXPECT_EQ(cached.sequences.size(0), 2 * channels);
}

std::vector<CacheCase> cache_cases() {
  std::vector<CacheCase> out;
  for (const char* arch : {"gpt2", "gptj", "bart", "mbart", "t5", "llama", "mistral", "qwen2", "gemma"}) {
    out.push_back({arch, "", ""});
    for (const char* method : {"seq_bn", "double_seq_bn_inv", "lora", "ia3", "prefix_tuning", "compacter[reduction_factor=8]",
                               "mam"}) {
      out.push_back({arch, method, "a"});
    }
    out.push_back({arch, "seq_bn", "Stack(a,b)"});
    out.push_back({arch, "seq_bn", "Parallel(a,b)"});
    out.push_back({arch, "prefix_tuning", "Parallel(a,b)"});
  }
  return out;
}

INSTANTIATE_TEST_SUITE_P(Generative, CacheIdentity, ::testing::ValuesIn(cache_cases()), [](const auto& info) {
  std::string n = info.param.arch + "_" + (info.param.method.empty() ? "base" : info.param.method) + "_" + info.param.setup;
  for (auto& ch : n) {
    if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
  }
  return n + "_" + std::to_string(info.index);
});

class Decoding : public ::testing::TestWithParam<std::string> {};

TEST_P(Decoding, SeededSamplingIsReproducible) {
  AdapterModel model = generative_model(GetParam(), "lora", "a");
  const auto [ids, mask] = prompts(GetParam());
  GenerationConfig c = greedy(10, true);
  c.do_sample = true;
  c.temperature = 1.5;
  c.top_k = 0;
  c.repetition_penalty = 1.0;
  c.seed = 7;
  const auto first = generate(*model, ids, mask, c).sequences;
  EXPECT_TRUE(torch::equal(first, generate(*model, ids, mask, c).sequences));
  bool differs = false;
  for (std::uint64_t seed = 8; seed < 12 && !differs; ++seed) {
    c.seed = seed;
    differs = !torch::equal(first, generate(*model, ids, mask, c).sequences);
  }
  EXPECT_TRUE(differs) << "five seeds gave the same samples";
}

TEST_P(Decoding, BeamSearchReturnsTheBestSequencesFirst) {
  AdapterModel model = generative_model(GetParam(), "seq_bn", "a");
  const auto [ids, mask] = prompts(GetParam());
  GenerationConfig c = greedy(6, true);
  c.num_beams = 3;
  c.num_return_sequences = 2;
  const auto out = generate(*model, ids, mask, c);
  ASSERT_EQ(out.sequences.size(0), 4);
  ASSERT_EQ(out.sequences_scores.size(0), 4);
  for (std::int64_t b = 0; b < 2; ++b) {
    EXPECT_GE(out.sequences_scores[2 * b].item<float>(), out.sequences_scores[2 * b + 1].item<float>());
  }
  c.use_cache = false;
  EXPECT_TRUE(torch::equal(out.sequences, generate(*model, ids, mask, c).sequences)) << "beam search with and without the cache";
}

TEST_P(Decoding, BadRequestsFailBeforeAnyWork) {
  AdapterModel model = generative_model(GetParam(), "seq_bn", "a");
  const auto [ids, mask] = prompts(GetParam());
  auto error = [&](GenerationConfig c) { return error_of([&] { generate(*model, ids, mask, c); }); };
  GenerationConfig c = greedy(4, true);
  c.max_new_tokens = 0;
  EXPECT_NE(error(c).find("max_new_tokens"), std::string::npos);
  c = greedy(4, true);
  c.num_beams = 1000;
  EXPECT_NE(error(c).find("num_beams"), std::string::npos);
  c = greedy(4, true);
  c.do_sample = true;
  c.top_p = 1.5;
  EXPECT_NE(error(c).find("top_p"), std::string::npos);
  c = greedy(1000, true);
  if (GetParam() != "t5") EXPECT_NE(error(c).find("positions"), std::string::npos);
  model->add_adapter("b", "seq_bn");
  model->set_active_adapters("BatchSplit(a,b,batch_sizes=[1,1])");
  EXPECT_NE(error(greedy(4, true)).find("BatchSplit"), std::string::npos);
  model->set_active_adapters("a");
  model->add_head("cls", "classification", {{"num_labels", 2}});
  EXPECT_NE(error(greedy(4, true)).find("language-model head"), std::string::npos);
}

INSTANTIATE_TEST_SUITE_P(Generative, Decoding, ::testing::Values("gpt2", "gptj", "bart", "mbart", "t5", "llama", "gemma"));

// HF's *LMHeadModel / *ForConditionalGeneration folders: base keys without the AdapterModel prefix
// (GPT-2, T5) or with the class's own ("model." for BART), an lm_head.weight (tied or not), and
// the static head converted into a flexible LM head that generates as the model does with the
// equivalent flexible head.
struct StaticLmCase {
  std::string arch, hf_class, strip, head_type;
};

void PrintTo(const StaticLmCase& c, std::ostream* os) { *os << c.hf_class; }

class StaticLmHead : public ::testing::TestWithParam<StaticLmCase> {};

TEST_P(StaticLmHead, ConvertsAndGenerates) {
  const auto& p = GetParam();
  TempDir tmp;
  json config = json::parse(io::read_text_file(model_dir(p.arch) / "config.json"));
  config["architectures"] = json::array({p.hf_class});
  io::write_file_atomic(tmp / "config.json", config.dump());
  io::TensorMap tensors;
  AdapterModel reference = load_pretrained(model_dir(p.arch));
  for (const auto& [key, t] : io::read_checkpoint(model_dir(p.arch) / "model.safetensors")) {
    const std::string name = key.rfind(p.strip, 0) == 0 ? key.substr(p.strip.size()) : key;
    tensors[name] = t;
  }
  tensors["lm_head.weight"] = reference->base().word_embeddings().detach().clone();
  if (p.arch == "gptj") tensors["lm_head.bias"] = torch::randn({config["vocab_size"].get<std::int64_t>()});  // untied, with a bias
  io::write_safetensors(tmp / "model.safetensors", tensors);
  AdapterModel model = load_pretrained(tmp.path());
  ASSERT_TRUE(model->has_head("default"));
  EXPECT_EQ(model->head("default").type(), p.head_type);
  reference->add_head("lm", p.head_type, model->head("default").config());
  {
    torch::NoGradGuard no_grad;
    const auto converted = model->head("default").named_parameters();
    for (auto& item : reference->head("lm").named_parameters()) item.value().copy_(*converted.find(item.key()));
  }
  EXPECT_TRUE(torch::equal(model->head("default").named_parameters().find("0.weight")->detach(),
                           tensors["lm_head.weight"]));
  const auto [ids, mask] = prompts(p.arch);
  EXPECT_TRUE(torch::equal(generate(*model, ids, mask, greedy(6, true)).sequences,
                           generate(*reference, ids, mask, greedy(6, true)).sequences));
}

INSTANTIATE_TEST_SUITE_P(Generative, StaticLmHead,
                         ::testing::Values(StaticLmCase{"gpt2", "GPT2LMHeadModel", "transformer.", "causal_lm"},
                                           StaticLmCase{"gptj", "GPTJForCausalLM", "", "causal_lm"},
                                           StaticLmCase{"bart", "BartForConditionalGeneration", "", "seq2seq_lm"},
                                           StaticLmCase{"t5", "T5ForConditionalGeneration", "transformer.", "seq2seq_lm"}),
                         [](const auto& info) { return info.param.arch; });

// Labels without decoder inputs are shifted right into them (T5, and BART as its
// ForConditionalGeneration does): the loss equals the one with those decoder inputs given.
TEST(Decoding, LabelsBecomeTheDecoderInputsShiftedRight) {
  for (const char* arch : {"bart", "t5"}) {
    AdapterModel model = generative_model(arch, "lora", "a");
    model->eval();
    const auto [ids, mask] = prompts(arch);
    const torch::Tensor labels = torch::tensor({{7, 8, 9, 2}, {10, 11, 2, -100}}, torch::kLong);
    ForwardOptions options;
    options.head_inputs["labels"] = labels;
    torch::NoGradGuard no_grad;
    const auto from_labels = model->forward({ids, mask, torch::Tensor()}, options).loss;
    models::ModelInputs explicit_inputs{ids, mask, torch::Tensor()};
    const std::int64_t start = model->config().raw.at("decoder_start_token_id").get<std::int64_t>();
    explicit_inputs.decoder_input_ids =
        models::shift_tokens_right(labels, model->config().pad_token_id, start);
    EXPECT_TRUE(torch::allclose(from_labels, model->forward(explicit_inputs, options).loss)) << arch;
    EXPECT_EQ(explicit_inputs.decoder_input_ids[0][0].item<std::int64_t>(), start);
  }
}

TEST(Decoding, PromptTuningIsRefusedOnGenerativeModels) {
  for (const char* arch : {"gpt2", "gptj", "bart", "mbart", "t5"}) {
    AdapterModel model = load_pretrained(model_dir(arch));
    EXPECT_NE(error_of([&] { model->add_adapter("p", "prompt_tuning"); }).find("cached generation step"), std::string::npos)
        << arch;
    EXPECT_FALSE(model->has_adapter("p")) << arch;
  }
}

// MT5: T5's code with a gated-GELU feed-forward (wi_0 plain, wi_1 adapted) and untied embeddings.
TEST(Decoding, Mt5GatedFeedForwardGeneratesWithTheCache) {
  json raw = json::parse(io::read_text_file(model_dir("t5") / "config.json"));
  raw["model_type"] = "mt5";
  raw["feed_forward_proj"] = "gated-gelu";
  raw["tie_word_embeddings"] = false;
  AdapterModel model(models::parse_model_config(raw, "mt5 config"));
  const auto params = model->named_parameters();
  EXPECT_NE(params.find("transformer.decoder.block.1.layer.2.DenseReluDense.wi_0.weight"), nullptr);
  EXPECT_NE(params.find("transformer.encoder.block.0.layer.1.DenseReluDense.wi_1.weight"), nullptr);
  model->add_adapter("a", "lora[intermediate_lora=true]", false, true);
  randomize_adapter(model, "a", 0.2);
  model->add_head("lm", "seq2seq_lm");
  EXPECT_FALSE(model->head("lm").named_parameters().find("0.weight")->is_same(model->base().word_embeddings()))
      << "untied: the LM head has its own weight";
  const auto [ids, mask] = prompts("t5");
  EXPECT_TRUE(torch::equal(generate(*model, ids, mask, greedy(6, true)).sequences,
                           generate(*model, ids, mask, greedy(6, false)).sequences));
}

TEST(Decoding, AnEncoderDecoderWithoutAStartTokenIsRefused) {
  AdapterModel model = generative_model("t5", "", "");
  const auto [ids, mask] = prompts("t5");
  GenerationConfig c = greedy(4, true);
  c.decoder_start_token_id.reset();
  c.bos_token_id.reset();
  models::ModelConfig config = model->config();
  EXPECT_NO_THROW(generate(*model, ids, mask, c));  // config.json names one
  AdapterModel bare(config);
  bare->add_head("lm", "seq2seq_lm");
  auto raw = config.raw;
  raw.erase("decoder_start_token_id");
  config.raw = raw;
  AdapterModel without(config);
  without->add_head("lm", "seq2seq_lm");
  EXPECT_NE(error_of([&] { generate(*without, ids, mask, c); }).find("decoder_start_token_id"), std::string::npos);
}

}  // namespace
}  // namespace adapters::test
