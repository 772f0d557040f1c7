// File helpers of the checkpoint layer: atomic writes (temporary file beside the target, fsync,
// rename), whole-file text reads, and read_checkpoint, which picks the reader by file name and
// assembles sharded checkpoints from their *.index.json; copy_checked, which loads a state dict
// into parameters after checking names, shapes and dtypes.
#include "adapters/io/tensors.h"

#include "adapters/core/error.h"
#include "adapters/core/json_parse.h"

#include <c10/core/GradMode.h>

#include <nlohmann/json.hpp>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <vector>

#include <fcntl.h>
#include <ftw.h>
#include <sys/stat.h>
#include <unistd.h>

namespace adapters::io {
namespace {

std::string errno_text() { return std::strerror(errno); }

// A new, uniquely named file in the folder of `target`; removed again (on destruction) unless
// commit() renamed it over `target`.
class TempFileBeside {
 public:
  explicit TempFileBeside(const fs::path& target) : target_(target) {
    ADAPTERS_CHECK(!target.filename().empty(), "cannot write ", target, ": the path names no file");
    static std::atomic<unsigned> counter{0};
    for (int attempt = 0; attempt < 100 && fd_ < 0; ++attempt) {
      temp_ = target.parent_path() /
              str(".", target.filename().string(), ".tmp.", ::getpid(), ".", counter++);
      fd_ = ::open(temp_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
      if (fd_ < 0 && errno != EEXIST) break;
    }
    ADAPTERS_CHECK(fd_ >= 0, "cannot write ", target, ": creating the temporary file ", temp_,
                   " failed: ", errno_text());
  }

  TempFileBeside(const TempFileBeside&) = delete;
  TempFileBeside& operator=(const TempFileBeside&) = delete;

  ~TempFileBeside() {
    if (fd_ >= 0) ::close(fd_);
    if (!committed_) ::unlink(temp_.c_str());
  }

  void write(const void* data, std::size_t size) {
    const char* bytes = static_cast<const char*>(data);
    while (size > 0) {
      const ssize_t written = ::write(fd_, bytes, size);
      if (written < 0 && errno == EINTR) continue;
      ADAPTERS_CHECK(written > 0, "cannot write ", target_, ": writing the temporary file ", temp_,
                     " failed: ", errno_text());
      bytes += written;
      size -= static_cast<std::size_t>(written);
    }
  }

  // Makes the contents durable and moves them to the target in one step.
  void commit() {
    ADAPTERS_CHECK(::fsync(fd_) == 0, "cannot write ", target_, ": fsync of ", temp_,
                   " failed: ", errno_text());
    const int fd = fd_;
    fd_ = -1;
    ADAPTERS_CHECK(::close(fd) == 0, "cannot write ", target_, ": closing ", temp_,
                   " failed: ", errno_text());
    ADAPTERS_CHECK(::rename(temp_.c_str(), target_.c_str()) == 0, "cannot write ", target_,
                   ": renaming the temporary file ", temp_, " over it failed: ", errno_text());
    committed_ = true;
    sync_folder();
  }

 private:
  // Best effort: makes the rename itself durable; not every file system supports it.
  void sync_folder() const {
    const fs::path folder = target_.parent_path().empty() ? fs::path(".") : target_.parent_path();
    const int fd = ::open(folder.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return;
    (void)::fsync(fd);
    ::close(fd);
  }

  fs::path target_;
  fs::path temp_;
  int fd_ = -1;
  bool committed_ = false;
};

bool ends_with(const std::string& text, const std::string& suffix) {
  return text.size() >= suffix.size() &&
         text.compare(text.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// One checkpoint file (not an index), by extension.
TensorMap read_checkpoint_file(const fs::path& path) {
  const std::string extension = path.extension().string();
  if (extension == ".safetensors") return read_safetensors(path).tensors;
  if (extension == ".bin" || extension == ".pt" || extension == ".pth") return read_torch_bin(path);
  throw Error(str(path, ": unknown checkpoint type '", extension,
                  "'; expected .safetensors, .bin, .pt, .pth or a sharded *.index.json"));
}

// Shard file -> the keys the index assigns to it.
using KeysByShard = std::map<std::string, std::vector<std::string>>;

void check_shard_name(const fs::path& index_path, const std::string& key,
                      const std::string& shard) {
  const fs::path shard_path(shard);
  bool inside_folder = !shard.empty() && shard_path.is_relative();
  for (const auto& part : shard_path) inside_folder = inside_folder && part != "..";
  ADAPTERS_CHECK(inside_folder, index_path, ": weight_map[\"", key, "\"] is \"", shard,
                 "\"; expected a file name relative to the index's folder");
}

KeysByShard read_weight_map(const fs::path& index_path) {
  nlohmann::json index = parse_json_file_text(read_text_file(index_path), index_path.string());
  ADAPTERS_CHECK(
      index.is_object() && index.contains("weight_map") && index["weight_map"].is_object(),
      index_path,
      ": expected a JSON object with a \"weight_map\" object (key -> shard "
      "file), found ",
      index.type_name(), index.is_object() ? " without one" : "");
  KeysByShard keys_by_shard;
  for (const auto& [key, shard] : index["weight_map"].items()) {
    ADAPTERS_CHECK(shard.is_string(), index_path, ": weight_map[\"", key,
                   "\"] must be a shard file name (string), found ", shard.type_name());
    check_shard_name(index_path, key, shard.get<std::string>());
    keys_by_shard[shard.get<std::string>()].push_back(key);
  }
  return keys_by_shard;
}

TensorMap read_sharded_checkpoint(const fs::path& index_path) {
  TensorMap tensors;
  for (const auto& [shard, keys] : read_weight_map(index_path)) {
    const fs::path shard_path = index_path.parent_path() / shard;
    std::error_code error;
    ADAPTERS_CHECK(fs::exists(shard_path, error), index_path, ": shard file ", shard_path,
                   " (holding \"", keys.front(), "\" and ", keys.size() - 1,
                   " more keys) does not exist");
    TensorMap shard_tensors = read_checkpoint_file(shard_path);
    for (const std::string& key : keys) {
      auto found = shard_tensors.find(key);
      ADAPTERS_CHECK(found != shard_tensors.end(), index_path, ": the weight map puts tensor \"",
                     key, "\" in shard ", shard_path, ", but that file has no such tensor");
      tensors.emplace(key, std::move(found->second));
    }
  }
  return tensors;
}

}  // namespace

void write_file_atomic_streamed(const fs::path& path,
                                const std::function<void(const ByteSink&)>& write_contents) {
  TempFileBeside temp(path);
  write_contents([&temp](const void* data, std::size_t size) { temp.write(data, size); });
  temp.commit();
}

void write_file_atomic(const fs::path& path, const std::string& bytes) {
  write_file_atomic_streamed(path,
                             [&bytes](const ByteSink& sink) { sink(bytes.data(), bytes.size()); });
}

namespace {

std::string first_keys(const std::vector<std::string>& keys) {
  std::string out;
  for (std::size_t i = 0; i < keys.size() && i < 3; ++i) out += (i ? ", " : "") + keys[i];
  if (keys.size() > 3) out += ", ... (" + std::to_string(keys.size()) + " in all)";
  return out;
}

}  // namespace

void copy_checked(const TensorMap& expected, const TensorMap& given, const std::string& source, const std::string& what) {
  std::vector<std::string> missing, unexpected;
  for (const auto& [key, p] : expected) {
    if (!given.count(key)) missing.push_back(key);
  }
  for (const auto& [key, t] : given) {
    if (!expected.count(key)) unexpected.push_back(key);
  }
  ADAPTERS_CHECK(missing.empty(), source, ": ", what, " lacks weights: ", first_keys(missing));
  ADAPTERS_CHECK(unexpected.empty(), source, ": weights that ", what, " does not have: ", first_keys(unexpected),
                 " (was it saved with another configuration or placement?)");
  for (const auto& [key, p] : expected) {
    const torch::Tensor& t = given.at(key);
    ADAPTERS_CHECK(t.sizes() == p.sizes(), source, ": weight '", key, "' has shape ", t.sizes(), ", ", what,
                   " expects ", p.sizes());
    ADAPTERS_CHECK(t.is_floating_point(), source, ": weight '", key, "' has dtype ", t.scalar_type(),
                   ", expected a floating-point tensor");
  }
  c10::NoGradGuard no_grad;
  for (const auto& [key, p] : expected) const_cast<torch::Tensor&>(p).copy_(given.at(key));
}

namespace {

// What a file mode names, for messages: "a FIFO (named pipe)", "a character device", ...
const char* file_kind(mode_t mode) {
  if (S_ISDIR(mode)) return "a folder";
  if (S_ISFIFO(mode)) return "a FIFO (named pipe)";
  if (S_ISCHR(mode)) return "a character device";
  if (S_ISBLK(mode)) return "a block device";
  if (S_ISSOCK(mode)) return "a socket";
  return "not a regular file";
}

// " (a symlink to /dev/zero)" when `path` is a symbolic link, else "".
std::string symlink_note(const fs::path& path) {
  std::error_code error;
  if (!fs::is_symlink(fs::symlink_status(path, error))) return "";
  const fs::path target = fs::canonical(path, error);
  return error ? std::string(" (a symlink)") : str(" (a symlink to ", target.string(), ")");
}

// Refuses what `status` (of `path`, symlinks followed) shows not to be a regular file of at most
// `max_bytes` bytes; returns the size.
std::uint64_t check_regular_file_status(const struct stat& status, const fs::path& path,
                                        std::uint64_t max_bytes, const char* what) {
  if (!S_ISREG(status.st_mode))
    throw Error(str("cannot read ", what, " ", path, symlink_note(path), ": it is ",
                    file_kind(status.st_mode), ", expected a regular file"),
                "name the file itself, not a pipe, device, folder or process substitution");
  const auto size = static_cast<std::uint64_t>(status.st_size);
  if (size > max_bytes)
    throw Error(str("cannot read ", what, " ", path, ": it is ", size, " bytes, past the limit of ",
                    max_bytes, " bytes for a ", what),
                "is this the right file?");
  return size;
}

// Closes a file descriptor when it goes out of scope.
struct FdCloser {
  int fd;
  ~FdCloser() { ::close(fd); }
};

// Reads everything from `fd` up to EOF, refusing more than `max_bytes` (the file grew).
std::string read_all(int fd, std::uint64_t expected_size, std::uint64_t max_bytes,
                     const fs::path& path, const char* what) {
  std::string bytes;
  bytes.reserve(static_cast<std::size_t>(expected_size));
  std::vector<char> buffer(std::size_t{1} << 16);
  for (;;) {
    const ssize_t got = ::read(fd, buffer.data(), buffer.size());
    if (got < 0 && errno == EINTR) continue;
    ADAPTERS_CHECK(got >= 0, "cannot read ", what, " ", path, ": reading failed: ", errno_text());
    if (got == 0) return bytes;
    bytes.append(buffer.data(), static_cast<std::size_t>(got));
    ADAPTERS_CHECK(bytes.size() <= max_bytes, "cannot read ", what, " ", path,
                   ": it grew past the limit of ", max_bytes, " bytes while being read");
  }
}

}  // namespace

std::uint64_t check_readable_file(const fs::path& path, std::uint64_t max_bytes, const char* what) {
  struct stat status {};
  ADAPTERS_CHECK(::stat(path.c_str(), &status) == 0, "cannot read ", what, " ", path, ": ",
                 errno_text());
  return check_regular_file_status(status, path, max_bytes, what);
}

std::string read_file_checked(const fs::path& path, std::uint64_t max_bytes, const char* what) {
  check_readable_file(path, max_bytes, what);
  const int fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  ADAPTERS_CHECK(fd >= 0, "cannot read ", what, " ", path, ": ", errno_text());
  const FdCloser closer{fd};
  struct stat status {};
  ADAPTERS_CHECK(::fstat(fd, &status) == 0, "cannot read ", what, " ", path, ": ", errno_text());
  const std::uint64_t size = check_regular_file_status(status, path, max_bytes, what);
  return read_all(fd, size, max_bytes, path, what);
}

std::string read_text_file(const fs::path& path) {
  return read_file_checked(path, kMaxTextFileBytes, "text file");
}

TensorMap read_checkpoint(const fs::path& path) {
  if (ends_with(path.filename().string(), ".index.json")) return read_sharded_checkpoint(path);
  return read_checkpoint_file(path);
}

void remove_tree(const fs::path& path) noexcept {
  // Depth first, so that folders are empty when their turn comes; go on past failures.
  auto remove_entry = [](const char* entry, const struct stat*, int, struct FTW*) {
    ::remove(entry);
    return 0;
  };
  ::nftw(path.c_str(), remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

}  // namespace adapters::io
