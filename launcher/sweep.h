// `gdn sweep plan|run|status|report`: expand a spec's grid into runs, run them (in turn, K at a
// time, or each as its own MPI job), and read them back from their run directories alone: a status
// table, the final validation loss per width and learning rate (or another swept axis, e.g. the
// init std) with the best value per width, CSV files and plots. Everything that reads runs works
// on a partial sweep.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "runtime/mpi_communicator.h"
#include "runtime/spec.h"

namespace gdn {

// One run as its directory shows it.
struct SweepResult {
  GridPoint point;
  // pending (no status file), running, preempted, done, diverged or failed.
  std::string status;
  int64_t step = 0;  // the last step in metrics.jsonl
  // Final (done) or latest values; NaN when there are none yet.
  double train_loss = 0, val_loss = 0, tokens_per_s = 0;
  double seconds_since_update = -1;  // age of metrics.jsonl; -1 when absent
};

// Reads a run's state from its directory (status, metrics.jsonl, summary.json); never writes.
SweepResult ReadRun(const GridPoint& point);
std::vector<SweepResult> ReadRuns(const std::vector<GridPoint>& points);

// Expands and validates every point (all before any run starts); check_data_paths false for the
// verbs that only read the run directories.
absl::StatusOr<std::vector<GridPoint>> PlanSweep(const ExperimentSpec& spec,
                                                 bool check_data_paths = true);
// Prints the runs and their cost (parameters, tokens, matrix FLOPs).
std::string DescribePlan(const std::vector<GridPoint>& points);

struct SweepOptions {
  // 0: every point runs in this process, on this job's ranks (`grid`). N > 0: every point runs as
  // its own job, `mpirun -np N gdn train` (each point may then have its own tensor_parallel).
  int ranks_per_run = 0;
  // Runs at once. Above 1 every run is its own process (`gdn train`, or mpirun with
  // ranks_per_run), each given cores / (parallel x ranks) OpenMP threads unless OMP_NUM_THREADS is
  // set.
  int parallel = 1;
  // N > 0: runs are processes, and run slot s (of `parallel`) sees GPUs (s*R + j) mod N, j < R,
  // for its R ranks (CUDA_VISIBLE_DEVICES; a rank takes the GPU of its node-local index), so K
  // single-GPU runs on N GPUs go round-robin and runs beyond N share GPUs.
  int gpus = 0;
};

// The CUDA_VISIBLE_DEVICES of run slot `slot` ("2,3"), or "" when SweepOptions::gpus is 0.
std::string SlotGpus(const SweepOptions& options, int slot);

// Runs every point that is not done or diverged; an interrupted one resumes from its checkpoint.
// Every rank of the job calls it; rank 0 prints. When this process gets SIGINT (Ctrl-C), SIGHUP,
// SIGTERM or SIGUSR2 while runs are separate processes (each in its own process group), it passes
// SIGUSR2 on to them (they checkpoint and exit 4) and starts no more; in-process the run takes
// the signal. The runs it stopped come back "preempted", those never started as they were, and
// *preempted says whether a signal stopped the sweep.
std::vector<SweepResult> RunSweep(const std::vector<GridPoint>& points, const ProcessGrid& grid,
                                  const SweepOptions& options, bool* preempted);

// One line a run: id, state, step of steps, last train and validation loss, last update; then the
// count of runs in each state.
std::string SweepStatusTable(const std::vector<SweepResult>& results);

// The swept axis (the x of the loss tables and plots), chosen from the runs: "optimizer.lr" when
// they have more than one learning rate; otherwise the first field of sweep.axes (spec order) whose
// values are all finite numbers and take more than one value among the runs (e.g.
// "parametrization.init_std"); otherwise "optimizer.lr" (one point a width).
std::string SweptAxis(const std::vector<SweepResult>& results);
// The fields of sweep.axes among the runs' assignments, in spec order (the built-in lists:
// parametrizations, optimizers, widths, learning_rates and seeds are not among them).
std::vector<std::string> AxisFields(const std::vector<SweepResult>& results);
// A run's value on `axis`: its learning rate for "optimizer.lr", else its assignment to the field
// read as a number (NaN when it has none or it is not a number).
double AxisValue(const GridPoint& point, const std::string& axis);
// The last component of a field path: "parametrization.init_std" -> "init_std".
std::string AxisLeaf(const std::string& axis);

// The runs that differ only in width, seed and the swept axis form a group (e.g. one per
// parametrization and optimizer); a cell is the mean final validation loss over the seeds of one
// width and axis value, from done runs only.
struct SweepCell {
  double x = 0;         // the value on the swept axis
  double val_loss = 0;  // NaN unless every seed of the cell is done
  std::string state;    // "done", or the first unfinished seed's status (diverged wins)
};
struct SweepWidth {
  int width = 0;
  std::vector<SweepCell> cells;  // one per axis value of the group, ascending
  int best = -1;                 // index of the lowest loss among done cells; -1: none yet
  int shift = 0;                 // best - the first width's best (grid steps); 0 without a best
};
struct SweepGroup {
  std::string name;            // the other assignments, e.g. "parametrization.kind=SP", or "all runs"
  std::string parametrization; // kind name of the group's runs (the column of its plots)
  std::string axis;            // SweptAxis of the runs
  std::vector<double> xs;      // the axis values, ascending
  std::vector<SweepWidth> widths;  // ascending
};
// The group of a run: its assignments other than width, seed, the learning rate (the swept axis,
// or one value when another axis is swept) and `axis` ("all runs" when none are left).
std::string SweepGroupName(const GridPoint& point, const std::string& axis);
std::vector<SweepGroup> GroupSweep(const std::vector<SweepResult>& results);

// Per group: the loss table (rows widths, columns the swept axis's values; unfinished cells show
// their state), the best value per width ("best lr", "best init_std") and its shift in grid steps
// from the smallest width's.
std::string SweepTable(const std::vector<SweepResult>& results);

// A run's metrics.jsonl as (step, train loss, val loss; NaN where not evaluated); empty if unread.
struct CurvePoint {
  int64_t step;
  double train, val;
};
std::vector<CurvePoint> ReadCurve(const std::string& run_dir);

// Per group: the best value of the swept axis per width at each evaluation step (mean validation
// loss over seeds, among cells whose every seed finished), so one can see whether the ranking has
// settled before the last step or is still moving. Part of table.txt.
std::string SettlingTable(const std::vector<SweepResult>& results);
// The results as CSV (one row a run; missing numbers are empty), then a column per sweep.axes
// field (header: the field path) holding the run's assigned value.
std::string SweepCsv(const std::vector<SweepResult>& results);
// group,width,axis,best,shift,val_loss: one row per width with a done run; axis is the swept field
// (e.g. optimizer.lr), best its value with the lowest loss.
std::string BestLrCsv(const std::vector<SweepResult>& results);

struct ReportFiles {
  std::vector<std::string> written;  // paths, in the order written
};
// Writes into `dir`: results.csv, best_lr.csv, table.txt and, with `plots`, <leaf>_sweep.png
// (lr_sweep.png, init_std_sweep.png: validation loss against log2 of the swept axis, a line per
// width, a panel per group with SP and muP side by side) and curves.png (training and validation
// loss at each width's best value), drawn by gnuplot from plots/*.dat and plots/report.gp. Errors
// name the file or gnuplot's log.
absl::StatusOr<ReportFiles> WriteSweepReport(const std::string& dir,
                                             const std::vector<SweepResult>& results, bool plots);

}  // namespace gdn
