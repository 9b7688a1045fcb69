// The CUDA implementation of the op set (float32 only), one file per group of ops, each beside its
// CPU twin in kernels/cpu/. Tensors are device tensors; ops run asynchronously on the process's
// stream (runtime/cuda_check.h) except those that return a value to the host.
#pragma once

#include <vector>

#include "runtime/tensor.h"

namespace gdn::cuda {
#include "kernels/op_set.inc"

// A float32 CUDA tensor rounded to a new bf16 one (round to nearest even): the bf16 matrix
// products' operands (ops::MatmulOperand, and Matmul for float32 operands).
Tensor ToBf16(const Tensor& x);
// The same into out, a bf16 CUDA tensor of x's element count.
void ToBf16(const Tensor& x, const Tensor& out);
// A float32 or bf16 CUDA tensor as a new float32 one (exact).
Tensor ToFloat32(const Tensor& x);
// Each of xs into the same-index out (as ToBf16), in one launch.
void ToBf16Pieces(const std::vector<Tensor>& xs, const std::vector<Tensor>& outs);
}  // namespace gdn::cuda
