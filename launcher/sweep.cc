#include "launcher/sweep.h"

#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "launcher/cli.h"
#include "launcher/process.h"
#include "launcher/trainer.h"
#include "model/config.h"
#include "runtime/run_dir.h"

namespace gdn {

absl::StatusOr<std::vector<GridPoint>> PlanSweep(const ExperimentSpec& spec,
                                                 bool check_data_paths) {
  auto points = ExpandGrid(spec);
  if (!points.ok()) return points.status();
  for (const GridPoint& p : *points)
    if (auto s = ValidateRunnable(p.spec, check_data_paths); !s.ok())
      return absl::InvalidArgumentError(
          absl::StrCat("sweep point ", absl::StrJoin(p.assignments, " "), ": ", s.message()));
  return points;
}

std::string DescribePlan(const std::vector<GridPoint>& points) {
  std::ostringstream os;
  double total_flops = 0;
  os << absl::StrFormat("%-44s %10s %12s %12s\n", "run", "params", "tokens", "PFLOP");
  for (const GridPoint& p : points) {
    // From the sizes alone: a plan allocates nothing, whatever the sizes.
    const ModelDims dims = *ResolveModelDims(p.spec.model());  // the grid is validated
    const double tokens = static_cast<double>(p.spec.run().steps()) * p.spec.data().batch_size() *
                          p.spec.data().seq_len();
    const double flops = MatmulFlopsPerToken(dims) * tokens;
    total_flops += flops;
    os << absl::StrFormat("%-44s %9.2fM %12.0f %12.4f\n", p.id, ParameterCount(dims) / 1e6,
                          tokens, flops / 1e15);
  }
  os << absl::StrFormat("%d runs, %.4f PFLOP of matrix products in all\n", points.size(),
                        total_flops / 1e15);
  return os.str();
}

SweepResult ReadRun(const GridPoint& point) {
  SweepResult r{point};
  r.train_loss = r.val_loss = r.tokens_per_s = NAN;
  const RunDirectory dir = RunDirectory::ForReading(point.spec.run().dir());
  r.status = dir.Status();
  if (r.status.empty()) r.status = "pending";
  // "running" left behind by a process that died (kill -9, a lost node): nobody holds the lock.
  if (r.status == "running" && dir.IsLocked() == false) r.status = "interrupted";
  if (auto metrics = dir.ReadFile("metrics.jsonl"); metrics.ok()) {
    for (absl::string_view line : absl::StrSplit(*metrics, '\n', absl::SkipEmpty())) {
      const std::string l(line);
      auto step = JsonNumber(l, "step");
      auto loss = JsonNumber(l, "train_loss");
      if (!step.ok() || !loss.ok()) continue;  // a line cut short by a crash
      r.step = static_cast<int64_t>(*step);
      r.train_loss = *loss;
      r.tokens_per_s = JsonNumber(l, "tokens_per_s").value_or(NAN);
      if (auto val = JsonNumber(l, "val_loss"); val.ok()) r.val_loss = *val;
    }
    std::error_code ec;
    const auto mtime = std::filesystem::last_write_time(dir.File("metrics.jsonl"), ec);
    if (!ec)
      r.seconds_since_update = std::chrono::duration<double>(
                                   std::filesystem::file_time_type::clock::now() - mtime)
                                   .count();
  }
  // A finished run's summary has the final numbers (the mean throughput, NaN val when diverged).
  if (r.status == "done" || r.status == "diverged") {
    if (auto summary = dir.ReadFile("summary.json"); summary.ok()) {
      r.val_loss = JsonNumber(*summary, "val_loss").value_or(NAN);
      r.train_loss = JsonNumber(*summary, "train_loss").value_or(r.train_loss);
      r.tokens_per_s = JsonNumber(*summary, "tokens_per_s").value_or(r.tokens_per_s);
    }
  }
  if (r.status != "done") r.val_loss = r.status == "diverged" ? NAN : r.val_loss;
  return r;
}

std::vector<SweepResult> ReadRuns(const std::vector<GridPoint>& points) {
  std::vector<SweepResult> results;
  for (const GridPoint& p : points) results.push_back(ReadRun(p));
  return results;
}

namespace {

bool Finished(const std::string& status) { return status == "done" || status == "diverged"; }

void PrintOutcome(size_t i, size_t n, const SweepResult& r, double seconds,
                  const std::string& error) {
  if (r.status == "failed")
    std::printf("[%zu/%zu] %s: failed: %s\n", i + 1, n, r.point.id.c_str(), error.c_str());
  else
    std::printf("[%zu/%zu] %s: %s | step %lld | train %.4f | val %.4f | %.0f tok/s | %.0fs\n",
                i + 1, n, r.point.id.c_str(), r.status.c_str(), static_cast<long long>(r.step),
                r.train_loss, r.val_loss, r.tokens_per_s, seconds);
  std::fflush(stdout);
}

// A preemption of the sweep itself (SIGINT, SIGTERM, SIGUSR2) while its runs are child processes.
volatile std::sig_atomic_t g_preempt_signal = 0;
void OnPreempt(int signal) { g_preempt_signal = signal; }

// The signals that preempt a sweep: Ctrl-C, a closed terminal, and a scheduler's TERM or USR2.
constexpr int kSweepSignals[] = {SIGINT, SIGHUP, SIGTERM, SIGUSR2};

// Takes kSweepSignals (OnPreempt) and ignores SIGPIPE (a closed stdout must not kill the sweep)
// while it lives (SignalHandlers: those the process was started ignoring stay ignored).
class SweepSignals {
 public:
  SweepSignals() {
    g_preempt_signal = 0;
    for (const int signal : kSweepSignals) handlers_.Set(signal, OnPreempt);
    handlers_.Set(SIGPIPE, SIG_IGN);
  }

