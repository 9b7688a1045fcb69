// MPI: the process group of a job started by mpirun or srun, split into the tensor-parallel and
// data-parallel groups, with collectives on CPU buffers.
#pragma once

#include <memory>

#include "absl/status/statusor.h"
#include "runtime/communicator.h"

namespace gdn {

// True when this process was started by an MPI launcher (mpirun, srun) with more than one rank
// or under one; false for a plain `gdn ...` (which then runs as a single rank without MPI).
bool LaunchedByMpi();

// Who talks to whom: ranks form a grid with the tensor-parallel index fastest, so ranks
// 0..t-1 are one tensor-parallel group and data-parallel groups stride by t.
struct ProcessGrid {
  int world_rank = 0, world_size = 1;
  int tp_rank = 0, tp_size = 1;
  int dp_rank = 0, dp_size = 1;
  std::unique_ptr<Communicator> world, tp, dp;

  // Initialises MPI when launched by mpirun/srun (else a single rank) and splits the groups.
  // Error (on every rank alike) when world size is not a multiple of tensor_parallel.
  static absl::StatusOr<ProcessGrid> Create(int tensor_parallel);
};

// Ends MPI if it was started (call once, before exit, on every rank).
void FinalizeMpi();

// For an error every rank finds alike, after rank 0 has printed it: under an MPI launcher, waits
// (at most `max_seconds`) until every rank got here, then ends MPI. Without it a rank that exits
// at once makes mpirun kill the job, rank 0 with its message sometimes unprinted.
void AwaitAllRanksBeforeExit(double max_seconds = 10);

}  // namespace gdn
