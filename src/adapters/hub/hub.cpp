// The model hub client (see hub.h): the HF_* environment, repo-id rules, the cache layout of
// huggingface_hub, a small libcurl wrapper, and the per-file download (HEAD for the etag, GET
// into blobs/<etag>.incomplete with Range resume, size and SHA-256 checks, rename, symlink).
#include "adapters/hub/hub.h"

#include "adapters/core/error.h"
#include "adapters/core/json_parse.h"

#include <curl/curl.h>
#include <nlohmann/json.hpp>
#include <openssl/evp.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string_view>
#include <utility>
#include <vector>

#include <fcntl.h>
#include <pwd.h>
#include <sys/file.h>
#include <unistd.h>

namespace adapters::hub {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// ---- text and environment ------------------------------------------------------------------

std::string env(const char* name) {
  const char* value = std::getenv(name);
  return value ? value : "";
}

bool starts_with(std::string_view text, std::string_view prefix) {
  return text.substr(0, prefix.size()) == prefix;
}

bool ends_with(std::string_view text, std::string_view suffix) {
  return text.size() >= suffix.size() && text.substr(text.size() - suffix.size()) == suffix;
}

std::string trim(const std::string& text) {
  const auto first = text.find_first_not_of(" \t\r\n");
  if (first == std::string::npos) return "";
  return text.substr(first, text.find_last_not_of(" \t\r\n") - first + 1);
}

std::string to_lower(std::string text) {
  for (char& c : text) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return text;
}

bool is_hex(const std::string& text, std::size_t length) {
  return text.size() == length && text.find_first_not_of("0123456789abcdef") == std::string::npos;
}

bool is_commit_hash(const std::string& revision) { return is_hex(revision, 40); }

std::string error_text() { return std::strerror(errno); }

std::string read_text(const fs::path& file) {
  std::ifstream in(file, std::ios::binary);
  return in ? std::string(std::istreambuf_iterator<char>(in), {}) : "";
}

fs::path home_dir() {
  if (std::string home = env("HOME"); !home.empty()) return home;
  const passwd* user = ::getpwuid(::getuid());
  return user ? fs::path(user->pw_dir) : fs::current_path();
}

fs::path expand_user(const std::string& path) {
  return starts_with(path, "~/") ? home_dir() / path.substr(2) : fs::path(path);
}

fs::path hf_home() {
  if (std::string home = env("HF_HOME"); !home.empty()) return expand_user(home);
  if (std::string xdg = env("XDG_CACHE_HOME"); !xdg.empty())
    return expand_user(xdg) / "huggingface";
  return home_dir() / ".cache" / "huggingface";
}

bool env_flag(const char* name) {
  static const std::set<std::string> kTrue = {"1", "true", "yes", "on"};
  return kTrue.count(to_lower(trim(env(name)))) > 0;
}

std::string without_trailing_slashes(std::string url) {
  while (!url.empty() && url.back() == '/') url.pop_back();
  return url;
}

// Percent-encodes all but the unreserved characters of RFC 3986 (and '/' when asked).
std::string percent_encode(const std::string& text, bool keep_slashes) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : text) {
    if (std::isalnum(c) || std::string_view("-._~").find(c) != std::string_view::npos ||
        (keep_slashes && c == '/')) {
      out += static_cast<char>(c);
    } else {
      out += {'%', kHex[c >> 4], kHex[c & 15]};
    }
  }
  return out;
}

// ---- repo ids --------------------------------------------------------------------------------

std::optional<std::string> repo_id_problem(const std::string& id) {
  if (id.size() > 96)
    return str("the repo id has ", id.size(), " characters, at most 96 are allowed");
  const auto slash = id.find('/');
  if (slash == std::string::npos || id.find('/', slash + 1) != std::string::npos)
    return std::string("expected exactly one '/' between organization and name");
  for (char c : id) {
    if (!std::isalnum(static_cast<unsigned char>(c)) &&
        std::string_view("._-/").find(c) == std::string_view::npos)
      return str("found the character '", c, "', allowed are letters, digits, '.', '_' and '-'");
  }
  if (id.find("--") != std::string::npos || id.find("..") != std::string::npos)
    return std::string("'--' and '..' are not allowed");
  for (const std::string& part : {id.substr(0, slash), id.substr(slash + 1)}) {
    if (part.empty()) return std::string("the organization and the name must not be empty");
    if (std::string_view(".-").find(part.front()) != std::string_view::npos ||
        std::string_view(".-").find(part.back()) != std::string_view::npos)
      return str("'", part, "' must start and end with a letter, digit or '_'");
  }
  if (ends_with(id, ".git")) return std::string("the repo id must not end with .git");
  return std::nullopt;
}

