// The short convolution: causal depthwise conv1d over time (kernel K, left padding K-1, no bias)
// followed by SiLU. pre[b,t,c] = sum_j w[c,j] * x[b, t-(K-1)+j, c], so w[c,K-1] weighs the current
// token (the torch Conv1d layout). Channels are contiguous, so the inner loops run over c.
#include <cmath>
#include <vector>

#include <omp.h>

#include "kernels/cpu/cpu_ops.h"
#include "kernels/cpu/dispatch.h"

namespace gdn::cpu {

namespace {
// The weights transposed to [K, C], so the inner loops are contiguous in both operands.
template <typename T>
std::vector<T> TapsByRow(const T* pw, int64_t C, int64_t K) {
  std::vector<T> wt(K * C);
  for (int64_t c = 0; c < C; ++c)
    for (int64_t j = 0; j < K; ++j) wt[j * C + c] = pw[c * K + j];
  return wt;
}

// pre[b,t,c] for every position: the conv before the SiLU (forward, and the backward's recompute).
template <typename T>
void ConvPre(const T* px, int64_t ldx, const std::vector<T>& wt, int64_t B, int64_t T_, int64_t C,
             int64_t K, T* pp) {
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T_; ++t) {
      T* prow = pp + (b * T_ + t) * C;
      for (int64_t c = 0; c < C; ++c) prow[c] = 0;
      for (int64_t j = 0; j < K; ++j) {
        const int64_t s = t - (K - 1) + j;
        if (s < 0) continue;
        const T* xrow = px + (b * T_ + s) * ldx;
        const T* wrow = wt.data() + j * C;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) prow[c] += wrow[c] * xrow[c];
      }
    }
}
}  // namespace

void CausalConvSiluForward(const Tensor& x, const Tensor& w, const Tensor& y) {
  CHECK_EQ(x.rank(), 3);
  const int64_t B = x.dim(0), T_ = x.dim(1), C = x.dim(2), K = w.dim(1);
  CHECK_EQ(w.dim(0), C);
  CheckSame(x, y, "CausalConvSiluForward");
  DispatchFloat(x.dtype(), [&](auto zero) {
    using T = decltype(zero);
    T* py = y.data<T>();
    // x may be a column view; pre, then SiLU
    ConvPre(x.strided_data<T>(), RowStride(x, C, "CausalConvSiluForward x"),
            TapsByRow(w.data<T>(), C, K), B, T_, C, K, py);
    const int64_t n = x.numel();
#pragma omp parallel for simd schedule(static)
    for (int64_t i = 0; i < n; ++i) py[i] = py[i] * Sigmoid(py[i]);
  });
}

void CausalConvSiluL2NormForward(const Tensor& x, const Tensor& w, int64_t head_dim, double eps,
                                 const Tensor& y, const Tensor& rnorm) {
  CHECK(x.rank() == 3 && head_dim > 0 && x.dim(2) % head_dim == 0)
      << "CausalConvSiluL2NormForward: " << ShapeString(x.shape()) << " is not whole heads of "
      << head_dim;
  CausalConvSiluForward(x, w, y);
  L2NormHeadsForward(y, head_dim, eps, y, rnorm);  // in place: each row is read before written
}

void CausalConvSiluL2NormBackward(const Tensor& x, const Tensor& w, const Tensor& y,
                                  const Tensor& rnorm, const Tensor& dy, const Tensor& dx,
                                  const Tensor& dw) {
  const Tensor dc = Tensor::Empty(dy.shape(), dy.dtype());
  L2NormHeadsBackward(y, rnorm, dy, dc);
  CausalConvSiluBackward(x, w, dc, dx, dw);
}

void CausalConvSiluBackward(const Tensor& x, const Tensor& w, const Tensor& dy, const Tensor& dx,
                            const Tensor& dw) {
  CHECK_EQ(x.rank(), 3);
  const int64_t B = x.dim(0), T_ = x.dim(1), C = x.dim(2), K = w.dim(1);
  CHECK_EQ(w.dim(0), C);
  CheckSame(x, dy, "CausalConvSiluBackward");
  CheckSame(x, dx, "CausalConvSiluBackward");
  DispatchFloat(x.dtype(), [&](auto zero) {
    using T = decltype(zero);
    const T *px = x.strided_data<T>(), *pw = w.data<T>(), *pdy = dy.data<T>();  // x, dx: may be
    const int64_t ldx_in = RowStride(x, C, "CausalConvSiluBackward x");          // column views
    T* pdx = dx.strided_data<T>();  // may be a column view
    const int64_t ldx = RowStride(dx, C, "CausalConvSiluBackward dx");
    const std::vector<T> wt = TapsByRow(pw, C, K);
    // dpre = dy * silu'(pre), pre recomputed
    std::vector<T> dpre(x.numel());
    ConvPre(px, ldx_in, wt, B, T_, C, K, dpre.data());
    const int64_t n = x.numel();
#pragma omp parallel for simd schedule(static)
    for (int64_t i = 0; i < n; ++i) {
      const T p = dpre[i], s = Sigmoid(p);
      dpre[i] = pdy[i] * s * (T(1) + p * (T(1) - s));
    }
    const int threads = omp_get_max_threads();
    std::vector<T> dw_partial(static_cast<size_t>(threads) * K * C, T(0));
#pragma omp parallel
    {
      T* dwl = dw_partial.data() + static_cast<size_t>(omp_get_thread_num()) * K * C;
#pragma omp for collapse(2) schedule(static)
      for (int64_t b = 0; b < B; ++b)
        for (int64_t s = 0; s < T_; ++s) {
          // x[b,s] feeds pre[b, s + (K-1) - j] through tap j.
          T* dxrow = pdx + (b * T_ + s) * ldx;
          const T* xrow = px + (b * T_ + s) * ldx_in;
          for (int64_t c = 0; c < C; ++c) dxrow[c] = 0;
          for (int64_t j = 0; j < K; ++j) {
            const int64_t t = s + (K - 1) - j;
            if (t >= T_) continue;
            const T* drow = dpre.data() + (b * T_ + t) * C;
            const T* wrow = wt.data() + j * C;
            T* dwrow = dwl + j * C;
#pragma omp simd
            for (int64_t c = 0; c < C; ++c) {
              dxrow[c] += wrow[c] * drow[c];
              dwrow[c] += drow[c] * xrow[c];
            }
          }
        }
    }
    T* pdw = dw.data<T>();
    for (int th = 0; th < threads; ++th)
      for (int64_t j = 0; j < K; ++j)
        for (int64_t c = 0; c < C; ++c) pdw[c * K + j] += dw_partial[(th * K + j) * C + c];
  });
}

}  // namespace gdn::cpu
