// Picks the element type of a float tensor for the CPU kernels:
//   DispatchFloat(x.dtype(), [&](auto zero) { using T = decltype(zero); ... });
#pragma once

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

}  // namespace gdn::cpu
