// Training curves as a self-contained SVG file: named series of (x, y) points (train loss,
// validation accuracy, ...) in up to two stacked panels sharing the x axis, one for losses and one
// for metrics, each with nicely rounded ticks, grid lines and a legend. No scripts, fonts or
// external references, so the file opens anywhere (browser, IDE, CI artefact viewer).
#pragma once

#include <filesystem>
#include <string>
#include <utility>
#include <vector>

namespace adapters::train {

enum class Panel { Loss, Metric };  // top / bottom panel; a panel without series is left out

struct Series {
  std::string name;                               // legend label
  std::vector<std::pair<double, double>> points;  // (x, y); non-finite points are skipped
  Panel panel = Panel::Loss;
};

struct ChartOptions {
  std::string title;
  std::string x_label = "step";
  std::string loss_label = "loss";      // y axis of the loss panel
  std::string metric_label = "metric";  // y axis of the metric panel
  int width = 900;                      // pixels, legend included
  int panel_height = 280;               // pixels per panel
};

// The SVG document. Each series with 2+ drawable points is one <polyline> (one point: a
// <circle>), and every series, even empty, has a legend entry ("name (no data)" when empty).
std::string render_svg(const std::vector<Series>& series, const ChartOptions& options);

// Writes render_svg(...) to `file` atomically: a temporary file in the same folder, renamed over
// `file` once complete, so readers never see a partial chart. Creates the folder if needed.
void write_svg(const std::filesystem::path& file, const std::vector<Series>& series, const ChartOptions& options);

// Rounded tick values covering [low, high] (Heckbert's "nice numbers": steps of 1, 2 or 5 times
// a power of ten), about `max_ticks` of them; the first and last bound the axis.
std::vector<double> nice_ticks(double low, double high, size_t max_ticks = 6);

}  // namespace adapters::train
