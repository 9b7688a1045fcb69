#include "launcher/sweep.h"

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <cstdio>
#include <map>
#include <set>
#include <sstream>

#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "launcher/trainer.h"
#include "model/lm.h"
#include "runtime/run_dir.h"

namespace gdn {

absl::StatusOr<std::vector<GridPoint>> PlanSweep(const ExperimentSpec& spec) {
  auto points = ExpandGrid(spec);
  if (!points.ok()) return points.status();
  for (const GridPoint& p : *points)
    if (auto s = ValidateRunnable(p.spec); !s.ok())
      return absl::InvalidArgumentError(
          absl::StrCat("sweep point ", absl::StrJoin(p.assignments, " "), ": ", s.message()));
  return points;
}

std::string DescribePlan(const std::vector<GridPoint>& points) {
  std::ostringstream os;
  double total_flops = 0;
  os << absl::StrFormat("%-44s %10s %12s %12s\n", "run", "params", "tokens", "PFLOP");
  for (const GridPoint& p : points) {
    // Building the model only counts parameters: no initialisation, no data.
    LanguageModel model(p.spec, DType::kF32);
    const double tokens = static_cast<double>(p.spec.run().steps()) * p.spec.data().batch_size() *
                          p.spec.data().seq_len();
    const double flops = model.MatmulFlopsPerToken() * tokens;
    total_flops += flops;
    os << absl::StrFormat("%-44s %9.2fM %12.0f %12.4f\n", p.id, model.params().NumElements() / 1e6,
                          tokens, flops / 1e15);
  }
  os << absl::StrFormat("%d runs, %.4f PFLOP of matrix products in all\n", points.size(),
                        total_flops / 1e15);
  return os.str();
}

namespace {

// Reads a finished run's summary into r.
void ReadSummary(const RunDirectory& dir, SweepResult& r) {
  auto summary = dir.ReadFile("summary.json");
  if (!summary.ok()) return;
  r.val_loss = JsonNumber(*summary, "val_loss").value_or(NAN);
  r.train_loss = JsonNumber(*summary, "train_loss").value_or(NAN);
  r.tokens_per_s = JsonNumber(*summary, "tokens_per_s").value_or(NAN);
}

// Runs one point as its own MPI job: the resolved spec goes to the run directory and
// `mpirun -np N gdn train` trains it there. The job's status file says how it ended.
void RunAsJob(const GridPoint& p, const RunDirectory& dir, int ranks, SweepResult& r) {
  const std::string spec_file = dir.File("point.textproto");
  if (!dir.WriteFile("point.textproto", SpecToText(p.spec)).ok()) {
    r.status = "failed";
    return;
  }
  const std::string self = std::filesystem::read_symlink("/proc/self/exe").string();
  const std::string command = absl::StrFormat(
      "mpirun --oversubscribe -np %d '%s' train --spec '%s' --quiet --restart > '%s' 2>&1", ranks,
      self, spec_file, dir.File("job.log"));
  const int rc = std::system(command.c_str());
  r.status = dir.Status();
  if (rc != 0 && r.status != "diverged") r.status = "failed";
  ReadSummary(dir, r);
}

}  // namespace

std::vector<SweepResult> RunSweep(const std::vector<GridPoint>& points, const ProcessGrid& grid,
                                  const SweepOptions& options) {
  const bool talk = grid.world_rank == 0;
  std::vector<SweepResult> results;
  for (size_t i = 0; i < points.size(); ++i) {
    const GridPoint& p = points[i];
    SweepResult r{p};
    auto dir = RunDirectory::Open(p.spec.run().dir());
    const std::string before = dir.ok() ? dir->Status() : "";
    const auto t0 = std::chrono::steady_clock::now();
    if ((before == "done" || before == "diverged") && dir->Exists("summary.json")) {
      r.status = before;
      ReadSummary(*dir, r);
      if (talk)
        std::printf("[%zu/%zu] %s: %s already (val %.4f)\n", i + 1, points.size(), p.id.c_str(),
                    before.c_str(), r.val_loss);
      results.push_back(r);
      continue;
    }
    std::string error;
    if (!dir.ok()) {
      r.status = "failed";
      error = std::string(dir.status().message());
    } else if (options.ranks_per_run > 0) {
      RunAsJob(p, *dir, options.ranks_per_run, r);
      if (r.status == "failed") error = "see " + dir->File("job.log");
    } else {
      TrainOptions train_options;
      train_options.quiet = true;
      train_options.restart = true;  // an interrupted run starts over
      auto trained = Train(p.spec, grid, train_options);
      if (trained.ok()) {
        r.status = trained->status;
        r.val_loss = trained->val_loss;
        r.train_loss = trained->train_loss;
        r.tokens_per_s = trained->tokens_per_s;
      } else {
        r.status = "failed";
        error = std::string(trained.status().message());
        if (talk) (void)dir->SetStatus("failed");
      }
    }
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (talk && r.status == "failed")
      std::printf("[%zu/%zu] %s: failed: %s\n", i + 1, points.size(), p.id.c_str(), error.c_str());
    else if (talk)
      std::printf("[%zu/%zu] %s: %s | train %.4f | val %.4f | %.0f tok/s | %.0fs\n", i + 1,
                  points.size(), p.id.c_str(), r.status.c_str(), r.train_loss, r.val_loss,
                  r.tokens_per_s, seconds);
    std::fflush(stdout);
    ReleaseCachedMemory();  // the next run's buffer sizes differ
    results.push_back(r);
  }
  return results;
}

namespace {
// The assignments that are not width, learning rate or seed name a table.
std::string GroupOf(const GridPoint& p) {
  std::vector<std::string> rest;
  for (const std::string& a : p.assignments)
    if (a.rfind("model.width=", 0) != 0 && a.rfind("optimizer.lr=", 0) != 0 &&
        a.rfind("run.seed=", 0) != 0)
      rest.push_back(a);
  return rest.empty() ? "all runs" : absl::StrJoin(rest, " ");
}
}  // namespace

std::string SweepTable(const std::vector<SweepResult>& results) {
  struct Cell {
    double sum = 0;
    int n = 0;
    bool diverged = false;
  };
  // group -> width -> lr -> cell
  std::map<std::string, std::map<int, std::map<double, Cell>>> groups;
  for (const SweepResult& r : results) {
    Cell& c = groups[GroupOf(r.point)][r.point.spec.model().width()][r.point.spec.optimizer().lr()];
    if (r.status == "done" && std::isfinite(r.val_loss)) {
      c.sum += r.val_loss;
      ++c.n;
    } else {
      c.diverged = true;
    }
  }
  std::ostringstream os;
  for (const auto& [group, widths] : groups) {
    std::set<double> lr_set;
    for (const auto& [w, lrs] : widths)
      for (const auto& [lr, c] : lrs) lr_set.insert(lr);
    const std::vector<double> lrs(lr_set.begin(), lr_set.end());
    os << "\nfinal validation loss: " << group << "\n" << absl::StrFormat("%8s", "width");
    for (double lr : lrs) os << absl::StrFormat(" %10.3g", lr);
    os << absl::StrFormat(" %10s %6s\n", "best lr", "shift");
    int base_index = -1;
    for (const auto& [w, cells] : widths) {
      os << absl::StrFormat("%8d", w);
      int best = -1;
      double best_loss = INFINITY;
      for (size_t i = 0; i < lrs.size(); ++i) {
        auto it = cells.find(lrs[i]);
        if (it == cells.end()) {
          os << absl::StrFormat(" %10s", "-");
        } else if (it->second.diverged || it->second.n == 0) {
          os << absl::StrFormat(" %10s", "diverged");
        } else {
          const double loss = it->second.sum / it->second.n;
          os << absl::StrFormat(" %10.4f", loss);
          if (loss < best_loss) best_loss = loss, best = static_cast<int>(i);
        }
      }
      if (best < 0) {
        os << absl::StrFormat(" %10s %6s\n", "-", "-");
        continue;
      }
      if (base_index < 0) base_index = best;
      os << absl::StrFormat(" %10.3g %+6d\n", lrs[best], best - base_index);
    }
  }
  return os.str();
}

std::string SweepCsv(const std::vector<SweepResult>& results) {
  std::ostringstream os;
  os << "run_id,parametrization,optimizer,width,lr,seed,status,train_loss,val_loss,tokens_per_s\n";
  for (const SweepResult& r : results) {
    const ExperimentSpec& s = r.point.spec;
    os << absl::StrFormat("%s,%s,%s,%d,%.9g,%d,%s,%.6f,%.6f,%.1f\n", r.point.id,
                          ParametrizationSpec::Kind_Name(s.parametrization().kind()),
                          OptimizerSpec::Kind_Name(s.optimizer().kind()), s.model().width(),
                          s.optimizer().lr(), s.run().seed(), r.status, r.train_loss, r.val_loss,
                          r.tokens_per_s);
  }
  return os.str();
}

}  // namespace gdn
