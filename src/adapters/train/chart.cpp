// SVG line charts of training curves: layout, nice ticks, polylines, legends, atomic writes.
#include "adapters/train/chart.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <optional>
#include <sstream>

#include <sys/stat.h>
#include <unistd.h>

#include "adapters/core/error.h"

namespace adapters::train {

namespace {

using Point = std::pair<double, double>;

constexpr const char* kPalette[] = {"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"};
constexpr size_t kPaletteSize = sizeof kPalette / sizeof kPalette[0];
constexpr double kMarginLeft = 70, kMarginTop = 40, kPanelGap = 50, kMarginBottom = 50, kLegendWidth = 190;
constexpr size_t kMaxMarkedPoints = 30;  // series this short also get a marker per point

std::string escape_xml(const std::string& text) {
  std::string out;
  for (const char c : text) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      case '\'': out += "&apos;"; break;
      default: out += c;
    }
  }
  return out;
}

std::string number(double value) {
  char buffer[32];
  std::snprintf(buffer, sizeof buffer, "%.2f", value);
  return buffer;
}

// A tick label with as many decimals as the tick step needs ("0.25", "1000").
std::string tick_label(double value, double step) {
  const int decimals = std::max(0, static_cast<int>(-std::floor(std::log10(step) + 1e-9)));
  if (std::abs(value) < step * 1e-9) value = 0;
  char buffer[48];
  std::snprintf(buffer, sizeof buffer, "%.*f", decimals, value);
  return buffer;
}

double nice_number(double x, bool round) {
  const double exponent = std::floor(std::log10(x));
  const double fraction = x / std::pow(10.0, exponent);
  double nice;
  if (round) nice = fraction < 1.5 ? 1 : fraction < 3 ? 2 : fraction < 7 ? 5 : 10;
  else nice = fraction <= 1 ? 1 : fraction <= 2 ? 2 : fraction <= 5 ? 5 : 10;
  return nice * std::pow(10.0, exponent);
}

std::vector<Point> drawable_points(const Series& series) {
  std::vector<Point> points;
  for (const Point& p : series.points) {
    if (std::isfinite(p.first) && std::isfinite(p.second)) points.push_back(p);
  }
  std::stable_sort(points.begin(), points.end(), [](const Point& a, const Point& b) { return a.first < b.first; });
  return points;
}

// A closed interval of data values, widened when it is a single value.
struct Range {
  double low = 0, high = 1;
};

std::optional<Range> range_of(const std::vector<std::vector<Point>>& sets, bool x) {
  std::optional<Range> range;
  for (const auto& points : sets) {
    for (const Point& p : points) {
      const double v = x ? p.first : p.second;
      if (!range) range = Range{v, v};
      range->low = std::min(range->low, v);
      range->high = std::max(range->high, v);
    }
  }
  return range;
}

Range widened(std::optional<Range> range) {
  if (!range) return Range{};
  if (range->high > range->low) return *range;
  const double pad = range->low == 0 ? 1 : std::abs(range->low) * 0.1;
  return Range{range->low - pad, range->high + pad};
}

// Maps data values onto pixels along one axis.
struct Axis {
  std::vector<double> ticks;
  double pixel_from = 0, pixel_to = 0;  // pixels of ticks.front() and ticks.back()

  double operator()(double value) const {
    const double low = ticks.front(), high = ticks.back();
    return pixel_from + (value - low) / (high - low) * (pixel_to - pixel_from);
  }
  double step() const { return ticks.size() > 1 ? ticks[1] - ticks[0] : 1; }
};

struct PanelLayout {
  std::string y_label;
  std::vector<size_t> members;  // indices into the series
  double top = 0;
};

class SvgBuilder {
 public:
  SvgBuilder(const std::vector<Series>& series, const ChartOptions& options) : series_(series), options_(options) {
    for (const Series& s : series) points_.push_back(drawable_points(s));
  }

