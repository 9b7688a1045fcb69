// The decay gate and the write strength of the gated delta rule, per value head, in the
// tensor's precision (float32 or float64; never lower, as the gate arithmetic is sensitive).
//   gamma = log(alpha) = -exp(a_log) * softplus(a + dt_bias)     beta = beta_scale * sigmoid(b)
#include <cmath>
#include <vector>

#include "kernels/cpu/cpu_ops.h"
#include "kernels/cpu/dispatch.h"

namespace gdn::cpu {

namespace {
template <typename T>
inline T Softplus(T x) { return x > T(20) ? x : std::log1p(std::exp(x)); }
}  // namespace

void GatesForward(const Tensor& a, const Tensor& b, const Tensor& a_log, const Tensor& dt_bias,
                  double beta_scale, const Tensor& gamma, const Tensor& beta) {
  const int64_t hv = a_log.numel(), n = a.numel() / hv;
  CheckSame(a, b, "GatesForward");
  CheckSame(a, gamma, "GatesForward");
  CheckSame(a, beta, "GatesForward");
  DispatchFloat(a.dtype(), [&](auto zero) {
    using T = decltype(zero);
    // a and b may be column views.
    const T *pa = a.strided_data<T>(), *pb = b.strided_data<T>(), *pal = a_log.data<T>(),
            *pdt = dt_bias.data<T>();
    const int64_t lda = RowStride(a, hv, "GatesForward a");
    const int64_t ldb = RowStride(b, hv, "GatesForward b");
    T *pg = gamma.data<T>(), *pbe = beta.data<T>();
    const T bs = static_cast<T>(beta_scale);
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; ++i)
      for (int64_t h = 0; h < hv; ++h) {
        const int64_t j = i * hv + h;
        pg[j] = -std::exp(pal[h]) * Softplus(pa[i * lda + h] + pdt[h]);
        pbe[j] = bs * Sigmoid(pb[i * ldb + h]);
      }
  });
}

void GatesBackward(const Tensor& a, const Tensor& b, const Tensor& a_log, const Tensor& dt_bias,
                   double beta_scale, const Tensor& dgamma, const Tensor& dbeta, const Tensor& da,
                   const Tensor& db, const Tensor& da_log, const Tensor& ddt_bias) {
  const int64_t hv = a_log.numel(), n = a.numel() / hv;
  CheckSame(a, dgamma, "GatesBackward");
  CheckSame(a, da, "GatesBackward");
  CheckSame(b, db, "GatesBackward");
  DispatchFloat(a.dtype(), [&](auto zero) {
    using T = decltype(zero);
    // a, b, da and db may be column views.
    const T *pa = a.strided_data<T>(), *pb = b.strided_data<T>(), *pal = a_log.data<T>(),
            *pdt = dt_bias.data<T>(), *pdg = dgamma.data<T>(), *pdb = dbeta.data<T>();
    const int64_t la = RowStride(a, hv, "GatesBackward a");
    const int64_t lb = RowStride(b, hv, "GatesBackward b");
    T *pda = da.strided_data<T>(), *pdbo = db.strided_data<T>();
    const int64_t lda = RowStride(da, hv, "GatesBackward da");
    const int64_t ldb = RowStride(db, hv, "GatesBackward db");
    const T bs = static_cast<T>(beta_scale);
    // Per-head sums are small (HV numbers): accumulate serially over rows for determinism.
    std::vector<T> dal(hv, T(0)), ddt(hv, T(0));
    for (int64_t i = 0; i < n; ++i)
      for (int64_t h = 0; h < hv; ++h) {
        const int64_t j = i * hv + h;
        const T z = pa[i * la + h] + pdt[h], decay = std::exp(pal[h]);
        const T gamma = -decay * Softplus(z);
        const T dz = pdg[j] * (-decay) * Sigmoid(z);  // softplus' = sigmoid
        pda[i * lda + h] = dz;
        ddt[h] += dz;
        dal[h] += pdg[j] * gamma;  // d gamma / d a_log = gamma
        const T s = Sigmoid(pb[i * lb + h]);
        pdbo[i * ldb + h] = pdb[j] * bs * s * (T(1) - s);
      }
    T *pdal = da_log.data<T>(), *pddt = ddt_bias.data<T>();
    for (int64_t h = 0; h < hv; ++h) {
      pdal[h] += dal[h];
      pddt[h] += ddt[h];
    }
  });
}

}  // namespace gdn::cpu
