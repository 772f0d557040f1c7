// Tests of image input: decoding (stb_image) against PIL's pixels, the ViT/BEiT image processors
// against transformers' pixel_values (tests/data/images, written by make_goldens.py with Pillow),
// and the errors for wrong channel counts, undecodable, missing or oversized files and bad
// preprocessor_config.json keys.
#include "adapters/io/image.h"

#include "adapters/core/error.h"
#include "adapters/io/tensors.h"
#include "test_util.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <fstream>
#include <string>

namespace {

namespace fs = std::filesystem;
namespace io = adapters::io;
using adapters::json;
using adapters::test::error_of;
using adapters::test::TempDir;

const fs::path kImages = fs::path(ADAPTERS_TEST_DATA) / "images";

const io::TensorMap& goldens() {
  static const io::TensorMap tensors = io::read_safetensors(kImages / "expected.safetensors").tensors;
  return tensors;
}

json read_json(const fs::path& path) { return json::parse(io::read_text_file(path)); }

io::ImageProcessor processor(const std::string& config, std::int64_t channels = 3) {
  const fs::path file = kImages / "configs" / (config + ".json");
  return io::ImageProcessor::from_json(read_json(file), file.string(), "vit", channels);
}

// PIL's decoded pixels of an image (H,W,C uint8), as make_goldens.py read them.
io::Image pil_pixels(const std::string& image) {
  const torch::Tensor t = goldens().at(image + "/decoded").contiguous();
  io::Image out{t.size(0), t.size(1), t.size(2), {}};
  out.pixels.assign(t.data_ptr<std::uint8_t>(), t.data_ptr<std::uint8_t>() + t.numel());
  return out;
}

torch::Tensor as_tensor(const io::Image& image) {
  return torch::tensor(std::vector<std::int64_t>(image.pixels.begin(), image.pixels.end()))
      .view({image.height, image.width, image.channels});
}

void write_bytes(const fs::path& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

std::string read_bytes(const fs::path& path) { return io::read_text_file(path); }

TEST(Image, PngDecodesToPilPixelsExactly) {
  for (const char* name : {"gradient.png", "gray.png", "rgba.png"}) {
    const io::Image image = io::decode_image(kImages / name);
    const io::Image pil = pil_pixels(name);
    ASSERT_EQ(image.channels, pil.channels) << name;
    EXPECT_TRUE(torch::equal(as_tensor(image), as_tensor(pil))) << name;
  }
}

TEST(Image, JpegDecodesCloseToPil) {
  // stb_image and libjpeg(-turbo) round their IDCT and chroma upsampling differently.
  const io::Image image = io::decode_image(kImages / "photo.jpg");
  const io::Image pil = pil_pixels("photo.jpg");
  ASSERT_EQ(image.channels, 3);
  const double diff = (as_tensor(image) - as_tensor(pil)).abs().max().item<double>();
  EXPECT_LE(diff, 3) << "stb vs PIL decode";
}

TEST(Image, ProcessorsMatchTransformers) {
  int checked = 0;
  for (const auto& [key, expected] : goldens()) {
    const std::string image = key.substr(0, key.find('/'));
    const std::string config = key.substr(key.find('/') + 1);
    if (config == "decoded") continue;
    const io::Image pixels = pil_pixels(image);
    const torch::Tensor got = processor(config, pixels.channels)(pixels, image);
    ASSERT_EQ(got.sizes(), expected.sizes()) << key;
    EXPECT_LE((got - expected).abs().max().item<double>(), 1e-6) << key;
    ++checked;
  }
  EXPECT_EQ(checked, 8);
}

TEST(Image, PixelValuesBatchFromFiles) {
  const torch::Tensor batch =
      processor("vit_bilinear").pixel_values({kImages / "gradient.png", kImages / "gradient.png"});
  ASSERT_EQ(batch.sizes(), (std::vector<std::int64_t>{2, 3, 32, 16}));
  EXPECT_LE((batch[1] - goldens().at("gradient.png/vit_bilinear")).abs().max().item<double>(), 1e-6);
  // A JPEG through stb: within a few levels of PIL's (normalized by std 0.5: 2/255 per level).
  const torch::Tensor photo = processor("beit_bicubic_crop").pixel_values({kImages / "photo.jpg"});
  EXPECT_LE((photo[0] - goldens().at("photo.jpg/beit_bicubic_crop")).abs().max().item<double>(), 3 * 2.0 / 255 + 1e-6);
  // Without a resize, images of different sizes cannot share a batch.
  const std::string e =
      error_of([] { processor("plain").pixel_values({kImages / "gradient.png", kImages / "photo.jpg"}); });
  EXPECT_NE(e.find("photo.jpg"), std::string::npos) << e;
  EXPECT_NE(e.find("do_resize"), std::string::npos) << e;
}

TEST(Image, WrongChannelCountIsAnError) {
  const io::ImageProcessor rgb = processor("vit_bilinear");
  for (const auto& [name, found] : {std::pair<std::string, std::string>{"gray.png", "1 channel,"}, {"rgba.png", "4 channels"}}) {
    const std::string e = error_of([&] { rgb.pixel_values({kImages / name}); });
    EXPECT_NE(e.find(name), std::string::npos) << e;
    EXPECT_NE(e.find(found), std::string::npos) << e;
    EXPECT_NE(e.find("expects 3"), std::string::npos) << e;
  }
  const std::string e = error_of([] { processor("gray_bilinear", 1).pixel_values({kImages / "gradient.png"}); });
  EXPECT_NE(e.find("3 channels, the model expects 1"), std::string::npos) << e;
}

TEST(Image, UndecodableFilesAreErrors) {
  TempDir dir;
  const std::string png = read_bytes(kImages / "gradient.png");
  write_bytes(dir / "truncated.png", png.substr(0, png.size() / 2));
  write_bytes(dir / "garbage.png", png.substr(0, 8) + std::string(200, '\x42'));
  write_bytes(dir / "text.png", "not an image at all\n");
  write_bytes(dir / "empty.jpg", "");
  for (const char* name : {"truncated.png", "garbage.png", "text.png", "empty.jpg"}) {
    const std::string e = error_of([&] { io::decode_image(dir / name); });
    EXPECT_NE(e.find(name), std::string::npos) << e;
    EXPECT_NE(e.find("cannot decode image"), std::string::npos) << e;
  }
  EXPECT_NE(error_of([&] { io::decode_image(dir / "text.png"); }).find("expected a PNG or JPEG"), std::string::npos);
  for (const char* name : {"truncated.png", "garbage.png"}) {  // stb's reason follows the file name
    const std::string e = error_of([&] { io::decode_image(dir / name); });
    EXPECT_GT(e.size(), e.find(name) + std::string(name).size() + 3) << e;
  }
}

TEST(Image, MissingFolderOversizedAndHugeImagesAreRefused) {
  TempDir dir;
  std::string e = error_of([&] { io::decode_image(dir / "absent.png"); });
  EXPECT_NE(e.find("absent.png"), std::string::npos) << e;
  EXPECT_NE(e.find("no such file"), std::string::npos) << e;
  e = error_of([&] { io::decode_image(dir.path()); });
  EXPECT_NE(e.find("expected a regular file, found a folder"), std::string::npos) << e;
  // A sparse file over the size cap is refused before it is read.
  write_bytes(dir / "big.png", "");
  fs::resize_file(dir / "big.png", io::kMaxImageFileBytes + 1);
  e = error_of([&] { io::decode_image(dir / "big.png"); });
  EXPECT_NE(e.find("big.png"), std::string::npos) << e;
  EXPECT_NE(e.find("bytes, found " + std::to_string(io::kMaxImageFileBytes + 1)), std::string::npos) << e;
  // A PNG header announcing 20000x10 pixels: refused from the header, before decoding.
  std::string huge = read_bytes(kImages / "gradient.png").substr(0, 33);
  const std::string width("\x00\x00\x4e\x20", 4), height("\x00\x00\x00\x0a", 4);
  huge.replace(16, 4, width).replace(20, 4, height);
  write_bytes(dir / "huge.png", huge);
  e = error_of([&] { io::decode_image(dir / "huge.png"); });
  EXPECT_NE(e.find("huge.png"), std::string::npos) << e;
  EXPECT_NE(e.find("found 20000x10"), std::string::npos) << e;
}

TEST(Image, BadPreprocessorConfigKeysAreErrors) {
  const auto error = [](const json& config) {
    return error_of([&] { io::ImageProcessor::from_json(config, "pp.json", "vit"); });
  };
  const auto expect = [&](const json& config, const std::string& key, const std::string& part) {
    const std::string e = error(config);
    EXPECT_NE(e.find("pp.json"), std::string::npos) << e;
    EXPECT_NE(e.find("'" + key + "'"), std::string::npos) << e;
    EXPECT_NE(e.find(part), std::string::npos) << e;
  };
  expect({{"resample", 7}}, "resample", "found 7");
  expect({{"resample", 1}}, "resample", "does not implement");
  expect({{"resample", "bilinear"}}, "resample", "an integer");
  expect({{"size", {{"shortest_edge", 224}}}}, "size", "height");
  expect({{"size", {{"height", 16}}}}, "width", "missing key");
  expect({{"size", 0}}, "size", "found 0");
  expect({{"size", "big"}}, "size", "[height, width]");
  expect({{"do_resize", "yes"}}, "do_resize", "a boolean");
  expect({{"rescale_factor", "1/255"}}, "rescale_factor", "a number");
  expect({{"image_mean", {0.5, 0.5}}}, "image_mean", "expects 3 values");
  expect({{"image_std", {0.5, "x", 0.5}}}, "image_std", "list of numbers");
  expect({{"image_processor_type", "CLIPImageProcessor"}}, "image_processor_type", "CLIPImageProcessor");
  EXPECT_NE(error_of([] { io::ImageProcessor::from_json(json::object(), "pp.json", "bert"); }).find("'bert'"), std::string::npos);
  // ViTImageProcessor has no centre crop: these keys are ignored, as transformers ignores them.
  const io::ImageProcessor vit = io::ImageProcessor::from_json({{"do_center_crop", true}}, "pp.json", "vit");
  EXPECT_FALSE(vit.do_center_crop);
}

TEST(Image, ModelFolderWithoutPreprocessorConfigUsesDefaults) {
  TempDir dir;
  const io::ImageProcessor vit = io::ImageProcessor::load(dir.path(), {{"model_type", "vit"}});
  EXPECT_EQ(vit.height, 224);
  EXPECT_EQ(vit.resample, io::Resample::Bilinear);
  EXPECT_FALSE(vit.do_center_crop);
  const io::ImageProcessor beit = io::ImageProcessor::load(dir.path(), {{"model_type", "beit"}, {"num_channels", 1}});
  EXPECT_EQ(beit.height, 256);
  EXPECT_EQ(beit.resample, io::Resample::Bicubic);
  EXPECT_TRUE(beit.do_center_crop);
  EXPECT_EQ(beit.crop_height, 224);
  EXPECT_EQ(beit.image_mean.size(), 1u);
  EXPECT_NE(error_of([&] { io::ImageProcessor::load(dir.path(), {{"model_type", "bert"}}); }).find("preprocessor_config.json"),
            std::string::npos);
  fs::copy_file(kImages / "configs" / "beit_pad.json", dir / "preprocessor_config.json");
  const io::ImageProcessor pad = io::ImageProcessor::load(dir.path(), {{"model_type", "vit"}});
  EXPECT_TRUE(pad.do_center_crop);  // the file's image_processor_type decides
  EXPECT_EQ(pad.height, 12);
  EXPECT_EQ(pad.width, 52);
  write_bytes(dir / "preprocessor_config.json", "{\"resample\": 9}");
  const std::string e = error_of([&] { io::ImageProcessor::load(dir.path(), {{"model_type", "vit"}}); });
  EXPECT_NE(e.find((dir / "preprocessor_config.json").string()), std::string::npos) << e;
  EXPECT_NE(e.find("'resample'"), std::string::npos) << e;
}

TEST(Image, ResizeEdgeCases) {
  const io::Image pil = pil_pixels("gradient.png");
  // Same size: unchanged; one axis only; a 1-pixel-wide target.
  EXPECT_EQ(io::resize(pil, pil.height, pil.width, io::Resample::Bicubic).pixels, pil.pixels);
  const io::Image wide = io::resize(pil, pil.height, 3, io::Resample::Bilinear);
  EXPECT_EQ(wide.height, pil.height);
  EXPECT_EQ(wide.width, 3);
  EXPECT_EQ(io::resize(pil, 1, 1, io::Resample::Bicubic).pixels.size(), 3u);
  // Centre crop larger than the image on both axes: the image sits centred in zeros.
  const io::Image crop = io::center_crop(pil, pil.height + 4, pil.width + 2);
  EXPECT_EQ(crop.at(0, 0, 0), 0);
  EXPECT_EQ(crop.at(2, 1, 1), pil.at(0, 0, 1));
  EXPECT_EQ(crop.at(pil.height + 1, pil.width, 2), pil.at(pil.height - 1, pil.width - 1, 2));
  const io::Image rgba = pil_pixels("rgba.png");
  EXPECT_THROW(io::resize(rgba, 8, 8, io::Resample::Bilinear), adapters::NotSupported);
  EXPECT_EQ(io::resize(rgba, 8, 8, io::Resample::Nearest).channels, 4);
}

}  // namespace
