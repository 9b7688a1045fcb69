// The gated delta rule on the CPU: the sequential (recurrent) reference and the chunked form, each
// with its backward pass. See docs/gated-delta-rule.md for the math.
//
// Layouts are row-major and contiguous:
//   q, k: [B, T, H, dk]   v: [B, T, HV, dv]   gamma (log decay, <= 0), beta: [B, T, HV]
//   o: [B, T, HV, dv]     states: [B, HV, dk, dv]
// HV is a multiple of H; value head j reads key head j / (HV / H) ("grouped values").
//
// Recurrence per value head (scale s, S_0 = initial_state or 0):
//   S_t = exp(gamma_t) (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T ;  o_t = s * S_t^T q_t
//
// The inputs are used as given: q and k are expected to be L2-normalised by the caller, gamma and
// beta already computed (gamma <= 0; beta in (0, 1), or (0, 2) for the negative-eigenvalue option).
// All kernels parallelise with OpenMP over (batch, key head) pairs (the value heads of a group
// run inside, so dq and dk need no atomics) and are deterministic: the result does not depend on
// the number of threads. The chunked kernels keep one grow-only scratch buffer per thread across
// calls: T*dv + (ceil(T/C) + 4)*dk*dv + C*(9*C + 9*dk + 13*dv) elements per thread at most
// (about 1.4 MB for float, T=512, C=64, dk=64, dv=128). An invalid shape (HV not a multiple of H,
// non-positive sizes or chunk) aborts.
#pragma once

#include <cstdint>

namespace gdn::cpu {

struct GdrShape {
  int64_t B, T, H, HV, dk, dv;
};

// Sequential reference. initial_state and final_state may be null (zero initial state / not
// written).
template <typename T>
void GdrRecurrentForward(const GdrShape& sh, const T* q, const T* k, const T* v, const T* gamma,
                         const T* beta, T scale, const T* initial_state /*nullable*/, T* o,
                         T* final_state /*nullable*/);

// Gradients given d_o (and optionally dL/dS_T). Outputs are overwritten (not accumulated).
// dq, dk: [B,T,H,dk] (summed over the value heads of each group), dv: like v,
// dgamma, dbeta: [B,T,HV], d_initial_state: [B,HV,dk,dv].
// initial_state, d_final_state and d_initial_state may be null.
template <typename T>
void GdrRecurrentBackward(const GdrShape& sh, const T* q, const T* k, const T* v, const T* gamma,
                          const T* beta, T scale, const T* initial_state /*nullable*/, const T* d_o,
                          const T* d_final_state /*nullable*/, T* dq, T* dk, T* dv, T* dgamma,
                          T* dbeta, T* d_initial_state /*nullable*/);

// The chunked (WY / UT) form with chunk size `chunk` (e.g. 64; T need not be a multiple of it).
// Same contracts as the recurrent functions above.
template <typename T>
void GdrChunkedForward(const GdrShape& sh, int64_t chunk, const T* q, const T* k, const T* v,
                       const T* gamma, const T* beta, T scale, const T* initial_state /*nullable*/,
                       T* o, T* final_state /*nullable*/);

template <typename T>
void GdrChunkedBackward(const GdrShape& sh, int64_t chunk, const T* q, const T* k, const T* v,
                        const T* gamma, const T* beta, T scale, const T* initial_state /*nullable*/,
                        const T* d_o, const T* d_final_state /*nullable*/, T* dq, T* dk, T* dv,
                        T* dgamma, T* dbeta, T* d_initial_state /*nullable*/);

namespace gdr_internal {
// The vector code path of the chunked kernels' matrix products: 0 = SSE (the x86-64-v2 baseline
// the project is built for), 1 = AVX2 + FMA, 2 = AVX-512; chosen at start-up as the best the CPU
// supports. Results differ between paths only by rounding. For tests: set the level (capped at
// what the CPU supports; not thread-safe against running kernels) and get the level in use.
int GdrVectorLevel();
int GdrSetVectorLevelForTesting(int level);
}  // namespace gdr_internal

}  // namespace gdn::cpu
