// Tests of checkpoint I/O: safetensors round trips and byte-exact rewrites of files written by HF's
// safetensors, rejection of malformed files, torch.save (.bin) loading against the safetensors
// twins of real AdapterHub adapters, sharded *.index.json checkpoints, and atomic writes.
#include "adapters/io/tensors.h"

#include "adapters/core/error.h"

#include <caffe2/serialize/inline_container.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <torch/serialize.h>
#include <torch/torch.h>
#include <torch/version.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <future>
#include <initializer_list>
#include <iostream>
#include <iterator>
#include <stdexcept>
#include <string>
#include <vector>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

namespace {

namespace fs = std::filesystem;
namespace io = adapters::io;

const fs::path kData = fs::path(ADAPTERS_TEST_DATA) / "io";
const char* const kAdapterCases[] = {"bert__houlsby", "bert__var_prefix_len5_bneck16",
                                     "bert__var_pfeiffer_lnbefore_lnafter"};

std::string read_bytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

void write_bytes(const fs::path& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary)
      .write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

std::string le64(std::uint64_t value) {
  std::string bytes(8, '\0');
  for (int i = 0; i < 8; ++i) bytes[i] = static_cast<char>((value >> (8 * i)) & 0xff);
  return bytes;
}

// A safetensors file made by hand: length prefix, header text (unpadded), data.
std::string safetensors_bytes(const std::string& header, const std::string& data = "") {
  return le64(header.size()) + header + data;
}

std::string float_bytes(std::initializer_list<float> values) {
  std::string bytes;
  for (float value : values) bytes.append(reinterpret_cast<const char*>(&value), sizeof value);
  return bytes;
}

// The message of the adapters::Error that `action` throws (a test failure when it throws none).
std::string error_of(const std::function<void()>& action) {
  try {
    action();
  } catch (const adapters::Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected an adapters::Error";
  return "";
}

void expect_mentions(const std::string& message, std::initializer_list<std::string> parts) {
  for (const auto& part : parts)
    EXPECT_NE(message.find(part), std::string::npos)
        << "\"" << part << "\" missing from: " << message;
}

// torch::equal lacks kernels for 8-bit floats; compare those as float32.
torch::Tensor comparable(const torch::Tensor& tensor) {
  const bool float8 = tensor.is_floating_point() && tensor.element_size() == 1;
  return float8 ? tensor.to(torch::kFloat32) : tensor;
}

void expect_same_tensors(const io::TensorMap& actual, const io::TensorMap& expected) {
  ASSERT_EQ(actual.size(), expected.size());
  for (const auto& [name, tensor] : expected) {
    auto found = actual.find(name);
    ASSERT_NE(found, actual.end()) << name;
    EXPECT_EQ(found->second.scalar_type(), tensor.scalar_type()) << name;
    EXPECT_EQ(found->second.sizes(), tensor.sizes()) << name;
    EXPECT_TRUE(torch::equal(comparable(found->second), comparable(tensor))) << name;
  }
}

std::uint64_t header_length(const std::string& file_bytes) {
  std::uint64_t length = 0;
  for (int i = 7; i >= 0; --i) length = (length << 8) | static_cast<unsigned char>(file_bytes[i]);
  return length;
}

nlohmann::ordered_json header_of(const fs::path& path) {
  const std::string bytes = read_bytes(path);
  return nlohmann::ordered_json::parse(bytes.substr(8, header_length(bytes)));
}

// A fresh folder per test, removed afterwards.
class IoTest : public ::testing::Test {
 protected:
  void SetUp() override {
    static std::atomic<int> counter{0};
    dir = fs::temp_directory_path() /
          ("adapters_io_test." + std::to_string(::getpid()) + "." + std::to_string(counter++));
    fs::create_directories(dir);
  }
  void TearDown() override { io::remove_tree(dir); }

  // The malformed file's read error, checked to name the file.
  std::string read_error(const std::string& bytes, const std::string& name = "bad.safetensors") {
    const fs::path path = dir / name;
    write_bytes(path, bytes);
    const std::string message = error_of([&] { io::read_safetensors(path); });
    expect_mentions(message, {path.string()});
    return message;
  }

  std::vector<std::string> folder_entries() const {
    std::vector<std::string> names;
    for (const auto& entry : fs::directory_iterator(dir)) names.push_back(entry.path().filename());
    return names;
  }

  fs::path dir;
};

// ---- safetensors: round trips ---------------------------------------------------------------

io::TensorMap every_dtype() {
  const auto values = torch::linspace(-3, 3, 12).reshape({3, 4});
  io::TensorMap tensors = {
      {"f64", values.to(torch::kFloat64)},
      {"f32", values.to(torch::kFloat32)},
      {"f16", values.to(torch::kFloat16)},
      {"bf16", values.to(torch::kBFloat16)},
      {"i64", (values * 1e9).to(torch::kInt64)},
      {"i32", (values * 1e6).to(torch::kInt32)},
      {"i16", (values * 1e3).to(torch::kInt16)},
      {"i8", (values * 10).to(torch::kInt8)},
      {"u8", (values * 10 + 40).to(torch::kUInt8)},
      {"bool", values > 0},
      {"empty", torch::empty({0, 3})},
      {"scalar", torch::tensor(2.5)},
      {"transposed", values.t()},  // not contiguous: written contiguous
  };
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 1)
  tensors.emplace("f8_e4m3", values.to(at::kFloat8_e4m3fn));
  tensors.emplace("f8_e5m2", values.to(at::kFloat8_e5m2));
#endif
  return tensors;
}

TEST_F(IoTest, SafetensorsRoundTripsEveryDtype) {
  const io::TensorMap tensors = every_dtype();
  io::write_safetensors(dir / "all.safetensors", tensors);
  const auto contents = io::read_safetensors(dir / "all.safetensors");
  expect_same_tensors(contents.tensors, tensors);
  EXPECT_TRUE(contents.metadata.empty());
  EXPECT_TRUE(contents.tensors.at("transposed").is_contiguous());
}

TEST_F(IoTest, SafetensorsWritesHeaderInSpecFormat) {
  io::write_safetensors(dir / "a.safetensors", {{"w", torch::zeros({2, 3}, torch::kBFloat16)},
                                                {"b", torch::zeros({3}, torch::kBool)}});
  const auto header = header_of(dir / "a.safetensors");
  EXPECT_EQ(header.dump(), R"({"b":{"dtype":"BOOL","shape":[3],"data_offsets":[0,3]},)"
                           R"("w":{"dtype":"BF16","shape":[2,3],"data_offsets":[3,15]}})");
  const std::size_t padded_header = (header.dump().size() + 7) / 8 * 8;
  EXPECT_EQ(fs::file_size(dir / "a.safetensors"), 8 + padded_header + 15);
}

TEST_F(IoTest, SafetensorsMetadataRoundTripsAndIsOmittedWhenEmpty) {
  const io::Metadata metadata = {{"format", "pt"}, {"note", "quotes \" and\nnewlines, ünïcode"}};
  io::write_safetensors(dir / "m.safetensors", {{"x", torch::ones({2})}}, metadata);
  EXPECT_EQ(io::read_safetensors(dir / "m.safetensors").metadata, metadata);

  io::write_safetensors(dir / "plain.safetensors", {{"x", torch::ones({2})}});
  EXPECT_FALSE(header_of(dir / "plain.safetensors").contains("__metadata__"));
}

TEST_F(IoTest, SafetensorsKeysAndDataAreInNameOrder) {
  io::write_safetensors(dir / "o.safetensors", {{"zeta", torch::ones({1})},
                                                {"alpha", torch::ones({2})},
                                                {"mid", torch::ones({3}, torch::kInt64)}});
  const auto header = header_of(dir / "o.safetensors");
  std::vector<std::string> keys;
  std::uint64_t expected_begin = 0;
  for (const auto& [key, info] : header.items()) {
    keys.push_back(key);
    EXPECT_EQ(info["data_offsets"][0].get<std::uint64_t>(), expected_begin) << key;
    expected_begin = info["data_offsets"][1].get<std::uint64_t>();
  }
  EXPECT_EQ(keys, (std::vector<std::string>{"alpha", "mid", "zeta"}));
}

TEST_F(IoTest, SafetensorsHeaderIsPaddedWithSpacesToEightBytes) {
  for (std::string name = "t"; name.size() <= 9; name += "n") {
    io::write_safetensors(dir / "p.safetensors", {{name, torch::ones({1})}});
    const std::string bytes = read_bytes(dir / "p.safetensors");
    const std::uint64_t length = header_length(bytes);
    EXPECT_EQ(length % 8, 0u) << name;
    const std::string header = bytes.substr(8, length);
    const std::size_t json_end = header.rfind('}') + 1;
    EXPECT_EQ(header.substr(json_end), std::string(length - json_end, ' ')) << name;
    EXPECT_LT(length - json_end, 8u) << name;
  }
}

// Files written by HF's safetensors come back with the same header and data; byte for byte (same
// JSON layout, order and padding) where the metadata has a single entry, since io::Metadata
// sorts its keys while HF keeps them in insertion order.
TEST_F(IoTest, SafetensorsRewriteOfHfFilesMatchesTheOriginal) {
  std::vector<fs::path> files = {kData / "bert.model.safetensors"};
  for (const char* name : kAdapterCases)
    files.push_back(kData / (std::string(name) + ".adapter.safetensors"));
  for (const fs::path& original : files) {
    SCOPED_TRACE(original.string());
    const auto contents = io::read_safetensors(original);
    const fs::path copy = dir / "copy.safetensors";
    io::write_safetensors(copy, contents.tensors, contents.metadata);
    EXPECT_EQ(nlohmann::json(header_of(copy)), nlohmann::json(header_of(original)));
    const std::string original_bytes = read_bytes(original);
    const std::string copy_bytes = read_bytes(copy);
    ASSERT_EQ(copy_bytes.size(), original_bytes.size());
    const std::size_t data_start = 8 + header_length(original_bytes);
    EXPECT_EQ(copy_bytes.substr(data_start), original_bytes.substr(data_start));
    if (contents.metadata.size() <= 1) {
      EXPECT_EQ(copy_bytes, original_bytes);
    }
  }
}

TEST_F(IoTest, SafetensorsWithNoTensors) {
  io::write_safetensors(dir / "none.safetensors", {});
  EXPECT_TRUE(io::read_safetensors(dir / "none.safetensors").tensors.empty());
  write_bytes(dir / "bare.safetensors", safetensors_bytes("{}"));
  EXPECT_TRUE(io::read_safetensors(dir / "bare.safetensors").tensors.empty());
}

TEST_F(IoTest, SafetensorsTensorsOutliveTheirContentsAndDoNotWriteThrough) {
  io::write_safetensors(dir / "v.safetensors", {{"x", torch::arange(4, torch::kFloat32)}});
  const std::string before = read_bytes(dir / "v.safetensors");
  torch::Tensor x = io::read_safetensors(dir / "v.safetensors").tensors.at("x");
  x.add_(1);  // copy-on-write mapping: allowed, and the file stays as it was
  EXPECT_TRUE(torch::equal(x, torch::arange(1, 5, torch::kFloat32)));
  EXPECT_EQ(read_bytes(dir / "v.safetensors"), before);
}

TEST_F(IoTest, SafetensorsMisalignedTensorIsCopiedCorrectly) {
  // A header of 8k + 3 bytes puts the F32 data at an odd address of the page-aligned mapping.
  const std::string header = R"({"x":{"dtype":"F32","shape":[3],"data_offsets":[0,12]}})";
  const std::string padded = header + std::string((11 - header.size() % 8) % 8, ' ');
  ASSERT_EQ(padded.size() % 8, 3u);
  write_bytes(dir / "odd.safetensors", safetensors_bytes(padded, float_bytes({1.5f, -2.f, 3.25f})));
  const torch::Tensor x = io::read_safetensors(dir / "odd.safetensors").tensors.at("x");
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(x.data_ptr()) % alignof(float), 0u);
  EXPECT_TRUE(torch::equal(x, torch::tensor({1.5f, -2.f, 3.25f})));
}

