// The same model on CUDA (when this machine has one) computes what it computes on the CPU, in
// float32 and within bf16 precision; skipped where no GPU is present.
#include <gtest/gtest.h>

#include "test_util.h"

namespace adapters::test {
namespace {

TEST(DeviceTest, CudaMatchesCpu) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  for (const char* spec : {"seq_bn", "double_seq_bn", "par_bn"}) {
    SCOPED_TRACE(spec);
    AdapterModel model = load_pretrained(model_dir("bert"));
    model->add_adapter("a", spec, false, true);
    randomize_adapter(model, "a");
    const torch::Tensor cpu = hidden(model, tiny_inputs());
    model->to(torch::kCUDA);
    const torch::Tensor gpu = hidden(model, tiny_inputs());
    EXPECT_TRUE(gpu.is_cuda());
    EXPECT_LT((gpu.cpu() - cpu).abs().max().item<double>(), 1e-4);
    model->to(torch::kBFloat16);
    const torch::Tensor half = hidden(model, tiny_inputs());
    EXPECT_EQ(half.scalar_type(), torch::kBFloat16);
    EXPECT_LT((half.cpu().to(torch::kFloat32) - cpu).abs().max().item<double>(), 0.1);
  }
}

TEST(DeviceTest, AdapterAddedToACudaModelLivesOnCuda) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  AdapterModel model = load_pretrained(model_dir("bert"));
  model->to(torch::kCUDA);
  model->add_adapter("a", "seq_bn", false, true);
  for (const auto& [key, t] : model->adapter_state_dict("a")) EXPECT_TRUE(t.is_cuda()) << key;
  EXPECT_TRUE(hidden(model, tiny_inputs()).is_cuda());
}

TEST(DeviceTest, Bfloat16OnCpu) {
  AdapterModel model = load_pretrained(model_dir("bert"));
  model->add_adapter("a", "seq_bn", false, true);
  randomize_adapter(model, "a");
  const torch::Tensor full = hidden(model, tiny_inputs());
  model->to(torch::kBFloat16);
  const torch::Tensor half = hidden(model, tiny_inputs());
  EXPECT_EQ(half.scalar_type(), torch::kBFloat16);
  EXPECT_LT((half.to(torch::kFloat32) - full).abs().max().item<double>(), 0.1);
}

}  // namespace
}  // namespace adapters::test
