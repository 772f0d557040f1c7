// Image input of the vision models: PNG/JPEG decoding (stb_image) and HF's image processors
// (ViTImageProcessor / BeitImageProcessor of transformers 4.26, read from preprocessor_config.json):
// Pillow-exact resize, centre crop, rescale and normalize, giving pixel_values (B,C,H,W) float32.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "adapters/core/json.h"

namespace adapters::io {

namespace fs = std::filesystem;

// An 8-bit image: `height` rows of `width` pixels of `channels` interleaved values (H,W,C).
struct Image {
  std::int64_t height = 0, width = 0, channels = 0;
  std::vector<std::uint8_t> pixels;

  std::uint8_t at(std::int64_t y, std::int64_t x, std::int64_t c) const {
    return pixels[static_cast<std::size_t>((y * width + x) * channels + c)];
  }
};

// Limits checked before decoding: file size, pixels per side, pixels in all.
constexpr std::uintmax_t kMaxImageFileBytes = 256u << 20;
constexpr std::int64_t kMaxImageSide = 16384;
constexpr std::int64_t kMaxImagePixels = std::int64_t{1} << 28;

// Decodes a PNG or JPEG file with its own channel count (1 gray, 2 gray+alpha, 3 RGB, 4 RGBA;
// palettes are expanded, 16-bit samples reduced to 8). Throws adapters::Error naming the file when
// it is missing, not a regular file, over the limits, not PNG/JPEG, or undecodable (stb's reason).
Image decode_image(const fs::path& file);

// PIL's resampling filters (PIL.Image.Resampling codes) that the processors support.
enum class Resample { Nearest = 0, Bilinear = 2, Bicubic = 3 };

// PIL.Image.resize((width, height), resample) of an 8-bit image, bit for bit: separable passes
// (horizontal, then vertical) with a uint8 intermediate, 22-bit fixed-point weights, antialiasing
// when downscaling; nearest neighbour as PIL's affine scaling. 1 or 3 channels (PIL resizes images
// with alpha premultiplied: NotSupported unless nearest).
Image resize(const Image& image, std::int64_t height, std::int64_t width, Resample resample);

// transformers' center_crop: the centred (height, width) window, the image zero-padded (centred)
// on an axis where it is smaller than the window.
Image center_crop(const Image& image, std::int64_t height, std::int64_t width);

// A ViTImageProcessor or BeitImageProcessor (the latter adds the centre crop).
struct ImageProcessor {
  bool do_resize = true;
  std::int64_t height = 224, width = 224;
  Resample resample = Resample::Bilinear;
  bool do_center_crop = false;
  std::int64_t crop_height = 224, crop_width = 224;
  bool do_rescale = true;
  double rescale_factor = 1.0 / 255.0;
  bool do_normalize = true;
  std::vector<double> image_mean{0.5, 0.5, 0.5}, image_std{0.5, 0.5, 0.5};  // one per channel
  std::int64_t num_channels = 3;  // what the model reads (config.json "num_channels")

  // HF's constructor defaults: "vit" (ViTImageProcessor) or "beit" (BeitImageProcessor).
  static ImageProcessor defaults(const std::string& family, std::int64_t num_channels = 3);

  // From a preprocessor_config.json object (`source` names it in errors). The processor class is
  // its "image_processor_type" / "feature_extractor_type", else the model's `model_type`.
  static ImageProcessor from_json(const json& config, const std::string& source, const std::string& model_type,
                                  std::int64_t num_channels = 3);

  // The processor of a model folder: its preprocessor_config.json, or without one the defaults of
  // the model's type. `model_config` is its config.json (model_type, num_channels, default 3).
  static ImageProcessor load(const fs::path& model_dir, const json& model_config);

  // One image -> pixel values (C,H,W) float32; `source` names the image in errors (channel count).
  torch::Tensor operator()(const Image& image, const std::string& source) const;

  // Decodes and processes image files into one batch (B,C,H,W) float32.
  torch::Tensor pixel_values(const std::vector<fs::path>& files) const;
};

}  // namespace adapters::io
