// Model hub client: turns a model argument (a local folder or a Hugging Face repo id
// "org/name[@revision]") into a local folder. Repo ids resolve from the Hugging Face cache and,
// when missing there, download into it with libcurl (resumable, SHA-256 checked), in exactly
// the layout of huggingface_hub: models--org--name/{blobs/<etag>, snapshots/<commit>/<file> ->
// ../../blobs/<etag>, refs/<revision>}. A snapshot already complete in the cache (config.json
// and weights present) is used without asking the network, so a branch cached once stays at
// the commit it had then until its refs/<revision> file is removed.
#pragma once

#include <filesystem>
#include <string>

namespace adapters::hub {

inline constexpr const char* kDefaultEndpoint = "https://huggingface.co";

// Where and how to reach the hub; from_env() reads the variables huggingface_hub reads.
struct HubOptions {
  std::string endpoint = kDefaultEndpoint;  // no trailing '/'
  std::string token;                        // sent as "Authorization: Bearer <token>" if set
  std::filesystem::path cache_dir;          // the hub cache: holds models--org--name folders
  bool offline = false;                     // never touch the network

  // endpoint: $HF_ENDPOINT. token: $HF_TOKEN, else the file $HF_TOKEN_PATH or $HF_HOME/token.
  // cache_dir: $HF_HUB_CACHE, else $HF_HOME/hub; HF_HOME defaults to
  // $XDG_CACHE_HOME/huggingface or ~/.cache/huggingface. offline: $HF_HUB_OFFLINE is
  // 1/true/yes/on.
  static HubOptions from_env();
};

// A repo id with its revision: "org/name" (revision "main") or "org/name@revision", where the
// revision is a branch, a tag or a 40-hex commit hash.
struct RepoRef {
  std::string repo_id;
  std::string revision = "main";

  // Throws adapters::Error naming `arg` and the rule it breaks (the rules of huggingface_hub:
  // exactly one '/', characters [A-Za-z0-9._-], no "--" or "..", at most 96 characters).
  static RepoRef parse(const std::string& arg);

  // "models--org--name": the repo's folder in the cache.
  std::string cache_folder_name() const;
};

// True when `arg` has the form of a repo id and names no existing local path.
bool is_repo_id(const std::string& arg);

// The local folder of the model `model_arg`: an existing folder as is; a repo id as its
// snapshot folder in options.cache_dir, downloaded first (config.json, the weights, the
// tokenizer files) unless already complete there. Throws adapters::Error when the folder
// does not exist, when the repo is missing from the cache while offline, and on HTTP,
// network and checksum failures.
std::filesystem::path resolve_model(const std::string& model_arg,
                                    const HubOptions& options = HubOptions::from_env());

// Lower-case hex SHA-256 of a file's bytes: the etag the hub gives files stored with LFS.
std::string sha256_file_hex(const std::filesystem::path& file);

}  // namespace adapters::hub