 private:
  SignalHandlers handlers_;
};

// A run's directory held by another process (a second sweep, a gdn train) refused this one: its
// state is that process's, so the sweep neither marks nor counts it as failed.
bool HeldByAnother(const GridPoint& p) {
  auto dir = RunDirectory::Open(p.spec.run().dir());
  return dir.ok() && dir->IsLocked() == true;
}

// A run started as its own process: `[mpirun -np N] gdn train --spec <dir>/point.textproto`,
// output appended to <dir>/job.log.
struct Child {
  size_t index;
  int slot;  // 0..parallel-1: which GPUs it sees
  pid_t pid;
  std::chrono::steady_clock::time_point start;
};

absl::StatusOr<pid_t> StartRun(const GridPoint& p, int ranks, int threads, const std::string& gpus) {
  auto dir = RunDirectory::Open(p.spec.run().dir());
  if (!dir.ok()) return dir.status();
  if (auto s = dir->WriteFile("point.textproto", SpecToText(p.spec)); !s.ok()) return s;
  std::vector<std::string> argv;
  // If the sweep dies (kill -9, a lost session), its runs get SIGUSR2: they checkpoint and stop
  // rather than train on unsupervised (util-linux's setpriv; without it they run on).
  static const std::string setpriv = [] {  // util-linux 2.33 or later has --pdeathsig
    const std::string path = FindOnPath("setpriv");
    if (path.empty()) return path;
    auto probe = RunProcess({path, "--pdeathsig", "USR2", "--", "true"}, "/dev/null");
    return probe.ok() && *probe == 0 ? path : std::string();
  }();
  if (!setpriv.empty()) argv = {setpriv, "--pdeathsig", "USR2", "--"};
  if (ranks > 0)
    for (const std::string& a : {std::string("mpirun"), std::string("--oversubscribe"),
                                 std::string("-np"), absl::StrCat(ranks)})
      argv.push_back(a);
  for (const std::string& a : {SelfPath(), std::string("train"), std::string("--spec"),
                               dir->File("point.textproto"), std::string("--quiet")})
    argv.push_back(a);
  std::vector<std::string> env;
  if (threads > 0) env.push_back(absl::StrCat("OMP_NUM_THREADS=", threads));
  if (!gpus.empty()) env.push_back("CUDA_VISIBLE_DEVICES=" + gpus);
  // Its own process group: only this sweep signals it (mpirun given SIGTERM would exit 1).
  return SpawnProcess(argv, dir->File("job.log"), env, /*own_process_group=*/true);
}

// The run's outcome from the child's exit code (cli.h) and its directory.
SweepResult FinishRun(const GridPoint& p, int wait_status, bool preempting, std::string* error) {
  SweepResult r = ReadRun(p);
  const int code = WIFEXITED(wait_status) ? WEXITSTATUS(wait_status) : -1;
  if (code == kExitOk || code == kExitDiverged || code == kExitPreempted) {
    if (code == kExitPreempted) r.status = "preempted";
    return r;
  }
  // A run that had only just started when the preemption came, or had just finished, dies of
  // the forwarded SIGUSR2 (mpirun exits 128 + SIGUSR2 when its ranks do): one that finished keeps
  // its state, the others are preempted (they resume or start again), not failed.
  const bool usr2 = (WIFSIGNALED(wait_status) && WTERMSIG(wait_status) == SIGUSR2) ||
                    code == 128 + SIGUSR2;
  if (preempting && usr2) {
    if (Finished(r.status)) return r;
    if (r.status == "running")
      if (auto dir = RunDirectory::Open(p.spec.run().dir()); dir.ok()) (void)dir->SetStatus("preempted");
    r.status = "preempted";
    return r;
  }
  if (HeldByAnother(p)) {
    r.status = "running";
    *error = absl::StrCat(p.spec.run().dir(), " is in use by another process (its lock file names "
                          "it); left as it is");
    return r;
  }
  r.status = "failed";
  *error = absl::StrCat(code < 0 ? absl::StrCat("killed by signal ", WTERMSIG(wait_status))
                                 : absl::StrCat("exit code ", code),
                        "; see ", p.spec.run().dir(), "/job.log");
  // A crashed run leaves "running" behind; say what happened (rerunning resumes or restarts it).
  if (auto dir = RunDirectory::Open(p.spec.run().dir()); dir.ok()) (void)dir->SetStatus("failed");
  return r;
}

// Runs the points as child processes, `parallel` at a time.
std::vector<SweepResult> RunAsProcesses(const std::vector<GridPoint>& points,
                                        const std::vector<size_t>& todo, const SweepOptions& options,
                                        std::vector<SweepResult> results, bool* preempted) {
  const int per_run = std::max(1, options.ranks_per_run) * options.parallel;
  const int threads =
      std::getenv("OMP_NUM_THREADS") ? 0
                                     : std::max(1, static_cast<int>(std::thread::hardware_concurrency()) / per_run);
  SweepSignals signals;
  std::vector<Child> running;
  size_t next = 0;
  bool forwarded = false;
  while ((!g_preempt_signal && next < todo.size()) || !running.empty()) {
    if (g_preempt_signal && !forwarded) {
      // The runs checkpoint at their next step and exit 4 (mpirun passes SIGUSR2 to every rank).
      std::printf("gdn sweep run: preempted (signal %d): checkpointing %zu running runs\n",
                  static_cast<int>(g_preempt_signal), running.size());
      std::fflush(stdout);
      for (const Child& c : running) kill(c.pid, SIGUSR2);
      forwarded = true;
    }
    while (!g_preempt_signal && next < todo.size() &&
           static_cast<int>(running.size()) < options.parallel) {
      const size_t i = todo[next++];
      int slot = 0;  // the lowest free one
      while (std::any_of(running.begin(), running.end(), [&](const Child& c) { return c.slot == slot; }))
        ++slot;
      auto pid = StartRun(points[i], options.ranks_per_run, threads, SlotGpus(options, slot));
      if (!pid.ok()) {
        results[i] = ReadRun(points[i]);
        results[i].status = "failed";
        PrintOutcome(i, points.size(), results[i], 0, std::string(pid.status().message()));
        continue;
      }
      running.push_back({i, slot, *pid, std::chrono::steady_clock::now()});
    }
    int wait_status = 0;
    const pid_t pid = waitpid(-1, &wait_status, WNOHANG);
    if (pid <= 0) {
      usleep(100 * 1000);  // a signal ends the sleep early
      continue;
    }
    auto it = std::find_if(running.begin(), running.end(), [&](const Child& c) { return c.pid == pid; });
    if (it == running.end()) continue;
    const size_t i = it->index;
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - it->start).count();
    running.erase(it);
    std::string error;
    results[i] = FinishRun(points[i], wait_status, forwarded, &error);
    PrintOutcome(i, points.size(), results[i], seconds, error);
  }
  // Runs never started under a preemption stay as they were (pending or interrupted).
  *preempted = g_preempt_signal != 0;
  return results;
}

}  // namespace

