// Tests of the model hub client against fixture repos served by a local HTTP server (httplib)
// with the routes of the Hugging Face hub: download into a temporary cache and its layout,
// reuse offline, resume, checksums, tokens, revisions, sharded weights, model arguments.
#include "adapters/hub/hub.h"

#include "adapters/core/error.h"

#include <gtest/gtest.h>
#include <httplib.h>
#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <unistd.h>

namespace adapters::hub {
namespace {

namespace fs = std::filesystem;

constexpr const char* kRepo = "org/tiny-bert";
constexpr const char* kMainCommit = "0123456789abcdef0123456789abcdef01234567";
constexpr const char* kTagCommit = "fedcba9876543210fedcba9876543210fedcba98";

std::string read_bytes(const fs::path& file) {
  std::ifstream in(file, std::ios::binary);
  EXPECT_TRUE(in) << "cannot read " << file;
  return std::string(std::istreambuf_iterator<char>(in), {});
}

void write_bytes(const fs::path& file, const std::string& bytes) {
  fs::create_directories(file.parent_path());
  std::ofstream(file, std::ios::binary | std::ios::trunc) << bytes;
}

// A fresh folder from mkdtemp, removed with everything in it when the object dies.
class TempDir {
 public:
  TempDir() {
    std::string pattern = (fs::temp_directory_path() / "adapters-hub-XXXXXX").string();
    EXPECT_NE(::mkdtemp(pattern.data()), nullptr);
    path_ = pattern;
  }
  ~TempDir() { fs::remove_all(path_); }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

std::string sha256_of(const std::string& bytes) {
  TempDir dir;
  write_bytes(dir.path() / "bytes", bytes);
  return sha256_file_hex(dir.path() / "bytes");
}

// One file of a fixture repo. LFS files are served like the hub serves them: a 302 to a CDN
// route carrying X-Linked-Etag (their SHA-256) and X-Linked-Size.
struct RepoFile {
  std::string bytes;
  bool lfs = false;
  std::string etag;  // what the server advertises
};

RepoFile regular_file(std::string bytes) {
  const std::string etag = sha256_of(bytes).substr(0, 40);  // a git blob id has 40 hex digits
  return {std::move(bytes), false, etag};
}

RepoFile lfs_file(std::string bytes) {
  const std::string etag = sha256_of(bytes);
  return {std::move(bytes), true, etag};
}

// Every commit of a fixture repo has the same files.
struct FixtureRepo {
  std::map<std::string, std::string> branches;  // branch or tag -> commit
  std::map<std::string, RepoFile> files;
  std::set<std::string> unserved;  // listed by the API, yet 404 on resolve

