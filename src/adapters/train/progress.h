// Training progress on a terminal or a log, and a metrics log file.
//
// ProgressBar: on a TTY one bar line redrawn in place with '\r' (step/total, loss, steps/s, ETA);
// otherwise (a pipe, a file, CI logs) a plain line every N steps or T seconds. The TTY check and
// the clock are injectable, so tests see exactly what a terminal or a log would.
//
// MetricsLog: appends one JSON object per event ({"step", "epoch", "split", metrics...}) to a
// JSONL file and flushes it, so a crash loses nothing already reported.
#pragma once

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <optional>
#include <ostream>
#include <string>
#include <vector>

namespace adapters::train {

// Whether output to `file` reaches a terminal (isatty on its descriptor).
bool is_terminal(std::FILE* file);

struct ProgressOptions {
  size_t total_steps = 0;             // 0: unknown (no bar, no ETA)
  size_t initial_step = 0;            // steps already done (a resumed run): the rate counts from here
  std::string description = "train";  // printed before the counts
  std::optional<bool> tty;            // none: detect (FILE*: isatty; std::cout / cerr / clog: their descriptor; other streams: no)
  size_t bar_width = 30;              // TTY: characters of the bar
  double redraw_seconds = 0.1;        // TTY: least time between redraws (the last step is always drawn)
  size_t log_every_steps = 100;       // not a TTY: a line every this many steps (0: never by count)
  double log_every_seconds = 30;      // not a TTY: ... or when this much time passed (0: never by time)
  std::function<double()> clock;      // seconds on a monotonic clock; default std::chrono::steady_clock
  double examples_per_step = 0;       // > 0: the rate in examples/s too (of every process together)
};

class ProgressBar {
 public:
  ProgressBar(std::ostream& out, ProgressOptions options);
  ProgressBar(std::FILE* out, ProgressOptions options);
  ~ProgressBar();  // finish()es
  ProgressBar(const ProgressBar&) = delete;
  ProgressBar& operator=(const ProgressBar&) = delete;

  // Reports that `step` steps are done (1-based, increasing), with the latest loss if known.
  void update(size_t step, std::optional<double> loss = std::nullopt);
  // Prints a whole line (e.g. evaluation results) without breaking the bar: on a TTY the bar is
  // cleared, the line written and the bar drawn again below it.
  void message(const std::string& line);
  // Draws the final state and ends the bar line; later calls do nothing.
  void finish();

  bool is_tty() const { return tty_; }

 private:
  ProgressBar(std::function<void(const std::string&)> sink, bool detected_tty, ProgressOptions options);
  void write(const std::string& text);
  std::string status_text(bool with_bar) const;
  void draw();
  void log_line();

  std::function<void(const std::string&)> sink_;
  ProgressOptions options_;
  bool tty_ = false;
  double start_time_ = 0;
  size_t start_step_ = 0;
  size_t step_ = 0;
  std::optional<double> loss_;
  double last_output_time_ = 0;
  size_t last_logged_step_ = 0;
  size_t drawn_width_ = 0;  // TTY: characters of the bar line on screen
  bool started_ = false, finished_ = false;
};

// "1:02:03" / "04:05": a duration for humans.
std::string format_duration(double seconds);

// One evaluation or training event for the metrics log.
struct MetricsEvent {
  int64_t step = 0;
  double epoch = 0;
  std::string split;                      // "train", "validation", "test"
  std::map<std::string, double> metrics;  // e.g. {"loss": 0.41, "accuracy": 0.87}; NaN/inf -> null
};

class MetricsLog {
 public:
  // Opens `file` for appending (creating it and its folder if needed); throws naming the file.
  explicit MetricsLog(const std::filesystem::path& file);
  // Appends {"step":..., "epoch":..., "split":..., <metric>: <value>...} as one line and flushes.
  // Throws when a metric is named step, epoch or split, or on a write error.
  void write(const MetricsEvent& event);
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
  std::ofstream out_;
};

}  // namespace adapters::train