// ---- safetensors: malformed files -----------------------------------------------------------

const std::string kOneFloat = R"({"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})";

TEST_F(IoTest, SafetensorsRejectsTruncatedFiles) {
  expect_mentions(read_error("abc"), {"3 bytes", "at least 8"});
  expect_mentions(read_error(""), {"0 bytes"});
  expect_mentions(read_error(le64(100) + "{}"), {"header length 100", "past the end"});
  expect_mentions(read_error(safetensors_bytes(kOneFloat, "ab")),
                  {"tensor \"x\"", "past the end of the data section (2 bytes)"});
}

TEST_F(IoTest, SafetensorsRejectsHeaderOverTheCap) {
  expect_mentions(read_error(le64(io::kMaxSafetensorsHeader + 1) + "{}"),
                  {"header length 100000001", "limit"});
}

TEST_F(IoTest, SafetensorsRejectsHeaderThatLiesAboutSizes) {
  const std::string message = read_error(safetensors_bytes(
      R"({"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,12]}})", std::string(16, '\0')));
  expect_mentions(message, {"tensor \"w\"", "need 16 bytes", "span 12"});
}

TEST_F(IoTest, SafetensorsRejectsOffsetsOutsideTheData) {
  expect_mentions(
      read_error(safetensors_bytes(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})",
                                   std::string(8, '\0'))),
      {"tensor \"w\"", "past the end of the data section (8 bytes)"});
  expect_mentions(
      read_error(safetensors_bytes(R"({"w":{"dtype":"F32","shape":[0],"data_offsets":[4,0]}})",
                                   std::string(8, '\0'))),
      {"tensor \"w\"", "end before they begin"});
  expect_mentions(
      read_error(safetensors_bytes(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[-4,0]}})",
                                   std::string(8, '\0'))),
      {"tensor \"w\"", "non-negative integers"});
}

