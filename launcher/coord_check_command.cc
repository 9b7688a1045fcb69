#include "launcher/coord_check_command.h"

#include <cmath>
#include <cstdio>
#include <filesystem>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "launcher/plot.h"
#include "launcher/trainer.h"
#include "model/config.h"
#include "model/coord_check.h"
#include "runtime/data_loader.h"
#include "runtime/run_dir.h"

namespace gdn {

namespace {

template <typename Enum>
absl::Status ParseKinds(const std::string& flag, const std::string& list,
                        bool (*parse)(absl::string_view, Enum*), std::vector<Enum>* out) {
  for (absl::string_view name : absl::StrSplit(list, ',', absl::SkipEmpty())) {
    Enum kind;
    if (!parse(absl::AsciiStrToUpper(absl::StripAsciiWhitespace(name)), &kind))
      return absl::InvalidArgumentError(absl::StrCat("--", flag, ": unknown value '", name, "'"));
    out->push_back(kind);
  }
  if (out->empty()) return absl::InvalidArgumentError(absl::StrCat("--", flag, ": empty list"));
  return absl::OkStatus();
}

bool ParseParametrization(absl::string_view s, ParametrizationSpec::Kind* k) {
  return ParametrizationSpec::Kind_Parse(std::string(s), k);
}
bool ParseOptimizer(absl::string_view s, OptimizerSpec::Kind* k) {
  return OptimizerSpec::Kind_Parse(std::string(s), k);
}

absl::StatusOr<double> ParseLr(const std::string& flag, const std::string& value) {
  if (value.empty()) return 0.0;
  double lr = 0;
  if (!absl::SimpleAtod(value, &lr) || !(lr > 0) || !std::isfinite(lr))
    return absl::InvalidArgumentError(
        absl::StrCat("--", flag, ": '", value, "' is not a finite positive number"));
  return lr;
}

std::string Slug(const std::string& label) {
  std::string s = absl::AsciiStrToLower(label);
  for (char& c : s)
    if (!absl::ascii_isalnum(c)) c = '_';
  return s;
}

// One PNG: a panel per probe, log-log mean |coordinate| against width, a line per step.
absl::Status Plot(const CoordCheckResult& r, double lr, const std::string& dir) {
  const std::string slug = Slug(r.label);
  std::string data;
  for (const std::string& probe : r.probes) {
    absl::StrAppend(&data, "# ", probe, ": width, then the value after each step\n");
    for (size_t w = 0; w < r.widths.size(); ++w) {
      absl::StrAppend(&data, r.widths[w]);
      for (int step = 0; step <= r.steps; ++step)
        absl::StrAppendFormat(&data, " %.9g", r.values.at(probe)[step][w]);
      data += "\n";
    }
    data += "\n\n";  // a new gnuplot data block (index)
  }
  RunDirectory out = *RunDirectory::Open(dir);
  if (auto s = out.WriteFile("coord_check_" + slug + ".dat", data); !s.ok()) return s;
  std::string gp = absl::StrFormat(
      "set terminal pngcairo noenhanced size 1600,1000 font ',9'\n"
      "set output %s\n"
      "set multiplot layout 3,4 title %s\n"
      "set logscale x 2\nset logscale y 10\nset key top left font ',7'\nset grid\n"
      "set xlabel 'width'\nset format y '%%.2g'\n",
      GnuplotQuote("coord_check_" + slug + ".png"),
      GnuplotQuote(absl::StrFormat("coordinate check, %s, lr %g: mean |coordinate| against width "
                                   "(flat = width-independent)",
                                   r.label, lr)));
  for (size_t i = 0; i < r.probes.size(); ++i)
    absl::StrAppendFormat(&gp,
                          "set title %s\nplot for [s=0:%d] %s index %d using 1:(column(s+2)) "
                          "with linespoints title sprintf('step %%d', s)\n",
                          GnuplotQuote(r.probes[i]), r.steps,
                          GnuplotQuote("coord_check_" + slug + ".dat"), i);
  gp += "unset multiplot\n";
  return RunGnuplot(out.File("coord_check_" + slug + ".gp"), gp, dir);
}

}  // namespace

absl::StatusOr<CoordCheckOptions> ParseCoordCheckFlags(const std::string& widths, int steps,
                                                       const std::string& parametrizations,
                                                       const std::string& optimizers,
                                                       const std::string& adamw_lr,
                                                       const std::string& sgd_lr,
                                                       const std::string& out_dir) {
  CoordCheckOptions o;
  for (absl::string_view w : absl::StrSplit(widths, ',', absl::SkipEmpty())) {
    int v = 0;
    if (!absl::SimpleAtoi(w, &v) || v <= 0)
      return absl::InvalidArgumentError(absl::StrCat("--widths: '", w, "' is not a positive integer"));
    o.widths.push_back(v);
  }
  if (o.widths.size() < 2) return absl::InvalidArgumentError("--widths: give at least two widths");
  if (steps < 1) return absl::InvalidArgumentError("--steps: must be >= 1");
  o.steps = steps;
  if (auto s = ParseKinds("parametrizations", parametrizations, ParseParametrization, &o.parametrizations); !s.ok())
    return s;
  if (auto s = ParseKinds("optimizers", optimizers, ParseOptimizer, &o.optimizers); !s.ok()) return s;
  auto a = ParseLr("adamw-lr", adamw_lr);
  if (!a.ok()) return a.status();
  auto g = ParseLr("sgd-lr", sgd_lr);
  if (!g.ok()) return g.status();
  o.adamw_lr = *a;
  o.sgd_lr = *g;
  if (out_dir.empty()) return absl::InvalidArgumentError("--out: empty");
  o.out_dir = out_dir;
  return o;
}

absl::Status RunCoordCheckCommand(const ExperimentSpec& spec, const CoordCheckOptions& o) {
  // Every configuration is checked before the first one runs.
  struct Config {
    ExperimentSpec spec;
    double lr;
  };
  std::vector<Config> configs;
  for (auto p : o.parametrizations)
    for (auto k : o.optimizers) {
      Config c{spec, 0};
      c.spec.mutable_parametrization()->set_kind(p);
      c.spec.mutable_optimizer()->set_kind(k);
      const double lr = k == OptimizerSpec::ADAMW ? o.adamw_lr : o.sgd_lr;
      c.lr = lr > 0 ? lr : spec.optimizer().lr();
      c.spec.mutable_optimizer()->set_lr(c.lr);
      for (int w : o.widths) {
        ExperimentSpec at = c.spec;
        at.mutable_model()->set_width(w);
        if (auto s = ValidateModelSpec(at); !s.ok())
          return absl::InvalidArgumentError(absl::StrCat("--widths: width ", w, ": ", s.message()));
      }
      configs.push_back(std::move(c));
    }
  // The fixed batch: the first training batch of the spec's data.
  auto data = OpenTokens("data.train_path", spec.data().train_path(), spec.model().vocab_size());
  if (!data.ok()) return data.status();
  auto loader = BatchLoader::Create(&*data, spec.data().seq_len(), spec.data().batch_size(), spec.run().seed());
  if (!loader.ok()) return absl::InvalidArgumentError(absl::StrCat("data.train_path: ", loader.status().message()));
  Tensor tokens = Tensor::Empty({spec.data().batch_size(), spec.data().seq_len() + 1}, DType::kI32);
  loader->TrainBatch(0, tokens.data<int32_t>());
  auto out = RunDirectory::Open(o.out_dir);
  if (!out.ok()) return out.status();

  std::printf("gdn coord-check: widths %s, %d steps on one batch of %d x %d tokens -> %s\n",
              absl::StrJoin(o.widths, ",").c_str(), o.steps, spec.data().batch_size(),
              spec.data().seq_len(), o.out_dir.c_str());
  std::vector<CoordCheckResult> results;
  std::string text;
  for (const Config& c : configs) {
    results.push_back(RunCoordCheck(c.spec, o.widths, o.steps, tokens));
    const CoordCheckResult& r = results.back();
    std::string table = absl::StrCat("lr ", c.lr, "\n", FormatCoordCheck(r));
    // The summary line: the probe that depends most on width after the last step.
    std::string worst;
    double spread = 0;
    for (const std::string& k : r.probes)
      if (r.Spread(k, r.steps) > spread) spread = r.Spread(k, r.steps), worst = k;
    absl::StrAppendFormat(&table, "%s: largest max/min over widths after step %d: %s %.2f\n\n",
                          r.label, r.steps, worst, spread);
    std::printf("\n%s", table.c_str());
    std::fflush(stdout);
    text += table;
  }
  if (auto s = out->WriteFile("coord_check.txt", text); !s.ok()) return s;
  if (auto s = out->WriteFile("coord_check.csv", CoordCheckCsv(results)); !s.ok()) return s;
  for (size_t i = 0; i < results.size(); ++i)
    if (auto s = Plot(results[i], configs[i].lr, o.out_dir); !s.ok()) return s;
  std::printf("wrote %s/coord_check.{txt,csv} and %zu plots coord_check_*.png\n", o.out_dir.c_str(),
              results.size());
  return absl::OkStatus();
}

}  // namespace gdn