// A relative path without '.', '..' or empty components (a revision, a file of a repo).
std::optional<std::string> relative_path_problem(const std::string& path) {
  if (path.empty()) return std::string("it is empty");
  for (char c : path) {
    if (std::iscntrl(static_cast<unsigned char>(c)) || c == ' ' || c == '\\')
      return std::string("it contains a space, a control character or '\\'");
  }
  std::size_t start = 0;
  while (start <= path.size()) {
    const std::size_t end = std::min(path.find('/', start), path.size());
    const std::string part = path.substr(start, end - start);
    if (part.empty() || part == "." || part == "..")
      return std::string("it has an empty, '.' or '..' path component");
    start = end + 1;
  }
  return std::nullopt;
}

std::optional<std::string> model_ref_problem(const std::string& arg) {
  const auto at = arg.find('@');
  if (auto problem = repo_id_problem(arg.substr(0, at))) return problem;
  if (at == std::string::npos) return std::nullopt;
  if (auto problem = relative_path_problem(arg.substr(at + 1))) return "bad revision: " + *problem;
  return std::nullopt;
}

std::string describe(const RepoRef& ref) { return ref.repo_id + "@" + ref.revision; }

fs::path checked_repo_file(const RepoRef& ref, const std::string& name) {
  const auto problem = relative_path_problem(name);
  ADAPTERS_CHECK(!problem, describe(ref), ": refusing the file name '", name, "': ", *problem);
  return fs::path(name);
}

// ---- cache layout ----------------------------------------------------------------------------

constexpr std::array<const char*, 4> kWeightFiles = {
    "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
    "pytorch_model.bin.index.json"};  // in order of preference

bool is_index_file(const std::string& name) { return ends_with(name, ".index.json"); }

bool is_tokenizer_file(const std::string& name) {
  static const std::set<std::string> kNames = {"tokenizer.json",
                                               "tokenizer_config.json",
                                               "special_tokens_map.json",
                                               "vocab.txt",
                                               "vocab.json",
                                               "merges.txt",
                                               "added_tokens.json"};
  return kNames.count(name) > 0 ||
         (name.find('/') == std::string::npos && ends_with(name, ".model"));
}

// The shard files named by the weight_map of a sharded checkpoint's *.index.json.
std::vector<std::string> shard_names(const fs::path& index_file) {
  const json index = parse_json_file_text(read_text(index_file), index_file.string());
  ADAPTERS_CHECK(
      index.is_object() && index.contains("weight_map") && index["weight_map"].is_object(),
      index_file, ": expected a \"weight_map\" object mapping tensor names to shard files");
  std::set<std::string> shards;
  for (const auto& [tensor, shard] : index["weight_map"].items()) {
    ADAPTERS_CHECK(shard.is_string(), index_file, ": weight_map[\"", tensor,
                   "\"]: expected a file name, found ", shard.dump());
    shards.insert(shard.get<std::string>());
  }
  return {shards.begin(), shards.end()};
}

bool snapshot_complete(const fs::path& snapshot) {
  if (!fs::exists(snapshot / "config.json")) return false;
  for (const std::string name : kWeightFiles) {
    if (!fs::exists(snapshot / name)) continue;
    if (!is_index_file(name)) return true;
    for (const std::string& shard : shard_names(snapshot / name))
      if (!fs::exists(snapshot / shard)) return false;
    return true;
  }
  return false;
}

// The folders of one repo in the cache, laid out as huggingface_hub lays them out.
struct RepoCache {
  fs::path root;  // {cache}/models--org--name

  fs::path blob(const std::string& etag) const { return root / "blobs" / etag; }
  fs::path snapshot(const std::string& commit) const { return root / "snapshots" / commit; }
  fs::path ref(const std::string& revision) const { return root / "refs" / revision; }
  fs::path lock(const std::string& etag) const {
    return root.parent_path() / ".locks" / root.filename() / (etag + ".lock");
  }
};

