// `gdn sweep plan|run|status|report`: expand a spec's grid into runs, run them (in turn, K at a
// time, or each as its own MPI job), and read them back from their run directories alone: a status
// table, the final validation loss per width and learning rate with the best learning rate per
// width, CSV files and plots. Everything that reads runs works on a partial sweep.
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

// Expands and validates every point (all before any run starts).
absl::StatusOr<std::vector<GridPoint>> PlanSweep(const ExperimentSpec& spec);
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
// Every rank of the job calls it; rank 0 prints. When this process gets SIGINT (Ctrl-C), SIGTERM or
// SIGUSR2 while runs are separate processes (each in its own process group), it passes SIGUSR2 on
// to them (they checkpoint and exit 4), starts no more, and the unfinished runs come back
// "preempted".
std::vector<SweepResult> RunSweep(const std::vector<GridPoint>& points, const ProcessGrid& grid,
                                  const SweepOptions& options);

// One line a run: id, state, step of steps, last train and validation loss, last update; then the
// count of runs in each state.
std::string SweepStatusTable(const std::vector<SweepResult>& results);

// The runs that differ only in width, learning rate and seed form a group (e.g. one per
// parametrization and optimizer); a cell is the mean final validation loss over the seeds of one
// width and learning rate, from done runs only.
struct SweepCell {
  double lr = 0;
  double val_loss = 0;  // NaN unless every seed of the cell is done
  std::string state;    // "done", or the first unfinished seed's status (diverged wins)
};
struct SweepWidth {
  int width = 0;
  std::vector<SweepCell> cells;  // one per learning rate of the group, ascending
  int best = -1;                 // index of the lowest loss among done cells; -1: none yet
  int shift = 0;                 // best - the first width's best (grid steps); 0 without a best
};
struct SweepGroup {
  std::string name;            // the other assignments, e.g. "parametrization.kind=SP", or "all runs"
  std::string parametrization; // kind name of the group's runs (the column of its plots)
  std::vector<double> lrs;
  std::vector<SweepWidth> widths;  // ascending
};
// The group of a run: its assignments other than width, learning rate and seed ("all runs").
std::string SweepGroupName(const GridPoint& point);
std::vector<SweepGroup> GroupSweep(const std::vector<SweepResult>& results);

// Per group: the loss table (rows widths, columns learning rates; unfinished cells show their
// state), the best learning rate per width and its shift in grid steps from the smallest width's.
std::string SweepTable(const std::vector<SweepResult>& results);
// The results as CSV (one row a run; missing numbers are empty).
std::string SweepCsv(const std::vector<SweepResult>& results);
// group,width,best_lr,shift,val_loss: one row per width with a done run.
std::string BestLrCsv(const std::vector<SweepResult>& results);

struct ReportFiles {
  std::vector<std::string> written;  // paths, in the order written
};
// Writes into `dir`: results.csv, best_lr.csv, table.txt and, with `plots`, lr_sweep.png
// (validation loss against log2 learning rate, a line per width, a panel per group with SP and muP
// side by side) and curves.png (training and validation loss of each width's best learning rate),
// drawn by gnuplot from plots/*.dat and plots/report.gp. Errors name the file or gnuplot's log.
absl::StatusOr<ReportFiles> WriteSweepReport(const std::string& dir,
                                             const std::vector<SweepResult>& results, bool plots);

}  // namespace gdn
