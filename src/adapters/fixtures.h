// The golden-fixture runner behind `adapters fixtures ROOT --out DIR`: runs every case folder
// ROOT/cases/<case> as its case.json says and writes DIR/<case>/outputs.safetensors (and
// grads.safetensors for training cases) plus DIR/report.json with a status per case. A case with
// a "generate" key runs the reference's generate call instead of a forward pass and writes
// `sequences` (int64), `scores` (greedy cases) and `sequences_scores` (beam cases).
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include "adapters/io/tensors.h"
#include "adapters/model.h"

namespace adapters::fixtures {

namespace fs = std::filesystem;

struct Options {
  fs::path root;             // holds cases/<case>/case.json
  fs::path out;              // where outputs and report.json go
  std::string only;          // a regex on case names; empty: all
  WeightsPreference weights = WeightsPreference::Bin;
};

struct CaseResult {
  std::string name;
  std::string status;  // "ok", "error" or "unsupported"
  std::string message;
  double seconds = 0.0;
};

// Runs the cases (sorted by name) and writes report.json. Never throws for a failing case.
std::vector<CaseResult> run(const Options& options);

// Runs one case folder and returns its outputs by name (and gradients for training cases).
struct CaseOutputs {
  io::TensorMap outputs;
  io::TensorMap grads;
};
CaseOutputs run_case(const fs::path& case_dir, WeightsPreference weights);

}  // namespace adapters::fixtures
