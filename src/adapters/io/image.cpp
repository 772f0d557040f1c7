// Image decoding (stb_image, PNG and JPEG) and HF's ViT/BEiT image processors. The resize follows
// Pillow's libImaging (Resample.c for the filters, Geometry.c's ImagingScaleAffine for nearest)
// operation for operation, so pixel_values equal transformers' bit for bit on the same pixels.
#include "adapters/io/image.h"

#include "adapters/core/error.h"
#include "adapters/io/tensors.h"

#include <stb_image.h>

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <iterator>
#include <memory>

namespace adapters::io {
namespace {

// ---- decoding ---------------------------------------------------------------------------------

std::string read_image_bytes(const fs::path& file) {
  std::error_code error;
  const fs::file_status status = fs::status(file, error);
  ADAPTERS_CHECK(fs::exists(status), "cannot read image ", file, ": no such file");
  ADAPTERS_CHECK(fs::is_regular_file(status), "cannot read image ", file, ": expected a regular file, found ",
                 fs::is_directory(status) ? "a folder" : "another kind of file");
  const std::uintmax_t size = fs::file_size(file, error);
  ADAPTERS_CHECK(!error, "cannot read image ", file, ": ", error.message());
  ADAPTERS_CHECK(size <= kMaxImageFileBytes, "cannot read image ", file, ": expected at most ", kMaxImageFileBytes,
                 " bytes, found ", size);
  std::ifstream in(file, std::ios::binary);
  ADAPTERS_CHECK(in.is_open(), "cannot read image ", file, ": opening it failed");
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  ADAPTERS_CHECK(bytes.size() == size, "cannot read image ", file, ": read ", bytes.size(), " of ", size, " bytes");
  return bytes;
}

bool is_png(const std::string& b) { return b.size() >= 8 && b.compare(0, 8, "\x89PNG\r\n\x1a\n") == 0; }
bool is_jpeg(const std::string& b) { return b.size() >= 3 && b.compare(0, 3, "\xff\xd8\xff") == 0; }

std::string stb_reason() {
  const char* reason = stbi_failure_reason();
  return str("stb_image: ", reason ? reason : "unknown error");
}

// ---- resize (Pillow) --------------------------------------------------------------------------

constexpr int kPrecisionBits = 32 - 8 - 2;  // Pillow's PRECISION_BITS

double filter_support(Resample r) { return r == Resample::Bicubic ? 2.0 : 1.0; }

// Pillow's bilinear_filter and bicubic_filter (a = -0.5), written as in Resample.c.
double filter(Resample r, double x) {
  if (x < 0.0) x = -x;
  if (r == Resample::Bilinear) return x < 1.0 ? 1.0 - x : 0.0;
  constexpr double a = -0.5;
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
  if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
  return 0.0;
}

// The taps of one axis: output position i reads inputs first[i] .. first[i]+count[i]-1 with the
// fixed-point weights weights[i*ksize ...] (precompute_coeffs + normalize_coeffs_8bpc).
struct Taps {
  int ksize = 0;
  std::vector<int> first, count;
  std::vector<std::int32_t> weights;
};

Taps compute_taps(int in_size, int out_size, Resample r) {
  const double scale = static_cast<double>(static_cast<float>(in_size)) / out_size;
  const double filterscale = std::max(scale, 1.0);
  const double support = filter_support(r) * filterscale;
  Taps t;
  t.ksize = static_cast<int>(std::ceil(support)) * 2 + 1;
  t.first.resize(out_size);
  t.count.resize(out_size);
  t.weights.assign(static_cast<std::size_t>(out_size) * t.ksize, 0);
  std::vector<double> w(t.ksize);
  for (int xx = 0; xx < out_size; ++xx) {
    const double center = (xx + 0.5) * scale;
    const double ss = 1.0 / filterscale;
    const int xmin = std::max(static_cast<int>(center - support + 0.5), 0);
    const int n = std::min(static_cast<int>(center + support + 0.5), in_size) - xmin;
    double ww = 0.0;
    for (int x = 0; x < n; ++x) ww += (w[x] = filter(r, (x + xmin - center + 0.5) * ss));
    for (int x = 0; x < n; ++x) {
      const double k = ww != 0.0 ? w[x] / ww : w[x];
      t.weights[static_cast<std::size_t>(xx) * t.ksize + x] =
          static_cast<std::int32_t>(k < 0 ? -0.5 + k * (1 << kPrecisionBits) : 0.5 + k * (1 << kPrecisionBits));
    }
    t.first[xx] = xmin;
    t.count[xx] = n;
  }
  return t;
}

std::uint8_t clip8(std::int32_t sum) { return static_cast<std::uint8_t>(std::clamp(sum >> kPrecisionBits, 0, 255)); }

// One separable pass along the width (horizontal) or the height of `in`.
Image resample_axis(const Image& in, int out_size, Resample r, bool horizontal) {
  const int in_size = static_cast<int>(horizontal ? in.width : in.height);
  const Taps t = compute_taps(in_size, out_size, r);
  Image out{horizontal ? in.height : out_size, horizontal ? out_size : in.width, in.channels, {}};
  out.pixels.resize(static_cast<std::size_t>(out.height * out.width * out.channels));
  std::size_t o = 0;
  for (std::int64_t y = 0; y < out.height; ++y) {
    for (std::int64_t x = 0; x < out.width; ++x) {
      const int i = static_cast<int>(horizontal ? x : y);
      const std::int32_t* k = &t.weights[static_cast<std::size_t>(i) * t.ksize];
      for (std::int64_t c = 0; c < in.channels; ++c) {
        std::int32_t sum = 1 << (kPrecisionBits - 1);
        for (int j = 0; j < t.count[i]; ++j)
          sum += (horizontal ? in.at(y, t.first[i] + j, c) : in.at(t.first[i] + j, x, c)) * k[j];
        out.pixels[o++] = clip8(sum);
      }
    }
  }
  return out;
}

// Input positions of the outputs along one axis, as ImagingScaleAffine steps them (-1: none).
std::vector<int> nearest_positions(int in_size, int out_size) {
  const double step = static_cast<double>(static_cast<float>(in_size)) / out_size;
  std::vector<int> at(out_size);
  double pos = step * 0.5;
  for (int& v : at) {
    const int p = pos < 0.0 ? -1 : static_cast<int>(pos);
    v = p >= 0 && p < in_size ? p : -1;
    pos += step;
  }
  return at;
}

Image resize_nearest(const Image& in, int height, int width) {
  const std::vector<int> ys = nearest_positions(static_cast<int>(in.height), height);
  const std::vector<int> xs = nearest_positions(static_cast<int>(in.width), width);
  Image out{height, width, in.channels, std::vector<std::uint8_t>(static_cast<std::size_t>(height) * width * in.channels)};
  std::size_t o = 0;
  for (int y = 0; y < height; ++y)
    for (int x = 0; x < width; ++x)
      for (std::int64_t c = 0; c < in.channels; ++c, ++o)
        if (ys[y] >= 0 && xs[x] >= 0) out.pixels[o] = in.at(ys[y], xs[x], c);
  return out;
}

// ---- preprocessor_config.json -----------------------------------------------------------------

// "size" / "crop_size": N, [height, width] or {"height", "width"} (get_size_dict, default_to_square).
std::pair<std::int64_t, std::int64_t> read_size(const JsonReader& r, const std::string& key) {
  const json& v = r.raw(key);
  std::int64_t h = 0, w = 0;
  if (v.is_number_integer()) {
    h = w = v.get<std::int64_t>();
  } else if (v.is_array() && v.size() == 2 && v[0].is_number_integer() && v[1].is_number_integer()) {
    h = v[0].get<std::int64_t>();
    w = v[1].get<std::int64_t>();
  } else if (v.is_object() && (v.contains("shortest_edge") || v.contains("longest_edge")) &&
             !(v.contains("height") && v.contains("width"))) {
    throw NotSupported(str(r.source(), ": key '", key, "' is ", describe(v),
                           ": ViT and BEiT image processors resize to {\"height\", \"width\"} only (transformers "
                           "raises on shortest_edge too)"));
  } else if (v.is_object()) {
    const JsonReader s(v, str(r.source(), ": ", key));
    h = s.get_int("height");
    w = s.get_int("width");
  } else {
    r.fail(key, "an integer, [height, width] or {\"height\": H, \"width\": W}");
  }
  ADAPTERS_CHECK(h > 0 && w > 0 && h <= kMaxImageSide && w <= kMaxImageSide, r.source(), ": key '", key,
                 "' expects sizes in 1..", kMaxImageSide, ", found ", describe(v));
  return {h, w};
}

Resample read_resample(const JsonReader& r) {
  const std::int64_t code = r.get_int("resample");
  if (code == 0 || code == 2 || code == 3) return static_cast<Resample>(code);
  const bool pil = code >= 0 && code <= 5;
  const std::string found = str(r.source(), ": key 'resample' expects 0 (NEAREST), 2 (BILINEAR) or 3 (BICUBIC), found ",
                                code, pil ? " (a PIL filter this build does not implement)" : "");
  if (pil) throw NotSupported(found);
  throw Error(found);
}

// "image_mean" / "image_std": one number for every channel, or one per channel.
std::vector<double> read_channel_values(const JsonReader& r, const std::string& key, std::int64_t channels,
                                        std::vector<double> fallback) {
  if (!r.has(key)) return fallback;
  const json& v = r.raw(key);
  if (v.is_number()) return std::vector<double>(static_cast<std::size_t>(channels), v.get<double>());
  const bool numbers = v.is_array() && std::all_of(v.begin(), v.end(), [](const json& e) { return e.is_number(); });
  if (!numbers) r.fail(key, "a number or a list of numbers");
  ADAPTERS_CHECK(static_cast<std::int64_t>(v.size()) == channels, r.source(), ": key '", key, "' expects ", channels,
                 " values (one per channel of the model), found ", describe(v));
  return v.get<std::vector<double>>();
}

// The processor class: "vit" or "beit".
std::string processor_family(const JsonReader& r, const std::string& model_type) {
  for (const char* key : {"image_processor_type", "feature_extractor_type"}) {
    if (!r.has(key)) continue;
    const std::string type = r.get_string(key);
    if (type == "ViTImageProcessor" || type == "ViTFeatureExtractor") return "vit";
    if (type == "BeitImageProcessor" || type == "BeitFeatureExtractor") return "beit";
    throw NotSupported(str(r.source(), ": key '", key, "' expects ViTImageProcessor or BeitImageProcessor (or their ",
                           "FeatureExtractor names), found \"", type, "\""));
  }
  ADAPTERS_CHECK(model_type == "vit" || model_type == "beit", r.source(),
                 ": no image_processor_type and the model type '", model_type,
                 "' has no image processor here (expected vit or beit)");
  return model_type;
}

void check_channels(std::int64_t channels, const std::string& source) {
  ADAPTERS_CHECK(channels >= 1 && channels <= 4, source, ": key 'num_channels' expects 1..4, found ", channels);
}

}  // namespace

// ---- public -----------------------------------------------------------------------------------

Image decode_image(const fs::path& file) {
  const std::string bytes = read_image_bytes(file);
  ADAPTERS_CHECK(is_png(bytes) || is_jpeg(bytes), "cannot decode image ", file,
                 ": expected a PNG or JPEG file, found neither signature");
  const auto* data = reinterpret_cast<const stbi_uc*>(bytes.data());
  const int length = static_cast<int>(bytes.size());
  int w = 0, h = 0, channels = 0;
  ADAPTERS_CHECK(stbi_info_from_memory(data, length, &w, &h, &channels) == 1, "cannot decode image ", file, ": ",
                 stb_reason());
  ADAPTERS_CHECK(w > 0 && h > 0 && w <= kMaxImageSide && h <= kMaxImageSide &&
                     std::int64_t{w} * h <= kMaxImagePixels,
                 "cannot decode image ", file, ": expected at most ", kMaxImageSide, " pixels per side and ",
                 kMaxImagePixels, " in all, found ", w, "x", h);
  std::unique_ptr<stbi_uc, void (*)(void*)> pixels(stbi_load_from_memory(data, length, &w, &h, &channels, 0),
                                                   stbi_image_free);
  ADAPTERS_CHECK(pixels != nullptr, "cannot decode image ", file, ": ", stb_reason());
  Image image{h, w, channels, {}};
  image.pixels.assign(pixels.get(), pixels.get() + std::size_t{1} * h * w * channels);
  return image;
}

Image resize(const Image& image, std::int64_t height, std::int64_t width, Resample resample) {
  ADAPTERS_CHECK(height > 0 && width > 0, "resize: expected a positive size, found ", height, "x", width);
  if (height == image.height && width == image.width) return image;
  if (resample == Resample::Nearest) return resize_nearest(image, static_cast<int>(height), static_cast<int>(width));
  if (image.channels != 1 && image.channels != 3)
    throw NotSupported(str("resize: ", image.channels, "-channel images (with alpha) are resized premultiplied by ",
                           "PIL; only 1 or 3 channels are supported (or resample 0, nearest)"));
  Image out = image;
  if (width != image.width) out = resample_axis(out, static_cast<int>(width), resample, /*horizontal=*/true);
  if (height != image.height) out = resample_axis(out, static_cast<int>(height), resample, /*horizontal=*/false);
  return out;
}

Image center_crop(const Image& image, std::int64_t height, std::int64_t width) {
  // Per axis: where the window starts in the image, or where the image starts in the window.
  const std::int64_t src_y = std::max<std::int64_t>((image.height - height) / 2, 0);
  const std::int64_t src_x = std::max<std::int64_t>((image.width - width) / 2, 0);
  const std::int64_t dst_y = std::max<std::int64_t>((height - image.height) / 2, 0);
  const std::int64_t dst_x = std::max<std::int64_t>((width - image.width) / 2, 0);
  Image out{height, width, image.channels,
            std::vector<std::uint8_t>(static_cast<std::size_t>(height * width * image.channels), 0)};
  const std::int64_t rows = std::min(height - dst_y, image.height - src_y);
  const std::int64_t cols = std::min(width - dst_x, image.width - src_x);
  for (std::int64_t y = 0; y < rows; ++y) {
    const std::uint8_t* from = &image.pixels[static_cast<std::size_t>(((src_y + y) * image.width + src_x) * image.channels)];
    std::copy(from, from + cols * image.channels,
              &out.pixels[static_cast<std::size_t>(((dst_y + y) * width + dst_x) * image.channels)]);
  }
  return out;
}

ImageProcessor ImageProcessor::defaults(const std::string& family, std::int64_t num_channels) {
  ADAPTERS_CHECK(family == "vit" || family == "beit", "image processor: expected vit or beit, found '", family, "'");
  check_channels(num_channels, "image processor");
  ImageProcessor p;
  p.num_channels = num_channels;
  p.image_mean.assign(static_cast<std::size_t>(num_channels), 0.5);
  p.image_std.assign(static_cast<std::size_t>(num_channels), 0.5);
  if (family == "beit") {
    p.height = p.width = 256;
    p.resample = Resample::Bicubic;
    p.do_center_crop = true;
  }
  return p;
}

ImageProcessor ImageProcessor::from_json(const json& config, const std::string& source, const std::string& model_type,
                                         std::int64_t num_channels) {
  const JsonReader r(config, source);
  const std::string family = processor_family(r, model_type);
  ImageProcessor p = defaults(family, num_channels);
  p.do_resize = r.get_bool("do_resize", p.do_resize);
  if (r.has("size")) std::tie(p.height, p.width) = read_size(r, "size");
  if (r.has("resample")) p.resample = read_resample(r);
  if (family == "beit") {  // ViTImageProcessor has no centre crop (and ignores these keys)
    p.do_center_crop = r.get_bool("do_center_crop", p.do_center_crop);
    if (r.has("crop_size")) std::tie(p.crop_height, p.crop_width) = read_size(r, "crop_size");
  }
  p.do_rescale = r.get_bool("do_rescale", p.do_rescale);
  p.rescale_factor = r.get_double("rescale_factor", p.rescale_factor);
  p.do_normalize = r.get_bool("do_normalize", p.do_normalize);
  p.image_mean = read_channel_values(r, "image_mean", num_channels, p.image_mean);
  p.image_std = read_channel_values(r, "image_std", num_channels, p.image_std);
  return p;
}

ImageProcessor ImageProcessor::load(const fs::path& model_dir, const json& model_config) {
  const JsonReader model(model_config, (model_dir / "config.json").string());
  const std::string model_type = model.get_string("model_type", "");
  const std::int64_t channels = model.get_int("num_channels", 3);
  check_channels(channels, model.source());
  const fs::path file = model_dir / "preprocessor_config.json";
  if (!fs::exists(file)) {
    ADAPTERS_CHECK(model_type == "vit" || model_type == "beit", file,
                   ": missing, and the model type '", model_type, "' has no default image processor (expected vit or beit)");
    return defaults(model_type, channels);
  }
  return from_json(parse_json_file_text(read_text_file(file), file.string()), file.string(), model_type, channels);
}

torch::Tensor ImageProcessor::operator()(const Image& image, const std::string& source) const {
  ADAPTERS_CHECK(image.channels == num_channels, source, ": the image has ", image.channels, " channel",
                 image.channels == 1 ? "" : "s", ", the model expects ", num_channels,
                 " (config.json num_channels); convert the image first (neither HF nor this library converts it)");
  Image im = do_resize ? resize(image, height, width, resample) : image;
  if (do_center_crop) im = center_crop(im, crop_height, crop_width);
  torch::Tensor out = torch::empty({im.channels, im.height, im.width}, torch::kFloat);
  float* o = out.data_ptr<float>();
  const std::int64_t plane = im.height * im.width;
  for (std::int64_t i = 0; i < plane; ++i) {
    for (std::int64_t c = 0; c < im.channels; ++c) {
      const std::uint8_t v = im.pixels[static_cast<std::size_t>(i * im.channels + c)];
      float x = do_rescale ? static_cast<float>(v * rescale_factor) : static_cast<float>(v);  // float64, then float32
      if (do_normalize) {
        x = (x - static_cast<float>(image_mean[c])) / static_cast<float>(image_std[c]);  // float32
      }
      o[c * plane + i] = x;
    }
  }
  return out;
}

torch::Tensor ImageProcessor::pixel_values(const std::vector<fs::path>& files) const {
  ADAPTERS_CHECK(!files.empty(), "pixel_values: expected at least one image file, found none");
  std::vector<torch::Tensor> images;
  for (const fs::path& file : files) {
    images.push_back((*this)(decode_image(file), file.string()));
    ADAPTERS_CHECK(images.back().sizes() == images.front().sizes(), file, ": processed to ", images.back().sizes(),
                   " but ", files.front(), " to ", images.front().sizes(),
                   " (images of one batch need one size: enable do_resize in preprocessor_config.json)");
  }
  return torch::stack(images);
}

}  // namespace adapters::io