std::optional<fs::path> cached_snapshot(const RepoCache& cache, const std::string& revision) {
  const std::string commit =
      is_commit_hash(revision) ? revision : trim(read_text(cache.ref(revision)));
  if (commit.empty()) return std::nullopt;
  const fs::path snapshot = cache.snapshot(commit);
  return snapshot_complete(snapshot) ? std::optional(snapshot) : std::nullopt;
}

// A name beside `target` for writing it and renaming over it (atomic, also between processes).
fs::path temp_beside(const fs::path& target) {
  return target.string() + ".tmp." + std::to_string(::getpid());
}

void write_ref(const fs::path& ref_file, const std::string& commit) {
  fs::create_directories(ref_file.parent_path());
  const fs::path temp = temp_beside(ref_file);
  std::ofstream out(temp, std::ios::binary | std::ios::trunc);
  out << commit;
  out.close();
  ADAPTERS_CHECK(out, "cannot write the ref file ", temp);
  fs::rename(temp, ref_file);
}

// snapshots/<commit>/<file> -> ../../blobs/<etag> (one more ../ per folder in <file>).
void link_into_snapshot(const fs::path& blob, const fs::path& link) {
  fs::create_directories(link.parent_path());
  const fs::path temp = temp_beside(link);
  fs::remove(temp);
  fs::create_symlink(blob.lexically_relative(link.parent_path()), temp);
  fs::rename(temp, link);
}

// ---- files -----------------------------------------------------------------------------------

// An exclusive flock(2) held while the object lives: one process at a time writes a blob.
class FileLock {
 public:
  explicit FileLock(const fs::path& path) {
    fs::create_directories(path.parent_path());
    fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    ADAPTERS_CHECK(fd_ >= 0, "cannot create the lock file ", path, ": ", error_text());
    while (::flock(fd_, LOCK_EX) != 0) {
      if (errno == EINTR) continue;
      const std::string reason = error_text();
      ::close(fd_);
      throw Error(str("cannot lock ", path, ": ", reason));
    }
  }
  FileLock(const FileLock&) = delete;
  FileLock& operator=(const FileLock&) = delete;
  ~FileLock() { ::close(fd_); }  // releases the lock

 private:
  int fd_;
};

// ---- HTTP ------------------------------------------------------------------------------------

bool is_success(long status) { return status >= 200 && status < 300; }
bool is_redirect(long status) { return status >= 300 && status < 400; }

struct Response {
  long status = 0;
  std::map<std::string, std::string> headers;  // of the last response; names lower-case
  std::string error_body;                      // start of the body of a non-2xx response

  std::string header(const std::string& name) const {
    const auto it = headers.find(name);
    return it == headers.end() ? "" : it->second;
  }
};

// Receives the body of a 2xx response; begin() runs once its headers are complete.
class BodySink {
 public:
  virtual ~BodySink() = default;
  virtual void begin(long status) = 0;
  virtual void write(const char* data, std::size_t size) = 0;
};

class StringSink : public BodySink {
 public:
  void begin(long) override { text.clear(); }
  void write(const char* data, std::size_t size) override { text.append(data, size); }
  std::string text;
};

// The .incomplete file of a blob, opened when a 2xx response starts: a 206 (the requested rest)
// appends to it, a 200 (the whole file, e.g. from a server ignoring Range) restarts it.
class PartialFile : public BodySink {
 public:
  explicit PartialFile(fs::path path) : path_(std::move(path)) {}
  void begin(long status) override {
    file_.reset(std::fopen(path_.c_str(), status == 206 ? "ab" : "wb"));
    ADAPTERS_CHECK(file_, "cannot write ", path_, ": ", error_text());
  }
  void write(const char* data, std::size_t size) override {
    ADAPTERS_CHECK(std::fwrite(data, 1, size, file_.get()) == size, "cannot write ", path_, ": ",
                   error_text());
  }
  void sync() const {  // before the rename, so a blob is never a partial file
    ADAPTERS_CHECK(!file_ || (std::fflush(file_.get()) == 0 && ::fsync(::fileno(file_.get())) == 0),
                   "cannot flush ", path_, ": ", error_text());
  }

 private:
  fs::path path_;
  std::unique_ptr<std::FILE, int (*)(std::FILE*)> file_{nullptr, std::fclose};
};

