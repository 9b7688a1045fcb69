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

// The forward in one pass: each thread owns one channel of one segment of kConvSegment positions
// of one sequence and slides a window of the last K inputs along it in registers, so each x is
// read about once (plus K-1 positions of halo) and no index is divided per value. Terms are added
// in the CPU's order (tap 0 first).
constexpr int kConvSegment = 64;
constexpr int kConvMaxTaps = 8;
constexpr int kConvBatch = 8;  // positions whose loads are issued together

// x ([stored]) as the kernels read it, its type fixed at compile time: a runtime choice in the
// unrolled loads measured 136 registers a thread for the backward.
struct F32In {
  const float* p;
  __device__ __forceinline__ float operator[](int64_t i) const { return p[i]; }
};
struct Bf16In {
  const __nv_bfloat16* p;
  __device__ __forceinline__ float operator[](int64_t i) const { return __bfloat162float(p[i]); }
};

template <int K, typename In>
__global__ void ConvSiluForwardKernel(In x, int64_t ldx, const float* __restrict__ w,
                                      float* __restrict__ y, int64_t T, int64_t C,
                                      int64_t segments) {
  const int64_t c = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (c >= C) return;
  const int64_t b = blockIdx.y / segments, s0 = (blockIdx.y % segments) * kConvSegment;
  const int64_t s1 = s0 + kConvSegment < T ? s0 + kConvSegment : T;
  const int64_t base = b * T * C + c, x_base = b * T * ldx + c;  // x: rows ldx apart
  float wt[K], xs[K];
  for (int j = 0; j < K; ++j) {
    wt[j] = w[c * K + j];
    const int64_t p = s0 - (K - 1) + j;  // xs[j] = x[t - (K-1) + j] for t = s0
    xs[j] = j < K - 1 && p >= 0 ? x[x_base + p * ldx] : 0;
  }
  for (int64_t t0 = s0; t0 < s1; t0 += kConvBatch) {
    float xb[kConvBatch];  // loaded together, so that their latencies overlap
#pragma unroll
    for (int u = 0; u < kConvBatch; ++u) xb[u] = t0 + u < s1 ? x[x_base + (t0 + u) * ldx] : 0;
#pragma unroll
    for (int u = 0; u < kConvBatch; ++u) {
      const int64_t t = t0 + u;
      if (t >= s1) break;
      xs[K - 1] = xb[u];
      float acc = 0;
      for (int j = 0; j < K; ++j)
        if (t - (K - 1) + j >= 0) acc += wt[j] * xs[j];
      y[base + t * C] = acc * SigmoidF(acc);
      for (int j = 0; j < K - 1; ++j) xs[j] = xs[j + 1];
    }
  }
}

// The segments of kConvSegment positions a sequence of T splits into, the kernels' grid rows per
// sequence, once the tap count K is one the kernels are built for (1..kConvMaxTaps).
namespace {
int64_t ConvSegments(int64_t T, int64_t K, const char* op) {
  CHECK(K >= 1 && K <= kConvMaxTaps) << op << " on CUDA: at most " << kConvMaxTaps << " taps, got "
                                     << K;
  return (T + kConvSegment - 1) / kConvSegment;
}
}  // namespace

namespace {
// Calls launch(k, in) with k the tap count K as a std::integral_constant (1..kConvMaxTaps) and in
// x in its type (F32In or Bf16In): the kernels' template arguments.
template <typename Launch>
void WithConvTemplate(int64_t K, const StoredIn& x, Launch launch) {
  auto with_taps = [&](auto in) {
    WithConstant<1, 2, 3, 4, 5, 6, 7, 8>(K, [&](auto k) { launch(k, in); });
  };
  static_assert(kConvMaxTaps == 8);
  if (x.bf16) with_taps(Bf16In{static_cast<const __nv_bfloat16*>(x.p)});
  else with_taps(F32In{static_cast<const float*>(x.p)});
}
// The kernels' blocks: (block of 128 channels, sequence segment).
dim3 ConvGrid(int64_t B, int64_t C, int64_t segments) {
  return dim3(static_cast<unsigned>((C + 127) / 128), static_cast<unsigned>(B * segments));
}
}  // namespace

