// Collectives over a group of ranks. The model talks to its tensor-parallel and data-parallel
// groups only through this interface; implementations: one rank (here), MPI on CPU buffers, NCCL
// on GPU buffers. Every call is collective: all ranks of the group make it, in the same order.
#pragma once

#include <memory>
#include <optional>
#include <vector>

#include "runtime/tensor.h"

namespace gdn {

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // t <- sum over ranks of t, in place.
  virtual void AllReduceSum(const Tensor& t) = 0;
  // t <- elementwise max over ranks of t, in place.
  virtual void AllReduceMax(const Tensor& t) = 0;
  // out [size * n, ...] <- the ranks' in [n, ...] stacked in rank order along dimension 0.
  // In place: `in` may be out's rows [rank * n, (rank + 1) * n).
  virtual void AllGather(const Tensor& in, const Tensor& out) = 0;
  // out [n, ...] <- rows [rank * n, (rank + 1) * n) of the sum over ranks of in [size * n, ...].
  // In place: `out` may be those rows of `in` (the other rows are then left undefined).
  virtual void ReduceScatterSum(const Tensor& in, const Tensor& out) = 0;
  // t <- root's t.
  virtual void Broadcast(const Tensor& t, int root) = 0;
  virtual void Barrier() = 0;

  // Non-blocking forms, to overlap communication with computation (the data-parallel gradient
  // buckets). The collective starts after everything already queued that writes its tensors; its
  // result may be used only after WaitAsync() (CPU: when it returns; CUDA: by work queued after
  // it), and its tensors must not be written until then (the CUDA communicator holds them, so a
  // temporary may be passed). Collectives started on one
  // communicator run in the order they were started. The defaults are the blocking forms.
  virtual void StartAllReduceSum(const Tensor& t) { AllReduceSum(t); }
  virtual void StartReduceScatterSum(const Tensor& in, const Tensor& out) {
    ReduceScatterSum(in, out);
  }
  virtual void StartAllGather(const Tensor& in, const Tensor& out) { AllGather(in, out); }
  virtual void WaitAsync() {}
  // Measuring the started collectives (benchmarks): with timing on, TakeAsyncTimes() returns the
  // seconds each collective started since the last call took on its own stream (CUDA; empty where
  // not measured), in start order, after waiting for them.
  virtual void SetAsyncTiming(bool on) { (void)on; }
  virtual std::vector<double> TakeAsyncTimes() { return {}; }
};

// How long a collective may wait for the other ranks before the process ends the job with a
// message naming it (a rank that stopped or hangs would otherwise leave the others waiting
// forever): GDN_COLLECTIVE_TIMEOUT_S seconds (> 0, `inf` for never; unset or empty: the default),
// for MPI's collectives and NCCL's watchdog alike. nullopt when the variable is set to anything
// else.
constexpr double kDefaultCollectiveTimeoutS = 600;
std::optional<double> CollectiveTimeoutFromEnv();

// A group of one rank, where every collective is the identity (a single-process run).
std::unique_ptr<Communicator> MakeSingleRankCommunicator();

// One group over two transports, chosen per call by where the tensors live: CPU tensors go
// through `host` (e.g. MPI: the trainer's loss sums, verdicts, checkpoint agreement) and CUDA
// tensors through `device` (e.g. NCCL: activations, gradients). Both must span the same ranks in
// the same order; `host` is borrowed and must outlive the result. Barrier is the host's.
std::unique_ptr<Communicator> MakeByDeviceCommunicator(Communicator* host,
                                                       std::unique_ptr<Communicator> device);

}  // namespace gdn
