// `gdn sweep plan` and `gdn sweep run`: expand a spec's grid into runs, run them, and tabulate
// the final validation loss per width and learning rate with the best learning rate per width.
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "runtime/mpi_communicator.h"
#include "runtime/spec.h"

namespace gdn {

struct SweepResult {
  GridPoint point;
  std::string status;  // done, diverged, failed
  double val_loss = 0, train_loss = 0, tokens_per_s = 0;
};

// Expands and validates every point (all before any run starts).
absl::StatusOr<std::vector<GridPoint>> PlanSweep(const ExperimentSpec& spec);
// Prints the runs and their cost (parameters, tokens, matrix FLOPs).
std::string DescribePlan(const std::vector<GridPoint>& points);

struct SweepOptions {
  // 0: every point runs in this process, on this job's ranks (`grid`). N > 0: every point runs as
  // its own job, `mpirun -np N gdn train` (each point may then have its own tensor_parallel).
  int ranks_per_run = 0;
};

// Runs every point in turn; points already done or diverged are read back, not rerun. Every rank
// of the job calls it; rank 0 prints.
std::vector<SweepResult> RunSweep(const std::vector<GridPoint>& points, const ProcessGrid& grid,
                                  const SweepOptions& options);

// One table per group of runs that differ only in width, learning rate and seed: mean final
// validation loss over seeds (rows: widths, columns: learning rates), then the best learning rate
// per width and its shift in grid steps from the smallest width's.
std::string SweepTable(const std::vector<SweepResult>& results);
// The results as CSV (one row a run).
std::string SweepCsv(const std::vector<SweepResult>& results);

}  // namespace gdn