void CausalConvSiluForward(const Tensor& x, const Tensor& w, const Tensor& y) {
  const StoredIn px =
      CheckStoredIn(x, y.numel(), "CausalConvSiluForward x", /*column_view=*/true);
  CheckF32(w, "CausalConvSiluForward");
  CheckF32(y, "CausalConvSiluForward");
  CHECK_EQ(x.rank(), 3);
  const int64_t B = x.dim(0), T = x.dim(1), C = x.dim(2), K = w.dim(1);
  CHECK_EQ(w.dim(0), C);
  const int64_t segments = ConvSegments(T, K, "CausalConvSiluForward");
  const int64_t ldx = RowStride(x, C, "CausalConvSiluForward x");
  if (B * T * C == 0) return;
  WithConvTemplate(K, px, [&](auto k, auto in) {
    ConvSiluForwardKernel<decltype(k)::value, decltype(in)>
        <<<ConvGrid(B, C, segments), 128, 0, Stream()>>>(in, ldx, F32(w), F32(y), T, C,
                                                          segments);
  });
  CUDA_CHECK_LAUNCH();
}

// The backward in one pass: each thread owns one channel of one segment of kSegment positions of
// one sequence, reads dy and x there once (plus K-1 positions of halo), keeps the last K values of
// x and of dpre = dy silu'(pre) in registers (pre recomputed from the x window in the forward's
// order of terms), writes dx and its K partial sums of dw.
template <int K, typename In>
__global__ void ConvSiluBackwardKernel(In x, int64_t ldx_in, const float* __restrict__ w,
                                       const float* __restrict__ dy,
                                       OperandOut dx, int64_t ldx,
                                       float* __restrict__ dw_partial, int64_t T, int64_t C,
                                       int64_t segments) {
  const int64_t c = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (c >= C) return;
  const int64_t b = blockIdx.y / segments, s0 = (blockIdx.y % segments) * kConvSegment;
  const int64_t s1 = s0 + kConvSegment < T ? s0 + kConvSegment : T;  // this segment: [s0, s1)
  // x and dx: rows ldx_in and ldx apart (column views); dy: C apart.
  const int64_t base = b * T * C + c, x_base = b * T * ldx_in + c, dx_base = b * T * ldx + c;
  float wt[K], g[K], xs[K], dw[K];
  for (int j = 0; j < K; ++j) {
    wt[j] = w[c * K + j];
    g[j] = 0;
    dw[j] = 0;
    // xs[j] = x[t - (K-1) + j] for the first t = s0 (zeros before the sequence starts).
    const int64_t p = s0 - (K - 1) + j;
    xs[j] = j < K - 1 && p >= 0 ? x[x_base + p * ldx_in] : 0;
  }
  const int64_t tend = s1 + (K - 1) < T ? s1 + (K - 1) : T;  // with the halo after the segment
  for (int64_t t0 = s0; t0 < tend; t0 += kConvBatch) {
    float xb[kConvBatch], db[kConvBatch];  // loaded together (as in the forward)
#pragma unroll
    for (int u = 0; u < kConvBatch; ++u) {
      const bool in = t0 + u < tend;
      xb[u] = in ? x[x_base + (t0 + u) * ldx_in] : 0;
      db[u] = in ? dy[base + (t0 + u) * C] : 0;
    }
#pragma unroll
    for (int u = 0; u < kConvBatch; ++u) {
      const int64_t t = t0 + u;
      if (t >= tend) break;
      // g[j] = dpre[t - j]; xs[j] = x[t - (K-1) + j]
      for (int j = K - 1; j > 0; --j) g[j] = g[j - 1];
      xs[K - 1] = xb[u];
      float pt = 0;
      for (int j = 0; j < K; ++j) pt += wt[j] * xs[j];
      g[0] = db[u] * SiluGrad(pt);
      // dw[c, j] += dpre[t] x[t - (K-1) + j]
      if (t < s1)
        for (int j = 0; j < K; ++j) dw[j] += g[0] * xs[j];
      for (int j = 0; j < K - 1; ++j) xs[j] = xs[j + 1];
      // dx[s] = sum_j w[c, j] dpre[s + K-1-j] for s = t - (K-1), once all its taps are in.
      const int64_t sx = t - (K - 1);
      if (sx >= s0) {
        float acc = 0;
        for (int j = 0; j < K; ++j) acc += wt[j] * g[j];
        dx.Set(dx_base + sx * ldx, acc);
      }
    }
  }
  // The sequence's last K-1 positions, sx = T-(K-1)+m, whose later taps fall past its end: g still
  // holds dpre[T-1-i] (the loop above ran to t = T-1), and tap j > m reads t = T+m-j, g[j-m-1].
  // Indices known at compile time keep g in registers.
  for (int m = 0; m < K - 1; ++m) {
    const int64_t sx = T - (K - 1) + m;
    if (sx < s0 || sx >= s1) continue;
    float acc = 0;
    for (int j = m + 1; j < K; ++j) acc += wt[j] * g[j - m - 1];
    dx.Set(dx_base + sx * ldx, acc);
  }
  float* out = dw_partial + blockIdx.y * C * K + c * K;
  for (int j = 0; j < K; ++j) out[j] = dw[j];
}

