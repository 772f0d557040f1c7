// Implementation of the logging header: a level read once from ADAPTERS_LOG, lines to stderr.
#include "adapters/core/log.h"

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <mutex>

namespace adapters::log {
namespace {

Level level_from_env() {
  const char* env = std::getenv("ADAPTERS_LOG");
  if (env == nullptr) return Level::Warn;
  if (std::strcmp(env, "error") == 0) return Level::Error;
  if (std::strcmp(env, "info") == 0) return Level::Info;
  if (std::strcmp(env, "debug") == 0) return Level::Debug;
  return Level::Warn;
}

std::atomic<int>& current() {
  static std::atomic<int> value{static_cast<int>(level_from_env())};
  return value;
}

const char* prefix(Level l) {
  switch (l) {
    case Level::Error: return "error";
    case Level::Warn: return "warning";
    case Level::Info: return "info";
    case Level::Debug: return "debug";
  }
  return "";
}

}  // namespace

Level level() { return static_cast<Level>(current().load()); }
void set_level(Level l) { current().store(static_cast<int>(l)); }

void write(Level l, const std::string& message) {
  if (static_cast<int>(l) > current().load()) return;
  static std::mutex mutex;
  std::lock_guard<std::mutex> lock(mutex);
  std::cerr << "[adapters] " << prefix(l) << ": " << message << '\n';
}

}  // namespace adapters::log