TEST_F(IoTest, SafetensorsRejectsOverlappingTensors) {
  const std::string message =
      read_error(safetensors_bytes(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                                   R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                                   std::string(12, '\0')));
  expect_mentions(message, {"\"a\" [0, 8)", "\"b\" [4, 12)", "overlap"});
}

TEST_F(IoTest, SafetensorsRejectsUnknownDtype) {
  expect_mentions(read_error(safetensors_bytes(
                      R"({"w":{"dtype":"Q7","shape":[1],"data_offsets":[0,1]}})", "a")),
                  {"tensor \"w\"", "unknown dtype \"Q7\"", "BF16"});
}

TEST_F(IoTest, SafetensorsFloat8NeedsLibtorch21) {
  const std::string bytes = safetensors_bytes(
      R"({"w":{"dtype":"F8_E4M3","shape":[2],"data_offsets":[0,2]}})", "\x38\x40");
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 1)
  write_bytes(dir / "f8.safetensors", bytes);
  const torch::Tensor w = io::read_safetensors(dir / "f8.safetensors").tensors.at("w");
  EXPECT_TRUE(torch::equal(w.to(torch::kFloat32), torch::tensor({1.f, 2.f})));
#else
  expect_mentions(read_error(bytes), {"tensor \"w\"", "F8_E4M3", "libtorch >= 2.1"});
#endif
}

TEST_F(IoTest, SafetensorsRejectsInvalidJson) {
  expect_mentions(read_error(safetensors_bytes(R"({"w": {"dtype": )")), {"not valid JSON"});
  expect_mentions(read_error(safetensors_bytes(kOneFloat + "xyz", "abcd")), {"not valid JSON"});
}

// HF pads the header's JSON with spaces; any other byte after the object is refused, naming where.
TEST_F(IoTest, SafetensorsHeaderMayBePaddedOnlyWithSpaces) {
  const std::string data = float_bytes({1});
  write_bytes(dir / "padded.safetensors", safetensors_bytes(kOneFloat + "     ", data));
  EXPECT_TRUE(torch::equal(io::read_safetensors(dir / "padded.safetensors").tensors.at("x"),
                           torch::tensor({1.f})));

  const std::string json_end = std::to_string(8 + kOneFloat.size());
  const std::pair<std::string, std::string> trailers[] = {
      {"{}", "0x7b"}, {"x", "0x78"}, {std::string("\0\0\0", 3), "0x0"}, {"  \n", "0xa"}};
  for (const auto& [trailer, byte] : trailers) {
    const std::string offset = std::to_string(8 + kOneFloat.size() + trailer.find_first_not_of(' '));
    expect_mentions(read_error(safetensors_bytes(kOneFloat + trailer, data)),
                    {"byte " + byte + " at file offset " + offset, "ends at file offset " + json_end});
  }
}

TEST_F(IoTest, SafetensorsRejectsNonObjectHeaderAndEntries) {
  expect_mentions(read_error(safetensors_bytes("[1, 2]")), {"must be a JSON object", "array"});
  expect_mentions(read_error(safetensors_bytes(R"({"w": 3})")), {"tensor \"w\"", "number"});
  expect_mentions(read_error(safetensors_bytes(R"({"w": {"dtype": "F32", "shape": [1]}})")),
                  {"tensor \"w\"", "no \"data_offsets\""});
  expect_mentions(read_error(safetensors_bytes(
                      R"({"w":{"dtype":"F32","shape":[1.5],"data_offsets":[0,4]}})", "abcd")),
                  {"tensor \"w\"", "shape", "1.5"});
  expect_mentions(read_error(safetensors_bytes(R"({"__metadata__":{"n":1}})")),
                  {"\"__metadata__\" entry \"n\"", "must be a string"});
  expect_mentions(read_error(safetensors_bytes(R"({"w":{"shape":[[[[1]]]]}})")), {"nested deeper"});
}

TEST_F(IoTest, SafetensorsRejectsDuplicateNamesAndHugeShapes) {
  expect_mentions(
      read_error(safetensors_bytes(R"({"w":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},)"
                                   R"("w":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}})",
                                   "ab")),
      {"\"w\" twice"});
  expect_mentions(
      read_error(safetensors_bytes(R"({"w":{"dtype":"F64","shape":[4294967296,4294967296],)"
                                   R"("data_offsets":[0,8]}})",
                                   std::string(8, '\0'))),
      {"tensor \"w\"", "too large"});
}

