// Data-parallel training from the command line (`adapters train ... --nproc N`, Gloo on loopback):
// two processes give the adapter of one process with the same global batch and seed (seq_bn, LoRA;
// a last batch of an epoch split unevenly, accumulation); a rank that dies makes the other stop
// with an error naming it; Ctrl-C on one rank stops both with a checkpoint, which one process
// resumes to the adapter of the uninterrupted run; a batch the ranks cannot share is refused;
// evaluation shared by the ranks gives one process's metrics; masked-LM pretraining (`adapters
// pretrain`) of two processes gives the weights of one.
#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>

#include <nlohmann/json.hpp>

#include "adapters/io/tensors.h"

namespace fs = std::filesystem;

namespace {

const std::string kCli = ADAPTERS_CLI;
const std::string kModel = std::string(ADAPTERS_FIXTURES) + "/adapterhub/models/bert-nodropout";
const std::string kData = std::string(ADAPTERS_TEST_DATA) + "/train";

fs::path fresh_dir(const std::string& name) {
  const fs::path dir = fs::temp_directory_path() / ("adapters_distributed_" + std::to_string(::getpid())) / name;
  fs::remove_all(dir);
  fs::create_directories(dir.parent_path());
  return dir;
}

std::string train_command(const std::string& config, const fs::path& out, const std::string& extra, int max_steps = 20,
                          int batch_size = 16) {
  return kCli + " train --model " + kModel + " --tokenizer " + kData + "/tokenizer --adapter-config \"" + config +
         "\" --train " + kData + "/cli/train.jsonl --output " + out.string() + " --batch-size " + std::to_string(batch_size) + " --max-steps " +
         std::to_string(max_steps) + " --seed 7 --no-progress " + extra;
}

// Runs a shell command; returns its exit code, its stderr in `err`.
int run(const std::string& command, std::string* err = nullptr) {
  const fs::path log = fs::temp_directory_path() / ("adapters_distributed_" + std::to_string(::getpid()) + ".err");
  const int status = std::system((command + " > /dev/null 2> " + log.string()).c_str());
  if (err != nullptr) {
    std::ifstream in(log);
    *err = std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

// Every tensor of two adapters within 1e-4 + 1e-3 |w|.
void expect_same_adapter(const fs::path& a, const fs::path& b) {
  const auto x = adapters::io::read_checkpoint(a / "adapter.safetensors");
  const auto y = adapters::io::read_checkpoint(b / "adapter.safetensors");
  ASSERT_EQ(x.size(), y.size());
  for (const auto& [key, t] : x) {
    ASSERT_TRUE(y.count(key)) << key;
    const torch::Tensor& u = y.at(key);
    ASSERT_EQ(t.sizes(), u.sizes()) << key;
    const double excess = ((t - u).abs() - (1e-4 + 1e-3 * u.abs())).max().item<double>();
    EXPECT_LE(excess, 0.0) << key << ": max |diff| " << (t - u).abs().max().item<double>();
  }
}

class TwoProcesses : public ::testing::TestWithParam<std::string> {};

TEST_P(TwoProcesses, TrainTheAdapterOfOneProcess) {
  const fs::path one = fresh_dir("one"), two = fresh_dir("two");
  std::string err;
  ASSERT_EQ(run(train_command(GetParam(), one, "--nproc 1"), &err), 0) << err;
  ASSERT_EQ(run(train_command(GetParam(), two, "--nproc 2"), &err), 0) << err;
  expect_same_adapter(one / "adapter", two / "adapter");
  // The adapter has moved: the comparison is not of two untrained adapters.
  const fs::path untrained = fresh_dir("untrained");
  ASSERT_EQ(run(train_command(GetParam(), untrained, "--lr 1e-12", 1), &err), 0) << err;
  const auto trained = adapters::io::read_checkpoint(one / "adapter" / "adapter.safetensors");
  const auto initial = adapters::io::read_checkpoint(untrained / "adapter" / "adapter.safetensors");
  double moved = 0;
  for (const auto& [key, t] : trained) moved = std::max(moved, (t - initial.at(key)).abs().max().item<double>());
  EXPECT_GT(moved, 1e-3);
}

INSTANTIATE_TEST_SUITE_P(Methods, TwoProcesses, ::testing::Values("seq_bn", "lora[r=4]"),
                         [](const auto& info) { return info.index == 0 ? std::string("seq_bn") : std::string("lora"); });

// Gradient accumulation and a batch of 16 over 2 ranks with an odd last batch (40 rows: 16, 16, 8).
TEST(Distributed, AccumulationMatchesOneProcess) {
  const fs::path one = fresh_dir("acc_one"), two = fresh_dir("acc_two");
  std::string err;
  ASSERT_EQ(run(train_command("seq_bn", one, "--grad-accumulation 2", 6), &err), 0) << err;
  ASSERT_EQ(run(train_command("seq_bn", two, "--grad-accumulation 2 --nproc 2", 6), &err), 0) << err;
  expect_same_adapter(one / "adapter", two / "adapter");
}

TEST(Distributed, ABatchTheRanksCannotShareIsRefused) {
  std::string err;
  EXPECT_EQ(run(train_command("seq_bn", fresh_dir("odd"), "--nproc 2", 20, 15), &err), 1);
  EXPECT_NE(err.find("batch_size (--batch-size) 15 is not a multiple of the 2 processes"), std::string::npos) << err;
}

// A worker started by hand with torchrun's variables; its stderr goes to `log`.
pid_t start_worker(const std::string& command, int rank, int port, const fs::path& log) {
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::setenv("MASTER_ADDR", "127.0.0.1", 1);
    ::setenv("MASTER_PORT", std::to_string(port).c_str(), 1);
    ::setenv("WORLD_SIZE", "2", 1);
    ::setenv("RANK", std::to_string(rank).c_str(), 1);
    ::setenv("LOCAL_RANK", std::to_string(rank).c_str(), 1);
    ::setenv("LOCAL_WORLD_SIZE", "2", 1);
    const std::string shell = "exec " + command + " > /dev/null 2> " + log.string();
    ::execl("/bin/sh", "sh", "-c", shell.c_str(), static_cast<char*>(nullptr));
    ::_exit(127);
  }
  return pid;
}

// Waits for a process up to `seconds`; its exit code, or -1 when it is still running (then killed).
int wait_for(pid_t pid, int seconds) {
  for (int i = 0; i < seconds * 20; ++i) {
    int status = 0;
    if (::waitpid(pid, &status, WNOHANG) == pid) return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  ::kill(pid, SIGKILL);
  ::waitpid(pid, nullptr, 0);
  return -1;
}

// Waits until rank 0 has logged a training step (metrics.jsonl has a line).
bool training_started(const fs::path& out) {
  for (int i = 0; i < 1200; ++i) {
    std::ifstream in(out / "metrics.jsonl");
    std::string line;
    if (in && std::getline(in, line) && !line.empty()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return false;
}

std::string read_text(const fs::path& file) {
  std::ifstream in(file);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

// A TCP port on loopback that is free now (the kernel's pick), for rank 0's rendezvous.
int free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t length = sizeof(address);
  const bool ok = fd >= 0 && ::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) == 0 &&
                  ::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length) == 0;
  if (fd >= 0) ::close(fd);
  EXPECT_TRUE(ok) << "no free port on 127.0.0.1";
  return ntohs(address.sin_port);
}

// Ranks 0 and 1 of `command` on a fresh port, their stderr in <out>.rank<r>.err; returns their pids
// once rank 0 has logged a training step.
std::pair<pid_t, pid_t> start_two_workers(const std::string& command, const fs::path& out) {
  const int port = free_port();
  const pid_t rank0 = start_worker(command, 0, port, out.string() + ".rank0.err");
  const pid_t rank1 = start_worker(command, 1, port, out.string() + ".rank1.err");
  EXPECT_TRUE(training_started(out)) << read_text(out.string() + ".rank0.err");
  return {rank0, rank1};
}

TEST(Distributed, ALostRankIsNamedByTheOthers) {
  const fs::path out = fresh_dir("lost");
  const auto [rank0, rank1] = start_two_workers(train_command("seq_bn", out, "", 100000), out);
  ASSERT_FALSE(HasFailure());
  ::kill(rank1, SIGKILL);
  ::waitpid(rank1, nullptr, 0);
  EXPECT_EQ(wait_for(rank0, 60), 1);
  const std::string err = read_text(out.string() + ".rank0.err");
  EXPECT_NE(err.find("rank 1 is lost"), std::string::npos) << err;
}

TEST(Distributed, CtrlCOnOneRankStopsBothWithACheckpointThatResumes) {
  const fs::path out = fresh_dir("interrupted");
  const auto [rank0, rank1] = start_two_workers(train_command("seq_bn", out, "", 200), out);
  ASSERT_FALSE(HasFailure());
  ::kill(rank1, SIGINT);
  EXPECT_EQ(wait_for(rank1, 60), 0) << read_text(out.string() + ".rank1.err");
  EXPECT_EQ(wait_for(rank0, 60), 0) << read_text(out.string() + ".rank0.err");
  const std::string results = read_text(out / "results.json");
  // Both stopped together, or the run ended before the signal landed: either way a checkpoint.
  fs::path last;
  for (const auto& entry : fs::directory_iterator(out)) {
    const std::string name = entry.path().filename().string();
    if (name.rfind("checkpoint-", 0) == 0 && (last.empty() || std::stoi(name.substr(11)) > std::stoi(last.filename().string().substr(11)))) {
      last = entry.path();
    }
  }
  ASSERT_FALSE(last.empty()) << results;
  // One process resumes the two processes' checkpoint to the adapter of one uninterrupted run.
  const fs::path resumed = fresh_dir("resumed"), straight = fresh_dir("straight");
  std::string err;
  ASSERT_EQ(run(train_command("seq_bn", resumed, "--resume " + last.string(), 200), &err), 0) << err;
  ASSERT_EQ(run(train_command("seq_bn", straight, "", 200), &err), 0) << err;
  expect_same_adapter(resumed / "adapter", straight / "adapter");
}

// The runs' folders go when the tests are done.
class RemoveRunFolders : public ::testing::Environment {
 public:
  void TearDown() override {
    fs::remove_all(fs::temp_directory_path() / ("adapters_distributed_" + std::to_string(::getpid())));
    fs::remove(fs::temp_directory_path() / ("adapters_distributed_" + std::to_string(::getpid()) + ".err"));
  }
};
const auto* const kCleanup = ::testing::AddGlobalTestEnvironment(new RemoveRunFolders);

}  // namespace

// Evaluation shared by the ranks (each runs every second batch, the metrics computed from all):
// the validation and test metrics of a 2-process run are those one process computes for the
// adapter it saved, with the same batches.
TEST(Distributed, EvaluationSharedByTheRanksIsThatOfOneProcess) {
  const fs::path out = fresh_dir("eval");
  std::string err;
  const std::string data = " --validation " + kData + "/cli/validation.jsonl --test " + kData + "/cli/test.jsonl";
  ASSERT_EQ(run(train_command("seq_bn", out, "--nproc 2 --eval-every 3" + data, 6), &err), 0) << err;
  const auto results = nlohmann::json::parse(read_text(out / "results.json"));
  ASSERT_TRUE(results["test"].contains("accuracy")) << results.dump();
  const fs::path eval_out = fresh_dir("eval_one") += ".json";
  ASSERT_EQ(std::system((kCli + " eval --model " + kModel + " --tokenizer " + kData + "/tokenizer --adapter " +
                         (out / "adapter").string() + " --batch-size 16 --data " + kData + "/cli/test.jsonl > " +
                         eval_out.string() + " 2> /dev/null").c_str()), 0);
  const auto one = nlohmann::json::parse(read_text(eval_out));
  for (const auto& [name, value] : one.items()) {
    ASSERT_TRUE(results["test"].contains(name)) << name;
    EXPECT_NEAR(results["test"][name].get<double>(), value.get<double>(), 1e-5) << name;
  }
  // Both validations (steps 3 and 6) were logged once, by rank 0.
  std::ifstream metrics(out / "metrics.jsonl");
  int validations = 0;
  for (std::string line; std::getline(metrics, line);) validations += line.find("\"validation\"") != std::string::npos;
  EXPECT_EQ(validations, 2);
}

// `adapters pretrain` (masked LM through the trainer: rows masked per row, not per rank) gives
// the weights of one process with two.
TEST(Distributed, MaskedLmPretrainingOfTwoProcessesIsThatOfOne) {
  const fs::path dir = fresh_dir("pretrain");
  fs::create_directories(dir);
  {
    std::ofstream corpus(dir / "corpus.txt");
    for (int i = 0; i < 24; ++i) corpus << "the cat sat on the mat " << i << " and the dog ran to the park .\n";
  }
  std::string err;
  for (const char* n : {"1", "2"}) {
    const std::string command = kCli + " pretrain --config " + kModel + "/config.json --tokenizer " + kData +
                                "/tokenizer --corpus " + (dir / "corpus.txt").string() + " --out " + (dir / n).string() +
                                " --max-steps 8 --batch-size 8 --max-length 16 --lr 3e-3 --warmup-steps 2 --save-every 0" +
                                " --no-progress --nproc " + n;
    ASSERT_EQ(run(command, &err), 0) << err;
  }
  const auto one = adapters::io::read_checkpoint(dir / "1" / "model.safetensors");
  const auto two = adapters::io::read_checkpoint(dir / "2" / "model.safetensors");
  ASSERT_EQ(one.size(), two.size());
  ASSERT_FALSE(one.empty());
  for (const auto& [key, t] : one) {
    ASSERT_TRUE(two.count(key)) << key;
    const double excess = ((t - two.at(key)).abs() - (1e-4 + 1e-3 * two.at(key).abs())).max().item<double>();
    EXPECT_LE(excess, 0.0) << key;
  }
}
