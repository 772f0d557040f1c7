// Vision encoders (ViT, BEiT) beyond the fixtures: prefix tuning on BEiT (its relative position
// bias gets zero columns for the prefix; the reference crashes there) and the pixel_values checks.
#include <gtest/gtest.h>

#include "adapters/model.h"
#include "test_util.h"

namespace adapters::test {
namespace {

// (2,channels,size,size) random pixels.
models::ModelInputs pixels(std::int64_t channels = 3, std::int64_t size = 16) {
  torch::manual_seed(0);
  models::ModelInputs in;
  in.pixel_values = torch::randn({2, channels, size, size});
  return in;
}

void expect_error(AdapterModel& model, const models::ModelInputs& in, const std::vector<std::string>& parts) {
  const std::string message = error_of([&] { model->forward(in); });
  ASSERT_FALSE(message.empty()) << "no error";
  for (const auto& part : parts) EXPECT_NE(message.find(part), std::string::npos) << message << "\n lacks: " << part;
}

TEST(Vision, BeitPrefixTuningChangesOutputsAndDeactivatingRestoresThem) {
  AdapterModel model = load_pretrained(model_dir("beit"));
  const auto in = pixels();
  torch::NoGradGuard no_grad;
  const ModelOutput base = model->forward(in);
  model->add_adapter("p", "prefix_tuning[prefix_length=5,bottleneck_size=16]");
  randomize_adapter(model, "p");
  model->set_active_adapters("p");
  const ModelOutput prefixed = model->forward(in);
  ASSERT_EQ(prefixed.last_hidden_state.sizes(), base.last_hidden_state.sizes());
  EXPECT_GT((prefixed.last_hidden_state - base.last_hidden_state).abs().max().item<double>(), 1e-3);
  EXPECT_GT((prefixed.pooler_output - base.pooler_output).abs().max().item<double>(), 1e-3);
  model->deactivate_adapters();
  EXPECT_TRUE(torch::equal(model->forward(in).last_hidden_state, base.last_hidden_state));
  EXPECT_TRUE(torch::equal(model->forward(in).pooler_output, base.pooler_output));
}

// Prompt tokens have no place in BEiT's patch grid, so its relative position bias cannot cover
// them: a clear error, never a shape error from deep inside the attention.
TEST(Vision, BeitRefusesPromptTuningClearly) {
  AdapterModel model = load_pretrained(model_dir("beit"));
  model->add_adapter("p", "prompt_tuning", false, true);
  expect_error(model, pixels(), {"BEiT", "prompt tuning", "not supported"});
}

TEST(Vision, BadInputsGiveClearErrors) {
  for (const std::string arch : {"vit", "beit"}) {
    SCOPED_TRACE(arch);
    AdapterModel model = load_pretrained(model_dir(arch));
    expect_error(model, pixels(4), {"pixel_values must have 3 channels", "found 4"});
    expect_error(model, pixels(3, 32), {"16x16", "found 32x32"});
    models::ModelInputs text = tiny_inputs();
    expect_error(model, text, {"vision model", "pixel_values", "input_ids"});
    expect_error(model, models::ModelInputs{}, {"pixel_values (B,3,16,16) is required"});
    models::ModelInputs ints;
    ints.pixel_values = torch::zeros({2, 3, 16, 16}, torch::kLong);
    expect_error(model, ints, {"floating-point", "Long"});
    models::ModelInputs flat;
    flat.pixel_values = torch::zeros({2, 3, 16});
    expect_error(model, flat, {"(B,C,H,W)", "[2, 3, 16]"});
  }
}

}  // namespace
}  // namespace adapters::test