TEST_F(IoTest, SafetensorsRejectsBoolBytesOtherThanZeroOrOne) {
  expect_mentions(
      read_error(safetensors_bytes(R"({"m":{"dtype":"BOOL","shape":[3],"data_offsets":[0,3]}})",
                                   std::string("\1\0\2", 3))),
      {"tensor \"m\"", "element 2", "byte value 2"});
}

TEST_F(IoTest, SafetensorsMissingFileIsNamed) {
  expect_mentions(error_of([&] { io::read_safetensors(dir / "absent.safetensors"); }),
                  {(dir / "absent.safetensors").string(), "No such file"});
}

TEST_F(IoTest, SafetensorsWriterRejectsWhatTheFormatCannotHold) {
  expect_mentions(error_of([&] {
                    io::write_safetensors(dir / "c.safetensors",
                                          {{"z", torch::zeros({2}, torch::kComplexFloat)}});
                  }),
                  {(dir / "c.safetensors").string(), "tensor \"z\"", "ComplexFloat"});
  expect_mentions(
      error_of([&] {
        io::write_safetensors(dir / "c.safetensors", {{"__metadata__", torch::zeros({1})}});
      }),
      {"reserved"});
  EXPECT_TRUE(folder_entries().empty());
}

// ---- torch.save files -----------------------------------------------------------------------

// Every tensor of the .bin equals the safetensors one of the same name or, for keys the
// safetensors file dropped as duplicates, the one its "aliases" metadata names.
TEST_F(IoTest, TorchBinEqualsSafetensorsForRealAdapters) {
  for (const char* name : kAdapterCases) {
    SCOPED_TRACE(name);
    const io::TensorMap bin =
        io::read_torch_bin(kData / (std::string(name) + ".pytorch_adapter.bin"));
    const auto safetensors =
        io::read_safetensors(kData / (std::string(name) + ".adapter.safetensors"));
    nlohmann::json aliases = nlohmann::json::object();
    if (safetensors.metadata.count("aliases"))
      aliases = nlohmann::json::parse(safetensors.metadata.at("aliases"));
    EXPECT_EQ(bin.size(), safetensors.tensors.size() + aliases.size());
    for (const auto& [key, tensor] : bin) {
      const std::string source = aliases.contains(key) ? aliases[key].get<std::string>() : key;
      ASSERT_TRUE(safetensors.tensors.count(source)) << key;
      EXPECT_EQ(tensor.sizes(), safetensors.tensors.at(source).sizes()) << key;
      EXPECT_TRUE(torch::equal(tensor, safetensors.tensors.at(source))) << key;
    }
  }
}

TEST_F(IoTest, TorchBinKeysSharingAStorageShareMemory) {
  const io::TensorMap bin =
      io::read_torch_bin(kData / "bert__var_prefix_len5_bneck16.pytorch_adapter.bin");
  const auto& a = bin.at("bert.prefix_tuning.prefix_tunings.a.self_prefix.wte.weight");
  const auto& b = bin.at(
      "bert.encoder.layer.1.attention.self.prefix_tuning.pool.prefix_tunings.a.self_prefix.wte."
      "weight");
  EXPECT_EQ(a.data_ptr(), b.data_ptr());
  EXPECT_EQ(a.sizes(), (std::vector<std::int64_t>{5, 32}));
}

void write_pickle_save(const fs::path& path, const c10::IValue& value) {
  const std::vector<char> bytes = torch::pickle_save(value);
  write_bytes(path, std::string(bytes.begin(), bytes.end()));
}

// torch::pickle_save writes the same zip format as torch.save, with views and several dtypes.
TEST_F(IoTest, TorchBinReadsPickleSaveOutput) {
  const auto base = torch::arange(12, torch::kFloat32).reshape({3, 4});
  c10::Dict<std::string, torch::Tensor> dict;
  dict.insert("base", base);
  dict.insert("view", base.t().slice(0, 1, 3));
  dict.insert("bf16", torch::linspace(0, 1, 5).to(torch::kBFloat16));
  dict.insert("i64", torch::arange(3, torch::kInt64));
  dict.insert("mask", torch::tensor({true, false}));
  dict.insert("empty", torch::empty({0, 2}));
  write_pickle_save(dir / "saved.pt", dict);
  io::TensorMap expected;
  for (const auto& entry : dict) expected.emplace(entry.key(), entry.value());
  expect_same_tensors(io::read_torch_bin(dir / "saved.pt"), expected);
}

// Pickle protocol 2 bytes written by hand, as torch.save would.
struct Pickle {
  std::string bytes = "\x80\x02";

  Pickle& op(const std::string& opcodes) { return bytes += opcodes, *this; }
  Pickle& text(const std::string& s) {
    std::uint32_t n = static_cast<std::uint32_t>(s.size());
    bytes += 'X';
    bytes.append(reinterpret_cast<const char*>(&n), 4);
    return op(s);
  }
  Pickle& integer(std::int32_t value) {
    bytes += 'J';
    bytes.append(reinterpret_cast<const char*>(&value), 4);
    return *this;
  }
  Pickle& global(const std::string& module, const std::string& name) {
    return op("c" + module + "\n" + name + "\n");
  }
  Pickle& ints(std::initializer_list<std::int32_t> values) {
    op("(");
    for (auto value : values) integer(value);
    return op("t");
  }
  // _rebuild_tensor_v2(('storage', FloatStorage, key, 'cpu', numel), offset, sizes, strides, ...)
  Pickle& tensor(const std::string& key, std::int32_t numel,
                 std::initializer_list<std::int32_t> sizes,
                 std::initializer_list<std::int32_t> strides, std::int32_t offset = 0) {
    global("torch._utils", "_rebuild_tensor_v2")
        .op("((")
        .text("storage")
        .global("torch", "FloatStorage");
    text(key).text("cpu").integer(numel).op("tQ").integer(offset).ints(sizes).ints(strides);
    return op("\x89").global("collections", "OrderedDict").op(")Rt").op("R");
  }
};

