// All-or-nothing folder writes: a staging folder renamed into place, or staged files renamed over
// their final names.
#include "adapters/formats/folder.h"

#include <unistd.h>

#include <atomic>

#include "adapters/core/error.h"
#include "adapters/io/tensors.h"

namespace adapters::formats {

namespace {

std::string unique_suffix() {
  static std::atomic<int> counter{0};
  return str(".tmp-", ::getpid(), "-", counter++);
}

void check_names(const fs::path& dir, const std::vector<FolderFile>& files) {
  for (const auto& [name, write] : files) {
    ADAPTERS_CHECK(!name.empty() && name.find('/') == std::string::npos && name != "." && name != "..", dir.string(),
                   ": '", name, "' is not a plain file name");
  }
}

// A folder that does not exist yet: built under a temporary name beside it, then renamed.
void write_new_folder(const fs::path& dir, const std::vector<FolderFile>& files) {
  const fs::path parent = dir.has_parent_path() ? dir.parent_path() : fs::path(".");
  fs::create_directories(parent);
  const fs::path staging = parent / (dir.filename().string() + unique_suffix());
  try {
    fs::create_directory(staging);
    for (const auto& [name, write] : files) write(staging / name);
    fs::rename(staging, dir);
  } catch (...) {
    io::remove_tree(staging);
    throw;
  }
}

// A folder that exists: every file under a temporary name first, then all renamed into place.
void write_into_folder(const fs::path& dir, const std::vector<FolderFile>& files) {
  std::vector<std::pair<fs::path, fs::path>> staged;
  try {
    for (const auto& [name, write] : files) {
      const fs::path tmp = dir / (name + unique_suffix());
      staged.emplace_back(tmp, dir / name);
      write(tmp);
    }
  } catch (...) {
    std::error_code ignored;
    for (const auto& [tmp, final_path] : staged) fs::remove(tmp, ignored);
    throw;
  }
  // rename() replaces a symbolic link at final_path itself, never the file it points to.
  for (const auto& [tmp, final_path] : staged) fs::rename(tmp, final_path);
}

}  // namespace

void remove_if_symlink(const fs::path& path) {
  std::error_code ec;
  if (!fs::is_symlink(fs::symlink_status(path, ec))) return;
  ADAPTERS_CHECK(fs::remove(path, ec) && !ec, path.string(), ": is a symbolic link, which a write here would follow out of the ",
                 "folder; removing the link failed: ", ec.message());
}

void make_real_folder(const fs::path& dir) {
  remove_if_symlink(dir);
  fs::create_directories(dir);
}

void write_folder_atomically(const fs::path& dir, const std::vector<FolderFile>& files) {
  check_names(dir, files);
  remove_if_symlink(dir);
  const fs::file_status status = fs::symlink_status(dir);
  if (!fs::exists(status)) {
    write_new_folder(dir, files);
    return;
  }
  ADAPTERS_CHECK(fs::is_directory(dir), dir.string(), ": exists and is not a folder");
  write_into_folder(dir, files);
}

}  // namespace adapters::formats
