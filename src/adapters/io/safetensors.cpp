// The safetensors format: an 8-byte little-endian header length, a JSON header (name -> dtype,
// shape, data_offsets relative to the data section; optional "__metadata__" string map), then the
// raw little-endian tensor bytes. Reading maps the file and validates every size and offset before
// any tensor touches the mapping; writing goes through write_file_atomic_streamed.
#include "adapters/io/tensors.h"

#include "adapters/core/error.h"

#include <nlohmann/json.hpp>
#include <torch/version.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <optional>
#include <set>
#include <vector>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

// at::kFloat8_e4m3fn / at::kFloat8_e5m2 arrived in libtorch 2.1.
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 1)
#define ADAPTERS_HAVE_FLOAT8 1
#else
#define ADAPTERS_HAVE_FLOAT8 0
#endif

namespace adapters::io {
namespace {

using json = nlohmann::json;

struct DtypeName {
  const char* name;
  torch::Dtype dtype;
};

const DtypeName kDtypeNames[] = {
    {"F64", torch::kFloat64},        {"F32", torch::kFloat32},      {"F16", torch::kFloat16},
    {"BF16", torch::kBFloat16},      {"I64", torch::kInt64},        {"I32", torch::kInt32},
    {"I16", torch::kInt16},          {"I8", torch::kInt8},          {"U8", torch::kUInt8},
    {"BOOL", torch::kBool},
#if ADAPTERS_HAVE_FLOAT8
    {"F8_E4M3", at::kFloat8_e4m3fn}, {"F8_E5M2", at::kFloat8_e5m2},
#endif
};

// Header entries sit at depth 1 and their shape / data_offsets arrays at depth 2; anything
// nested deeper is not a safetensors header.
constexpr int kMaxHeaderNesting = 3;
constexpr std::uint64_t kHeaderLengthBytes = 8;

std::optional<torch::Dtype> dtype_from_name(const std::string& name) {
  for (const auto& entry : kDtypeNames)
    if (name == entry.name) return entry.dtype;
  return std::nullopt;
}

const char* name_of_dtype(torch::Dtype dtype) {
  for (const auto& entry : kDtypeNames)
    if (entry.dtype == dtype) return entry.name;
  return nullptr;
}

std::string supported_dtype_names() {
  std::string names;
  for (const auto& entry : kDtypeNames) names += str(names.empty() ? "" : " ", entry.name);
  return names;
}

// The whole file, mapped copy-on-write: tensors may be modified in place without touching the file.
class MappedFile {
 public:
  static std::shared_ptr<MappedFile> open(const fs::path& path) {
    check_readable_file(path, kMaxSafetensorsBytes, "safetensors file");
    // O_NONBLOCK: a FIFO swapped in after the check must not block; map() refuses it.
    const int fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    ADAPTERS_CHECK(fd >= 0, "cannot open ", path, ": ", std::strerror(errno));
    std::shared_ptr<MappedFile> file(new MappedFile);
    try {
      file->map(fd, path);
    } catch (...) {
      ::close(fd);
      throw;
    }
    ::close(fd);
    return file;
  }

  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  ~MappedFile() {
    if (size_ > 0) ::munmap(data_, size_);
  }

  char* data() const { return data_; }
  std::uint64_t size() const { return size_; }

 private:
  MappedFile() = default;