std::string SlotGpus(const SweepOptions& options, int slot) {
  if (options.gpus <= 0) return "";
  const int ranks = std::max(1, options.ranks_per_run);
  std::vector<int> ids;
  for (int j = 0; j < ranks; ++j) ids.push_back((slot * ranks + j) % options.gpus);
  return absl::StrJoin(ids, ",");
}

std::vector<SweepResult> RunSweep(const std::vector<GridPoint>& points, const ProcessGrid& grid,
                                  const SweepOptions& options, bool* preempted) {
  const bool talk = grid.world_rank == 0;
  *preempted = false;
  std::vector<SweepResult> results = ReadRuns(points);
  std::vector<size_t> todo;
  for (size_t i = 0; i < points.size(); ++i) {
    if (!Finished(results[i].status)) {
      todo.push_back(i);
    } else if (talk) {
      std::printf("[%zu/%zu] %s: %s already (val %.4f)\n", i + 1, points.size(),
                  points[i].id.c_str(), results[i].status.c_str(), results[i].val_loss);
    }
  }
  std::fflush(stdout);
  if (options.ranks_per_run > 0 || options.parallel > 1 || options.gpus > 0)
    return RunAsProcesses(points, todo, options, std::move(results), preempted);

  // In this process, on this job's ranks, one after another. A signal between runs stops the
  // sweep before the next; during a run, the run takes it (Train's handlers, INT and HUP too).
  SweepSignals signals;
  for (size_t n = 0; n < todo.size(); ++n) {
    // Every rank decides alike (a signal may reach one rank between runs and another in a run).
    Tensor stop = Tensor::Empty({1}, DType::kI32);
    stop.set(0, g_preempt_signal ? 1 : 0);
    grid.world->AllReduceMax(stop);
    if (stop.at(0) != 0) {
      *preempted = true;
      break;
    }
    const size_t i = todo[n];
    const GridPoint& p = points[i];
    const auto t0 = std::chrono::steady_clock::now();
    TrainOptions train_options;
    train_options.quiet = true;  // (an interrupted run resumes from its newest checkpoint)
    train_options.also_preempt_on = "INT,HUP";
    auto trained = Train(p.spec, grid, train_options);
    std::string error;
    SweepResult& r = results[i];
    r = ReadRun(p);
    if (trained.ok()) {
      // Other ranks may read the directory before rank 0 finished writing it.
      r.status = trained->status;
      r.step = trained->steps;
      r.train_loss = trained->train_loss;
      r.val_loss = trained->val_loss;
      r.tokens_per_s = trained->tokens_per_s;
    } else if (HeldByAnother(p)) {
      r.status = "running";
      error = std::string(trained.status().message());
    } else {
      r.status = "failed";
      error = std::string(trained.status().message());
      if (talk)
        if (auto dir = RunDirectory::Open(p.spec.run().dir()); dir.ok()) (void)dir->SetStatus("failed");
    }
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (talk) PrintOutcome(i, points.size(), r, seconds, error);
    ReleaseCachedMemory();  // the next run's buffer sizes differ
    if (r.status == "preempted" || (trained.ok() && trained->stop_requested)) {
      *preempted = true;
      break;
    }
  }
  return results;
}

