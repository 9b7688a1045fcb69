// Shared by the CUDA test binaries: each case skips, with the reason printed, where no GPU is
// usable (CI; tests/gpu/run_gpu_tests.sh runs them on a GPU machine).
#pragma once

#include <cstdio>
#include <string>

#include "gtest/gtest.h"
#include "runtime/cuda_device.h"

#define GDN_REQUIRE_GPU()                                            \
  do {                                                               \
    std::string why;                                                 \
    if (!::gdn::cuda::GpuAvailable(&why)) {                          \
      std::fprintf(stderr, "skipping CUDA test: %s\n", why.c_str()); \
      GTEST_SKIP() << why;                                           \
    }                                                                \
  } while (0)