  std::optional<std::string> commit_of(const std::string& revision) const {
    if (branches.count(revision)) return branches.at(revision);
    for (const auto& [branch, commit] : branches)
      if (commit == revision) return commit;
    return std::nullopt;
  }
};

// The tiny BERT of the fixtures as "org/tiny-bert": main and the tag v1.0, tokenizer files, and
// files a model download skips (README.md, a second weights format).
FixtureRepo tiny_bert_repo() {
  const fs::path bert = fs::path(ADAPTERS_FIXTURES) / "adapterhub" / "models" / "bert";
  FixtureRepo repo;
  repo.branches = {{"main", kMainCommit}, {"v1.0", kTagCommit}};
  repo.files["config.json"] = regular_file(read_bytes(bert / "config.json"));
  repo.files["model.safetensors"] = lfs_file(read_bytes(bert / "model.safetensors"));
  repo.files["vocab.txt"] = regular_file("[PAD]\n[UNK]\n[CLS]\n[SEP]\nhello\n");
  repo.files["spiece.model"] = lfs_file("not really a sentencepiece model");
  repo.files["README.md"] = regular_file("# tiny bert\n");
  repo.files["pytorch_model.bin"] = lfs_file("unused: safetensors is preferred");
  return repo;
}

struct ServerConfig {
  std::string required_token;  // when set, the API and resolve routes answer 401 without it
  bool ignore_range = false;   // answer Range requests with the whole file and 200
};

struct SeenRequest {
  std::string path, range, authorization;
};

bool is_cdn(const SeenRequest& request) { return request.path.rfind("/cdn/", 0) == 0; }

// An httplib server on 127.0.0.1 (any free port) serving fixture repos under the hub's routes:
// GET /api/models/{repo}/revision/{revision}, GET|HEAD /{repo}/resolve/{revision}/{file}, and
// GET /cdn/{repo}/{file} for LFS files (with Range support). It records every request.
class FixtureHub {
 public:
  explicit FixtureHub(std::map<std::string, FixtureRepo> repos, ServerConfig config = {})
      : repos_(std::move(repos)), config_(std::move(config)) {
    server_.set_pre_routing_handler([this](const httplib::Request& request, httplib::Response&) {
      const std::lock_guard<std::mutex> lock(mutex_);
      seen_.push_back({request.path, request.get_header_value("Range"),
                       request.get_header_value("Authorization")});
      return httplib::Server::HandlerResponse::Unhandled;
    });
    server_.Get(R"(/api/models/([^/]+/[^/]+)/revision/(.+))",
                [this](const httplib::Request& request, httplib::Response& response) {
                  serve_api(request, response);
                });
    server_.Get(R"(/([^/]+/[^/]+)/resolve/([^/]+)/(.+))",
                [this](const httplib::Request& request, httplib::Response& response) {
                  serve_resolve(request, response);
                });
    server_.Get(R"(/cdn/([^/]+/[^/]+)/(.+))",
                [this](const httplib::Request& request, httplib::Response& response) {
                  serve_cdn(request, response);
                });
    port_ = server_.bind_to_any_port("127.0.0.1");
    thread_ = std::thread([this] { server_.listen_after_bind(); });
    while (!server_.is_running()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  ~FixtureHub() {
    server_.stop();
    thread_.join();
  }

  std::string endpoint() const { return "http://127.0.0.1:" + std::to_string(port_); }

  std::vector<SeenRequest> requests() const {
    const std::lock_guard<std::mutex> lock(mutex_);
    return seen_;
  }

  // The etag served for `file` of `repo` from now on (to simulate a corrupted download).
  void advertise_etag(const std::string& repo, const std::string& file, const std::string& etag) {
    const std::lock_guard<std::mutex> lock(mutex_);
    repos_.at(repo).files.at(file).etag = etag;
  }

 private:
  static void fail(httplib::Response& response, int status, const std::string& code,
                   const std::string& message) {
    response.status = status;
    response.set_header("X-Error-Code", code);
    response.set_content(nlohmann::json{{"error", message}}.dump(), "application/json");
  }

  bool authorized(const httplib::Request& request, httplib::Response& response) const {
    if (config_.required_token.empty() ||
        request.get_header_value("Authorization") == "Bearer " + config_.required_token)
      return true;
    fail(response, 401, "GatedRepo", "Invalid credentials");
    return false;
  }

  void serve_api(const httplib::Request& request, httplib::Response& response) {
    if (!authorized(request, response)) return;
    const std::lock_guard<std::mutex> lock(mutex_);
    const auto repo = repos_.find(request.matches[1]);
    if (repo == repos_.end()) return fail(response, 404, "RepoNotFound", "Repository not found");
    const auto commit = repo->second.commit_of(request.matches[2]);
    if (!commit) return fail(response, 404, "RevisionNotFound", "Invalid rev id");
    nlohmann::json siblings = nlohmann::json::array();
    for (const auto& [name, file] : repo->second.files) siblings.push_back({{"rfilename", name}});
    response.set_content(
        nlohmann::json{{"id", repo->first}, {"sha", *commit}, {"siblings", siblings}}.dump(),
        "application/json");
  }

  void serve_resolve(const httplib::Request& request, httplib::Response& response) {
    if (!authorized(request, response)) return;
    const std::lock_guard<std::mutex> lock(mutex_);
    const auto repo = repos_.find(request.matches[1]);
    if (repo == repos_.end()) return fail(response, 404, "RepoNotFound", "Repository not found");
    const auto commit = repo->second.commit_of(request.matches[2]);
    if (!commit) return fail(response, 404, "RevisionNotFound", "Invalid rev id");
    const auto file = repo->second.files.find(request.matches[3]);
    if (file == repo->second.files.end() || repo->second.unserved.count(file->first))
      return fail(response, 404, "EntryNotFound", "Entry not found");
    response.set_header("X-Repo-Commit", *commit);
    if (file->second.lfs) {
      response.status = 302;
      response.set_header("Location", "/cdn/" + repo->first + "/" + file->first);
      response.set_header("X-Linked-Etag", "\"" + file->second.etag + "\"");
      response.set_header("X-Linked-Size", std::to_string(file->second.bytes.size()));
    } else {
      response.set_header("ETag", "W/\"" + file->second.etag + "\"");
      response.set_content(file->second.bytes, "application/octet-stream");
    }
  }

  void serve_cdn(const httplib::Request& request, httplib::Response& response) {
    const std::lock_guard<std::mutex> lock(mutex_);
    const auto repo = repos_.find(request.matches[1]);
    if (repo == repos_.end() || !repo->second.files.count(request.matches[2]))
      return fail(response, 404, "", "no such blob");
    const std::string bytes = repo->second.files.at(request.matches[2]).bytes;
    if (!config_.ignore_range)
      return response.set_content(bytes, "application/octet-stream");  // httplib applies Range
    response.status = 200;                                             // else httplib answers 206
    response.set_chunked_content_provider("application/octet-stream",
                                          [bytes](std::size_t, httplib::DataSink& sink) {
                                            sink.write(bytes.data(), bytes.size());
                                            sink.done();
                                            return true;
                                          });
  }

  std::map<std::string, FixtureRepo> repos_;
  const ServerConfig config_;
  httplib::Server server_;
  int port_ = 0;
  std::thread thread_;
  mutable std::mutex mutex_;
  std::vector<SeenRequest> seen_;
};

// A fixture hub with org/tiny-bert and an empty cache, and the options that point at both.
class HubTest : public ::testing::Test {
 protected:
  explicit HubTest(ServerConfig config = {})
      : hub_({{kRepo, tiny_bert_repo()}}, std::move(config)) {
    options_.endpoint = hub_.endpoint();
    options_.cache_dir = cache_.path();
  }

  fs::path repo_folder() const { return cache_.path() / "models--org--tiny-bert"; }
  const RepoFile& file(const std::string& name) const { return files_.at(name); }
  std::size_t count_requests(const std::function<bool(const SeenRequest&)>& match) const {
    std::size_t count = 0;
    for (const SeenRequest& request : hub_.requests()) count += match(request) ? 1 : 0;
    return count;
  }

  TempDir cache_;
  FixtureHub hub_;
  HubOptions options_;
  std::map<std::string, RepoFile> files_ = tiny_bert_repo().files;
};

// A fixture hub, an empty cache and the options that point at both.
struct HubSession {
  explicit HubSession(std::map<std::string, FixtureRepo> repos) : hub(std::move(repos)) {
    options.endpoint = hub.endpoint();
    options.cache_dir = cache.path();
  }
  TempDir cache;
  FixtureHub hub;
  HubOptions options;
};

std::string error_of(const std::function<void()>& action) {
  try {
    action();
  } catch (const Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected an adapters::Error";
  return "";
}

TEST_F(HubTest, DownloadsModelIntoCacheWithHubLayout) {
  const fs::path snapshot = resolve_model(kRepo, options_);

  EXPECT_EQ(snapshot, repo_folder() / "snapshots" / kMainCommit);
  for (const char* name : {"config.json", "model.safetensors", "vocab.txt", "spiece.model"}) {
    ASSERT_TRUE(fs::is_symlink(snapshot / name)) << name;
    const fs::path blob = repo_folder() / "blobs" / file(name).etag;
    EXPECT_EQ(fs::read_symlink(snapshot / name), fs::path("../../blobs") / file(name).etag) << name;
    EXPECT_TRUE(fs::is_regular_file(blob) && !fs::is_symlink(blob)) << name;
    EXPECT_EQ(read_bytes(snapshot / name), file(name).bytes) << name;
  }
  EXPECT_FALSE(fs::exists(snapshot / "README.md"));
  EXPECT_FALSE(fs::exists(snapshot / "pytorch_model.bin"));
  EXPECT_EQ(read_bytes(repo_folder() / "refs" / "main"), kMainCommit);
  for (const auto& entry : fs::directory_iterator(repo_folder() / "blobs"))
    EXPECT_NE(entry.path().extension(), ".incomplete") << entry.path();
}

TEST_F(HubTest, CompleteSnapshotIsReusedWithoutRequests) {
  const fs::path downloaded = resolve_model(kRepo, options_);
  const std::size_t requests_after_download = hub_.requests().size();

  options_.offline = true;
  EXPECT_EQ(resolve_model(kRepo, options_), downloaded);
  options_.offline = false;
  EXPECT_EQ(resolve_model(kRepo, options_), downloaded);
  EXPECT_EQ(hub_.requests().size(), requests_after_download);
}

TEST_F(HubTest, ResumesPartialDownloadWithRangeRequest) {
  const std::string& weights = file("model.safetensors").bytes;
  const std::size_t half = weights.size() / 2;
  const fs::path partial =
      repo_folder() / "blobs" / (file("model.safetensors").etag + ".incomplete");
  write_bytes(partial, weights.substr(0, half));

  const fs::path snapshot = resolve_model(kRepo, options_);

  EXPECT_EQ(count_requests([&](const SeenRequest& r) {
              return is_cdn(r) && r.range == "bytes=" + std::to_string(half) + "-";
            }),
            1u);
  EXPECT_EQ(read_bytes(snapshot / "model.safetensors"), weights);
  EXPECT_FALSE(fs::exists(partial));
}

class HubIgnoringRangeTest : public HubTest {
 protected:
  HubIgnoringRangeTest() : HubTest(ServerConfig{"", /*ignore_range=*/true}) {}
};

TEST_F(HubIgnoringRangeTest, RestartsWhenServerAnswersRangeWithWholeFile) {
  const std::string& weights = file("model.safetensors").bytes;
  write_bytes(repo_folder() / "blobs" / (file("model.safetensors").etag + ".incomplete"),
              "garbage, not a prefix");

  const fs::path snapshot = resolve_model(kRepo, options_);

  EXPECT_EQ(count_requests([](const SeenRequest& r) { return is_cdn(r) && !r.range.empty(); }), 1u);
  EXPECT_EQ(read_bytes(snapshot / "model.safetensors"), weights);
}

TEST_F(HubTest, ChecksumMismatchDeletesDownloadAndLinksNothing) {
  const std::string wrong = sha256_of("other bytes");
  hub_.advertise_etag(kRepo, "model.safetensors", wrong);

  const std::string error = error_of([&] { resolve_model(kRepo, options_); });

  EXPECT_NE(error.find(kRepo), std::string::npos) << error;
  EXPECT_NE(error.find("model.safetensors"), std::string::npos) << error;
  EXPECT_NE(error.find("expected sha256 " + wrong), std::string::npos) << error;
  EXPECT_NE(error.find("found " + file("model.safetensors").etag), std::string::npos) << error;
  EXPECT_FALSE(fs::exists(repo_folder() / "blobs" / wrong));
  EXPECT_FALSE(fs::exists(repo_folder() / "blobs" / (wrong + ".incomplete")));
  EXPECT_FALSE(fs::exists(repo_folder() / "snapshots" / kMainCommit / "model.safetensors"));
  EXPECT_FALSE(fs::exists(repo_folder() / "refs" / "main"));
}

TEST_F(HubTest, MissingRepoNamesRepoRevisionAndStatus) {
  const std::string error = error_of([&] { resolve_model("org/missing@v2", options_); });

  EXPECT_NE(error.find("org/missing@v2"), std::string::npos) << error;
  EXPECT_NE(error.find("not found (HTTP 404"), std::string::npos) << error;
  EXPECT_NE(error.find("Repository not found"), std::string::npos) << error;
}

TEST_F(HubTest, RevisionSelectsTagOrCommit) {
  const fs::path tagged = resolve_model(std::string(kRepo) + "@v1.0", options_);
  EXPECT_EQ(tagged, repo_folder() / "snapshots" / kTagCommit);
  EXPECT_EQ(read_bytes(repo_folder() / "refs" / "v1.0"), kTagCommit);
  EXPECT_EQ(count_requests([](const SeenRequest& r) {
              return r.path == "/api/models/org/tiny-bert/revision/v1.0";
            }),
            1u);

  const fs::path pinned = resolve_model(std::string(kRepo) + "@" + kMainCommit, options_);
  EXPECT_EQ(pinned, repo_folder() / "snapshots" / kMainCommit);
  EXPECT_FALSE(fs::exists(repo_folder() / "refs" / kMainCommit));
  EXPECT_EQ(read_bytes(pinned / "config.json"), file("config.json").bytes);

  options_.offline = true;
  EXPECT_EQ(resolve_model(std::string(kRepo) + "@" + kMainCommit, options_), pinned);
}

TEST(HubOffline, EmptyCacheErrorNamesRepoCacheAndHubOffline) {
  TempDir cache;
  HubOptions options;
  options.endpoint = "http://127.0.0.1:1";  // would fail if contacted
  options.cache_dir = cache.path();
  options.offline = true;

  const std::string error = error_of([&] { resolve_model(kRepo, options); });

  EXPECT_NE(error.find(std::string(kRepo) + "@main"), std::string::npos) << error;
  EXPECT_NE(error.find((cache.path() / "models--org--tiny-bert").string()), std::string::npos)
      << error;
  EXPECT_NE(error.find("HF_HUB_OFFLINE"), std::string::npos) << error;
}

TEST(HubNetwork, UnreachableEndpointErrorNamesUrl) {
  TempDir cache;
  HubOptions options;
  options.endpoint = "http://127.0.0.1:1";
  options.cache_dir = cache.path();

  const std::string error = error_of([&] { resolve_model(kRepo, options); });

  EXPECT_NE(error.find("http://127.0.0.1:1/api/models/org/tiny-bert/revision/main"),
            std::string::npos)
      << error;
  EXPECT_NE(error.find("failed: "), std::string::npos) << error;
}

class HubWithTokenTest : public HubTest {
 protected:
  HubWithTokenTest() : HubTest(ServerConfig{"hf_secret", false}) {}
};

TEST_F(HubWithTokenTest, SendsTokenAsBearerHeader) {
  options_.token = "hf_secret";
  const fs::path snapshot = resolve_model(kRepo, options_);

  EXPECT_EQ(read_bytes(snapshot / "model.safetensors"), file("model.safetensors").bytes);
  EXPECT_GT(
      count_requests([](const SeenRequest& r) { return r.authorization == "Bearer hf_secret"; }),
      0u);
  EXPECT_EQ(
      count_requests([](const SeenRequest& r) { return !is_cdn(r) && r.authorization.empty(); }),
      0u);
}

TEST_F(HubWithTokenTest, MissingTokenIs401NamingHfToken) {
  const std::string error = error_of([&] { resolve_model(kRepo, options_); });

  EXPECT_NE(error.find("HTTP 401"), std::string::npos) << error;
  EXPECT_NE(error.find("set HF_TOKEN"), std::string::npos) << error;
  EXPECT_FALSE(fs::exists(repo_folder()));
}

TEST(HubErrors, MissingFileNamesRepoRevisionAndFile) {
  FixtureRepo repo = tiny_bert_repo();
  repo.unserved = {"vocab.txt"};
  HubSession session({{kRepo, repo}});

  const std::string error = error_of([&] { resolve_model(kRepo, session.options); });

  EXPECT_NE(error.find(str(kRepo, "@main: file vocab.txt (commit ", kMainCommit, ")")),
            std::string::npos)
      << error;
  EXPECT_NE(error.find("not found (HTTP 404"), std::string::npos) << error;
}

TEST(HubErrors, RepoWithoutWeightsIsRejected) {
  FixtureRepo repo;
  repo.branches = {{"main", kMainCommit}};
  repo.files["config.json"] = regular_file("{}");
  HubSession session({{"org/no-weights", repo}});

  const std::string error = error_of([&] { resolve_model("org/no-weights", session.options); });

  EXPECT_NE(error.find("org/no-weights@main: no weights"), std::string::npos) << error;
  EXPECT_NE(error.find("model.safetensors"), std::string::npos) << error;
}

TEST(HubSharded, DownloadsIndexAndEveryShardIncludingNestedOnes) {
  FixtureRepo repo;
  repo.branches = {{"main", kMainCommit}};
  repo.files["config.json"] = regular_file(R"({"model_type": "bert"})");
  repo.files["model.safetensors.index.json"] = regular_file(R"({"metadata": {}, "weight_map": {
      "a": "shards/part-1.safetensors", "b": "shards/part-2.safetensors",
      "c": "shards/part-1.safetensors"}})");
  repo.files["shards/part-1.safetensors"] = lfs_file("first shard");
  repo.files["shards/part-2.safetensors"] = lfs_file("second shard");
  HubSession session({{"org/sharded", repo}});
  session.options.endpoint += "/";  // a trailing '/' is tolerated

  const fs::path snapshot = resolve_model("org/sharded", session.options);

  for (const char* name : {"shards/part-1.safetensors", "shards/part-2.safetensors"}) {
    const RepoFile& shard = repo.files.at(name);
    EXPECT_EQ(read_bytes(snapshot / name), shard.bytes) << name;
    EXPECT_EQ(fs::read_symlink(snapshot / name), fs::path("../../../blobs") / shard.etag) << name;
  }
  session.options.offline = true;
  EXPECT_EQ(resolve_model("org/sharded", session.options), snapshot);
}

// Runs in `folder` while alive.
class WorkingDirectory {
 public:
  explicit WorkingDirectory(const fs::path& folder) : previous_(fs::current_path()) {
    fs::current_path(folder);
  }
  ~WorkingDirectory() { fs::current_path(previous_); }