  void map(int fd, const fs::path& path) {
    struct stat status {};
    ADAPTERS_CHECK(::fstat(fd, &status) == 0, "cannot stat ", path, ": ", std::strerror(errno));
    ADAPTERS_CHECK(S_ISREG(status.st_mode), path, ": not a regular file");
    if (status.st_size == 0) return;
    void* mapping = ::mmap(nullptr, static_cast<std::size_t>(status.st_size),
                           PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    ADAPTERS_CHECK(mapping != MAP_FAILED, "cannot mmap ", path, ": ", std::strerror(errno));
    data_ = static_cast<char*>(mapping);
    size_ = static_cast<std::uint64_t>(status.st_size);
  }

  char* data_ = nullptr;
  std::uint64_t size_ = 0;
};

std::uint64_t read_le64(const char* bytes) {
  std::uint64_t value = 0;
  for (int i = 7; i >= 0; --i) value = (value << 8) | static_cast<unsigned char>(bytes[i]);
  return value;
}

void write_le64(std::uint64_t value, char* bytes) {
  for (int i = 0; i < 8; ++i) bytes[i] = static_cast<char>((value >> (8 * i)) & 0xff);
}

std::uint64_t read_header_length(const MappedFile& file, const fs::path& path) {
  ADAPTERS_CHECK(file.size() >= kHeaderLengthBytes, path,
                 ": truncated safetensors file: ", file.size(),
                 " bytes, expected at least 8 (the header length)");
  const std::uint64_t length = read_le64(file.data());
  ADAPTERS_CHECK(length <= kMaxSafetensorsHeader, path, ": header length ", length,
                 " exceeds the limit of ", kMaxSafetensorsHeader, " bytes");
  ADAPTERS_CHECK(length <= file.size() - kHeaderLengthBytes, path, ": header length ", length,
                 " reaches past the end of the file (", file.size(),
                 " bytes); the file is truncated or not safetensors");
  return length;
}

// Offset just past the first complete JSON object or array of the header text (brackets inside
// strings skipped), or `length` when none closes (then the parser reports what is wrong).
std::uint64_t end_of_header_object(const char* text, std::uint64_t length) {
  int depth = 0;
  bool in_string = false;
  for (std::uint64_t i = 0; i < length; ++i) {
    const char c = text[i];
    if (in_string) {
      if (c == '\\')
        ++i;
      else if (c == '"')
        in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if (c == '{' || c == '[') {
      ++depth;
    } else if ((c == '}' || c == ']') && --depth == 0) {
      return i + 1;
    }
  }
  return length;
}

// HF pads the header with spaces (0x20) to align the data; any other byte after the header's JSON
// object (another value, garbage, NUL bytes) is refused. Returns the length of the JSON text.
std::uint64_t unpadded_header_length(const MappedFile& file, std::uint64_t length,
                                     const fs::path& path) {
  const char* text = file.data() + kHeaderLengthBytes;
  const std::uint64_t end = end_of_header_object(text, length);
  for (std::uint64_t i = end; i < length; ++i) {
    const auto byte = static_cast<unsigned char>(text[i]);
    ADAPTERS_CHECK(byte == ' ', path, ": header is not valid JSON: byte 0x", std::hex, int{byte},
                   std::dec, " at file offset ", kHeaderLengthBytes + i,
                   " follows its JSON object (which ends at file offset ", kHeaderLengthBytes + end,
                   "); only spaces may pad the header's ", length, " bytes");
  }
  return end;
}

// Parses the header, rejecting keys listed twice and nesting no header has.
json parse_header_json(const MappedFile& file, std::uint64_t length, const fs::path& path) {
  std::set<std::string> names;
  const json::parser_callback_t check_event = [&](int depth, json::parse_event_t event,
                                                  json& parsed) {
    const bool opens =
        event == json::parse_event_t::object_start || event == json::parse_event_t::array_start;
    ADAPTERS_CHECK(!opens || depth < kMaxHeaderNesting, path,
                   ": header JSON is nested deeper than a safetensors header");
    if (depth == 1 && event == json::parse_event_t::key) {
      const auto& name = parsed.get_ref<const std::string&>();
      ADAPTERS_CHECK(names.insert(name).second, path, ": header lists \"", name, "\" twice");
    }
    return true;
  };
  const char* begin = file.data() + kHeaderLengthBytes;
  const std::uint64_t json_length = unpadded_header_length(file, length, path);
  try {
    json header = json::parse(begin, begin + json_length, check_event);
    ADAPTERS_CHECK(header.is_object(), path, ": header must be a JSON object, found ",
                   header.type_name());
    return header;
  } catch (const json::exception& e) {
    throw Error(str(path, ": header is not valid JSON: ", e.what()));
  }
}

Metadata parse_metadata(const json& object, const fs::path& path) {
  ADAPTERS_CHECK(object.is_object(), path,
                 ": \"__metadata__\" must be an object of strings, found ", object.type_name());
  Metadata metadata;
  for (const auto& [key, value] : object.items()) {
    ADAPTERS_CHECK(value.is_string(), path, ": \"__metadata__\" entry \"", key,
                   "\" must be a string, found ", value.type_name());
    metadata.emplace(key, value.get<std::string>());
  }
  return metadata;
}

// A tensor's header entry, validated against the data section.
struct TensorEntry {
  std::string name;
  torch::Dtype dtype;
  std::vector<std::int64_t> shape;
  std::uint64_t begin;
  std::uint64_t end;
};

std::uint64_t unsigned_field(const json& value, const std::string& name, const char* field,
                             const fs::path& path) {
  ADAPTERS_CHECK(value.is_number_unsigned(), path, ": tensor \"", name, "\": ", field,
                 " must hold non-negative integers, found ", value.dump());
  return value.get<std::uint64_t>();
}

const json& field_of(const json& info, const char* field, const std::string& name,
                     const fs::path& path) {
  ADAPTERS_CHECK(info.contains(field), path, ": tensor \"", name, "\" has no \"", field, "\"");
  return info[field];
}

torch::Dtype parse_dtype(const json& value, const std::string& name, const fs::path& path) {
  ADAPTERS_CHECK(value.is_string(), path, ": tensor \"", name, "\": dtype must be a string, found ",
                 value.dump());
  const std::string dtype_name = value.get<std::string>();
  if (auto dtype = dtype_from_name(dtype_name)) return *dtype;
  ADAPTERS_CHECK(dtype_name != "F8_E4M3" && dtype_name != "F8_E5M2", path, ": tensor \"", name,
                 "\" has dtype ", dtype_name, ", which needs libtorch >= 2.1 (this is libtorch ",
                 TORCH_VERSION, ")");
  throw Error(str(path, ": tensor \"", name, "\" has unknown dtype \"", dtype_name,
                  "\"; supported: ", supported_dtype_names()));
}

TensorEntry parse_tensor_entry(const std::string& name, const json& info, std::uint64_t data_size,
                               const fs::path& path) {
  ADAPTERS_CHECK(info.is_object(), path, ": tensor \"", name,
                 "\" must be an object with dtype, shape and data_offsets, found ",
                 info.type_name());
  TensorEntry entry{name, parse_dtype(field_of(info, "dtype", name, path), name, path), {}, 0, 0};

  const json& shape = field_of(info, "shape", name, path);
  ADAPTERS_CHECK(shape.is_array(), path, ": tensor \"", name, "\": shape must be an array, found ",
                 shape.dump());
  std::uint64_t numel = 1;
  for (const json& dim : shape) {
    const std::uint64_t size = unsigned_field(dim, name, "shape", path);
    ADAPTERS_CHECK(size <= std::numeric_limits<std::int64_t>::max() &&
                       !__builtin_mul_overflow(numel, size, &numel),
                   path, ": tensor \"", name, "\": shape ", shape.dump(), " is too large");
    entry.shape.push_back(static_cast<std::int64_t>(size));
  }
  std::uint64_t nbytes = 0;
  ADAPTERS_CHECK(!__builtin_mul_overflow(numel, c10::elementSize(entry.dtype), &nbytes), path,
                 ": tensor \"", name, "\": shape ", shape.dump(), " is too large");

  const json& offsets = field_of(info, "data_offsets", name, path);
  ADAPTERS_CHECK(offsets.is_array() && offsets.size() == 2, path, ": tensor \"", name,
                 "\": data_offsets must be [begin, end], found ", offsets.dump());
  entry.begin = unsigned_field(offsets[0], name, "data_offsets", path);
  entry.end = unsigned_field(offsets[1], name, "data_offsets", path);
  ADAPTERS_CHECK(entry.begin <= entry.end, path, ": tensor \"", name, "\": data_offsets ",
                 offsets.dump(), " end before they begin");
  ADAPTERS_CHECK(entry.end - entry.begin == nbytes, path, ": tensor \"", name, "\": dtype ",
                 info["dtype"].get<std::string>(), " and shape ", shape.dump(), " need ", nbytes,
                 " bytes, but data_offsets ", offsets.dump(), " span ", entry.end - entry.begin);
  ADAPTERS_CHECK(entry.end <= data_size, path, ": tensor \"", name, "\": data_offsets ",
                 offsets.dump(), " reach past the end of the data section (", data_size,
                 " bytes); the file is truncated");
  return entry;
}

void check_no_overlap(std::vector<TensorEntry>& entries, const fs::path& path) {
  std::sort(entries.begin(), entries.end(), [](const TensorEntry& a, const TensorEntry& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  for (std::size_t i = 1; i < entries.size(); ++i) {
    const TensorEntry& previous = entries[i - 1];
    const TensorEntry& current = entries[i];
    ADAPTERS_CHECK(current.begin >= previous.end, path, ": tensors \"", previous.name, "\" [",
                   previous.begin, ", ", previous.end, ") and \"", current.name, "\" [",
                   current.begin, ", ", current.end, ") overlap");
  }
}

// torch::kBool tensors must hold 0 or 1 in every byte; anything else is undefined behaviour.
void check_bool_bytes(const TensorEntry& entry, const char* bytes, const fs::path& path) {
  const std::uint64_t size = entry.end - entry.begin;
  for (std::uint64_t i = 0; i < size; ++i) {
    const auto byte = static_cast<unsigned char>(bytes[i]);
    ADAPTERS_CHECK(byte <= 1, path, ": tensor \"", entry.name, "\": BOOL element ", i,
                   " holds byte value ", static_cast<int>(byte), "; expected 0 or 1");
  }
}

// A view of the mapping (which it keeps alive), or a copy when the bytes are misaligned.
torch::Tensor tensor_from_mapping(const TensorEntry& entry, const std::shared_ptr<MappedFile>& file,
                                  std::uint64_t data_start, const fs::path& path) {
  const auto options = torch::TensorOptions().dtype(entry.dtype);
  if (entry.end == entry.begin) return torch::empty(entry.shape, options);
  char* bytes = file->data() + data_start + entry.begin;
  if (entry.dtype == torch::kBool) check_bool_bytes(entry, bytes, path);
  if (reinterpret_cast<std::uintptr_t>(bytes) % c10::elementSize(entry.dtype) != 0) {
    torch::Tensor copy = torch::empty(entry.shape, options);
    std::memcpy(copy.data_ptr(), bytes, entry.end - entry.begin);
    return copy;
  }
  return torch::from_blob(
      bytes, entry.shape, [file](void*) {}, options);
}

// The header of a file holding `tensors` (contiguous CPU tensors), padded with spaces to a
// multiple of 8 bytes so that the data section starts aligned.
std::string encode_header(const TensorMap& tensors, const Metadata& metadata,
                          const fs::path& path) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  std::uint64_t offset = 0;
  for (const auto& [name, tensor] : tensors) {
    const std::uint64_t nbytes = tensor.nbytes();
    header[name] = {{"dtype", name_of_dtype(tensor.scalar_type())},
                    {"shape", tensor.sizes().vec()},
                    {"data_offsets", nlohmann::ordered_json::array({offset, offset + nbytes})}};
    offset += nbytes;
  }
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::string text;
  try {
    text = header.dump();
  } catch (const nlohmann::json::exception& e) {
    throw Error(str("cannot write ", path, ": a tensor name or metadata entry is not valid UTF-8 (",
                    e.what(), ")"));
  }
  text.append((8 - text.size() % 8) % 8, ' ');
  return text;
}

// Contiguous CPU copies (or the tensors themselves when already so) of what is to be written.
TensorMap prepare_for_writing(const TensorMap& tensors, const fs::path& path) {
  TensorMap prepared;
  for (const auto& [name, tensor] : tensors) {
    ADAPTERS_CHECK(name != "__metadata__", "cannot write ", path,
                   ": \"__metadata__\" is reserved by the format and cannot name a tensor");
    ADAPTERS_CHECK(tensor.defined(), "cannot write ", path, ": tensor \"", name, "\" is undefined");
    ADAPTERS_CHECK(
        name_of_dtype(tensor.scalar_type()) != nullptr, "cannot write ", path, ": tensor \"", name,
        "\" has dtype ", tensor.scalar_type(),
        ", which safetensors files here cannot hold; supported: ", supported_dtype_names());
    prepared.emplace(name, tensor.detach().to(torch::kCPU).contiguous());
  }
  return prepared;
}

}  // namespace

SafetensorsContents read_safetensors(const fs::path& path) {
  const std::shared_ptr<MappedFile> file = MappedFile::open(path);
  const std::uint64_t header_length = read_header_length(*file, path);
  const json header = parse_header_json(*file, header_length, path);
  const std::uint64_t data_start = kHeaderLengthBytes + header_length;
  const std::uint64_t data_size = file->size() - data_start;

  SafetensorsContents contents;
  std::vector<TensorEntry> entries;
  for (const auto& [name, info] : header.items()) {
    if (name == "__metadata__")
      contents.metadata = parse_metadata(info, path);
    else
      entries.push_back(parse_tensor_entry(name, info, data_size, path));
  }
  check_no_overlap(entries, path);
  for (const TensorEntry& entry : entries)
    contents.tensors.emplace(entry.name, tensor_from_mapping(entry, file, data_start, path));
  return contents;
}

void write_safetensors(const fs::path& path, const TensorMap& tensors, const Metadata& metadata) {
  const TensorMap prepared = prepare_for_writing(tensors, path);
  const std::string header = encode_header(prepared, metadata, path);
  write_file_atomic_streamed(path, [&](const ByteSink& sink) {
    char length[kHeaderLengthBytes];
    write_le64(header.size(), length);
    sink(length, sizeof length);
    sink(header.data(), header.size());
    for (const auto& [name, tensor] : prepared) sink(tensor.data_ptr(), tensor.nbytes());
  });
}

}  // namespace adapters::io