std::string SweepStatusTable(const std::vector<SweepResult>& results) {
  size_t id_width = 3;
  for (const SweepResult& r : results) id_width = std::max(id_width, r.point.id.size());
  std::ostringstream os;
  os << absl::StrFormat("%-*s %-9s %13s %10s %10s %10s\n", id_width, "run", "state", "step",
                        "train", "val", "updated");
  std::map<std::string, int> counts;
  auto number = [](double v) { return std::isnan(v) ? std::string("-") : absl::StrFormat("%.4f", v); };
  for (const SweepResult& r : results) {
    ++counts[r.status];
    const std::string step =
        r.status == "pending" ? "-" : absl::StrCat(r.step, "/", r.point.spec.run().steps());
    std::string age = "-";
    if (r.seconds_since_update >= 0) {
      const int64_t s = static_cast<int64_t>(r.seconds_since_update);
      age = s < 120 ? absl::StrCat(s, "s ago")
                    : s < 7200 ? absl::StrCat(s / 60, "m ago") : absl::StrCat(s / 3600, "h ago");
    }
    os << absl::StrFormat("%-*s %-9s %13s %10s %10s %10s\n", id_width, r.point.id, r.status, step,
                          number(r.train_loss), r.status == "diverged" ? "diverged" : number(r.val_loss),
                          age);
  }
  std::vector<std::string> parts;
  for (const char* state : {"done", "diverged", "running", "interrupted", "preempted", "failed", "pending"})
    if (counts.count(state)) parts.push_back(absl::StrCat(counts[state], " ", state));
  for (const auto& [state, n] : counts)  // anything unexpected in a status file
    if (!absl::StrContains("done diverged running interrupted preempted failed pending", state))
      parts.push_back(absl::StrCat(n, " ", state));
  os << absl::StrFormat("%d runs: %s\n", results.size(), absl::StrJoin(parts, ", "));
  return os.str();
}