void write_torch_zip(const fs::path& path, const std::string& pickle,
                     const std::map<std::string, std::string>& records) {
  caffe2::serialize::PyTorchStreamWriter writer(path.string());
  writer.writeRecord("data.pkl", pickle.data(), pickle.size());
  for (const auto& [name, data] : records)
    writer.writeRecord("data/" + name, data.data(), data.size());
  writer.writeEndOfFile();
}

TEST_F(IoTest, TorchBinRejectsNonDictPayloadsAndNonTensorValues) {
  Pickle list;
  list.op("](").tensor("0", 1, {1}, {1}).op("e.");
  write_torch_zip(dir / "list.bin", list.bytes, {{"0", float_bytes({1})}});
  expect_mentions(error_of([&] { io::read_torch_bin(dir / "list.bin"); }),
                  {(dir / "list.bin").string(), "expected a dict of tensors", "a list"});

  c10::impl::GenericDict mixed(c10::StringType::get(), c10::AnyType::get());
  mixed.insert("weight", torch::ones({1}));
  mixed.insert("step", 3);
  write_pickle_save(dir / "mixed.bin", mixed);
  expect_mentions(error_of([&] { io::read_torch_bin(dir / "mixed.bin"); }),
                  {(dir / "mixed.bin").string(), "entry \"step\"", "an int", "expected a tensor"});
}

TEST_F(IoTest, TorchBinRejectsLegacyAndNonZipFiles) {
  write_bytes(dir / "legacy.bin",
              "\x80\x02\x8a\x0a"
              "l\xfc\x9c"
              "F\xf9 j\xa8P\x19.");
  expect_mentions(error_of([&] { io::read_torch_bin(dir / "legacy.bin"); }),
                  {(dir / "legacy.bin").string(), "legacy torch.save format", "torch >= 1.6"});
  write_bytes(dir / "text.bin", "hello");
  expect_mentions(error_of([&] { io::read_torch_bin(dir / "text.bin"); }),
                  {(dir / "text.bin").string(), "not a torch.save file"});
  write_bytes(dir / "broken.bin", std::string("PK\x03\x04", 4) + std::string(100, 'x'));
  expect_mentions(error_of([&] { io::read_torch_bin(dir / "broken.bin"); }),
                  {(dir / "broken.bin").string(), "cannot read the torch.save archive"});
}

// The OrderedDict-with-_metadata form of state dicts that older transformers saved.
TEST_F(IoTest, TorchBinReadsOrderedDictStateDicts) {
  Pickle pickle;
  pickle.global("collections", "OrderedDict").op(")R(").text("a").tensor("0", 4, {4}, {1});
  pickle.text("tail").tensor("0", 4, {2}, {1}, 2).op("u");
  pickle.op("}(").text("_metadata").global("collections", "OrderedDict").op(")R").op("ub.");
  write_torch_zip(dir / "od.bin", pickle.bytes, {{"0", float_bytes({1, 2, 3, 4})}});
  const io::TensorMap tensors = io::read_torch_bin(dir / "od.bin");
  ASSERT_EQ(tensors.size(), 2u);
  EXPECT_TRUE(torch::equal(tensors.at("a"), torch::tensor({1.f, 2.f, 3.f, 4.f})));
  EXPECT_TRUE(torch::equal(tensors.at("tail"), torch::tensor({3.f, 4.f})));
}

TEST_F(IoTest, TorchBinRejectsViewsPastTheirStorage) {
  Pickle pickle;
  pickle.op("}(").text("w").tensor("0", 1000000, {1000000}, {1}).op("u.");
  write_torch_zip(dir / "big.bin", pickle.bytes, {{"0", float_bytes({1, 2, 3, 4})}});
  expect_mentions(error_of([&] { io::read_torch_bin(dir / "big.bin"); }),
                  {(dir / "big.bin").string(), "tensor \"w\"", "needs 4000000 bytes", "holds 16"});

  Pickle offset;
  offset.op("}(").text("w").tensor("0", 4, {2}, {1}, 3).op("u.");
  write_torch_zip(dir / "offset.bin", offset.bytes, {{"0", float_bytes({1, 2, 3, 4})}});
  expect_mentions(error_of([&] { io::read_torch_bin(dir / "offset.bin"); }),
                  {"tensor \"w\"", "needs 20 bytes"});

  Pickle missing;
  missing.op("}(").text("w").tensor("7", 1, {1}, {1}).op("u.");
  write_torch_zip(dir / "missing.bin", missing.bytes, {});
  expect_mentions(error_of([&] { io::read_torch_bin(dir / "missing.bin"); }),
                  {"tensor \"w\"", "no record data/7"});
}

TEST_F(IoTest, TorchBinRejectsHostilePickles) {
  const std::map<std::string, std::string> no_records;
  const std::pair<std::string, std::string> cases[] = {
      {Pickle().global("os", "system").op("(").text("echo").op("tR.").bytes, "os.system"},
      {Pickle().op("R.").bytes, "pops more values than it pushed"},
      {Pickle().op("}(").text("w").bytes, "the pickle is truncated"},
      {Pickle().op("u.").bytes, "MARK it never set"},
      {Pickle().op("h\x05.").bytes, "memo entry 5"},
      {Pickle().op(std::string("}q\0(", 4)).text("self").op(std::string("h\0u.", 4)).bytes,
       "holds itself"},
      {Pickle().op(std::string(40, '(') + "N" + std::string(40, 't') + ".").bytes, "nested deeper"},
      {Pickle().op("\xff").bytes, "unsupported pickle opcode 0xff"},
  };
  for (const auto& [pickle, expected] : cases) {
    write_torch_zip(dir / "hostile.bin", pickle, no_records);
    expect_mentions(error_of([&] { io::read_torch_bin(dir / "hostile.bin"); }),
                    {(dir / "hostile.bin").string(), expected});
  }
}

TEST_F(IoTest, TorchBinRejectsRecordsOtherThanTheirStorageNeeds) {
  Pickle pickle;
  pickle.op("}(").text("w").tensor("0", 3, {2}, {1}).op("u.");
  write_torch_zip(dir / "numel.bin", pickle.bytes, {{"0", float_bytes({1, 2, 3, 4})}});
  expect_mentions(error_of([&] { io::read_torch_bin(dir / "numel.bin"); }),
                  {(dir / "numel.bin").string(), "tensor \"w\"", "storage \"0\" of 3",
                   "(12 bytes)", "record data/0 holds 16 bytes"});
}