void CausalConvSiluBackward(const Tensor& x, const Tensor& w, const Tensor& dy, const Tensor& dx,
                            const Tensor& dw) {
  const StoredIn px =
      CheckStoredIn(x, dy.numel(), "CausalConvSiluBackward x", /*column_view=*/true);
  CheckF32(dy, "CausalConvSiluBackward");
  CHECK_EQ(x.rank(), 3);
  const int64_t B = x.dim(0), T = x.dim(1), C = x.dim(2), K = w.dim(1);
  const OperandOut pdx = CheckOperandOut(dx, dy, "CausalConvSiluBackward", /*column_view=*/true);
  CheckSame(w, dw, "CausalConvSiluBackward");
  const int64_t segments = ConvSegments(T, K, "CausalConvSiluBackward");
  const int64_t ldx = RowStride(dx, C, "CausalConvSiluBackward dx");
  const int64_t ldx_in = RowStride(x, C, "CausalConvSiluBackward x");
  if (B * T * C == 0) return;
  // Per (sequence, segment) partial sums of dw, then one fixed-order sum: deterministic.
  Tensor partial = Tensor::Empty({B * segments, C * K}, DType::kF32, Device::kCUDA);
  const float *pw = F32(w), *pdy = F32(dy);
  float* ppart = F32(partial);
  WithConvTemplate(K, px, [&](auto k, auto in) {
    ConvSiluBackwardKernel<decltype(k)::value, decltype(in)>
        <<<ConvGrid(B, C, segments), 128, 0, Stream()>>>(in, ldx_in, pw, pdy, pdx, ldx, ppart,
                                                          T, C, segments);
  });
  CUDA_CHECK_LAUNCH();
  AddColumnSums(ppart, static_cast<int>(B * segments), C * K, F32(dw));
}

namespace {
// The gates' a or b ([stored], possibly a column view [N, hv]): value j of the flat [N, hv] view.
struct GateIn {
  StoredIn p;
  int64_t hv, ld;
  __device__ __forceinline__ float operator[](int64_t j) const { return p[j / hv * ld + j % hv]; }
};
GateIn CheckGateIn(const Tensor& t, int64_t numel, int64_t hv, const char* what) {
  return {CheckStoredIn(t, numel, what, /*column_view=*/true), hv, RowStride(t, hv, what)};
}
}  // namespace

