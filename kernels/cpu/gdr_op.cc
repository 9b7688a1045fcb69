// The gated delta rule op on Tensors: shape checks, then the sequential or chunked kernel of
// kernels/cpu/gated_delta_rule.h.
#include "kernels/cpu/cpu_ops.h"
#include "kernels/cpu/dispatch.h"
#include "kernels/cpu/gated_delta_rule.h"

namespace gdn::cpu {

namespace {
GdrShape ShapeOf(const Tensor& q, const Tensor& v, const Tensor& gamma, const Tensor& beta) {
  CHECK(q.rank() == 4 && v.rank() == 4) << "q " << ShapeString(q.shape()) << " v "
                                        << ShapeString(v.shape());
  GdrShape s{q.dim(0), q.dim(1), q.dim(2), v.dim(2), q.dim(3), v.dim(3)};
  CHECK(v.dim(0) == s.B && v.dim(1) == s.T && s.HV % s.H == 0);
  CHECK(gamma.numel() == s.B * s.T * s.HV && beta.numel() == gamma.numel());
  return s;
}
}  // namespace

void GatedDeltaRuleForward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& gamma,
                           const Tensor& beta, double scale, int64_t chunk, const Tensor& o,
                           const Tensor& final_state, const Tensor& saved) {
  const GdrShape s = ShapeOf(q, v, gamma, beta);
  CHECK(!saved.defined()) << "GatedDeltaRuleForward: no saved forward on the CPU";
  CheckSame(q, k, "GatedDeltaRuleForward");
  CheckSame(v, o, "GatedDeltaRuleForward");
  DispatchFloat(q.dtype(), [&](auto zero) {
    using T = decltype(zero);
    T* state = nullptr;
    if (final_state.defined()) {
      CHECK_EQ(final_state.numel(), s.B * s.HV * s.dk * s.dv);
      state = final_state.data<T>();
    }
    if (chunk > 0) {
      GdrChunkedForward<T>(s, chunk, q.data<T>(), k.data<T>(), v.data<T>(), gamma.data<T>(),
                           beta.data<T>(), static_cast<T>(scale), nullptr, o.data<T>(), state);
    } else {
      GdrRecurrentForward<T>(s, q.data<T>(), k.data<T>(), v.data<T>(), gamma.data<T>(),
                             beta.data<T>(), static_cast<T>(scale), nullptr, o.data<T>(), state);
    }
  });
}

void GatedDeltaRuleBackward(const Tensor& q, const Tensor& k, const Tensor& v,
                            const Tensor& gamma, const Tensor& beta, double scale, int64_t chunk,
                            const Tensor& d_o, const Tensor& dq, const Tensor& dk,
                            const Tensor& dv, const Tensor& dgamma, const Tensor& dbeta,
                            const Tensor& saved) {
  const GdrShape s = ShapeOf(q, v, gamma, beta);
  CHECK(!saved.defined()) << "GatedDeltaRuleBackward: no saved forward on the CPU";
  CheckSame(q, dq, "GatedDeltaRuleBackward");
  CheckSame(k, dk, "GatedDeltaRuleBackward");
  CheckSame(v, dv, "GatedDeltaRuleBackward");
  CheckSame(v, d_o, "GatedDeltaRuleBackward");
  DispatchFloat(q.dtype(), [&](auto zero) {
    using T = decltype(zero);
    if (chunk > 0) {
      GdrChunkedBackward<T>(s, chunk, q.data<T>(), k.data<T>(), v.data<T>(), gamma.data<T>(),
                            beta.data<T>(), static_cast<T>(scale), nullptr, d_o.data<T>(),
                            nullptr, dq.data<T>(), dk.data<T>(), dv.data<T>(), dgamma.data<T>(),
                            dbeta.data<T>(), nullptr);
    } else {
      GdrRecurrentBackward<T>(s, q.data<T>(), k.data<T>(), v.data<T>(), gamma.data<T>(),
                              beta.data<T>(), static_cast<T>(scale), nullptr, d_o.data<T>(),
                              nullptr, dq.data<T>(), dk.data<T>(), dv.data<T>(), dgamma.data<T>(),
                              dbeta.data<T>(), nullptr);
    }
  });
}

// The CPU backward recomputes what it needs from the inputs.
int64_t GatedDeltaRuleSavedFloats(const Tensor&, const Tensor&, int64_t) { return 0; }

}  // namespace gdn::cpu
