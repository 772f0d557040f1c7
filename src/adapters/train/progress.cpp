// Progress reporting (a redrawn bar on terminals, periodic lines elsewhere) and the JSONL
// metrics log.
#include "adapters/train/progress.h"

#include <nlohmann/json.hpp>

#include <chrono>
#include <cmath>
#include <iostream>

#include <unistd.h>

#include "adapters/core/error.h"

namespace adapters::train {

namespace {

double steady_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

bool stream_is_terminal(const std::ostream& out) {
  if (&out == &std::cout) return ::isatty(STDOUT_FILENO) == 1;
  if (&out == &std::cerr || &out == &std::clog) return ::isatty(STDERR_FILENO) == 1;
  return false;
}

std::string format(const char* pattern, double value) {
  char buffer[64];
  std::snprintf(buffer, sizeof buffer, pattern, value);
  return buffer;
}

std::string format_rate(double steps_per_second) {
  if (steps_per_second >= 1) return format("%.2f step/s", steps_per_second);
  return format("%.2f s/step", 1 / steps_per_second);
}

}  // namespace

bool is_terminal(std::FILE* file) { return file && ::isatty(::fileno(file)) == 1; }

std::string format_duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "--:--";
  const auto total = static_cast<long long>(std::llround(seconds));
  const long long hours = total / 3600, minutes = total / 60 % 60, secs = total % 60;
  char buffer[48];
  if (hours > 0) std::snprintf(buffer, sizeof buffer, "%lld:%02lld:%02lld", hours, minutes, secs);
  else std::snprintf(buffer, sizeof buffer, "%02lld:%02lld", minutes, secs);
  return buffer;
}

// ---- ProgressBar --------------------------------------------------------------------------------

ProgressBar::ProgressBar(std::ostream& out, ProgressOptions options)
    : ProgressBar([&out](const std::string& text) { out << text << std::flush; }, stream_is_terminal(out), std::move(options)) {}

ProgressBar::ProgressBar(std::FILE* out, ProgressOptions options)
    : ProgressBar(
          [out](const std::string& text) {
            std::fputs(text.c_str(), out);
            std::fflush(out);
          },
          is_terminal(out), std::move(options)) {}

ProgressBar::ProgressBar(std::function<void(const std::string&)> sink, bool detected_tty, ProgressOptions options)
    : sink_(std::move(sink)), options_(std::move(options)) {
  tty_ = options_.tty.value_or(detected_tty);
  if (!options_.clock) options_.clock = steady_seconds;
  start_time_ = last_output_time_ = options_.clock();
  start_step_ = step_ = last_logged_step_ = options_.initial_step;
}

ProgressBar::~ProgressBar() {
  try {
    finish();
  } catch (...) {  // a destructor must not throw; the output is best effort
  }
}

void ProgressBar::write(const std::string& text) { sink_(text); }

std::string ProgressBar::status_text(bool with_bar) const {
  const size_t total = options_.total_steps;
  std::string text = options_.description;
  if (with_bar && total > 0) {
    const size_t filled = std::min(options_.bar_width, step_ * options_.bar_width / total);
    text += " [" + std::string(filled, '#') + std::string(options_.bar_width - filled, '-') + "]";
  }
  text += with_bar ? " " : " step ";
  text += std::to_string(step_) + (total > 0 ? "/" + std::to_string(total) : "");
  if (!with_bar && total > 0) text += format(" (%.0f%%)", 100.0 * static_cast<double>(step_) / static_cast<double>(total));
  if (loss_) text += format(" loss %.4f", *loss_);
  const double elapsed = options_.clock() - start_time_;
  const double done = static_cast<double>(step_ - std::min(step_, start_step_));
  if (elapsed > 0 && done > 0) {
    const double rate = done / elapsed;
    text += " " + format_rate(rate);
    if (options_.examples_per_step > 0) text += format(" %.1f ex/s", rate * options_.examples_per_step);
    if (total > step_) text += " ETA " + format_duration(static_cast<double>(total - step_) / rate);
  }
  return text;
}

void ProgressBar::draw() {
  const std::string line = status_text(true);
  const size_t stale = drawn_width_ > line.size() ? drawn_width_ - line.size() : 0;
  write("\r" + line + std::string(stale, ' '));
  drawn_width_ = line.size();
  last_output_time_ = options_.clock();
}

void ProgressBar::log_line() {
  write(status_text(false) + "\n");
  last_logged_step_ = step_;
  last_output_time_ = options_.clock();
}

void ProgressBar::update(size_t step, std::optional<double> loss) {
  if (finished_) return;
  step_ = step;
  started_ = true;
  if (loss) loss_ = loss;
  const double since_output = options_.clock() - last_output_time_;
  const bool last_step = options_.total_steps > 0 && step >= options_.total_steps;
  if (tty_) {
    if (drawn_width_ == 0 || last_step || since_output >= options_.redraw_seconds) draw();
    return;
  }
  const bool by_count = options_.log_every_steps > 0 && step >= last_logged_step_ + options_.log_every_steps;
  const bool by_time = options_.log_every_seconds > 0 && since_output >= options_.log_every_seconds;
  if (by_count || by_time || (last_step && step != last_logged_step_)) log_line();
}

void ProgressBar::message(const std::string& line) {
  if (tty_ && drawn_width_ > 0) {
    write("\r" + std::string(drawn_width_, ' ') + "\r" + line + "\n");
    drawn_width_ = 0;
    if (!finished_) draw();
    return;
  }
  write(line + "\n");
}

void ProgressBar::finish() {
  if (finished_) return;
  finished_ = true;
  if (!started_) return;
  if (tty_) {
    draw();
    write("\n");
    drawn_width_ = 0;
  } else if (step_ != last_logged_step_) {
    log_line();
  }
}

// ---- MetricsLog ---------------------------------------------------------------------------------

MetricsLog::MetricsLog(const std::filesystem::path& file) : path_(file) {
  if (file.has_parent_path()) {
    std::error_code ec;
    std::filesystem::create_directories(file.parent_path(), ec);
    ADAPTERS_CHECK(!ec, file.string(), ": cannot create the folder of the metrics log: ", ec.message());
  }
  // A symbolic link planted in the output folder is replaced, never appended through.
  if (std::filesystem::is_symlink(std::filesystem::symlink_status(file))) std::filesystem::remove(file);
  out_.open(file, std::ios::app);
  ADAPTERS_CHECK(out_.is_open(), file.string(), ": cannot open the metrics log for appending");
}

void MetricsLog::write(const MetricsEvent& event) {
  nlohmann::json record = {{"step", event.step}, {"epoch", event.epoch}, {"split", event.split}};
  for (const auto& [name, value] : event.metrics) {
    ADAPTERS_CHECK(!record.contains(name), path_.string(), ": metric ", '"', name, '"', " clashes with a field of every event: expected a name other than step, epoch, split");
    record[name] = std::isfinite(value) ? nlohmann::json(value) : nlohmann::json(nullptr);
  }
  out_ << record.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << '\n' << std::flush;
  ADAPTERS_CHECK(out_.good(), path_.string(), ": error while appending to the metrics log");
}

}  // namespace adapters::train