// One GET (or HEAD) through a libcurl easy handle, with the token, timeouts and, on request,
// redirects, a Range start and a progress callback. Network failures throw naming the URL.
// libcurl sends the Authorization header to no other host than the first (not to the CDN).
class HttpRequest {
 public:
  HttpRequest(std::string url, const std::string& token)
      : url_(std::move(url)),
        curl_(new_handle(), curl_easy_cleanup),
        headers_(nullptr, curl_slist_free_all) {
    if (!token.empty())
      headers_.reset(curl_slist_append(nullptr, ("Authorization: Bearer " + token).c_str()));
    curl_easy_setopt(curl_.get(), CURLOPT_URL, url_.c_str());
    curl_easy_setopt(curl_.get(), CURLOPT_HTTPHEADER, headers_.get());
    curl_easy_setopt(curl_.get(), CURLOPT_USERAGENT, "adapters-cpp");
    curl_easy_setopt(curl_.get(), CURLOPT_ERRORBUFFER, error_);
    curl_easy_setopt(curl_.get(), CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(curl_.get(), CURLOPT_CONNECTTIMEOUT, 10L);
    curl_easy_setopt(curl_.get(), CURLOPT_LOW_SPEED_LIMIT, 1L);  // abort when stalled ...
    curl_easy_setopt(curl_.get(), CURLOPT_LOW_SPEED_TIME, 60L);  // ... for a minute
    curl_easy_setopt(curl_.get(), CURLOPT_HEADERFUNCTION, &HttpRequest::on_header);
    curl_easy_setopt(curl_.get(), CURLOPT_HEADERDATA, this);
    curl_easy_setopt(curl_.get(), CURLOPT_WRITEFUNCTION, &HttpRequest::on_body);
    curl_easy_setopt(curl_.get(), CURLOPT_WRITEDATA, this);
  }
  HttpRequest(const HttpRequest&) = delete;
  HttpRequest& operator=(const HttpRequest&) = delete;

  HttpRequest& head_only() { return set(CURLOPT_NOBODY, 1L); }
  HttpRequest& follow_redirects() {
    set(CURLOPT_FOLLOWLOCATION, 1L);
    return set(CURLOPT_MAXREDIRS, 10L);
  }
  HttpRequest& range_from(std::uintmax_t offset) {  // the server may still answer 200 (all)
    range_ = std::to_string(offset) + "-";
    curl_easy_setopt(curl_.get(), CURLOPT_RANGE, range_.c_str());
    return *this;
  }
  HttpRequest& on_progress(std::function<void(curl_off_t received)> progress) {
    progress_ = std::move(progress);
    curl_easy_setopt(curl_.get(), CURLOPT_XFERINFOFUNCTION, &HttpRequest::on_transfer);
    curl_easy_setopt(curl_.get(), CURLOPT_XFERINFODATA, this);
    return set(CURLOPT_NOPROGRESS, 0L);
  }

  Response perform(BodySink* sink = nullptr) {
    sink_ = sink;
    const CURLcode code = curl_easy_perform(curl_.get());
    if (callback_error_) std::rethrow_exception(callback_error_);
    ADAPTERS_CHECK(code == CURLE_OK, "request to ", url_,
                   " failed: ", error_[0] ? error_ : curl_easy_strerror(code));
    curl_easy_getinfo(curl_.get(), CURLINFO_RESPONSE_CODE, &response_.status);
    return std::move(response_);
  }

 private:
  static CURL* new_handle() {
    static const CURLcode init = curl_global_init(CURL_GLOBAL_DEFAULT);
    ADAPTERS_CHECK(init == CURLE_OK, "libcurl initialization failed: ", curl_easy_strerror(init));
    CURL* handle = curl_easy_init();
    ADAPTERS_CHECK(handle, "libcurl: curl_easy_init failed");
    return handle;
  }

  HttpRequest& set(CURLoption option, long value) {
    curl_easy_setopt(curl_.get(), option, value);
    return *this;
  }

  // Runs `step`; an exception is kept for perform() and aborts the transfer (C cannot unwind).
  template <typename Step>
  std::size_t guarded(std::size_t size, Step&& step) {
    try {
      step();
      return size;
    } catch (...) {
      callback_error_ = std::current_exception();
      return 0;  // anything but `size` aborts the transfer
    }
  }

  static std::size_t on_header(char* data, std::size_t /*always 1*/, std::size_t size, void* self) {
    auto& request = *static_cast<HttpRequest*>(self);
    return request.guarded(size, [&] { request.take_header_line(trim(std::string(data, size))); });
  }

  static std::size_t on_body(char* data, std::size_t /*always 1*/, std::size_t size, void* self) {
    auto& request = *static_cast<HttpRequest*>(self);
    return request.guarded(size, [&] {
      if (is_success(request.status_) && request.sink_)
        request.sink_->write(data, size);
      else if (request.response_.error_body.size() < 4096)
        request.response_.error_body.append(data, size);
    });
  }

  static int on_transfer(void* self, curl_off_t, curl_off_t received, curl_off_t, curl_off_t) {
    static_cast<HttpRequest*>(self)->progress_(received);
    return 0;
  }

  void take_header_line(const std::string& line) {
    if (starts_with(line, "HTTP/")) {  // a new response (after a redirect or a 100 Continue)
      response_.headers.clear();
      const auto space = line.find(' ');
      status_ = space == std::string::npos ? 0 : std::atol(line.c_str() + space + 1);
    } else if (line.empty()) {  // end of this response's headers
      if (is_success(status_) && sink_) sink_->begin(status_);
    } else if (const auto colon = line.find(':'); colon != std::string::npos) {
      response_.headers[to_lower(trim(line.substr(0, colon)))] = trim(line.substr(colon + 1));
    }
  }

  std::string url_;
  std::unique_ptr<CURL, decltype(&curl_easy_cleanup)> curl_;
  std::unique_ptr<curl_slist, decltype(&curl_slist_free_all)> headers_;
  char error_[CURL_ERROR_SIZE] = {};
  std::string range_;
  long status_ = 0;
  Response response_;
  BodySink* sink_ = nullptr;
  std::function<void(curl_off_t)> progress_;
  std::exception_ptr callback_error_;
};

// What the hub said beyond the status code: its X-Error-Message header or JSON {"error": ...}.
std::string server_message(const Response& response) {
  if (std::string message = response.header("x-error-message"); !message.empty()) return message;
  const json body = try_parse_json(response.error_body).value_or(json());
  return body.is_object() && body.contains("error") && body["error"].is_string()
             ? body["error"].get<std::string>()
             : "";
}

[[noreturn]] void throw_http_error(const Response& response, const std::string& url,
                                   const std::string& subject, const HubOptions& options) {
  const std::string said = server_message(response);
  const std::string detail =
      str("HTTP ", response.status, " from ", url, said.empty() ? "" : ": " + said);
  if (response.status == 401 || response.status == 403) {
    throw Error(
        str(subject, ": access denied (", detail, "); ",
            options.token.empty()
                ? "the repo is private, gated or missing: set HF_TOKEN to a token with read access"
                : "the token (HF_TOKEN) was rejected or has no access to this repo"));
  }
  if (response.status == 404)
    throw Error(
        str(subject, ": not found (", detail, "); check the repo id, revision and file name"));
  throw Error(str(subject, ": ", detail));
}

// ---- the hub API -----------------------------------------------------------------------------

struct RepoInfo {
  std::string commit;
  std::set<std::string> files;
};

RepoInfo fetch_repo_info(const RepoRef& ref, const HubOptions& options) {
  const std::string url = str(options.endpoint, "/api/models/", ref.repo_id, "/revision/",
                              percent_encode(ref.revision, false));
  StringSink body;
  const Response response = HttpRequest(url, options.token).follow_redirects().perform(&body);
  if (!is_success(response.status)) throw_http_error(response, url, describe(ref), options);
  const json info = try_parse_json(body.text).value_or(json());
  ADAPTERS_CHECK(info.is_object() && info.contains("sha") && info["sha"].is_string() &&
                     is_commit_hash(info["sha"].get<std::string>()),
                 url, ": expected a JSON object whose \"sha\" is a 40-hex commit hash, found ",
                 body.text.substr(0, 200));
  ADAPTERS_CHECK(info.contains("siblings") && info["siblings"].is_array(), url,
                 ": expected a \"siblings\" array, found none");
  RepoInfo repo{info["sha"].get<std::string>(), {}};
  for (const json& sibling : info["siblings"]) {
    if (sibling.is_object() && sibling.contains("rfilename") && sibling["rfilename"].is_string())
      repo.files.insert(sibling["rfilename"].get<std::string>());
  }
  return repo;
}

std::string pick_weights_file(const RepoInfo& info, const RepoRef& ref) {
  for (const std::string name : kWeightFiles)
    if (info.files.count(name)) return name;
  throw Error(
      str(describe(ref), ": no weights among its ", info.files.size(),
          " files: expected model.safetensors, "
          "model.safetensors.index.json, pytorch_model.bin or pytorch_model.bin.index.json"));
}

// ---- downloads -------------------------------------------------------------------------------

struct FileMeta {
  std::string etag;
  std::optional<std::uintmax_t> size;
};

std::string normalized_etag(std::string etag, const std::string& subject) {
  if (starts_with(etag, "W/")) etag.erase(0, 2);
  if (etag.size() >= 2 && etag.front() == '"' && etag.back() == '"')
    etag = etag.substr(1, etag.size() - 2);
  const bool safe =
      !etag.empty() && etag.front() != '.' &&
      etag.find_first_not_of("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.") ==
          std::string::npos;
  ADAPTERS_CHECK(safe, subject,
                 ": expected an ETag or X-Linked-Etag usable as a file name, found '", etag, "'");
  return etag;
}

std::optional<std::uintmax_t> parsed_size(const std::string& text, const std::string& subject) {
  if (text.empty()) return std::nullopt;
  ADAPTERS_CHECK(text.find_first_not_of("0123456789") == std::string::npos && text.size() < 20,
                 subject, ": expected a byte count in X-Linked-Size/Content-Length, found '", text,
                 "'");
  return std::stoull(text);
}

// Progress of one large download on stderr, rewritten in place; only when stderr is a terminal.
class ProgressLine {
 public:
  ProgressLine(std::string label, std::uintmax_t total) : label_(std::move(label)), total_(total) {}
  ~ProgressLine() {
    if (percent_ >= 0) std::fputc('\n', stderr);
  }
  static bool wanted(std::uintmax_t total) {
    return total >= (10u << 20) && ::isatty(STDERR_FILENO);
  }
  void show(std::uintmax_t done) {
    const int percent = static_cast<int>(100 * std::min(done, total_) / total_);
    if (percent == percent_) return;
    percent_ = percent;
    std::fprintf(stderr, "\rdownloading %s: %.1f / %.1f MB (%d%%)", label_.c_str(), done / 1e6,
                 total_ / 1e6, percent);
    std::fflush(stderr);
  }

