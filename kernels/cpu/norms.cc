// RMSNorm, the per-head L2 norm of q and k, and the mixer's gated per-head RMSNorm.
// All three are "normalise a row of D numbers" with the backward
//   dx = r * (dn - n * mean(dn * n)),  n = x * r,
// where dn is the gradient reaching the normalised row.
#include <algorithm>
#include <cmath>
#include <vector>

#include <omp.h>

#include "kernels/cpu/cpu_ops.h"
#include "kernels/cpu/dispatch.h"

namespace gdn::cpu {

namespace {

// Sums per-thread partial weight gradients into dw (parameter gradients accumulate).
template <typename T>
class WeightGradAccumulator {
 public:
  explicit WeightGradAccumulator(int64_t size)
      : size_(size), partial_(static_cast<size_t>(omp_get_max_threads()) * size, T(0)) {}
  T* local() { return partial_.data() + static_cast<size_t>(omp_get_thread_num()) * size_; }
  void AddTo(T* dw) const {
    for (size_t t = 0; t < partial_.size() / size_; ++t)
      for (int64_t i = 0; i < size_; ++i) dw[i] += partial_[t * size_ + i];
  }

 private:
  int64_t size_;
  std::vector<T> partial_;
};

}  // namespace

void RmsNormForward(const Tensor& x, const Tensor& w, double eps, const Tensor& y,
                    const Tensor& rstd) {
  const int64_t d = w.numel(), n = x.numel() / d;
  CheckSame(x, y, "RmsNormForward");
  CHECK_EQ(rstd.numel(), n);
  DispatchFloat(x.dtype(), [&](auto zero) {
    using T = decltype(zero);
    const T *px = x.data<T>(), *pw = w.data<T>();
    T *py = y.data<T>(), *pr = rstd.data<T>();
#pragma omp parallel for schedule(static)
    for (int64_t row = 0; row < n; ++row) {
      const T* xr = px + row * d;
      T ss = 0;
      for (int64_t i = 0; i < d; ++i) ss += xr[i] * xr[i];
      const T r = T(1) / std::sqrt(ss / d + static_cast<T>(eps));
      pr[row] = r;
      T* yr = py + row * d;
      for (int64_t i = 0; i < d; ++i) yr[i] = xr[i] * r * pw[i];
    }
  });
}

void AddRmsNormForward(const Tensor& x, const Tensor& r, const Tensor& w, double eps,
                       const Tensor& h, const Tensor& y, const Tensor& rstd) {
  Add(x, r, h);
  RmsNormForward(h, w, eps, y, rstd);
}

void RmsNormBackward(const Tensor& x, const Tensor& w, const Tensor& rstd, const Tensor& dy,
                     const Tensor& dx, const Tensor& dw, bool accumulate,
                     const Tensor& dx_operand) {
  const int64_t d = w.numel(), n = x.numel() / d;
  CheckSame(x, dy, "RmsNormBackward");
  CheckSame(x, dx, "RmsNormBackward");
  if (dx_operand.defined()) CheckSame(x, dx_operand, "RmsNormBackward dx_operand");
  DispatchFloat(x.dtype(), [&](auto zero) {
    using T = decltype(zero);
    const T *px = x.data<T>(), *pw = w.data<T>(), *pr = rstd.data<T>(), *pdy = dy.data<T>();
    T* pdx = dx.data<T>();
    T* pdxo = dx_operand.defined() ? dx_operand.data<T>() : nullptr;
    WeightGradAccumulator<T> acc(d);
#pragma omp parallel
    {
      T* dwl = acc.local();
#pragma omp for schedule(static)
      for (int64_t row = 0; row < n; ++row) {
        const T *xr = px + row * d, *dyr = pdy + row * d;
        const T r = pr[row];
        T dot = 0;  // mean(dn * n) with dn = w * dy, n = x * r
        for (int64_t i = 0; i < d; ++i) {
          dot += pw[i] * dyr[i] * xr[i] * r;
          dwl[i] += dyr[i] * xr[i] * r;
        }
        dot /= d;
        T* dxr = pdx + row * d;
        for (int64_t i = 0; i < d; ++i)
          dxr[i] = (accumulate ? dxr[i] : T(0)) + r * (pw[i] * dyr[i] - xr[i] * r * dot);
        if (pdxo) std::copy(dxr, dxr + d, pdxo + row * d);
      }
    }
    acc.AddTo(dw.data<T>());
  });
}

void L2NormHeadsForward(const Tensor& x, int64_t head_dim, double eps, const Tensor& y,
                        const Tensor& rnorm) {
  CheckSame(x, y, "L2NormHeadsForward");
  const int64_t rows = x.numel() / head_dim;
  CHECK_EQ(rnorm.numel(), rows);
  DispatchFloat(x.dtype(), [&](auto zero) {
    using T = decltype(zero);
    const T* px = x.data<T>();
    T *py = y.data<T>(), *pr = rnorm.data<T>();
#pragma omp parallel for schedule(static)
    for (int64_t row = 0; row < rows; ++row) {
      const T* xr = px + row * head_dim;
      T ss = 0;
      for (int64_t i = 0; i < head_dim; ++i) ss += xr[i] * xr[i];
      const T r = T(1) / std::sqrt(ss + static_cast<T>(eps));
      pr[row] = r;
      for (int64_t i = 0; i < head_dim; ++i) py[row * head_dim + i] = xr[i] * r;
    }
  });
}

void L2NormHeadsBackward(const Tensor& y, const Tensor& rnorm, const Tensor& dy,
                         const Tensor& dx) {
  CheckSame(y, dy, "L2NormHeadsBackward");
  CheckSame(y, dx, "L2NormHeadsBackward");
  const int64_t rows = rnorm.numel();
  if (rows == 0) return;
  const int64_t head_dim = y.numel() / rows;
  DispatchFloat(y.dtype(), [&](auto zero) {
    using T = decltype(zero);
    const T *py = y.data<T>(), *pr = rnorm.data<T>(), *pdy = dy.data<T>();
    T* pdx = dx.data<T>();
#pragma omp parallel for schedule(static)
    for (int64_t row = 0; row < rows; ++row) {
      const T *yr = py + row * head_dim, *dyr = pdy + row * head_dim;
      T dot = 0;
      for (int64_t i = 0; i < head_dim; ++i) dot += yr[i] * dyr[i];
      // d(x / |x|) = (dy - y (y . dy)) / |x|
      for (int64_t i = 0; i < head_dim; ++i)
        pdx[row * head_dim + i] = pr[row] * (dyr[i] - yr[i] * dot);
    }
  });
}

void GatedRmsNormForward(const Tensor& o, const Tensor& g, const Tensor& w, int64_t head_dim,
                         double eps, const Tensor& y, const Tensor& rstd) {
  CheckSame(o, g, "GatedRmsNormForward");
  CheckSame(o, y, "GatedRmsNormForward");
  CHECK_EQ(w.numel(), head_dim);
  const int64_t rows = o.numel() / head_dim;
  CHECK_EQ(rstd.numel(), rows);
  DispatchFloat(o.dtype(), [&](auto zero) {
    using T = decltype(zero);
    const T *po = o.data<T>(), *pg = g.strided_data<T>(), *pw = w.data<T>();  // g: may be a
    const HeadRows g_rows(g, head_dim, "GatedRmsNormForward g");              // column view
    T *py = y.data<T>(), *pr = rstd.data<T>();
#pragma omp parallel for schedule(static)
    for (int64_t row = 0; row < rows; ++row) {
      const T *orow = po + row * head_dim, *grow = pg + g_rows(row);
      T ss = 0;
      for (int64_t i = 0; i < head_dim; ++i) ss += orow[i] * orow[i];
      const T r = T(1) / std::sqrt(ss / head_dim + static_cast<T>(eps));
      pr[row] = r;
      T* yr = py + row * head_dim;
      for (int64_t i = 0; i < head_dim; ++i)
        yr[i] = orow[i] * r * pw[i] * grow[i] * Sigmoid(grow[i]);
    }
  });
}

void GatedRmsNormBackward(const Tensor& o, const Tensor& g, const Tensor& w, const Tensor& rstd,
                          int64_t head_dim, const Tensor& dy, const Tensor& d_o, const Tensor& dg,
                          const Tensor& dw, const Tensor& y) {
  CheckSame(o, dy, "GatedRmsNormBackward");
  CheckSame(o, d_o, "GatedRmsNormBackward");
  CheckSame(o, dg, "GatedRmsNormBackward");
  if (y.defined()) CheckSame(o, y, "GatedRmsNormBackward y");
  const int64_t rows = o.numel() / head_dim;
  DispatchFloat(o.dtype(), [&](auto zero) {
    using T = decltype(zero);
    // g and dg may be column views.
    const T *po = o.data<T>(), *pg = g.strided_data<T>(), *pw = w.data<T>(),
            *pr = rstd.data<T>(), *pdy = dy.data<T>();
    T *pdo = d_o.data<T>(), *pdg = dg.strided_data<T>();
    const HeadRows g_rows(g, head_dim, "GatedRmsNormBackward g");
    const HeadRows dg_rows(dg, head_dim, "GatedRmsNormBackward dg");
    T* py = y.defined() ? y.data<T>() : nullptr;
    WeightGradAccumulator<T> acc(head_dim);
#pragma omp parallel
    {
      T* dwl = acc.local();
#pragma omp for schedule(static)
      for (int64_t row = 0; row < rows; ++row) {
        const int64_t base = row * head_dim;
        T* dgrow = pdg + dg_rows(row);
        const T* grow = pg + g_rows(row);
        const T r = pr[row];
        T dot = 0;
        for (int64_t i = 0; i < head_dim; ++i) {
          const T gi = grow[i], s = Sigmoid(gi), silu = gi * s;
          const T n = po[base + i] * r;
          const T dn = pdy[base + i] * pw[i] * silu;
          dgrow[i] = pdy[base + i] * n * pw[i] * s * (T(1) + gi * (T(1) - s));
          dwl[i] += pdy[base + i] * n * silu;
          if (py) py[base + i] = po[base + i] * r * pw[i] * gi * s;  // the forward's expression
          dot += dn * n;
          pdo[base + i] = dn;  // dn for now; normalised below
        }
        dot /= head_dim;
        for (int64_t i = 0; i < head_dim; ++i)
          pdo[base + i] = r * (pdo[base + i] - po[base + i] * r * dot);
      }
    }
    acc.AddTo(dw.data<T>());
  });
}

}  // namespace gdn::cpu