 private:
  fs::path previous_;
};

TEST(ModelArgument, LocalFolderPassesThrough) {
  const std::string bert =
      (fs::path(ADAPTERS_FIXTURES) / "adapterhub" / "models" / "bert").string();
  HubOptions offline;
  offline.offline = true;
  EXPECT_EQ(resolve_model(bert, offline), fs::path(bert));
  EXPECT_FALSE(is_repo_id(bert));

  TempDir dir;
  fs::create_directories(dir.path() / "org" / "name");
  const WorkingDirectory inside(dir.path());
  EXPECT_FALSE(is_repo_id("org/name"));  // an existing folder wins over the repo id
  EXPECT_EQ(resolve_model("org/name", offline), fs::path("org/name"));
  EXPECT_TRUE(is_repo_id("org/other"));

  const std::string error = error_of([&] { resolve_model("no/such/folder", offline); });
  EXPECT_NE(error.find("no/such/folder: no such folder and not a repo id (org/name[@revision])"),
            std::string::npos)
      << error;
}

TEST(ModelArgument, ParsesRepoIdAndRevision) {
  const RepoRef plain = RepoRef::parse("org/name");
  EXPECT_EQ(plain.repo_id, "org/name");
  EXPECT_EQ(plain.revision, "main");
  EXPECT_EQ(plain.cache_folder_name(), "models--org--name");

  const RepoRef pinned = RepoRef::parse("Org_1/na.me-2@refs/pr/1");
  EXPECT_EQ(pinned.repo_id, "Org_1/na.me-2");
  EXPECT_EQ(pinned.revision, "refs/pr/1");
}

TEST(ModelArgument, RejectsBadRepoIdsNamingTheArgument) {
  const std::vector<std::string> bad = {"name",
                                        "a/b/c",
                                        "org/na--me",
                                        "org/na..me",
                                        "org/name@",
                                        "org/-name",
                                        "org/name.git",
                                        "org/na me",
                                        "/name",
                                        "org/name@../x",
                                        "org/" + std::string(100, 'n')};
  for (const std::string& arg : bad) {
    EXPECT_FALSE(is_repo_id(arg)) << arg;
    const std::string error = error_of([&] { RepoRef::parse(arg); });
    EXPECT_NE(error.find("'" + arg + "' is not a repo id"), std::string::npos) << error;
  }
}

// Sets environment variables for its lifetime and restores them afterwards.
class ScopedEnv {
 public:
  void set(const std::string& name, const std::optional<std::string>& value) {
    if (!saved_.count(name)) {
      const char* old = std::getenv(name.c_str());
      saved_[name] = old ? std::optional<std::string>(old) : std::nullopt;
    }
    value ? ::setenv(name.c_str(), value->c_str(), 1) : ::unsetenv(name.c_str());
  }
  ~ScopedEnv() {
    for (const auto& [name, value] : saved_)
      value ? ::setenv(name.c_str(), value->c_str(), 1) : ::unsetenv(name.c_str());
  }

