// The CPU implementation of the op set (float32 and float64), one file per group of ops.
#pragma once

#include "runtime/tensor.h"

namespace gdn::cpu {
#include "kernels/op_set.inc"
}  // namespace gdn::cpu