// Rewrites, in the central directory of the zip at `path`, the compression method and the
// uncompressed size declared for the record whose name ends with `suffix` (its bytes stay stored).
void patch_zip_entry(const fs::path& path, const std::string& suffix, std::uint16_t method,
                     std::uint32_t size) {
  std::string bytes = read_bytes(path);
  const std::string signature("PK\x01\x02", 4);
  for (auto at = bytes.find(signature); at != std::string::npos; at = bytes.find(signature, at + 4)) {
    const std::size_t name_length = static_cast<unsigned char>(bytes[at + 28]) |
                                    static_cast<unsigned char>(bytes[at + 29]) << 8;
    const std::string name = bytes.substr(at + 46, name_length);
    if (name.size() < suffix.size() || name.compare(name.size() - suffix.size(), suffix.size(), suffix))
      continue;
    for (int i = 0; i < 2; ++i) bytes[at + 10 + i] = static_cast<char>(method >> (8 * i));
    for (int i = 0; i < 4; ++i) bytes[at + 24 + i] = static_cast<char>(size >> (8 * i));
    write_bytes(path, bytes);
    return;
  }
  ADD_FAILURE() << "no central directory entry for " << suffix << " in " << path;
}

// libtorch's zip reader allocates what the central directory declares: a deflated record that
// claims to inflate past 100 times its size (a zip bomb), or another method, is refused unread.
TEST_F(IoTest, TorchBinRejectsZipBombsAndUnknownCompression) {
  Pickle pickle;
  pickle.op("}(").text("w").tensor("0", 100, {100}, {1}).op("u.");
  std::string data;
  for (int i = 0; i < 100; ++i) data += float_bytes({1});
  write_torch_zip(dir / "bomb.bin", pickle.bytes, {{"0", data}});
  patch_zip_entry(dir / "bomb.bin", "/data/0", 8, 400 * 101);
  expect_mentions(error_of([&] { io::read_torch_bin(dir / "bomb.bin"); }),
                  {(dir / "bomb.bin").string(), "data/0", "would inflate 400 bytes to 40400",
                   "limit of 100"});

  write_torch_zip(dir / "bzip2.bin", pickle.bytes, {{"0", data}});
  patch_zip_entry(dir / "bzip2.bin", "/data/0", 12, 400);
  expect_mentions(error_of([&] { io::read_torch_bin(dir / "bzip2.bin"); }),
                  {(dir / "bzip2.bin").string(), "data/0", "compression method 12"});
}

// libtorch's zip reader matches names ignoring case: two such names would make either one ambiguous.
TEST_F(IoTest, TorchBinRejectsRecordNamesThatDifferOnlyInCase) {
  Pickle pickle;
  pickle.op("}(").text("w").tensor("a", 1, {1}, {1}).op("u.");
  write_torch_zip(dir / "case.bin", pickle.bytes, {{"a", float_bytes({1})}, {"A", float_bytes({2})}});
  expect_mentions(error_of([&] { io::read_torch_bin(dir / "case.bin"); }),
                  {(dir / "case.bin").string(), "data/a", "twice"});
}

// However long the pickle, it creates no more values and containers than a state dict needs.
TEST_F(IoTest, TorchBinRejectsPicklesThatCreateTooManyObjects) {
  std::string memo_writes = "N";
  for (int i = 0; i < (1 << 23); ++i) memo_writes += std::string("q\0", 2);
  write_torch_zip(dir / "values.bin", Pickle().op(memo_writes + ".").bytes, {});
  expect_mentions(error_of([&] { io::read_torch_bin(dir / "values.bin"); }),
                  {(dir / "values.bin").string(), "data.pkl", "more than 8388608 values"});

  std::string discarded_tuples = "}";
  for (int i = 0; i < (1 << 21); ++i) discarded_tuples += ")b";  // BUILD discards its argument
  write_torch_zip(dir / "containers.bin", Pickle().op(discarded_tuples + ".").bytes, {});
  expect_mentions(error_of([&] { io::read_torch_bin(dir / "containers.bin"); }),
                  {(dir / "containers.bin").string(), "more than 2097152 tuples, lists and dicts"});
}

// ---- read_checkpoint and sharded checkpoints --------------------------------------------------

TEST_F(IoTest, ReadCheckpointDispatchesOnTheFileName) {
  const fs::path safetensors = kData / "bert__houlsby.adapter.safetensors";
  const io::TensorMap expected = io::read_safetensors(safetensors).tensors;
  expect_same_tensors(io::read_checkpoint(safetensors), expected);
  expect_same_tensors(io::read_checkpoint(kData / "bert__houlsby.pytorch_adapter.bin"), expected);
  fs::copy_file(kData / "bert__houlsby.pytorch_adapter.bin", dir / "adapter.pth");
  expect_same_tensors(io::read_checkpoint(dir / "adapter.pth"), expected);
  write_bytes(dir / "weights.npz", "");
  expect_mentions(error_of([&] { io::read_checkpoint(dir / "weights.npz"); }),
                  {(dir / "weights.npz").string(), "unknown checkpoint type '.npz'"});
}

class ShardedTest : public IoTest {
 protected:
  // model.safetensors split in two: a safetensors shard (with one extra tensor the index does
  // not assign to it) and a torch.save shard.
  void SetUp() override {
    IoTest::SetUp();
    model = io::read_safetensors(kData / "bert.model.safetensors").tensors;
    io::TensorMap first;
    c10::Dict<std::string, torch::Tensor> second;
    for (const auto& [key, tensor] : model) {
      const bool in_first = first.size() < model.size() / 2;
      if (in_first)
        first.emplace(key, tensor);
      else
        second.insert(key, tensor);
      index["weight_map"][key] =
          in_first ? "model-00001-of-00002.safetensors" : "model-00002-of-00002.bin";
    }
    first.emplace("not.in.the.index", torch::ones({1}));
    io::write_safetensors(dir / "model-00001-of-00002.safetensors", first);
    write_pickle_save(dir / "model-00002-of-00002.bin", second);
    index["metadata"] = {{"total_size", 84000}};
  }

