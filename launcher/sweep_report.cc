// `gdn sweep report`: CSV files, the best-value table (learning rate or another swept axis) and
// gnuplot's plots, from the run
// directories alone (runs may be unfinished, running elsewhere or gone).
#include <algorithm>
#include <cmath>
#include <filesystem>
#include <map>
#include <set>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "launcher/plot.h"
#include "launcher/process.h"
#include "launcher/sweep.h"
#include "runtime/atomic_file.h"
#include "runtime/run_dir.h"

namespace gdn {
namespace {

absl::Status Write(const std::string& path, const std::string& text, ReportFiles& files) {
  if (auto s = WriteFileAtomically(path, {{text.data(), text.size()}}); !s.ok()) return s;
  files.written.push_back(path);
  return absl::OkStatus();
}

// "parametrization.kind=SP optimizer.kind=ADAMW model.depth=2" -> "SP ADAMW depth=2".
std::string PanelTitle(const std::string& group) {
  if (group == "all runs") return group;
  std::vector<std::string> parts;
  for (absl::string_view a : absl::StrSplit(group, ' ')) {
    const size_t eq = a.find('=');
    const absl::string_view path = a.substr(0, eq), value = a.substr(eq + 1);
    const absl::string_view leaf = path.substr(path.rfind('.') + 1);
    parts.push_back(leaf == "kind" ? std::string(value) : absl::StrCat(leaf, "=", value));
  }
  return absl::StrJoin(parts, " ");
}

// The group name without its parametrization: the row of its panel (SP and muP side by side).
std::string RowOf(const std::string& group) {
  std::vector<std::string> rest;
  for (absl::string_view a : absl::StrSplit(group, ' '))
    if (!absl::StartsWith(a, "parametrization.kind=")) rest.emplace_back(a);
  return absl::StrJoin(rest, " ");
}

struct Panel {
  const SweepGroup* group = nullptr;  // null: an empty place in the layout
};

// Rows: the groups' other assignments; columns: SP, then muP (only those present).
std::vector<std::vector<Panel>> Layout(const std::vector<SweepGroup>& groups) {
  std::vector<std::string> columns;
  for (const char* kind : {"SP", "MUP"})
    for (const SweepGroup& g : groups)
      if (g.parametrization == kind && std::find(columns.begin(), columns.end(), kind) == columns.end())
        columns.push_back(kind);
  std::vector<std::string> rows;
  for (const SweepGroup& g : groups)
    if (std::find(rows.begin(), rows.end(), RowOf(g.name)) == rows.end()) rows.push_back(RowOf(g.name));
  std::vector<std::vector<Panel>> layout(rows.size(), std::vector<Panel>(columns.size()));
  for (const SweepGroup& g : groups) {
    const size_t r = std::find(rows.begin(), rows.end(), RowOf(g.name)) - rows.begin();
    const size_t c = std::find(columns.begin(), columns.end(), g.parametrization) - columns.begin();
    layout[r][c].group = &g;
  }
  return layout;
}

std::string Num(double v) { return std::isfinite(v) ? absl::StrFormat("%.6g", v) : "NaN"; }

// The plotted x of an axis value: log2 (grid values are mostly factors of 2), or the value itself
// when the sweep has values <= 0.
double PlotX(double x, bool log2) { return log2 ? std::log2(x) : x; }

// One panel of <leaf>_sweep.png: a data block per width (gnuplot's `index`), then the diverged
// points drawn at the top of the panel. Returns the plot command.
std::string AxisPanel(const SweepGroup& g, bool log2, const std::string& data_path,
                      const std::map<int, int>& color, std::string& data) {
  std::ostringstream d;
  std::vector<std::string> plots;
  double top = -INFINITY, bottom = INFINITY;
  for (const SweepWidth& w : g.widths)
    for (const SweepCell& c : w.cells)
      if (c.state == "done") top = std::max(top, c.val_loss), bottom = std::min(bottom, c.val_loss);
  int index = 0;
  for (const SweepWidth& w : g.widths) {
    std::string block;
    for (const SweepCell& c : w.cells)
      if (c.state == "done") block += absl::StrFormat("%s %s\n", Num(PlotX(c.x, log2)), Num(c.val_loss));
    if (block.empty()) continue;
    d << "# width " << w.width << "\n" << block << "\n\n";
    plots.push_back(absl::StrFormat(
        "'%s' index %d using 1:2 with linespoints lw 2 pt 7 lc %d title 'width %d'", data_path,
        index++, color.at(w.width), w.width));
  }
  std::string diverged;
  const double mark = std::isfinite(top) ? top + 0.05 * std::max(top - bottom, 0.1) : 1;
  for (const SweepWidth& w : g.widths)
    for (const SweepCell& c : w.cells)
      if (c.state == "diverged") diverged += absl::StrFormat("%s %s\n", Num(PlotX(c.x, log2)), Num(mark));
  if (!diverged.empty()) {
    d << "# diverged\n" << diverged << "\n\n";
    plots.push_back(absl::StrFormat(
        "'%s' index %d using 1:2 with points pt 2 ps 2 lc rgb 'red' title 'diverged'", data_path,
        index++));
  }
  data = d.str();
  if (plots.empty())
    return "set label 1 'no finished runs yet' at graph 0.5,0.5 center\n"
           "plot [0:1][0:1] NaN notitle\nunset label 1\n";
  return "plot " + absl::StrJoin(plots, ", \\\n     ") + "\n";
}

// One panel of curves.png: training loss (lines) and validation loss (points) of each width's best
// value of the swept axis (its first seed).
std::string CurvePanel(const SweepGroup& g, const std::vector<SweepResult>& results,
                       const std::string& data_path, const std::map<int, int>& color,
                       std::string& data) {
  std::ostringstream d;
  std::vector<std::string> plots;
  int index = 0;
  for (const SweepWidth& w : g.widths) {
    if (w.best < 0) continue;
    const double x = g.xs[w.best];
    const SweepResult* run = nullptr;
    for (const SweepResult& r : results)
      if (r.status == "done" && r.point.spec.model().width() == w.width &&
          AxisValue(r.point, g.axis) == x && SweepGroupName(r.point, g.axis) == g.name &&
          (!run || r.point.spec.run().seed() < run->point.spec.run().seed()))
        run = &r;
    if (!run) continue;
    d << "# " << run->point.id << "\n";
    for (const CurvePoint& p : ReadCurve(run->point.spec.run().dir()))
      d << p.step << " " << Num(p.train) << " " << Num(p.val) << "\n";
    d << "\n\n";
    plots.push_back(absl::StrFormat(
        "'%s' index %d using 1:2 with lines lw 1.5 lc %d title 'width %d, %s %.3g'", data_path,
        index, color.at(w.width), w.width, AxisLeaf(g.axis), x));
    plots.push_back(absl::StrFormat(
        "'%s' index %d using 1:3 with points pt 7 ps 0.8 lc %d notitle", data_path, index,
        color.at(w.width)));
    ++index;
  }
  data = d.str();
  if (plots.empty())
    return "set label 1 'no finished runs yet' at graph 0.5,0.5 center\n"
           "plot [0:1][0:1] NaN notitle\nunset label 1\n";
  return "plot " + absl::StrJoin(plots, ", \\\n     ") + "\n";
}

}  // namespace

absl::StatusOr<ReportFiles> WriteSweepReport(const std::string& dir,
                                             const std::vector<SweepResult>& results, bool plots) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return absl::PermissionDeniedError(absl::StrCat(dir, ": cannot create: ", ec.message()));
  ReportFiles files;
  if (auto s = Write(dir + "/results.csv", SweepCsv(results), files); !s.ok()) return s;
  if (auto s = Write(dir + "/best_lr.csv", BestLrCsv(results), files); !s.ok()) return s;
  if (auto s = Write(dir + "/table.txt", SweepTable(results) + SettlingTable(results), files); !s.ok())
    return s;
  if (!plots) return files;

