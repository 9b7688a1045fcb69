// Error checks and the stream for CUDA code (kernels, cuBLAS calls). Every CUDA runtime call is
// wrapped in CUDA_CHECK and every kernel launch followed by CUDA_CHECK_LAUNCH(), which abort with
// the CUDA error string and the call site (errors here are programming or machine errors, not
// user input).
#pragma once

#include <cuda_runtime_api.h>

#include "glog/logging.h"
#include "runtime/cuda_device.h"

#define CUDA_CHECK(call)                                                                   \
  do {                                                                                     \
    const cudaError_t gdn_cuda_err_ = (call);                                              \
    CHECK(gdn_cuda_err_ == cudaSuccess) << #call << ": " << cudaGetErrorName(gdn_cuda_err_) \
                                        << " (" << cudaGetErrorString(gdn_cuda_err_) << ")"; \
  } while (0)

// After a <<<...>>> launch: launch-configuration errors now, and (as later calls would report
// them at the wrong place otherwise) any sticky error from an earlier kernel.
#define CUDA_CHECK_LAUNCH() CUDA_CHECK(cudaGetLastError())

namespace gdn::cuda {
// The process's one stream (non-blocking; created with the device on first use).
cudaStream_t Stream();
}  // namespace gdn::cuda
