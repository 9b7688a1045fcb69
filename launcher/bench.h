// `gdn bench`: CPU training throughput of a model beside the machine's sgemm rate.
#pragma once

#include "absl/status/status.h"

namespace gdn {

struct BenchOptions {
  int width = 512, depth = 4, seq_len = 512, batch = 4, iters = 3;
  bool sequential = false;  // time the sequential recurrence instead of the chunked one
};
// Prints tokens/s, achieved GFLOP/s, OpenBLAS sgemm GFLOP/s and a per-op time breakdown.
absl::Status RunBench(const BenchOptions& options);

}  // namespace gdn