 private:
  std::map<std::string, std::optional<std::string>> saved_;
};

TEST(HubOptionsFromEnv, ReadsTheVariablesOfHuggingfaceHub) {
  TempDir home;
  write_bytes(home.path() / "token", "hf_from_file\n");
  ScopedEnv env;
  env.set("HF_HOME", home.path().string());
  env.set("HF_ENDPOINT", "http://mirror.example/");
  env.set("HF_TOKEN", std::nullopt);
  env.set("HF_TOKEN_PATH", std::nullopt);
  env.set("HF_HUB_CACHE", std::nullopt);
  env.set("HF_HUB_OFFLINE", "YES");

  HubOptions options = HubOptions::from_env();
  EXPECT_EQ(options.endpoint, "http://mirror.example");
  EXPECT_EQ(options.token, "hf_from_file");
  EXPECT_EQ(options.cache_dir, home.path() / "hub");
  EXPECT_TRUE(options.offline);

  env.set("HF_TOKEN", "hf_from_env");
  env.set("HF_HUB_CACHE", (home.path() / "elsewhere").string());
  env.set("HF_HUB_OFFLINE", "0");
  env.set("HF_ENDPOINT", std::nullopt);
  options = HubOptions::from_env();
  EXPECT_EQ(options.endpoint, "https://huggingface.co");
  EXPECT_EQ(options.token, "hf_from_env");
  EXPECT_EQ(options.cache_dir, home.path() / "elsewhere");
  EXPECT_FALSE(options.offline);
}

TEST(Sha256, MatchesKnownDigest) {
  EXPECT_EQ(sha256_of("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(sha256_of(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
}

}  // namespace
}  // namespace adapters::hub
