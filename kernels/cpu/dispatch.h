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

// Where row `row` of d values starts in an op's tensor that may be a column view whose token rows
// hold whole rows of d values (a multiple of d); a contiguous tensor is taken as rows of one.
struct HeadRows {
  HeadRows(const Tensor& t, int64_t d, const char* what)
      : heads(t.contiguous() ? 1 : t.dim(-1) / d), stride(RowStride(t, heads * d, what)), d(d) {}
  int64_t operator()(int64_t row) const { return row / heads * stride + row % heads * d; }
  int64_t heads, stride, d;
};

template <typename T>
inline T Sigmoid(T x) { return T(1) / (T(1) + std::exp(-x)); }

}  // namespace gdn::cpu
