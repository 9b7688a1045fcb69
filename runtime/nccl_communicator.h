// NCCL: collectives on GPU buffers, for a group of ranks that each drive one GPU (the process's
// device, runtime/cuda_device.h). Built with CUDA when NCCL is found (GDN_WITH_NCCL).
#pragma once

#include <memory>

#include "absl/status/statusor.h"
#include "runtime/communicator.h"

namespace gdn {

// An NCCL communicator over the same ranks, in the same order, as `bootstrap` (e.g. an MPI group of
// ProcessGrid): rank 0's NCCL unique id reaches the others through bootstrap.Broadcast of a CPU
// tensor. Collective over bootstrap's ranks. Its collectives take CUDA tensors and are queued on the
// process's stream (later ops on that stream see the result; host copies wait for it). Error when
// NCCL cannot set the group up (e.g. two ranks of one node on the same GPU).
absl::StatusOr<std::unique_ptr<Communicator>> MakeNcclCommunicator(Communicator& bootstrap);

}  // namespace gdn
