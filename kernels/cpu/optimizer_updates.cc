// Optimizer updates, in place: one parameter tensor, or many pieces of flat buffers.
#include <cmath>

#include "kernels/cpu/cpu_ops.h"
#include "kernels/cpu/dispatch.h"
#include "kernels/update_pieces.h"

namespace gdn::cpu {

namespace {
// The updates over whole tensors, every gradient value taken times gs (rounded to T first, as
// Scale rounds it), so a clipped step needs no scaled copy of the gradients.
void AdamWScaled(const Tensor& p, const Tensor& g, const Tensor& m, const Tensor& v, double lr,
                 double beta1, double beta2, double eps, double weight_decay, int64_t step,
                 double gs) {
  CheckSame(p, g, "AdamWUpdate");
  CheckSame(p, m, "AdamWUpdate");
  CheckSame(p, v, "AdamWUpdate");
  CHECK_GE(step, 1);
  DispatchFloat(p.dtype(), [&](auto zero) {
    using T = decltype(zero);
    T *pp = p.data<T>(), *pm = m.data<T>(), *pv = v.data<T>();
    const T* pg = g.data<T>();
    const T b1 = beta1, b2 = beta2, e = eps, l = lr, wd = weight_decay, s = gs;
    const T c1 = T(1) / (T(1) - std::pow(b1, static_cast<T>(step)));
    const T c2 = T(1) / (T(1) - std::pow(b2, static_cast<T>(step)));
    const int64_t n = p.numel();
#pragma omp parallel for simd schedule(static)
    for (int64_t i = 0; i < n; ++i) {
      const T gi = pg[i] * s;
      pm[i] = b1 * pm[i] + (T(1) - b1) * gi;
      pv[i] = b2 * pv[i] + (T(1) - b2) * gi * gi;
      pp[i] -= l * (pm[i] * c1 / (std::sqrt(pv[i] * c2) + e) + wd * pp[i]);
    }
  });
}

void SgdScaled(const Tensor& p, const Tensor& g, const Tensor& buf, double lr, double momentum,
               double weight_decay, double gs) {
  CheckSame(p, g, "SgdUpdate");
  CheckSame(p, buf, "SgdUpdate");
  DispatchFloat(p.dtype(), [&](auto zero) {
    using T = decltype(zero);
    T *pp = p.data<T>(), *pb = buf.data<T>();
    const T* pg = g.data<T>();
    const T mu = momentum, l = lr, wd = weight_decay, s = gs;
    const int64_t n = p.numel();
#pragma omp parallel for simd schedule(static)
    for (int64_t i = 0; i < n; ++i) {
      pb[i] = mu * pb[i] + pg[i] * s + wd * pp[i];
      pp[i] -= l * pb[i];
    }
  });
}
}  // namespace

void AdamWUpdate(const Tensor& p, const Tensor& g, const Tensor& m, const Tensor& v, double lr,
                 double beta1, double beta2, double eps, double weight_decay, int64_t step) {
  AdamWScaled(p, g, m, v, lr, beta1, beta2, eps, weight_decay, step, 1.0);
}

void SgdUpdate(const Tensor& p, const Tensor& g, const Tensor& buf, double lr, double momentum,
               double weight_decay) {
  SgdScaled(p, g, buf, lr, momentum, weight_decay, 1.0);
}

// The pieces one after the other, each through the one-tensor update (the reference).
void AdamWUpdatePieces(const Tensor& p, const Tensor& g, const Tensor& m, const Tensor& v,
                       const Tensor& pieces, double beta1, double beta2, double eps, int64_t step,
                       double grad_scale) {
  CheckSame(m, v, "AdamWUpdatePieces");
  for (const UpdatePiece& u : ReadUpdatePieces(pieces, p, g, m, "AdamWUpdatePieces")) {
    const int64_t a = u.p_offset, s = u.state_offset, n = u.length;
    AdamWScaled(p.Rows(a, a + n), g.Rows(a, a + n), m.Rows(s, s + n), v.Rows(s, s + n), u.lr,
                beta1, beta2, eps, u.weight_decay, step, grad_scale);
  }
}

void SgdUpdatePieces(const Tensor& p, const Tensor& g, const Tensor& buf, const Tensor& pieces,
                     double momentum, double grad_scale) {
  for (const UpdatePiece& u : ReadUpdatePieces(pieces, p, g, buf, "SgdUpdatePieces")) {
    const int64_t a = u.p_offset, s = u.state_offset, n = u.length;
    SgdScaled(p.Rows(a, a + n), g.Rows(a, a + n), buf.Rows(s, s + n), u.lr, momentum,
              u.weight_decay, grad_scale);
  }
}

}  // namespace gdn::cpu
