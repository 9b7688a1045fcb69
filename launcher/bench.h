// `gdn bench`: CPU training throughput of a model beside the machine's sgemm rate; `gdn bench
// allreduce`: the bandwidth of one collective alone.
#pragma once

#include <string>
#include <vector>

#include "absl/status/status.h"

namespace gdn {

struct BenchOptions {
  int width = 512, depth = 4, seq_len = 512, batch = 4, iters = 3;
  int head_dim = 64, vocab = 256;
  bool sequential = false;  // time the sequential recurrence instead of the chunked one
  bool cuda = false;        // on the GPU (float32) instead of the CPU
  bool bf16 = false;        // GPU matrix products on bf16 tensor cores (ops::MatmulPrecision)
  // Under mpirun/srun: ranks form the trainer's grid (tensor_parallel fastest) and every
  // data-parallel rank runs `batch` sequences (weak scaling), through the trainer's own step.
  int tensor_parallel = 1;
  bool zero = false;        // ZeRO-1 (parallel.zero_stage = 1)
  double bucket_mb = 25;    // parallel.bucket_mb
  bool recompute = false;   // run.recompute (activation recomputation)
  bool save_recurrence = false;  // run.save_recurrence (the recurrence's forward kept)
};
// Times `iters` training steps (after a warm-up step) and prints tokens/s (in all and per rank),
// achieved GFLOP/s against the device's reference rate (OpenBLAS sgemm on the CPU; on the GPU the
// H100's 989 TFLOP/s dense bf16 peak, the customary MFU denominator, and the device memory held)
// and, with several data-parallel ranks on GPUs, the gradient buckets' time and bus bandwidth on
// the communication stream inside the step. Then one more step with every op timed on its own
// (waiting for the device around each) gives the per-op breakdown.
absl::Status RunBench(const BenchOptions& options);

// `gdn bench allreduce`: one collective alone, timed over this job's ranks (mpirun/srun), to set
// beside the all-reduce bandwidth a training step achieves and to check a machine's fabric.
enum class Collective { kAllReduce, kReduceScatter, kAllGather };
struct CollectiveBenchOptions {
  bool cuda = false;  // GPU buffers through NCCL (one GPU per rank) instead of CPU ones through MPI
  Collective op = Collective::kAllReduce;
  std::vector<double> sizes_mib = {1, 4, 16, 64, 256};  // the full buffer, float32
  int iters = 20, warmup = 5;
};
// Parses --sizes ("1,4,16": MiB each, > 0 and at most kMaxCollectiveMib); InvalidArgument naming
// the flag otherwise.
inline constexpr double kMaxCollectiveMib = 4096;
absl::Status ParseCollectiveSizes(const std::string& text, std::vector<double>* sizes_mib);
// Per size, rank 0 prints bytes, the median and minimum time of the slowest rank per iteration,
// and the algorithm and bus bandwidth (nccl-tests' convention). Each size's result is checked once
// first (rank r contributes r + 1): a wrong one is an Internal error naming the ranks that saw it.
// With one rank every collective is the identity: says so and measures nothing. Collective over
// the job's ranks.
absl::Status RunCollectiveBench(const CollectiveBenchOptions& options);

}  // namespace gdn
