// The main() of a gtest binary that runs under mpirun: every rank runs the tests, only rank 0
// prints, and the exit code is non-zero when any rank failed.
#pragma once

#include <mpi.h>

#include <cstdio>

#include "gtest/gtest.h"
#include "runtime/mpi_communicator.h"

namespace gdn {

// `usage`: what to print when not started by mpirun (e.g. "foo_tests must run under mpirun -np 2").
// `world_rank`: sets up the test file's process grid (and so MPI) and returns this rank.
template <typename WorldRank>
int RunTestsOnEveryRank(int argc, char** argv, const char* usage, WorldRank world_rank) {
  ::testing::InitGoogleTest(&argc, argv);
  if (!LaunchedByMpi()) {
    std::fprintf(stderr, "%s\n", usage);
    return 1;
  }
  if (world_rank() != 0) {
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
  }
  int failed = RUN_ALL_TESTS() != 0;
  int any = 0;
  MPI_Allreduce(&failed, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  FinalizeMpi();
  return any;
}

}  // namespace gdn
