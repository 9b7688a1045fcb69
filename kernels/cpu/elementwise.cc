// Elementwise ops and reductions. Parallel over 2+ cores with OpenMP: outside the matrix products
// these loops are the memory-bound part of a step.
#include <cmath>

#include "kernels/cpu/cpu_ops.h"
#include "kernels/cpu/dispatch.h"

namespace gdn::cpu {

void Fill(const Tensor& x, double value) {
  DispatchFloat(x.dtype(), [&](auto zero) {
    using T = decltype(zero);
    T* p = x.data<T>();
    const int64_t n = x.numel();
#pragma omp parallel for simd schedule(static)
    for (int64_t i = 0; i < n; ++i) p[i] = static_cast<T>(value);
  });
}

void Add(const Tensor& a, const Tensor& b, const Tensor& out) {
  CheckSame(a, b, "Add");
  CheckSame(a, out, "Add");
  DispatchFloat(a.dtype(), [&](auto zero) {
    using T = decltype(zero);
    const T *pa = a.data<T>(), *pb = b.data<T>();
    T* po = out.data<T>();
    const int64_t n = a.numel();
#pragma omp parallel for simd schedule(static)
    for (int64_t i = 0; i < n; ++i) po[i] = pa[i] + pb[i];
  });
}

void Axpy(double alpha, const Tensor& x, const Tensor& y) {
  CheckSame(x, y, "Axpy");
  DispatchFloat(x.dtype(), [&](auto zero) {
    using T = decltype(zero);
    const T* px = x.data<T>();
    T* py = y.data<T>();
    const T al = static_cast<T>(alpha);
    const int64_t n = x.numel();
#pragma omp parallel for simd schedule(static)
    for (int64_t i = 0; i < n; ++i) py[i] += al * px[i];
  });
}

void Scale(const Tensor& x, double alpha) {
  DispatchFloat(x.dtype(), [&](auto zero) {
    using T = decltype(zero);
    T* p = x.data<T>();
    const T al = static_cast<T>(alpha);
    const int64_t n = x.numel();
#pragma omp parallel for simd schedule(static)
    for (int64_t i = 0; i < n; ++i) p[i] *= al;
  });
}

double SumSquares(const Tensor& x) {
  double total = 0;
  DispatchFloat(x.dtype(), [&](auto zero) {
    using T = decltype(zero);
    const T* p = x.data<T>();
    const int64_t n = x.numel();
    double s = 0;
#pragma omp parallel for reduction(+ : s) schedule(static)
    for (int64_t i = 0; i < n; ++i) s += static_cast<double>(p[i]) * p[i];
    total = s;
  });
  return total;
}

double MeanAbs(const Tensor& x) {
  double total = 0;
  DispatchFloat(x.dtype(), [&](auto zero) {
    using T = decltype(zero);
    const T* p = x.data<T>();
    const int64_t n = x.numel();
    double s = 0;
#pragma omp parallel for reduction(+ : s) schedule(static)
    for (int64_t i = 0; i < n; ++i) s += std::abs(static_cast<double>(p[i]));
    total = s;
  });
  return x.numel() ? total / x.numel() : 0.0;
}

bool AllFinite(const Tensor& x) {
  bool finite = true;
  DispatchFloat(x.dtype(), [&](auto zero) {
    using T = decltype(zero);
    const T* p = x.data<T>();
    const int64_t n = x.numel();
    int bad = 0;
#pragma omp parallel for reduction(+ : bad) schedule(static)
    for (int64_t i = 0; i < n; ++i) bad += !std::isfinite(p[i]);
    finite = bad == 0;
  });
  return finite;
}

void SwigluForward(const Tensor& gate, const Tensor& up, const Tensor& h) {
  CheckSame(gate, up, "SwigluForward");
  CheckSame(gate, h, "SwigluForward");
  DispatchFloat(gate.dtype(), [&](auto zero) {
    using T = decltype(zero);
    const T *pg = gate.data<T>(), *pu = up.data<T>();
    T* ph = h.data<T>();
    const int64_t n = gate.numel();
#pragma omp parallel for simd schedule(static)
    for (int64_t i = 0; i < n; ++i) ph[i] = pg[i] * Sigmoid(pg[i]) * pu[i];
  });
}

void SwigluBackward(const Tensor& gate, const Tensor& up, const Tensor& dh, const Tensor& dgate,
                    const Tensor& dup, const Tensor& h) {
  CheckSame(gate, up, "SwigluBackward");
  CheckSame(gate, dh, "SwigluBackward");
  if (h.defined()) SwigluForward(gate, up, h);
  DispatchFloat(gate.dtype(), [&](auto zero) {
    using T = decltype(zero);
    const T *pg = gate.data<T>(), *pu = up.data<T>(), *pdh = dh.data<T>();
    T *pdg = dgate.data<T>(), *pdu = dup.data<T>();
    const int64_t n = gate.numel();
#pragma omp parallel for simd schedule(static)
    for (int64_t i = 0; i < n; ++i) {
      const T s = Sigmoid(pg[i]);
      const T silu = pg[i] * s;
      pdu[i] = pdh[i] * silu;
      // d silu(x)/dx = s * (1 + x * (1 - s))
      pdg[i] = pdh[i] * pu[i] * s * (T(1) + pg[i] * (T(1) - s));
    }
  });
}

}  // namespace gdn::cpu
