// Checkpoint I/O: safetensors (read through mmap, written atomically), torch.save zip files
// (pytorch_model.bin / pytorch_adapter.bin) and sharded *.index.json checkpoints.
#pragma once

#include <torch/types.h>

#include <cstddef>
#include <filesystem>
#include <functional>
#include <map>
#include <string>

namespace adapters::io {

namespace fs = std::filesystem;

// Tensors by name, in name order (the order safetensors writes them).
using TensorMap = std::map<std::string, torch::Tensor>;
using Metadata = std::map<std::string, std::string>;

struct SafetensorsContents {
  TensorMap tensors;
  Metadata metadata;  // the "__metadata__" object (string values only)
};

// Largest header accepted (the format's own limit is 100 MB).
constexpr std::uint64_t kMaxSafetensorsHeader = 100'000'000;

// Reads every tensor of a .safetensors file. The file is mmap'ed; tensors share the mapping
// (kept alive as long as any tensor of it is) unless their offset is misaligned for their dtype,
// in which case they are copied. Every dtype HF writes is supported (F64 F32 F16 BF16 I64 I32 I16
// I8 U8 BOOL; F8 types only where the libtorch has them). Throws adapters::Error naming the file
// and the tensor on: short file, header size over the cap or past the end, invalid JSON, unknown
// dtype, shape/offset mismatch, offsets outside the data section, overlapping tensors.
SafetensorsContents read_safetensors(const fs::path& path);

// Writes tensors (any device, made contiguous and moved to CPU) to `path` atomically: a temporary
// file in the same folder, fsync, then rename. Keys are written in name order.
void write_safetensors(const fs::path& path, const TensorMap& tensors,
                       const Metadata& metadata = {});

// Reads a torch.save file (the zip format of torch >= 1.6) holding a dict of name -> tensor
// (an OrderedDict state dict). Throws adapters::Error naming the file for anything else.
TensorMap read_torch_bin(const fs::path& path);

// Reads one checkpoint file by its extension: .safetensors, .bin/.pt/.pth, or a sharded
// *.index.json (whose "weight_map" names the shard of every key; shards may be either format).
TensorMap read_checkpoint(const fs::path& path);

// Writes bytes to `path` atomically: a temporary file in the same folder is written, fsync'ed and
// renamed over `path`. On any failure the temporary file is removed, `path` is left as it was, and
// adapters::Error (naming `path`) is thrown.
void write_file_atomic(const fs::path& path, const std::string& bytes);

// Receives the bytes of a file being written, in order.
using ByteSink = std::function<void(const void* data, std::size_t size)>;

// write_file_atomic for large files: `write_contents` produces the bytes through the sink it is
// given (nothing is held in memory). An exception thrown by `write_contents` aborts the write the
// same way (temporary removed, `path` untouched) and is rethrown as is.
void write_file_atomic_streamed(const fs::path& path,
                                const std::function<void(const ByteSink&)>& write_contents);

// Removes a file or a folder tree, ignoring what does not exist; never throws. (POSIX nftw rather
// than std::filesystem::remove_all: the pip libtorch 2.x exports its own, broken, copy of that
// symbol, which the dynamic linker binds first.)
void remove_tree(const fs::path& path) noexcept;

// Copies `given` into the tensors of `expected` (a module's parameters by name, e.g. an adapter's
// state dict) after checking that both name the same keys, with the same shapes, in floating-point
// dtypes. On a mismatch nothing is copied and adapters::Error names `source`, `what` (e.g.
// "adapter 'lang'") and the missing, unexpected or mis-shaped keys.
void copy_checked(const TensorMap& expected, const TensorMap& given, const std::string& source, const std::string& what);

// Reads a whole text file; throws adapters::Error naming the path when it cannot.
std::string read_text_file(const fs::path& path);

// Size caps of the readers, in bytes. A file past its reader's cap is refused before any of it is
// read. Text: config.json, adapter_config.json, *.index.json and every other file read_text_file
// reads (the largest tokenizer.json files on the Hub are about 35 MB). torch.save files are read
// into memory; safetensors files are mapped, so their cap only rules out absurd sizes.
constexpr std::uint64_t kMaxTextFileBytes = std::uint64_t{128} << 20;   // 128 MiB
constexpr std::uint64_t kMaxTorchBinBytes = std::uint64_t{64} << 30;    // 64 GiB
constexpr std::uint64_t kMaxSafetensorsBytes = std::uint64_t{1} << 40;  // 1 TiB

// Checks, without opening it, that `path` (symlinks followed) is a regular file of at most
// `max_bytes` bytes, and returns its size. Anything else (a FIFO, whose opening would block; a
// device such as /dev/zero, which never ends; a folder; a socket; a file past the cap) is refused
// with adapters::Error naming the path, `what` it should be (e.g. "torch.save file") and what it is.
std::uint64_t check_readable_file(const fs::path& path, std::uint64_t max_bytes, const char* what);

// Reads a whole file after check_readable_file(path, max_bytes, what). The file is opened without
// blocking and checked again once open, so a FIFO swapped in after the check is refused too, as is
// a file that grows past `max_bytes` while it is read.
std::string read_file_checked(const fs::path& path, std::uint64_t max_bytes, const char* what);

}  // namespace adapters::io