 private:
  std::string label_;
  std::uintmax_t total_;
  int percent_ = -1;
};

// Fetches files of one commit of a repo into the cache and links them into its snapshot.
class SnapshotDownloader {
 public:
  SnapshotDownloader(const RepoRef& ref, std::string commit, const RepoCache& cache,
                     const HubOptions& options)
      : ref_(ref), commit_(std::move(commit)), cache_(cache), options_(options) {}

  fs::path folder() const { return cache_.snapshot(commit_); }

  void fetch(const std::string& filename) const {
    const fs::path relative = checked_repo_file(ref_, filename);
    const FileMeta meta = fetch_meta(filename);
    const fs::path blob = cache_.blob(meta.etag);
    if (!fs::exists(blob)) {
      const FileLock lock(cache_.lock(meta.etag));
      if (!fs::exists(blob)) download_blob(filename, meta, blob);
    }
    link_into_snapshot(blob, folder() / relative);
  }

 private:
  std::string url_of(const std::string& filename) const {
    return str(options_.endpoint, "/", ref_.repo_id, "/resolve/", commit_, "/",
               percent_encode(filename, true));
  }

  std::string subject_of(const std::string& filename) const {
    return str(describe(ref_), ": file ", filename, " (commit ", commit_, ")");
  }

  // HEAD without following redirects to other hosts: an LFS file answers 302 to its CDN with
  // X-Linked-Etag/X-Linked-Size; relative redirects (renamed repos) are followed.
  FileMeta fetch_meta(const std::string& filename) const {
    std::string url = url_of(filename);
    for (int hop = 0; hop < 10; ++hop) {
      const Response response = HttpRequest(url, options_.token).head_only().perform();
      const std::string linked_etag = response.header("x-linked-etag");
      const std::string location = response.header("location");
      if (is_redirect(response.status) && linked_etag.empty() && starts_with(location, "/") &&
          !starts_with(location, "//")) {
        url = url.substr(0, url.find('/', url.find("://") + 3)) + location;
        continue;
      }
      if (!is_success(response.status) && !is_redirect(response.status))
        throw_http_error(response, url, subject_of(filename), options_);
      const std::string size =
          response.header(linked_etag.empty() ? "content-length" : "x-linked-size");
      return {normalized_etag(linked_etag.empty() ? response.header("etag") : linked_etag,
                              subject_of(filename)),
              parsed_size(size, subject_of(filename))};
    }
    throw Error(str(subject_of(filename), ": more than 10 redirects from ", url));
  }

