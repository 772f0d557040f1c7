// The Llama-style decoders beyond the PEFT fixtures: every row of the table is registered and
// reads both config generations (transformers 5's rope_parameters, 4.x's rope_theta +
// rope_scaling); the rope scalings give their defining properties; Mistral's sliding window
// limits what a token sees, also through the key/value cache; head_dim apart from hidden / heads.
#include <gtest/gtest.h>

#include "adapters/generate.h"
#include "adapters/models/registry.h"
#include "test_util.h"

namespace adapters::test {
namespace {

json tiny_config(const std::string& model_type) {
  return {{"model_type", model_type},     {"vocab_size", 99},         {"hidden_size", 32},
          {"num_hidden_layers", 2},       {"num_attention_heads", 4}, {"num_key_value_heads", 2},
          {"intermediate_size", 37},      {"max_position_embeddings", 64}, {"rms_norm_eps", 1e-6},
          {"hidden_act", "silu"},         {"tie_word_embeddings", false}};
}

TEST(LlamaStyle, EveryTableRowIsARegisteredArchitecture) {
  for (const char* type : {"llama", "mistral", "qwen2", "gemma", "ministral"}) {
    const models::ArchSpec& spec = models::arch_spec(type);
    EXPECT_EQ(spec.base_prefix, "model") << type;
    EXPECT_EQ(spec.kind, models::ArchKind::Decoder) << type;
    AdapterModel model(models::parse_model_config(tiny_config(type), type));
    const auto params = model->base().named_parameters();
    EXPECT_NE(params.find("layers.1.mlp.gate_proj.weight"), nullptr) << type;
    EXPECT_NE(params.find("layers.0.self_attn.o_proj.weight"), nullptr) << type;
    // Qwen2 alone has q/k/v biases by default; nobody has an o_proj bias by default.
    EXPECT_EQ(params.find("layers.0.self_attn.q_proj.bias") != nullptr, std::string(type) == "qwen2") << type;
    EXPECT_EQ(params.find("layers.0.self_attn.o_proj.bias"), nullptr) << type;
    // Grouped-query attention: k/v project to num_key_value_heads x head_dim.
    EXPECT_EQ(params.find("layers.0.self_attn.k_proj.weight")->size(0), 2 * 8) << type;
  }
}

TEST(LlamaStyle, HeadDimApartFromHiddenOverHeads) {
  json c = tiny_config("gemma");
  c["head_dim"] = 16;  // 4 heads x 16 = 64 != hidden 32, as Gemma's configs do
  AdapterModel model(models::parse_model_config(c, "gemma"));
  EXPECT_EQ(model->base().named_parameters().find("layers.0.self_attn.q_proj.weight")->sizes(),
            torch::IntArrayRef({64, 32}));
  model->add_head("lm", "causal_lm");
  EXPECT_EQ(hidden(model, tiny_inputs()).sizes(), torch::IntArrayRef({2, 8, 32}));
}

// The same rotation as default rope at a position divided by the factor.
TEST(RopeScaling, LinearDividesThePositions) {
  const torch::Tensor x = torch::randn({1, 2, 5, 8});
  const torch::Tensor positions = torch::arange(5, torch::kLong).view({1, 5}) * 7;
  nn::RotaryOptions linear{nn::RotaryLayout::HalfSplit, 8, 10000.0, nn::RopeScaling::Linear, 4.0};
  nn::RotaryOptions plain{nn::RotaryLayout::HalfSplit, 8, 10000.0};
  const torch::Tensor a = nn::apply_rotary(x, positions, linear);
  const torch::Tensor b = nn::apply_rotary(x, positions.to(torch::kFloat32) / 4.0, plain);
  EXPECT_LT((a - b).abs().max().item<double>(), 1e-5);
}

// Within the trained context dynamic NTK is default rope; past it, the base grows.
TEST(RopeScaling, DynamicActsOnlyPastTheTrainedContext) {
  const torch::Tensor x = torch::randn({1, 2, 4, 8});
  nn::RotaryOptions dynamic{nn::RotaryLayout::HalfSplit, 8, 10000.0, nn::RopeScaling::Dynamic, 2.0, 16};
  nn::RotaryOptions plain{nn::RotaryLayout::HalfSplit, 8, 10000.0};
  const torch::Tensor inside = torch::arange(4, torch::kLong).view({1, 4}) + 10;  // up to 13 < 16
  EXPECT_TRUE(torch::allclose(nn::apply_rotary(x, inside, dynamic), nn::apply_rotary(x, inside, plain)));
  const torch::Tensor past = inside + 20;  // up to 33 > 16
  EXPECT_GT((nn::apply_rotary(x, past, dynamic) - nn::apply_rotary(x, past, plain)).abs().max().item<double>(), 1e-3);
}

// llama3: short wavelengths (under original context / high_freq_factor) keep their frequency,
// long ones (over original context / low_freq_factor) are divided by the factor.
TEST(RopeScaling, Llama3KeepsHighFrequenciesAndStretchesLowOnes) {
  const std::int64_t dim = 64;
  nn::RotaryOptions llama3{nn::RotaryLayout::HalfSplit, dim, 500000.0, nn::RopeScaling::Llama3, 8.0, 64, 1.0, 4.0};
  nn::RotaryOptions plain{nn::RotaryLayout::HalfSplit, dim, 500000.0};
  // The rotation angle of pair i at position 1 is its frequency: read it off a unit vector.
  const torch::Tensor x = torch::cat({torch::ones({1, 1, 1, dim / 2}), torch::zeros({1, 1, 1, dim / 2})}, -1);
  const torch::Tensor one = torch::ones({1, 1}, torch::kLong);
  auto angles = [&](const nn::RotaryOptions& o) {
    const torch::Tensor y = nn::apply_rotary(x, one, o).view({dim});
    return torch::atan2(y.narrow(0, dim / 2, dim / 2), y.narrow(0, 0, dim / 2));  // (dim/2)
  };
  const torch::Tensor scaled = angles(llama3), base = angles(plain);
  const torch::Tensor wavelength = 2.0 * M_PI / base;
  const torch::Tensor high = wavelength.lt(64.0 / 4.0), low = wavelength.gt(64.0 / 1.0);
  ASSERT_TRUE(high.any().item<bool>() && low.any().item<bool>());
  EXPECT_LT((scaled - base).masked_select(high).abs().max().item<double>(), 1e-6);
  EXPECT_LT((scaled - base / 8.0).masked_select(low).abs().max().item<double>(), 1e-6);
}

TEST(LlamaStyle, ReadsRopeScalingOfBothConfigGenerations) {
  json v4 = tiny_config("llama");
  v4["rope_theta"] = 500000.0;
  v4["rope_scaling"] = {{"type", "linear"}, {"factor", 2.0}};
  json v5 = tiny_config("llama");
  v5["rope_parameters"] = {{"rope_type", "linear"}, {"factor", 2.0}, {"rope_theta", 500000.0}};
  torch::manual_seed(3);
  AdapterModel a(models::parse_model_config(v4, "v4"));
  AdapterModel b(models::parse_model_config(v5, "v5"));
  a->eval();
  b->eval();
  torch::NoGradGuard no_grad;
  for (const auto& p : a->named_parameters()) b->named_parameters()[p.key()].copy_(p.value());
  EXPECT_TRUE(torch::equal(hidden(a, tiny_inputs()), hidden(b, tiny_inputs())));
  json unknown = tiny_config("llama");
  unknown["rope_parameters"] = {{"rope_type", "longrope"}, {"factor", 2.0}};
  EXPECT_NE(error_of([&] { AdapterModel m(models::parse_model_config(unknown, "x")); }).find("rope_type 'longrope'"),
            std::string::npos);
}

// One layer with a window of 3: position t sees tokens t-2..t only.
TEST(SlidingWindow, ATokenSeesOnlyItsWindow) {
  json c = tiny_config("mistral");
  c["num_hidden_layers"] = 1;
  c["sliding_window"] = 3;
  torch::manual_seed(5);
  AdapterModel model(models::parse_model_config(c, "mistral"));
  model->eval();
  models::ModelInputs in;
  in.input_ids = torch::tensor({{5, 6, 7, 8, 9, 10, 11}}, torch::kLong);
  const torch::Tensor before = hidden(model, in);
  in.input_ids[0][1] = 50;  // change token 1: positions 1..3 may change, 4.. may not
  const torch::Tensor after = hidden(model, in);
  const torch::Tensor moved = (after - before).abs().amax(-1)[0];  // (T)
  EXPECT_EQ(moved[0].item<double>(), 0.0);
  for (int t = 1; t <= 3; ++t) EXPECT_GT(moved[t].item<double>(), 0.0) << t;
  for (int t = 4; t < 7; ++t) EXPECT_EQ(moved[t].item<double>(), 0.0) << t;
}

// Ministral, the fifth Llama-style model_type, is one row of the style table: Qwen2's layers
// without q/k/v biases, the window on the layers layer_types marks, or on every layer when a
// config has no layer_types. Token 1 changed in a window of 2 reaches token 2 but not token 4
// through a windowed layer, and every later token through a full one.
TEST(LlamaStyle, MinistralIsATableRow) {
  auto reach = [](const json& extra) {
    json c = tiny_config("ministral");
    c["num_hidden_layers"] = 1;
    c["sliding_window"] = 2;
    c.update(extra);
    torch::manual_seed(5);
    AdapterModel model(models::parse_model_config(c, "ministral"));
    model->eval();
    EXPECT_EQ(model->base().named_parameters().find("layers.0.self_attn.q_proj.bias"), nullptr);
    models::ModelInputs in;
    in.input_ids = torch::tensor({{5, 6, 7, 8, 9, 10}}, torch::kLong);
    const torch::Tensor before = hidden(model, in);
    in.input_ids[0][1] = 50;
    return (hidden(model, in) - before).abs().amax(-1)[0][4].item<double>();  // token 4
  };
  EXPECT_EQ(reach(json::object()), 0.0);                                         // every layer windowed
  EXPECT_EQ(reach({{"layer_types", {"sliding_attention"}}}), 0.0);              // as marked
  EXPECT_GT(reach({{"layer_types", {"full_attention"}}}), 0.0);                  // as marked
  EXPECT_GT(reach({{"sliding_window", nullptr}}), 0.0);                          // no window at all
}

// The window holds through the cache: greedy decoding with it gives the tokens of recomputing.
TEST(SlidingWindow, CachedDecodingGivesTheTokensOfRecomputing) {
  json c = tiny_config("mistral");
  c["sliding_window"] = 4;
  torch::manual_seed(7);
  AdapterModel model(models::parse_model_config(c, "mistral"));
  model->add_head("lm", "causal_lm");
  generation::GenerationConfig g;
  g.max_new_tokens = 10;
  g.pad_token_id = 0;
  g.output_scores = true;
  g.repetition_penalty = 1.3;
  const torch::Tensor ids = torch::tensor({{3, 9, 27, 81, 45, 12}, {0, 0, 14, 15, 16, 17}}, torch::kLong);
  const torch::Tensor mask = ids.ne(0).to(torch::kLong);
  g.use_cache = true;
  const auto cached = generate(*model, ids, mask, g);
  g.use_cache = false;
  const auto recomputed = generate(*model, ids, mask, g);
  EXPECT_TRUE(torch::equal(cached.sequences, recomputed.sequences)) << cached.sequences << recomputed.sequences;
  EXPECT_LT((cached.scores - recomputed.scores).abs().max().item<double>(), 1e-4);
}

}  // namespace
}  // namespace adapters::test
