// `gdn bench`: CPU training throughput of a model beside the machine's sgemm rate.
#pragma once

#include "absl/status/status.h"

namespace gdn {

struct BenchOptions {
  int width = 512, depth = 4, seq_len = 512, batch = 4, iters = 3;
  int head_dim = 64, vocab = 256;
  bool sequential = false;  // time the sequential recurrence instead of the chunked one
  bool cuda = false;        // on the GPU (float32) instead of the CPU
  bool bf16 = false;        // GPU matrix products on bf16 tensor cores (ops::MatmulPrecision)
};
// Prints tokens/s, achieved GFLOP/s against the device's reference rate (OpenBLAS sgemm on the
// CPU; on the GPU the H100's 989 TFLOP/s dense bf16 peak, the customary MFU denominator, and
// the device memory held) and a per-op time breakdown.
absl::Status RunBench(const BenchOptions& options);

}  // namespace gdn
