// Helpers shared by the tests: paths of the bundled data, a temporary folder, tiny inputs.
#pragma once

#include <torch/torch.h>

#include <filesystem>
#include <random>
#include <string>

#include "adapters/io/tensors.h"
#include "adapters/model.h"

namespace adapters::test {

namespace fs = std::filesystem;

inline fs::path fixtures_root() { return fs::path(ADAPTERS_FIXTURES) / "adapterhub"; }
// The tiny model of an architecture: the reference fixtures' (HF layout), or for architectures the
// fixtures lack, one of ours in tests/data/models (see its README).
inline fs::path model_dir(const std::string& arch) {
  const fs::path fixture = fixtures_root() / "models" / arch;
  const fs::path peft_fixture = fs::path(ADAPTERS_FIXTURES) / "peft" / "models" / arch;  // the Llama family
  if (!fs::exists(fixture) && fs::exists(peft_fixture)) return peft_fixture;
#ifdef ADAPTERS_TEST_DATA
  if (!fs::exists(fixture)) return fs::path(ADAPTERS_TEST_DATA) / "models" / arch;
#endif
  return fixture;
}

// A fresh folder under the system temp dir, removed when the object dies.
class TempDir {
 public:
  TempDir() {
    std::random_device rd;
    path_ = fs::temp_directory_path() / ("adapters-test-" + std::to_string(rd()) + std::to_string(rd()));
    fs::create_directories(path_);
  }
  ~TempDir() { io::remove_tree(path_); }
  const fs::path& path() const { return path_; }
  fs::path operator/(const std::string& name) const { return path_ / name; }

 private:
  fs::path path_;
};

// (2,8) token ids with padding in the second row.
inline models::ModelInputs tiny_inputs(std::int64_t vocab_size = 99) {
  torch::Tensor ids = torch::arange(16, torch::kLong).remainder(vocab_size - 2).add(2).view({2, 8});
  torch::Tensor mask = torch::ones({2, 8}, torch::kLong);
  mask[1].narrow(0, 5, 3).zero_();
  return {ids, mask, torch::Tensor()};
}

// (2,3,16,16) pixel values for the tiny vision models (image_size 16).
inline models::ModelInputs tiny_pixels() {
  models::ModelInputs in;
  in.pixel_values = torch::linspace(-1.0, 1.0, 2 * 3 * 16 * 16).view({2, 3, 16, 16}).sin();
  return in;
}

// Tiny inputs of the kind an architecture reads (pixels for vision models, tokens otherwise).
inline models::ModelInputs inputs_for(const std::string& arch) {
  return arch == "vit" || arch == "beit" ? tiny_pixels() : tiny_inputs();
}

// Fills every parameter of an adapter with random values (so it visibly changes outputs).
inline void randomize_adapter(AdapterModel& model, const std::string& name, double std = 0.3) {
  torch::NoGradGuard no_grad;
  for (auto& [key, t] : model->adapter_state_dict(name)) t.normal_(0.0, std);
}

inline torch::Tensor hidden(AdapterModel& model, const models::ModelInputs& in) {
  torch::NoGradGuard no_grad;
  return model->forward(in).last_hidden_state;
}

// Runs `f` and returns the message of the adapters::Error it throws ("" if none).
template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace adapters::test
