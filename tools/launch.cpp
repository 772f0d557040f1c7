// `--nproc N`: the local launcher of distributed runs (see launch.h).
#include "launch.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <iterator>
#include <string>
#include <thread>
#include <vector>

#include "adapters/core/error.h"

namespace adapters::cli {

namespace {

// This process's arguments (from /proc/self/cmdline) without "--nproc N" / "--nproc=N".
std::vector<std::string> arguments_without_nproc() {
  std::ifstream in("/proc/self/cmdline", std::ios::binary);
  const std::string raw((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<std::string> args;
  for (std::size_t begin = 0; begin < raw.size();) {
    const std::size_t end = raw.find('\0', begin);
    args.push_back(raw.substr(begin, end == std::string::npos ? std::string::npos : end - begin));
    if (end == std::string::npos) break;
    begin = end + 1;
  }
  std::vector<std::string> kept;
  for (std::size_t i = 0; i < args.size(); ++i) {
    if (args[i] == "--nproc") {
      ++i;  // and its value
      continue;
    }
    if (args[i].rfind("--nproc=", 0) == 0) continue;
    kept.push_back(args[i]);
  }
  return kept;
}

// A TCP port on loopback that is free now (the kernel's pick).
int free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  ADAPTERS_CHECK(fd >= 0, "--nproc: cannot open a socket to find a free port (", std::strerror(errno), ")");
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  address.sin_port = 0;
  socklen_t length = sizeof(address);
  const bool ok = ::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) == 0 &&
                  ::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length) == 0;
  ::close(fd);
  ADAPTERS_CHECK(ok, "--nproc: cannot find a free port on 127.0.0.1 (", std::strerror(errno), ")");
  return ntohs(address.sin_port);
}

long timeout_seconds() {
  const char* text = std::getenv("ADAPTERS_DIST_TIMEOUT");
  const long value = text != nullptr ? std::strtol(text, nullptr, 10) : 0;
  return value > 0 ? value : 300;
}

int exit_code(int status) { return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status); }

}  // namespace

bool is_distributed_worker() {
  const char* world = std::getenv("WORLD_SIZE");
  return world != nullptr && std::strtol(world, nullptr, 10) > 1;
}

int launch_workers(int nproc) {
  ADAPTERS_CHECK(nproc >= 1 && nproc <= 256, "--nproc: expected 1 to 256 processes, found ", nproc);
  const std::vector<std::string> args = arguments_without_nproc();
  ADAPTERS_CHECK(!args.empty(), "--nproc: cannot read this process's command line from /proc/self/cmdline");
  const std::string port = std::to_string(free_port());
  std::vector<pid_t> workers;
  for (int rank = 0; rank < nproc; ++rank) {
    const pid_t pid = ::fork();
    ADAPTERS_CHECK(pid >= 0, "--nproc: cannot start worker ", rank, " (", std::strerror(errno), ")");
    if (pid == 0) {
      ::setenv("MASTER_ADDR", "127.0.0.1", 1);
      ::setenv("MASTER_PORT", port.c_str(), 1);
      ::setenv("WORLD_SIZE", std::to_string(nproc).c_str(), 1);
      ::setenv("RANK", std::to_string(rank).c_str(), 1);
      ::setenv("LOCAL_RANK", std::to_string(rank).c_str(), 1);
      ::setenv("LOCAL_WORLD_SIZE", std::to_string(nproc).c_str(), 1);
      std::vector<char*> argv;
      for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
      argv.push_back(nullptr);
      ::execv("/proc/self/exe", argv.data());
      std::cerr << "adapters: --nproc: cannot start worker " << rank << " (" << std::strerror(errno) << ")\n";
      ::_exit(127);
    }
    workers.push_back(pid);
  }
  // Ctrl-C goes to the whole foreground group: the workers checkpoint and stop; the launcher waits.
  ::signal(SIGINT, SIG_IGN);
  int first_failure = 0;
  std::size_t running = workers.size();
  std::chrono::steady_clock::time_point deadline = std::chrono::steady_clock::time_point::max();
  while (running > 0) {
    int status = 0;
    const pid_t pid = ::waitpid(-1, &status, WNOHANG);
    if (pid > 0) {
      --running;
      const int code = exit_code(status);
      if (code != 0 && first_failure == 0) {
        first_failure = code;
        // The others notice the lost rank and stop; past the timeout they are stopped.
        deadline = std::chrono::steady_clock::now() + std::chrono::seconds(timeout_seconds() + 10);
      }
      continue;
    }
    if (pid < 0) break;  // no children left
    if (std::chrono::steady_clock::now() > deadline) {
      for (pid_t w : workers) ::kill(w, SIGKILL);
      deadline = std::chrono::steady_clock::time_point::max();
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  ::signal(SIGINT, SIG_DFL);
  return first_failure;
}

}  // namespace adapters::cli