namespace {

// The field of an assignment: "model.width=64" -> "model.width".
absl::string_view FieldOf(absl::string_view assignment) {
  return assignment.substr(0, assignment.find('='));
}

// The point's assigned value for `field`, as written in the spec.
std::optional<std::string> Assigned(const GridPoint& p, absl::string_view field) {
  for (const std::string& a : p.assignments)
    if (a.size() > field.size() && FieldOf(a) == field) return a.substr(field.size() + 1);
  return std::nullopt;
}

// RFC 4180 quoting, for values that hold a comma or a quote (a path, a name).
std::string CsvField(const std::string& v) {
  if (v.find_first_of(",\"\n") == std::string::npos) return v;
  return absl::StrCat("\"", absl::StrReplaceAll(v, {{"\"", "\"\""}}), "\"");
}

// The fields of sweep's built-in lists (ExpandGrid), never a sweep.axes field here.
bool BuiltInField(absl::string_view field) {
  return field == "parametrization.kind" || field == "optimizer.kind" || field == "model.width" ||
         field == "optimizer.lr" || field == "run.seed";
}

}  // namespace

std::vector<std::string> AxisFields(const std::vector<SweepResult>& results) {
  std::vector<std::string> fields;
  for (const SweepResult& r : results)
    for (const std::string& a : r.point.assignments) {
      const std::string field(FieldOf(a));
      if (!BuiltInField(field) && std::find(fields.begin(), fields.end(), field) == fields.end())
        fields.push_back(field);
    }
  return fields;
}

double AxisValue(const GridPoint& point, const std::string& axis) {
  if (axis == "optimizer.lr") return point.spec.optimizer().lr();
  const std::optional<std::string> text = Assigned(point, axis);
  double v = NAN;
  if (!text || !absl::SimpleAtod(*text, &v)) return NAN;
  return v;
}

std::string AxisLeaf(const std::string& axis) { return axis.substr(axis.rfind('.') + 1); }

std::string SweptAxis(const std::vector<SweepResult>& results) {
  std::set<double> lrs;
  for (const SweepResult& r : results) lrs.insert(r.point.spec.optimizer().lr());
  if (lrs.size() > 1) return "optimizer.lr";
  for (const std::string& field : AxisFields(results)) {
    std::set<double> values;
    bool numeric = true;
    for (const SweepResult& r : results) {
      const double v = AxisValue(r.point, field);
      if (!std::isfinite(v)) {  // not a number ("true", an enum name), or a run without it
        numeric = false;
        break;
      }
      values.insert(v);
    }
    if (numeric && values.size() > 1) return field;
  }
  return "optimizer.lr";
}

std::string SweepGroupName(const GridPoint& p, const std::string& axis) {
  // The learning rate is left out even when another axis is swept: it then has a single value.
  std::vector<std::string> rest;
  for (const std::string& a : p.assignments) {
    const absl::string_view field = FieldOf(a);
    if (field != "model.width" && field != "optimizer.lr" && field != "run.seed" && field != axis)
      rest.push_back(a);
  }
  return rest.empty() ? "all runs" : absl::StrJoin(rest, " ");
}

