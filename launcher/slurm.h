// `gdn sweep slurm`: a sweep as one Slurm job array, one array task per grid point. Each task
// runs `gdn train` on its point's spec (written into the run directory at submission), so a task
// that is requeued, or an array submitted again, resumes its run from the newest checkpoint.
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "runtime/spec.h"

namespace gdn {

// sbatch's array syntax for ascending indices: {0,1,2,5,7,8} -> "0-2,5,7-8".
std::string ArrayRanges(const std::vector<size_t>& indices);

// The batch script (spec.slurm gives the resources): array task i runs points[i], for each i in
// `tasks`; `gdn` is the binary to run and `workdir` the directory relative paths start from.
// SIGUSR2 (slurm.signal_seconds before the time limit, or `scancel --batch --signal=USR2`) reaches
// gdn, which checkpoints and exits 4; the task then requeues itself. SIGTERM (scancel, Slurm's own
// preemption) also checkpoints but leaves requeueing to Slurm.
std::string SlurmScript(const ExperimentSpec& spec, const std::vector<GridPoint>& points,
                        const std::vector<size_t>& tasks, const std::string& gdn,
                        const std::string& workdir);

// The checks of the spec's slurm block that ValidateSpec leaves out, for values that go into the
// batch script as they are: slurm.time in one of sbatch's formats (M, M:S, H:M:S, D-H, D-H:M,
// D-H:M:S; UNLIMITED or INFINITE), and no whitespace in slurm.time, slurm.partition,
// slurm.account or the job name (the spec's name). All problems are joined into one line.
absl::Status ValidateSlurm(const ExperimentSpec& spec);

struct SlurmSubmission {
  std::string script_path;
  std::vector<size_t> tasks;  // the points not yet done or diverged
  std::string job_id;         // empty unless submitted
};
// Checks the slurm block (ValidateSlurm: an InvalidArgument, nothing written), then writes every
// unfinished point's <run dir>/point.textproto and the script <sweep.dir>/slurm/sweep.sbatch;
// with `submit`, runs `sbatch --parsable` on it. Nothing is written or submitted when every run
// is finished.
absl::StatusOr<SlurmSubmission> PrepareSlurm(const ExperimentSpec& spec,
                                             const std::vector<GridPoint>& points, bool submit);

}  // namespace gdn
