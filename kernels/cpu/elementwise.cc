// Elementwise ops and reductions. Parallel over 2+ cores with OpenMP: outside the matrix products
// these loops are the memory-bound part of a step.
#include <cmath>

#include "kernels/cpu/cpu_ops.h"
#include "kernels/cpu/dispatch.h"

namespace gdn::cpu {

namespace {
// x[i] = f(x[i]) over a float tensor.
template <typename F>
void MapInPlace(const Tensor& x, F f) {
  DispatchFloat(x.dtype(), [&](auto zero) {
    using T = decltype(zero);
    T* p = x.data<T>();
    const int64_t n = x.numel();
#pragma omp parallel for simd schedule(static)
    for (int64_t i = 0; i < n; ++i) p[i] = f(p[i]);
  });
}

// out[i] = f(a[i], b[i]) over float tensors of one shape and type (out may be a or b).
template <typename F>
void Map2(const Tensor& a, const Tensor& b, const Tensor& out, const char* op, F f) {
  CheckSame(a, b, op);
  CheckSame(a, out, op);
  DispatchFloat(a.dtype(), [&](auto zero) {
    using T = decltype(zero);
    const T *pa = a.data<T>(), *pb = b.data<T>();
    T* po = out.data<T>();
    const int64_t n = a.numel();
#pragma omp parallel for simd schedule(static)
    for (int64_t i = 0; i < n; ++i) po[i] = f(pa[i], pb[i]);
  });
}

// The sum over i of f(x[i]) in double.
template <typename F>
double SumOf(const Tensor& x, F f) {
  double total = 0;
  DispatchFloat(x.dtype(), [&](auto zero) {
    using T = decltype(zero);
    const T* p = x.data<T>();
    const int64_t n = x.numel();
    double s = 0;
#pragma omp parallel for reduction(+ : s) schedule(static)
    for (int64_t i = 0; i < n; ++i) s += f(static_cast<double>(p[i]));
    total = s;
  });
  return total;
}
}  // namespace

void Fill(const Tensor& x, double value) {
  MapInPlace(x, [value](auto v) { return static_cast<decltype(v)>(value); });
}

void Add(const Tensor& a, const Tensor& b, const Tensor& out) {
  Map2(a, b, out, "Add", [](auto x, auto y) { return x + y; });
}

void Axpy(double alpha, const Tensor& x, const Tensor& y) {
  Map2(x, y, y, "Axpy",
       [alpha](auto xv, auto yv) { return yv + static_cast<decltype(xv)>(alpha) * xv; });
}

void Scale(const Tensor& x, double alpha) {
  MapInPlace(x, [alpha](auto v) { return v * static_cast<decltype(v)>(alpha); });
}

double SumSquares(const Tensor& x) {
  return SumOf(x, [](double v) { return v * v; });
}

double MeanAbs(const Tensor& x) {
  return x.numel() ? SumOf(x, [](double v) { return std::abs(v); }) / x.numel() : 0.0;
}

bool AllFinite(const Tensor& x) {
  return SumOf(x, [](double v) { return std::isfinite(v) ? 0.0 : 1.0; }) == 0;
}

void SwigluForward(const Tensor& gate, const Tensor& up, const Tensor& h) {
  Map2(gate, up, h, "SwigluForward", [](auto g, auto u) { return g * Sigmoid(g) * u; });
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