void GatesForward(const Tensor& a, const Tensor& b, const Tensor& a_log, const Tensor& dt_bias,
                  double beta_scale, const Tensor& gamma, const Tensor& beta) {
  CheckF32(a_log, "GatesForward");
  CheckF32(dt_bias, "GatesForward");
  CheckF32(gamma, "GatesForward");
  const int64_t hv = a_log.numel();
  const GateIn pa = CheckGateIn(a, gamma.numel(), hv, "GatesForward a");
  const GateIn pb = CheckGateIn(b, gamma.numel(), hv, "GatesForward b");
  CheckSame(gamma, beta, "GatesForward");
  CHECK_EQ(dt_bias.numel(), hv);
  const float *pal = F32(a_log), *pdt = F32(dt_bias);
  float *pg = F32(gamma), *pbe = F32(beta);
  const float bs = static_cast<float>(beta_scale);
  ForEach(gamma.numel(), [=] __device__(int64_t j) {
    const int64_t h = j % hv;
    pg[j] = -expf(pal[h]) * SoftplusF(pa[j] + pdt[h]);
    pbe[j] = bs * SigmoidF(pb[j]);
  });
}

void GatesBackward(const Tensor& a, const Tensor& b, const Tensor& a_log, const Tensor& dt_bias,
                   double beta_scale, const Tensor& dgamma, const Tensor& dbeta, const Tensor& da,
                   const Tensor& db, const Tensor& da_log, const Tensor& ddt_bias) {
  CheckF32(dgamma, "GatesBackward");
  const int64_t hv = a_log.numel(), n = dgamma.numel() / hv;
  const GateIn pa = CheckGateIn(a, dgamma.numel(), hv, "GatesBackward a");
  const GateIn pb = CheckGateIn(b, dgamma.numel(), hv, "GatesBackward b");
  CheckSame(dgamma, dbeta, "GatesBackward");
  // da, db: [operand] outputs, possibly column views.
  const OperandOut pda = CheckOperandOut(da, dgamma, "GatesBackward da", /*column_view=*/true);
  const OperandOut pdbo = CheckOperandOut(db, dgamma, "GatesBackward db", /*column_view=*/true);
  const int64_t lda = RowStride(da, hv, "GatesBackward da");
  const int64_t ldb = RowStride(db, hv, "GatesBackward db");
  CheckSame(a_log, da_log, "GatesBackward");
  CheckSame(dt_bias, ddt_bias, "GatesBackward");
  const float *pal = F32(a_log), *pdt = F32(dt_bias), *pdg = F32(dgamma), *pdb = F32(dbeta);
  const float bs = static_cast<float>(beta_scale);
  // The per-head sums' terms in float32, whatever da's type: dz = d loss / d(a + dt_bias) and
  // dgamma * gamma (d gamma / d a_log = gamma).
  Tensor terms = Tensor::Empty({2, dgamma.numel()}, DType::kF32, Device::kCUDA);
  float *pdz = F32(terms), *pgt = pdz + dgamma.numel();
  ForEach(dgamma.numel(), [=] __device__(int64_t j) {
    const int64_t i = j / hv, h = j % hv;
    const float z = pa[j] + pdt[h], decay = expf(pal[h]);
    const float dz = pdg[j] * (-decay) * SigmoidF(z);  // softplus' = sigmoid
    pdz[j] = dz;
    pgt[j] = pdg[j] * (-decay * SoftplusF(z));
    pda.Set(i * lda + h, dz);
    const float s = SigmoidF(pb[j]);
    pdbo.Set(i * ldb + h, pdb[j] * bs * s * (1.0f - s));
  });
  // ddt_bias[h] += sum_i dz[i, h];  da_log[h] += sum_i dgamma[i, h] * gamma[i, h].
  AccumulateColumnSums([=] __device__(int64_t i, int64_t h) { return pdz[i * hv + h]; }, n, hv,
                       F32(ddt_bias));
  AccumulateColumnSums([=] __device__(int64_t i, int64_t h) { return pgt[i * hv + h]; }, n, hv,
                       F32(da_log));
}

}  // namespace gdn::cuda