  std::string build() {
    std::vector<PanelLayout> panels = layout_panels();
    const double height = kMarginTop + static_cast<double>(panels.size()) * options_.panel_height +
                          static_cast<double>(panels.size() - 1) * kPanelGap + kMarginBottom;
    out_ << "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
         << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << options_.width << "\" height=\"" << number(height) << "\" viewBox=\"0 0 "
         << options_.width << " " << number(height) << "\" font-family=\"sans-serif\" font-size=\"12\">\n"
         << "<rect x=\"0\" y=\"0\" width=\"" << options_.width << "\" height=\"" << number(height) << "\" fill=\"white\"/>\n";
    if (!options_.title.empty()) text(options_.width / 2.0, 24, options_.title, "middle", "font-size=\"16\" font-weight=\"bold\"");
    const Range x_range = widened(range_of(points_, true));
    for (size_t i = 0; i < panels.size(); ++i) draw_panel(panels[i], x_range, i + 1 == panels.size());
    out_ << "</svg>\n";
    return out_.str();
  }

 private:
  double plot_width() const { return options_.width - kMarginLeft - kLegendWidth; }

  std::vector<PanelLayout> layout_panels() const {
    PanelLayout loss{options_.loss_label, {}, 0}, metric{options_.metric_label, {}, 0};
    for (size_t i = 0; i < series_.size(); ++i) (series_[i].panel == Panel::Loss ? loss : metric).members.push_back(i);
    std::vector<PanelLayout> panels;
    if (!loss.members.empty() || metric.members.empty()) panels.push_back(loss);
    if (!metric.members.empty()) panels.push_back(metric);
    for (size_t i = 0; i < panels.size(); ++i) panels[i].top = kMarginTop + static_cast<double>(i) * (options_.panel_height + kPanelGap);
    return panels;
  }

  void text(double x, double y, const std::string& content, const char* anchor, const std::string& extra = "") {
    out_ << "<text x=\"" << number(x) << "\" y=\"" << number(y) << "\" text-anchor=\"" << anchor << "\"" << (extra.empty() ? "" : " " + extra) << ">"
         << escape_xml(content) << "</text>\n";
  }

  void line(double x1, double y1, double x2, double y2, const char* stroke) {
    out_ << "<line x1=\"" << number(x1) << "\" y1=\"" << number(y1) << "\" x2=\"" << number(x2) << "\" y2=\"" << number(y2) << "\" stroke=\"" << stroke
         << "\"/>\n";
  }

  void draw_panel(const PanelLayout& panel, const Range& x_range, bool bottom) {
    const double top = panel.top, height = options_.panel_height, left = kMarginLeft, width = plot_width();
    std::vector<std::vector<Point>> members;
    for (size_t i : panel.members) members.push_back(points_[i]);
    const Range y_range = widened(range_of(members, false));
    const Axis x{nice_ticks(x_range.low, x_range.high), left, left + width};
    const Axis y{nice_ticks(y_range.low, y_range.high), top + height, top};
    out_ << "<g class=\"panel\">\n";
    draw_grid(x, y, top, height, left, width);
    out_ << "<rect x=\"" << number(left) << "\" y=\"" << number(top) << "\" width=\"" << number(width) << "\" height=\"" << number(height)
         << "\" fill=\"none\" stroke=\"#333333\"/>\n";
    const double label_y = top + height / 2;
    text(18, label_y, panel.y_label, "middle", "transform=\"rotate(-90 18 " + number(label_y) + ")\"");
    if (bottom) text(left + width / 2, top + height + 40, options_.x_label, "middle");
    for (size_t i : panel.members) draw_series(i, x, y);
    if (panel.members.empty()) text(left + width / 2, label_y, "no data", "middle", "fill=\"#888888\"");
    draw_legend(panel, left + width + 15, top + 10);
    out_ << "</g>\n";
  }

  void draw_grid(const Axis& x, const Axis& y, double top, double height, double left, double width) {
    for (double t : x.ticks) {
      line(x(t), top, x(t), top + height, "#e5e5e5");
      text(x(t), top + height + 16, tick_label(t, x.step()), "middle");
    }
    for (double t : y.ticks) {
      line(left, y(t), left + width, y(t), "#e5e5e5");
      text(left - 6, y(t) + 4, tick_label(t, y.step()), "end");
    }
  }

  void draw_series(size_t index, const Axis& x, const Axis& y) {
    const std::vector<Point>& points = points_[index];
    const char* color = kPalette[index % kPaletteSize];
    const std::string name = escape_xml(series_[index].name);
    if (points.size() >= 2) {
      out_ << "<polyline data-series=\"" << name << "\" fill=\"none\" stroke=\"" << color << "\" stroke-width=\"2\" points=\"";
      for (size_t k = 0; k < points.size(); ++k) out_ << (k ? " " : "") << number(x(points[k].first)) << "," << number(y(points[k].second));
      out_ << "\"/>\n";
    }
    if (points.size() == 1 || (points.size() >= 2 && points.size() <= kMaxMarkedPoints)) {
      for (const Point& p : points) {
        out_ << "<circle cx=\"" << number(x(p.first)) << "\" cy=\"" << number(y(p.second)) << "\" r=\"3\" fill=\"" << color << "\"/>\n";
      }
    }
  }

