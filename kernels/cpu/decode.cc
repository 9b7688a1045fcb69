// Decoding steps: one token per sequence with carried state. The delta rule's step is the
// sequential reference (kernels/cpu/gated_delta_rule.h) run for T = 1 from the carried state, so
// decoding and the full forward share their recurrence code.
#include <vector>

#include "kernels/cpu/cpu_ops.h"
#include "kernels/cpu/dispatch.h"
#include "kernels/cpu/gated_delta_rule.h"

namespace gdn::cpu {

void CausalConvSiluStep(const Tensor& x, const Tensor& w, const Tensor& window, const Tensor& y) {
  CHECK_EQ(x.rank(), 2);
  const int64_t B = x.dim(0), C = x.dim(1), K = w.dim(1);
  CHECK_EQ(w.dim(0), C);
  CHECK_EQ(window.numel(), B * (K - 1) * C);
  CheckSame(x, y, "CausalConvSiluStep");
  DispatchFloat(x.dtype(), [&](auto zero) {
    using T = decltype(zero);
    const T *px = x.data<T>(), *pw = w.data<T>();
    T *pwin = window.data<T>(), *py = y.data<T>();
    for (int64_t b = 0; b < B; ++b) {
      T* win = pwin + b * (K - 1) * C;  // [K-1, C], oldest first
      const T* xr = px + b * C;
      for (int64_t c = 0; c < C; ++c) {
        // Same order of terms as CausalConvSiluForward (oldest tap first).
        T pre = 0;
        for (int64_t j = 0; j < K - 1; ++j) pre += pw[c * K + j] * win[j * C + c];
        pre += pw[c * K + K - 1] * xr[c];
        py[b * C + c] = pre * Sigmoid(pre);
      }
      for (int64_t j = 0; j + 1 < K - 1; ++j)
        for (int64_t c = 0; c < C; ++c) win[j * C + c] = win[(j + 1) * C + c];
      if (K > 1)
        for (int64_t c = 0; c < C; ++c) win[(K - 2) * C + c] = xr[c];
    }
  });
}

void GatedDeltaRuleStep(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& gamma,
                        const Tensor& beta, double scale, const Tensor& state, const Tensor& o) {
  CHECK(q.rank() == 3 && v.rank() == 3) << "q " << ShapeString(q.shape()) << " v "
                                        << ShapeString(v.shape());
  const GdrShape s{q.dim(0), 1, q.dim(1), v.dim(1), q.dim(2), v.dim(2)};
  CHECK(v.dim(0) == s.B && s.HV % s.H == 0);
  CHECK(gamma.numel() == s.B * s.HV && beta.numel() == gamma.numel());
  CHECK_EQ(state.numel(), s.B * s.HV * s.dk * s.dv);
  CheckSame(q, k, "GatedDeltaRuleStep");
  CheckSame(v, o, "GatedDeltaRuleStep");
  DispatchFloat(q.dtype(), [&](auto zero) {
    using T = decltype(zero);
    const std::vector<T> before(state.data<T>(), state.data<T>() + state.numel());
    GdrRecurrentForward<T>(s, q.data<T>(), k.data<T>(), v.data<T>(), gamma.data<T>(),
                           beta.data<T>(), static_cast<T>(scale), before.data(), o.data<T>(),
                           state.data<T>());
  });
}

}  // namespace gdn::cpu