std::vector<SweepGroup> GroupSweep(const std::vector<SweepResult>& results) {
  struct Acc {
    double sum = 0;
    int n = 0, seeds = 0;
    std::string state;
  };
  struct G {
    std::string parametrization;
    std::map<int, std::map<double, Acc>> cells;  // width -> axis value
  };
  const std::string axis = SweptAxis(results);
  std::map<std::string, G> groups;
  for (const SweepResult& r : results) {
    const ExperimentSpec& s = r.point.spec;
    G& g = groups[SweepGroupName(r.point, axis)];
    g.parametrization = ParametrizationSpec::Kind_Name(s.parametrization().kind());
    // Finite for every run: SweptAxis picks only fields whose values all are.
    Acc& a = g.cells[s.model().width()][AxisValue(r.point, axis)];
    ++a.seeds;
    if (r.status == "done" && std::isfinite(r.val_loss)) {
      a.sum += r.val_loss;
      ++a.n;
    } else if (a.state.empty() || r.status == "diverged") {
      a.state = r.status == "done" ? "diverged" : r.status;  // done with a non-finite loss
    }
  }
  std::vector<SweepGroup> out;
  for (const auto& [name, g] : groups) {
    SweepGroup group;
    group.name = name;
    group.parametrization = g.parametrization;
    group.axis = axis;
    std::set<double> xs;
    for (const auto& [w, cells] : g.cells)
      for (const auto& [x, a] : cells) xs.insert(x);
    group.xs.assign(xs.begin(), xs.end());
    int base = -1;
    for (const auto& [w, cells] : g.cells) {
      SweepWidth width;
      width.width = w;
      double best_loss = INFINITY;
      for (size_t i = 0; i < group.xs.size(); ++i) {
        SweepCell cell;
        cell.x = group.xs[i];
        cell.val_loss = NAN;
        auto it = cells.find(cell.x);
        if (it == cells.end()) {
          cell.state = "-";  // not in the grid
        } else if (!it->second.state.empty()) {
          cell.state = it->second.state;
        } else {
          cell.state = "done";
          cell.val_loss = it->second.sum / it->second.n;
          if (cell.val_loss < best_loss) best_loss = cell.val_loss, width.best = static_cast<int>(i);
        }
        width.cells.push_back(cell);
      }
      if (width.best >= 0) {
        if (base < 0) base = width.best;
        width.shift = width.best - base;
      }
      group.widths.push_back(std::move(width));
    }
    out.push_back(std::move(group));
  }
  return out;
}

std::string SweepTable(const std::vector<SweepResult>& results) {
  std::ostringstream os;
  for (const SweepGroup& g : GroupSweep(results)) {
    const std::string best = "best " + AxisLeaf(g.axis);
    const int best_width = std::max<int>(10, best.size());
    os << "\nfinal validation loss: " << g.name << "\n" << absl::StrFormat("%8s", "width");
    for (double x : g.xs) os << absl::StrFormat(" %10.3g", x);
    os << absl::StrFormat(" %*s %6s\n", best_width, best, "shift");
    for (const SweepWidth& w : g.widths) {
      os << absl::StrFormat("%8d", w.width);
      for (const SweepCell& c : w.cells)
        os << (c.state == "done" ? absl::StrFormat(" %10.4f", c.val_loss)
                                 : absl::StrFormat(" %10s", c.state));
      if (w.best < 0)
        os << absl::StrFormat(" %*s %6s\n", best_width, "-", "-");
      else
        os << absl::StrFormat(" %*.3g %+6d\n", best_width, g.xs[w.best], w.shift);
    }
  }
  return os.str();
}

std::vector<CurvePoint> ReadCurve(const std::string& run_dir) {
  std::vector<CurvePoint> curve;
  auto metrics = RunDirectory::ForReading(run_dir).ReadFile("metrics.jsonl");
  if (!metrics.ok()) return curve;
  for (absl::string_view line : absl::StrSplit(*metrics, '\n', absl::SkipEmpty())) {
    const std::string l(line);
    auto step = JsonNumber(l, "step");
    auto train = JsonNumber(l, "train_loss");
    if (!step.ok() || !train.ok()) continue;
    curve.push_back({static_cast<int64_t>(*step), *train, JsonNumber(l, "val_loss").value_or(NAN)});
  }
  return curve;
}

