// The short convolution (causal depthwise conv1d + SiLU) and the gated delta rule's gates on CUDA
// (twins of kernels/cpu/conv.cc and kernels/cpu/gates.cc, same arithmetic in float32).
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cuda_ops.h"

namespace gdn::cuda {

namespace {
__device__ __forceinline__ float SoftplusF(float x) { return x > 20.0f ? x : log1pf(expf(x)); }
// d silu(p)/dp = s (1 + p (1 - s)), s = sigmoid(p)
__device__ __forceinline__ float SiluGrad(float p) {
  const float s = SigmoidF(p);
  return s * (1.0f + p * (1.0f - s));
}
}  // namespace

void CausalConvSiluForward(const Tensor& x, const Tensor& w, const Tensor& pre, const Tensor& y) {
  CheckF32(x, "CausalConvSiluForward");
  CheckF32(w, "CausalConvSiluForward");
  CHECK_EQ(x.rank(), 3);
  const int64_t B = x.dim(0), T = x.dim(1), C = x.dim(2), K = w.dim(1);
  CHECK_EQ(w.dim(0), C);
  CheckSame(x, pre, "CausalConvSiluForward");
  CheckSame(x, y, "CausalConvSiluForward");
  const float *px = F32(x), *pw = F32(w);
  float *pp = F32(pre), *py = F32(y);
  ForEach(B * T * C, [=] __device__(int64_t i) {
    const int64_t c = i % C, bt = i / C, t = bt % T, row0 = bt - t;  // row0 = b * T
    float acc = 0;
    for (int64_t j = 0; j < K; ++j) {
      const int64_t s = t - (K - 1) + j;
      if (s >= 0) acc += pw[c * K + j] * px[(row0 + s) * C + c];
    }
    pp[i] = acc;
    py[i] = acc * SigmoidF(acc);
  });
}

void CausalConvSiluBackward(const Tensor& x, const Tensor& w, const Tensor& pre, const Tensor& dy,
                            const Tensor& dx, const Tensor& dw) {
  CheckF32(x, "CausalConvSiluBackward");
  CHECK_EQ(x.rank(), 3);
  const int64_t B = x.dim(0), T = x.dim(1), C = x.dim(2), K = w.dim(1);
  CheckSame(x, dy, "CausalConvSiluBackward");
  CheckSame(x, dx, "CausalConvSiluBackward");
  CheckSame(x, pre, "CausalConvSiluBackward");
  CheckSame(w, dw, "CausalConvSiluBackward");
  const float *px = F32(x), *pw = F32(w), *pp = F32(pre), *pdy = F32(dy);
  float* pdx = F32(dx);
  // x[b,s] feeds pre[b, s + (K-1) - j] through tap j.
  ForEach(B * T * C, [=] __device__(int64_t i) {
    const int64_t c = i % C, bs = i / C, s = bs % T, row0 = bs - s;
    float acc = 0;
    for (int64_t j = 0; j < K; ++j) {
      const int64_t t = s + (K - 1) - j;
      if (t < T) {
        const int64_t k = (row0 + t) * C + c;
        acc += pw[c * K + j] * (pdy[k] * SiluGrad(pp[k]));
      }
    }
    pdx[i] = acc;
  });
  // dw[c, j] += sum over (b, s) of dpre[b, s + K-1-j, c] * x[b, s, c]
  AccumulateColumnSums(
      [=] __device__(int64_t row, int64_t col) {
        const int64_t c = col / K, j = col % K, s = row % T, t = s + (K - 1) - j;
        if (t >= T) return 0.0f;
        const int64_t k = (row - s + t) * C + c;
        return (pdy[k] * SiluGrad(pp[k])) * px[row * C + c];
      },
      B * T, C * K, F32(dw));
}

void GatesForward(const Tensor& a, const Tensor& b, const Tensor& a_log, const Tensor& dt_bias,
                  double beta_scale, const Tensor& gamma, const Tensor& beta) {
  CheckF32(a, "GatesForward");
  CheckF32(a_log, "GatesForward");
  CheckF32(dt_bias, "GatesForward");
  const int64_t hv = a_log.numel();
  CheckSame(a, b, "GatesForward");
  CheckSame(a, gamma, "GatesForward");
  CheckSame(a, beta, "GatesForward");
  CHECK_EQ(dt_bias.numel(), hv);
  const float *pa = F32(a), *pb = F32(b), *pal = F32(a_log), *pdt = F32(dt_bias);
  float *pg = F32(gamma), *pbe = F32(beta);
  const float bs = static_cast<float>(beta_scale);
  ForEach(a.numel(), [=] __device__(int64_t j) {
    const int64_t h = j % hv;
    pg[j] = -expf(pal[h]) * SoftplusF(pa[j] + pdt[h]);
    pbe[j] = bs * SigmoidF(pb[j]);
  });
}

void GatesBackward(const Tensor& a, const Tensor& b, const Tensor& a_log, const Tensor& dt_bias,
                   double beta_scale, const Tensor& dgamma, const Tensor& dbeta, const Tensor& da,
                   const Tensor& db, const Tensor& da_log, const Tensor& ddt_bias) {
  CheckF32(a, "GatesBackward");
  const int64_t hv = a_log.numel(), n = a.numel() / hv;
  CheckSame(a, dgamma, "GatesBackward");
  CheckSame(a, dbeta, "GatesBackward");
  CheckSame(a, da, "GatesBackward");
  CheckSame(b, db, "GatesBackward");
  CheckSame(a_log, da_log, "GatesBackward");
  CheckSame(dt_bias, ddt_bias, "GatesBackward");
  const float *pa = F32(a), *pb = F32(b), *pal = F32(a_log), *pdt = F32(dt_bias),
              *pdg = F32(dgamma), *pdb = F32(dbeta);
  float *pda = F32(da), *pdbo = F32(db);
  const float bs = static_cast<float>(beta_scale);
  ForEach(a.numel(), [=] __device__(int64_t j) {
    const int64_t h = j % hv;
    const float z = pa[j] + pdt[h], decay = expf(pal[h]);
    pda[j] = pdg[j] * (-decay) * SigmoidF(z);  // softplus' = sigmoid
    const float s = SigmoidF(pb[j]);
    pdbo[j] = pdb[j] * bs * s * (1.0f - s);
  });
  // ddt_bias[h] += sum_i da[i, h];  da_log[h] += sum_i dgamma[i, h] * gamma[i, h]
  // (d gamma / d a_log = gamma).
  const float* pdac = pda;
  AccumulateColumnSums([=] __device__(int64_t i, int64_t h) { return pdac[i * hv + h]; }, n, hv,
                       F32(ddt_bias));
  AccumulateColumnSums(
      [=] __device__(int64_t i, int64_t h) {
        const int64_t j = i * hv + h;
        return pdg[j] * (-expf(pal[h]) * SoftplusF(pa[j] + pdt[h]));
      },
      n, hv, F32(da_log));
}

}  // namespace gdn::cuda