  fs::path write_index() {
    io::write_file_atomic(dir / "model.index.json", index.dump(2));
    return dir / "model.index.json";
  }

  io::TensorMap model;
  nlohmann::json index;
};

TEST_F(ShardedTest, LoadsEveryKeyFromItsShard) {
  expect_same_tensors(io::read_checkpoint(write_index()), model);
}

TEST_F(ShardedTest, MissingShardIsNamed) {
  fs::remove(dir / "model-00002-of-00002.bin");
  const fs::path index_path = write_index();
  expect_mentions(error_of([&] { io::read_checkpoint(index_path); }),
                  {index_path.string(), "model-00002-of-00002.bin", "does not exist"});
}

TEST_F(ShardedTest, KeyMissingFromItsShardIsNamed) {
  index["weight_map"]["bert.pooler.extra"] = "model-00001-of-00002.safetensors";
  const fs::path index_path = write_index();
  expect_mentions(error_of([&] { io::read_checkpoint(index_path); }),
                  {index_path.string(), "\"bert.pooler.extra\"", "model-00001-of-00002.safetensors",
                   "has no such tensor"});
}

TEST_F(ShardedTest, MalformedIndexIsRejected) {
  index["weight_map"]["bert.pooler.dense.bias"] = "../elsewhere.safetensors";
  expect_mentions(error_of([&] { io::read_checkpoint(write_index()); }),
                  {"weight_map[\"bert.pooler.dense.bias\"]", "relative to the index's folder"});
  index = {{"metadata", {}}};
  expect_mentions(error_of([&] { io::read_checkpoint(write_index()); }), {"\"weight_map\""});
  io::write_file_atomic(dir / "model.index.json", "{ not json");
  expect_mentions(error_of([&] { io::read_checkpoint(dir / "model.index.json"); }),
                  {(dir / "model.index.json").string(), "invalid JSON"});
}

TEST_F(ShardedTest, IndexNestedPastTheJsonDepthLimitIsRefused) {
  const std::string deep = std::string(200, '[') + std::string(200, ']');
  io::write_file_atomic(dir / "model.index.json", R"({"weight_map": {}, "metadata": )" + deep + "}");
  expect_mentions(error_of([&] { io::read_checkpoint(dir / "model.index.json"); }),
                  {(dir / "model.index.json").string(), "nested deeper than 128"});
}

// ---- atomic writes and text files -------------------------------------------------------------

TEST_F(IoTest, AtomicWriteReplacesTheFileAndLeavesNoTemporary) {
  io::write_file_atomic(dir / "f.txt", "old");
  io::write_file_atomic(dir / "f.txt", "new contents");
  EXPECT_EQ(read_bytes(dir / "f.txt"), "new contents");
  EXPECT_EQ(folder_entries(), std::vector<std::string>{"f.txt"});
  EXPECT_EQ(fs::status(dir / "f.txt").permissions() & fs::perms::owner_read, fs::perms::owner_read);
}

TEST_F(IoTest, AtomicWriteFailuresLeaveEverythingAsItWas) {
  // The target is a folder: the temporary is written, then the rename fails.
  fs::create_directory(dir / "folder");
  write_bytes(dir / "folder" / "inside", "kept");
  expect_mentions(error_of([&] { io::write_file_atomic(dir / "folder", "bytes"); }),
                  {(dir / "folder").string(), "renaming"});
  EXPECT_EQ(read_bytes(dir / "folder" / "inside"), "kept");

  // The parent is a file, or does not exist: no temporary can be created.
  write_bytes(dir / "plain", "kept too");
  expect_mentions(error_of([&] { io::write_file_atomic(dir / "plain" / "x", "bytes"); }),
                  {(dir / "plain" / "x").string(), "temporary file"});
  expect_mentions(error_of([&] { io::write_file_atomic(dir / "absent" / "x", "bytes"); }),
                  {(dir / "absent" / "x").string()});
  EXPECT_EQ(read_bytes(dir / "plain"), "kept too");

  std::vector<std::string> entries = folder_entries();
  std::sort(entries.begin(), entries.end());
  EXPECT_EQ(entries, (std::vector<std::string>{"folder", "plain"}));
}

TEST_F(IoTest, AtomicWriteAbortedByItsProducerKeepsTheOldFile) {
  io::write_safetensors(dir / "m.safetensors", {{"x", torch::ones({2})}});
  const std::string before = read_bytes(dir / "m.safetensors");
  EXPECT_THROW(io::write_file_atomic_streamed(dir / "m.safetensors",
                                              [](const io::ByteSink& sink) {
                                                sink("partial", 7);
                                                throw std::runtime_error("producer failed");
                                              }),
               std::runtime_error);
  EXPECT_EQ(read_bytes(dir / "m.safetensors"), before);
  EXPECT_EQ(folder_entries(), std::vector<std::string>{"m.safetensors"});
}

TEST_F(IoTest, ReadTextFile) {
  write_bytes(dir / "t.json", std::string("{\"a\": 1}\n\0tail", 14));
  EXPECT_EQ(io::read_text_file(dir / "t.json"), std::string("{\"a\": 1}\n\0tail", 14));
  write_bytes(dir / "empty", "");
  EXPECT_EQ(io::read_text_file(dir / "empty"), "");
  expect_mentions(error_of([&] { io::read_text_file(dir / "absent.json"); }),
                  {(dir / "absent.json").string(), "No such file"});
  expect_mentions(error_of([&] { io::read_text_file(dir); }), {dir.string(), "folder"});
}

// ---- files that are not regular files, or too large -----------------------------------------

// The adapters::Error message of `read`, run on another thread. Reading must not block: when it
// has not finished after 5 s the test fails, and the FIFO `path` (if it is one) is opened for
// writing and closed again, which ends the blocked open with an empty read. A reader that still
// does not return (reading /dev/zero, say) ends the test program, failing.
std::string error_without_blocking(const std::function<void()>& read, const fs::path& path) {
  auto message = std::async(std::launch::async, [read] { return error_of(read); });
  if (message.wait_for(std::chrono::seconds(5)) != std::future_status::ready) {
    ADD_FAILURE() << "reading " << path << " did not finish within 5 s";
    const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    while (message.wait_for(std::chrono::milliseconds(50)) != std::future_status::ready) {
      const int fd = ::open(path.c_str(), O_WRONLY | O_NONBLOCK | O_CLOEXEC);
      if (fd >= 0) ::close(fd);
      if (std::chrono::steady_clock::now() > give_up) {
        std::cerr << "reading " << path << " never returned; exiting\n";
        std::_Exit(EXIT_FAILURE);
      }
    }
  }
  return message.get();
}