  const std::string plot_dir = dir + "/plots";
  std::filesystem::create_directories(plot_dir, ec);
  if (ec) return absl::PermissionDeniedError(absl::StrCat(plot_dir, ": cannot create: ", ec.message()));
  const std::vector<SweepGroup> groups = GroupSweep(results);
  const auto layout = Layout(groups);
  const std::string leaf = AxisLeaf(SweptAxis(results));
  const std::string axis_figure = leaf + "_sweep";  // lr_sweep, init_std_sweep
  bool log2 = true;
  for (const SweepGroup& g : groups)
    for (double x : g.xs) log2 = log2 && x > 0;
  // One color per width across every panel and both figures.
  std::map<int, int> color;
  for (const SweepGroup& g : groups)
    for (const SweepWidth& w : g.widths) color.emplace(w.width, 0);
  int next_color = 1;
  for (auto& [w, c] : color) c = next_color++;

  const size_t rows = layout.size(), cols = layout.empty() ? 0 : layout[0].size();
  std::ostringstream gp;
  gp << "# Written by `gdn sweep report`; run `gnuplot plots/report.gp` in the sweep directory to\n"
        "# draw " << axis_figure << ".png and curves.png again (e.g. after editing).\n"
     << "set datafile missing 'NaN'\nset key top right font ',9'\nset grid\n";
  for (const std::string& figure : {axis_figure, std::string("curves")}) {
    gp << absl::StrFormat("\nset terminal pngcairo noenhanced size %d,%d font ',10'\nset output '%s.png'\n",
                          std::max<size_t>(cols, 1) * 560, std::max<size_t>(rows, 1) * 400, figure)
       << absl::StrFormat("set multiplot layout %d,%d title '%s'\n", std::max<size_t>(rows, 1),
                          std::max<size_t>(cols, 1),
                          figure == axis_figure
                              ? "final validation loss against " + leaf
                              : "training (lines) and validation (points) loss at the best " +
                                    leaf + " of each width");
    if (figure == axis_figure)
      gp << "set xlabel '" << (log2 ? "log2(" + leaf + ")" : leaf)
         << "'\nset ylabel 'validation loss'\n";
    else
      gp << "set xlabel 'step'\nset ylabel 'loss'\n";
    for (size_t r = 0; r < rows; ++r)
      for (size_t c = 0; c < cols; ++c) {
        const SweepGroup* g = layout[r][c].group;
        if (!g) {
          gp << "set multiplot next\n";
          continue;
        }
        const std::string name = absl::StrFormat("%s_%d_%d.dat", figure, r, c);
        std::string data;
        const std::string plot =
            figure == axis_figure ? AxisPanel(*g, log2, "plots/" + name, color, data)
                                 : CurvePanel(*g, results, "plots/" + name, color, data);
        if (auto s = Write(plot_dir + "/" + name, data, files); !s.ok()) return s;
        gp << "set title '" << PanelTitle(g->name) << "'\n" << plot;
      }
    gp << "unset multiplot\n";
  }
  const std::string script = plot_dir + "/report.gp";
  files.written.push_back(script);
  // gnuplot runs in the sweep directory so the script's paths stay relative (the folder can move).
  if (auto s = RunGnuplot(script, gp.str(), dir); !s.ok()) return s;
  files.written.push_back(dir + "/" + axis_figure + ".png");
  files.written.push_back(dir + "/curves.png");
  return files;
}

}  // namespace gdn
