// The CUDA implementation of the op set (float32 only), one file per group of ops, each beside its
// CPU twin in kernels/cpu/. Tensors are device tensors; ops run asynchronously on the process's
// stream (runtime/cuda_check.h) except those that return a value to the host.
#pragma once

#include "runtime/tensor.h"

namespace gdn::cuda {
#include "kernels/op_set.inc"

// n float32 values rounded to bf16 (round to nearest even), into raw device memory of 2n bytes:
// the bf16 matrix products' operands.
void RoundToBf16(const float* in, void* out, int64_t n);
// A float32 CUDA tensor rounded to a new bf16 one (ops::MatmulOperand).
Tensor ToBf16(const Tensor& x);
}  // namespace gdn::cuda