std::string SettlingTable(const std::vector<SweepResult>& results) {
  const std::string axis = SweptAxis(results);
  struct Acc {
    double sum = 0;
    int n = 0;
  };
  // group -> width -> axis value -> step -> validation losses of the cell's done seeds
  std::map<std::string, std::map<int, std::map<double, std::map<int64_t, Acc>>>> cells;
  std::map<std::string, std::map<int, std::map<double, int>>> seeds;
  std::map<std::string, std::set<int64_t>> steps;
  for (const SweepResult& r : results) {
    const std::string g = SweepGroupName(r.point, axis);
    const int w = r.point.spec.model().width();
    const double x = AxisValue(r.point, axis);
    ++seeds[g][w][x];
    if (r.status != "done") continue;
    for (const CurvePoint& p : ReadCurve(r.point.spec.run().dir())) {
      if (!std::isfinite(p.val)) continue;
      Acc& a = cells[g][w][x][p.step];
      a.sum += p.val;
      ++a.n;
      steps[g].insert(p.step);
    }
  }
  std::ostringstream os;
  for (const auto& [g, widths] : cells) {
    os << "\nbest " << AxisLeaf(axis) << " at each evaluation: " << g << "\n"
       << absl::StrFormat("%8s", "width");
    for (int64_t s : steps[g]) os << absl::StrFormat(" %10d", s);
    os << "\n";
    for (const auto& [w, xs] : widths) {
      os << absl::StrFormat("%8d", w);
      for (int64_t s : steps[g]) {
        double best_loss = INFINITY, best = NAN;
        for (const auto& [x, by_step] : xs) {
          auto it = by_step.find(s);
          // Only cells whose every seed finished and was evaluated at this step compete (only done
          // runs are counted in n).
          if (it == by_step.end() || it->second.n != seeds[g][w][x]) continue;
          const double loss = it->second.sum / it->second.n;
          if (loss < best_loss) best_loss = loss, best = x;
        }
        os << (std::isnan(best) ? absl::StrFormat(" %10s", "-") : absl::StrFormat(" %10.3g", best));
      }
      os << "\n";
    }
  }
  return os.str();
}

std::string SweepCsv(const std::vector<SweepResult>& results) {
  auto num = [](double v, int digits) {
    return std::isnan(v) ? std::string() : absl::StrFormat("%.*f", digits, v);
  };
  const std::vector<std::string> axes = AxisFields(results);
  std::ostringstream os;
  os << "run_id,parametrization,optimizer,width,lr,seed,status,step,train_loss,val_loss,"
        "tokens_per_s";
  for (const std::string& a : axes) os << "," << CsvField(a);
  os << "\n";
  for (const SweepResult& r : results) {
    const ExperimentSpec& s = r.point.spec;
    os << absl::StrFormat("%s,%s,%s,%d,%.9g,%d,%s,%d,%s,%s,%s", r.point.id,
                          ParametrizationSpec::Kind_Name(s.parametrization().kind()),
                          OptimizerSpec::Kind_Name(s.optimizer().kind()), s.model().width(),
                          s.optimizer().lr(), s.run().seed(), r.status, r.step,
                          num(r.train_loss, 6), num(r.val_loss, 6), num(r.tokens_per_s, 1));
    for (const std::string& a : axes) os << "," << CsvField(Assigned(r.point, a).value_or(""));
    os << "\n";
  }
  return os.str();
}

std::string BestLrCsv(const std::vector<SweepResult>& results) {
  std::ostringstream os;
  os << "group,width,axis,best,shift,val_loss\n";
  for (const SweepGroup& g : GroupSweep(results))
    for (const SweepWidth& w : g.widths)
      if (w.best >= 0)
        os << absl::StrFormat("%s,%d,%s,%.9g,%d,%.6f\n", CsvField(g.name), w.width, g.axis,
                              g.xs[w.best], w.shift, w.cells[w.best].val_loss);
  return os.str();
}

}  // namespace gdn
