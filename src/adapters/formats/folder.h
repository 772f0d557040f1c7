// Writing a folder of files all or nothing (PEFT adapter folders, HF model folders): a new folder
// is built beside its final place under a temporary name and renamed into place; into a folder
// that exists, every file is first written under a temporary name, then all are renamed over
// their final names. A file that is a symbolic link is replaced by the new file, never written
// through (rename does not follow links), so nothing outside the folder is touched.
#pragma once

#include <filesystem>
#include <functional>
#include <string>
#include <utility>
#include <vector>

namespace adapters::formats {

namespace fs = std::filesystem;

// A file of the folder: its name (no folders in it) and the function writing it to a given path.
using FolderFile = std::pair<std::string, std::function<void(const fs::path&)>>;

// Writes `files` into `dir` (created with its parents when missing) so that either all of them
// land or, when a writer throws, none does: the temporaries are removed and the exception is
// rethrown. A symbolic link at `dir` is replaced by a new folder, never written through. Throws
// adapters::Error when `dir` exists and is not a folder.
void write_folder_atomically(const fs::path& dir, const std::vector<FolderFile>& files);

// A folder to write into inside an output folder: a symbolic link planted there (pointing out of
// the output folder) is removed, never followed, and a real folder is created (with its parents).
void make_real_folder(const fs::path& dir);
// Removes `path` when it is a symbolic link (the link, not what it points to).
void remove_if_symlink(const fs::path& path);

}  // namespace adapters::formats