// Every reader, as it is reached for a file of each kind: the error it gives for `path`.
void expect_every_reader_refuses(const fs::path& folder, const std::string& stem,
                                 std::initializer_list<std::string> parts) {
  const std::pair<const char*, std::function<void(const fs::path&)>> readers[] = {
      {".json", [](const fs::path& p) { io::read_text_file(p); }},
      {".bin", [](const fs::path& p) { io::read_torch_bin(p); }},
      {".safetensors", [](const fs::path& p) { io::read_safetensors(p); }},
      {".pt", [](const fs::path& p) { io::read_checkpoint(p); }},
      {".index.json", [](const fs::path& p) { io::read_checkpoint(p); }},
  };
  for (const auto& [extension, reader] : readers) {
    const fs::path path = folder / (stem + extension);
    SCOPED_TRACE(path.string());
    const std::string message =
        error_without_blocking([&reader = reader, &path] { reader(path); }, path);
    expect_mentions(message, {path.string(), "expected a regular file"});
    expect_mentions(message, parts);
  }
}

TEST_F(IoTest, ReadersRefuseFifosWithoutBlocking) {
  for (const char* extension : {".json", ".bin", ".safetensors", ".pt", ".index.json"})
    ASSERT_EQ(::mkfifo((dir / (std::string("pipe") + extension)).c_str(), 0600), 0);
  expect_every_reader_refuses(dir, "pipe", {"FIFO"});
}

TEST_F(IoTest, ReadersRefuseDevicesBehindSymlinks) {
  if (!fs::exists("/dev/zero")) GTEST_SKIP() << "no /dev/zero";
  for (const char* extension : {".json", ".bin", ".safetensors", ".pt", ".index.json"})
    fs::create_symlink("/dev/zero", dir / (std::string("zero") + extension));
  expect_every_reader_refuses(dir, "zero", {"character device", "a symlink to /dev/zero"});
}

TEST_F(IoTest, ReadersRefuseFolders) {
  for (const char* extension : {".json", ".bin", ".safetensors", ".pt", ".index.json"})
    fs::create_directory(dir / (std::string("folder") + extension));
  expect_every_reader_refuses(dir, "folder", {"a folder"});
}

// A shard the index names is checked like any file given directly.
TEST_F(IoTest, ShardThatIsAFifoIsRefusedWithoutBlocking) {
  ASSERT_EQ(::mkfifo((dir / "model-00001-of-00001.safetensors").c_str(), 0600), 0);
  io::write_file_atomic(dir / "model.index.json",
                        R"({"weight_map": {"w": "model-00001-of-00001.safetensors"}})");
  const fs::path shard = dir / "model-00001-of-00001.safetensors";
  expect_mentions(error_without_blocking([&] { io::read_checkpoint(dir / "model.index.json"); },
                                         shard),
                  {shard.string(), "FIFO", "expected a regular file"});
}

// A sparse file of `size` bytes (holes take no disk space); false where the file system refuses.
bool make_sparse_file(const fs::path& path, std::uint64_t size) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return false;
  const bool made = ::ftruncate(fd, static_cast<off_t>(size)) == 0;
  ::close(fd);
  return made;
}

TEST_F(IoTest, CheckReadableFileRefusesSizesPastTheCap) {
  write_bytes(dir / "ten", "0123456789");
  EXPECT_EQ(io::check_readable_file(dir / "ten", 10, "test file"), 10u);
  EXPECT_EQ(io::read_file_checked(dir / "ten", 10, "test file"), "0123456789");
  expect_mentions(error_of([&] { io::check_readable_file(dir / "ten", 9, "test file"); }),
                  {(dir / "ten").string(), "test file", "10 bytes", "limit of 9 bytes"});
  expect_mentions(error_of([&] { io::read_file_checked(dir / "ten", 9, "test file"); }),
                  {(dir / "ten").string(), "10 bytes", "limit of 9 bytes"});
}

TEST_F(IoTest, ReadersRefuseFilesPastTheirCap) {
  const std::pair<std::uint64_t, std::function<void(const fs::path&)>> readers[] = {
      {io::kMaxTextFileBytes, [](const fs::path& p) { io::read_text_file(p); }},
      {io::kMaxTorchBinBytes, [](const fs::path& p) { io::read_torch_bin(p); }},
      {io::kMaxSafetensorsBytes, [](const fs::path& p) { io::read_safetensors(p); }},
  };
  for (const auto& [cap, reader] : readers) {
    const fs::path path = dir / "big";
    if (!make_sparse_file(path, cap + 1)) {
      ADD_FAILURE() << "the file system refuses a sparse file of " << cap + 1 << " bytes";
      continue;
    }
    expect_mentions(error_of([&reader = reader, &path] { reader(path); }),
                    {path.string(), std::to_string(cap + 1) + " bytes",
                     "limit of " + std::to_string(cap) + " bytes"});
    fs::remove(path);
  }
}

}  // namespace

namespace adapters::io {
namespace {

TEST(RemoveTree, RemovesNestedFoldersAndIgnoresMissingPaths) {
  const fs::path root = fs::temp_directory_path() / ("adapters-remove-tree-" + std::to_string(::getpid()));
  fs::create_directories(root / "a" / "b");
  write_file_atomic(root / "a" / "b" / "f.txt", "x");
  write_file_atomic(root / "g.txt", "y");
  fs::create_symlink(root / "g.txt", root / "a" / "link");
  remove_tree(root);
  EXPECT_FALSE(fs::exists(root));
  remove_tree(root);  // nothing there: no error, no crash
  EXPECT_FALSE(fs::exists(root));
}

}  // namespace
}  // namespace adapters::io