  void download_blob(const std::string& filename, const FileMeta& meta,
                     const fs::path& blob) const {
    const fs::path partial = blob.string() + ".incomplete";
    std::uintmax_t offset = fs::exists(partial) ? fs::file_size(partial) : 0;
    if (meta.size && offset > *meta.size) {  // not a prefix of this file
      fs::remove(partial);
      offset = 0;
    }
    if (!fs::exists(partial) || !meta.size || offset < *meta.size)
      transfer(filename, meta, partial, offset);
    verify(filename, meta, partial);
    fs::rename(partial, blob);
  }

  void transfer(const std::string& filename, const FileMeta& meta, const fs::path& partial,
                std::uintmax_t offset) const {
    fs::create_directories(partial.parent_path());
    PartialFile file(partial);
    HttpRequest request(url_of(filename), options_.token);
    request.follow_redirects();
    if (offset > 0) request.range_from(offset);
    std::optional<ProgressLine> progress;
    if (meta.size && ProgressLine::wanted(*meta.size)) {
      progress.emplace(ref_.repo_id + "/" + filename, *meta.size);
      request.on_progress([&](curl_off_t received) {
        progress->show(offset + static_cast<std::uintmax_t>(received));
      });
    }
    const Response response = request.perform(&file);
    if (response.status == 416 && offset > 0) {  // the partial file is no prefix: start over
      fs::remove(partial);
      return transfer(filename, meta, partial, 0);
    }
    if (!is_success(response.status))
      throw_http_error(response, url_of(filename), subject_of(filename), options_);
    file.sync();
  }

