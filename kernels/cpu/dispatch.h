// Shared by the CPU kernels: picking the element type of a float tensor,
//   DispatchFloat(x.dtype(), [&](auto zero) { using T = decltype(zero); ... });
// the activation helpers, and programming-error checks.
#pragma once

#include <cmath>

#include "glog/logging.h"
#include "runtime/tensor.h"

namespace gdn::cpu {

template <typename F>
void DispatchFloat(DType dtype, F&& f) {
  switch (dtype) {
    case DType::kF32: f(float{}); return;
    case DType::kF64: f(double{}); return;
    default: LOG(FATAL) << "float op on a " << DTypeName(dtype) << " tensor";
  }
}

// Programming-error checks shared by the kernels.
inline void CheckSame(const Tensor& a, const Tensor& b, const char* what) {
  CHECK(a.dtype() == b.dtype() && a.numel() == b.numel())
      << what << ": " << ShapeString(a.shape()) << " " << DTypeName(a.dtype()) << " vs "
      << ShapeString(b.shape()) << " " << DTypeName(b.dtype());
}

template <typename T>
inline T Sigmoid(T x) { return T(1) / (T(1) + std::exp(-x)); }

}  // namespace gdn::cpu
