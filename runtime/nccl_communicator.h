// NCCL: collectives on GPU buffers, for a group of ranks that each drive one GPU (the process's
// device, runtime/cuda_device.h). Built with CUDA when NCCL is found (GDN_WITH_NCCL).
#pragma once

#include <memory>
#include <optional>

#include "absl/status/statusor.h"
#include "runtime/communicator.h"
#include "runtime/mpi_communicator.h"

namespace gdn {

// An NCCL communicator over the same ranks, in the same order, as `bootstrap` (e.g. an MPI group of
// ProcessGrid): rank 0's NCCL unique id reaches the others through bootstrap.Broadcast of a CPU
// tensor. Collective over bootstrap's ranks. Its collectives take CUDA tensors and are queued on the
// process's stream (later ops on that stream see the result; host copies wait for it). Error when
// NCCL cannot set the group up (e.g. two ranks of one node on the same GPU).
//
// Errors after set-up: a watchdog thread polls ncclCommGetAsyncError and, when NCCL reports one
// (a peer's connection lost, a remote error), aborts the communicator and ends the process with
// the reason, so the launcher (mpirun, srun) ends the other ranks instead of leaving them waiting.
// It also ends the process when a queued collective has not finished after `timeout_s` seconds:
// a rank that stopped mid-collective would otherwise hang the others.
absl::StatusOr<std::unique_ptr<Communicator>> MakeNcclCommunicator(
    Communicator& bootstrap, double timeout_s = kDefaultCollectiveTimeoutS);

// The grid's groups carrying both kinds of tensor: CPU tensors through the grid's own (MPI)
// communicators, CUDA tensors through NCCL communicators over the same ranks (groups of one rank
// need none), with the watchdog timeout of GDN_COLLECTIVE_TIMEOUT_S. Collective over the world. First
// checks that no two ranks use the same GPU and that every rank's GDN_COLLECTIVE_TIMEOUT_S is valid
// (InvalidArgument naming run.device or the variable, the same on every rank). `grid` must
// outlive the result.
absl::StatusOr<ProcessGrid> WithNcclForCudaTensors(const ProcessGrid& grid);

}  // namespace gdn