  void draw_legend(const PanelLayout& panel, double left, double top) {
    for (size_t k = 0; k < panel.members.size(); ++k) {
      const size_t index = panel.members[k];
      const double y = top + static_cast<double>(k) * 18;
      out_ << "<line x1=\"" << number(left) << "\" y1=\"" << number(y) << "\" x2=\"" << number(left + 20) << "\" y2=\"" << number(y) << "\" stroke=\""
           << kPalette[index % kPaletteSize] << "\" stroke-width=\"3\"/>\n";
      const std::string& name = series_[index].name;
      text(left + 26, y + 4, (name.empty() ? "(unnamed)" : name) + (points_[index].empty() ? " (no data)" : ""), "start", "class=\"legend\"");
    }
  }

  const std::vector<Series>& series_;
  const ChartOptions& options_;
  std::vector<std::vector<Point>> points_;  // drawable points per series
  std::ostringstream out_;
};

// Writes `text` to a fresh temporary file beside `file` and renames it over `file`.
void write_atomically(const std::filesystem::path& file, const std::string& text) {
  const std::filesystem::path folder = file.has_parent_path() ? file.parent_path() : std::filesystem::path(".");
  std::error_code ec;
  std::filesystem::create_directories(folder, ec);
  ADAPTERS_CHECK(!ec, file.string(), ": cannot create the chart's folder: ", ec.message());
  std::string temp = (folder / ("." + file.filename().string() + ".tmp-XXXXXX")).string();
  const int fd = ::mkstemp(temp.data());
  ADAPTERS_CHECK(fd >= 0, file.string(), ": cannot create a temporary file in ", folder.string(), ": ", std::strerror(errno));
  ::fchmod(fd, 0644);  // mkstemp's 0600 would make the chart private to its writer
  size_t written = 0;
  while (written < text.size()) {
    const ssize_t n = ::write(fd, text.data() + written, text.size() - written);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    written += static_cast<size_t>(n);
  }
  const bool closed = ::close(fd) == 0;
  if (written != text.size() || !closed) {
    std::filesystem::remove(temp, ec);
    throw Error(str(file.string(), ": error while writing the chart (", written, " of ", text.size(), " bytes written)"));
  }
  std::filesystem::rename(temp, file, ec);
  if (ec) {
    std::filesystem::remove(temp, ec);
    throw Error(str(file.string(), ": cannot move the finished chart into place: ", ec.message()));
  }
}

}  // namespace

std::vector<double> nice_ticks(double low, double high, size_t max_ticks) {
  ADAPTERS_CHECK(std::isfinite(low) && std::isfinite(high) && low < high, "nice_ticks: expected finite low < high, found ", low, " and ", high);
  ADAPTERS_CHECK(max_ticks >= 2, "nice_ticks: expected max_ticks >= 2, found ", max_ticks);
  const double step = nice_number(nice_number(high - low, false) / static_cast<double>(max_ticks - 1), true);
  const double first = std::floor(low / step) * step, last = std::ceil(high / step) * step;
  std::vector<double> ticks;
  for (double k = 0;; ++k) {
    const double t = first + k * step;
    if (t > last + step * 0.5) break;
    ticks.push_back(t);
  }
  return ticks;
}

std::string render_svg(const std::vector<Series>& series, const ChartOptions& options) {
  ADAPTERS_CHECK(options.width > kMarginLeft + kLegendWidth + 50, "ChartOptions::width: expected more than ", kMarginLeft + kLegendWidth + 50,
                 " pixels, found ", options.width);
  ADAPTERS_CHECK(options.panel_height >= 50, "ChartOptions::panel_height: expected at least 50 pixels, found ", options.panel_height);
  return SvgBuilder(series, options).build();
}

void write_svg(const std::filesystem::path& file, const std::vector<Series>& series, const ChartOptions& options) {
  write_atomically(file, render_svg(series, options));
}

}  // namespace adapters::train