  // Size against X-Linked-Size/Content-Length; for LFS files (64-hex etag) the SHA-256 too.
  void verify(const std::string& filename, const FileMeta& meta, const fs::path& partial) const {
    const std::uintmax_t size = fs::file_size(partial);
    ADAPTERS_CHECK(!meta.size || size == *meta.size, subject_of(filename), ": downloaded ", size,
                   " bytes, expected ", *meta.size, "; the partial file ", partial,
                   " is resumed on the next try");
    if (!is_hex(meta.etag, 64)) return;
    const std::string found = sha256_file_hex(partial);
    if (found == meta.etag) return;
    fs::remove(partial);
    throw Error(str(subject_of(filename), ": checksum mismatch: expected sha256 ", meta.etag,
                    ", found ", found, "; the download was deleted"));
  }

  const RepoRef& ref_;
  std::string commit_;
  const RepoCache& cache_;
  const HubOptions& options_;
};

// config.json and the tokenizer files first, the weights last: a snapshot with weights is whole.
fs::path download_snapshot(const RepoRef& ref, const RepoCache& cache, const HubOptions& options) {
  const RepoInfo info = fetch_repo_info(ref, options);
  ADAPTERS_CHECK(info.files.count("config.json"), describe(ref), ": no config.json among its ",
                 info.files.size(), " files");
  const std::string weights = pick_weights_file(info, ref);
  SnapshotDownloader snapshot(ref, info.commit, cache, options);
  snapshot.fetch("config.json");
  for (const std::string& name : info.files)
    if (is_tokenizer_file(name)) snapshot.fetch(name);
  snapshot.fetch(weights);
  if (is_index_file(weights))
    for (const std::string& shard : shard_names(snapshot.folder() / weights)) snapshot.fetch(shard);
  if (ref.revision != info.commit) write_ref(cache.ref(ref.revision), info.commit);
  return snapshot.folder();
}

}  // namespace

HubOptions HubOptions::from_env() {
  HubOptions options;
  if (std::string endpoint = without_trailing_slashes(trim(env("HF_ENDPOINT"))); !endpoint.empty())
    options.endpoint = endpoint;
  options.token = trim(env("HF_TOKEN"));
  if (options.token.empty()) {
    const std::string token_path = env("HF_TOKEN_PATH");
    options.token =
        trim(read_text(token_path.empty() ? hf_home() / "token" : expand_user(token_path)));
  }
  const std::string cache = env("HF_HUB_CACHE");
  options.cache_dir = cache.empty() ? hf_home() / "hub" : expand_user(cache);
  options.offline = env_flag("HF_HUB_OFFLINE");
  return options;
}

RepoRef RepoRef::parse(const std::string& arg) {
  if (auto problem = model_ref_problem(arg))
    throw Error(str("'", arg, "' is not a repo id (org/name[@revision]): ", *problem));
  const auto at = arg.find('@');
  if (at == std::string::npos) return RepoRef{arg};
  return RepoRef{arg.substr(0, at), arg.substr(at + 1)};
}

std::string RepoRef::cache_folder_name() const {
  return "models--" + repo_id.substr(0, repo_id.find('/')) + "--" +
         repo_id.substr(repo_id.find('/') + 1);
}

bool is_repo_id(const std::string& arg) {
  std::error_code error;
  return !model_ref_problem(arg) && !fs::exists(arg, error);
}

fs::path resolve_model(const std::string& model_arg, const HubOptions& options) {
  std::error_code error;
  if (fs::exists(model_arg, error)) {
    ADAPTERS_CHECK(fs::is_directory(model_arg), model_arg,
                   ": is a file, expected a model folder or a repo id (org/name[@revision])");
    return model_arg;
  }
  if (auto problem = model_ref_problem(model_arg))
    throw Error(
        str(model_arg, ": no such folder and not a repo id (org/name[@revision]): ", *problem));
  const RepoRef ref = RepoRef::parse(model_arg);
  ADAPTERS_CHECK(!options.cache_dir.empty(), describe(ref),
                 ": HubOptions::cache_dir is empty, expected the hub cache folder");
  const RepoCache cache{fs::absolute(options.cache_dir) / ref.cache_folder_name()};
  if (auto snapshot = cached_snapshot(cache, ref.revision)) return *snapshot;
  ADAPTERS_CHECK(
      !options.offline, describe(ref), ": not in the hub cache (searched ", cache.root,
      " for a snapshot with config.json and weights) and HF_HUB_OFFLINE is set, so it cannot be "
      "downloaded; unset HF_HUB_OFFLINE or pass a local folder");
  HubOptions online = options;
  online.endpoint = without_trailing_slashes(options.endpoint);
  try {
    return download_snapshot(ref, cache, online);
  } catch (const fs::filesystem_error& e) {
    throw Error(str(describe(ref), ": writing the hub cache failed: ", e.what()));
  }
}

std::string sha256_file_hex(const fs::path& file) {
  std::ifstream in(file, std::ios::binary);
  ADAPTERS_CHECK(in, "cannot read ", file, " to compute its SHA-256");
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> context(EVP_MD_CTX_new(),
                                                                  EVP_MD_CTX_free);
  ADAPTERS_CHECK(context && EVP_DigestInit_ex(context.get(), EVP_sha256(), nullptr) == 1,
                 "OpenSSL: SHA-256 is unavailable");
  std::vector<char> buffer(1 << 20);
  while (in.read(buffer.data(), static_cast<std::streamsize>(buffer.size())) || in.gcount() > 0)
    EVP_DigestUpdate(context.get(), buffer.data(), static_cast<std::size_t>(in.gcount()));
  ADAPTERS_CHECK(!in.bad(), "reading ", file, " failed while computing its SHA-256");
  std::array<unsigned char, EVP_MAX_MD_SIZE> digest{};
  unsigned int length = 0;
  EVP_DigestFinal_ex(context.get(), digest.data(), &length);
  static constexpr char kHex[] = "0123456789abcdef";
  std::string hex;
  for (unsigned int i = 0; i < length; ++i) hex += {kHex[digest[i] >> 4], kHex[digest[i] & 15]};
  return hex;
}

}  // namespace adapters::hub
