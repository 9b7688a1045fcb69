// RMSNorm, the per-head L2 norm and the gated per-head RMSNorm on CUDA (twins of
// kernels/cpu/norms.cc): one warp per row for the row statistics (shuffle sums, no barriers: the
// rows are short and many), but for RMSNorm's backward; weight gradients accumulate through
// deterministic column sums.
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cuda_ops.h"

namespace gdn::cuda {

namespace {

constexpr int kRowsPerBlock = 8;  // warps of a block of kThreads, one row each
static_assert(kThreads == 32 * kRowsPerBlock);

__device__ __forceinline__ float WarpSum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
inline unsigned RowBlocks(int64_t rows) {
  return static_cast<unsigned>((rows + kRowsPerBlock - 1) / kRowsPerBlock);
}
// This warp's row and lane; false past the last row (the whole warp leaves together).
#define GDN_WARP_ROW(rows)                                                          \
  const int64_t row = blockIdx.x * int64_t{kRowsPerBlock} + (threadIdx.x >> 5);    \
  const int lane = threadIdx.x & 31;                                                \
  if (row >= (rows)) return

// mode 0: RMS (divide the sum of squares by d); mode 1: L2 (no division).
__global__ void RowNormForwardKernel(const float* x, const float* w, int64_t rows, int64_t d,
                                     float eps, bool rms, float* y, float* rstat) {
  GDN_WARP_ROW(rows);
  const float* xr = x + row * d;
  float ss = 0;
#pragma unroll 4
  for (int64_t i = lane; i < d; i += 32) ss += xr[i] * xr[i];
  ss = WarpSum(ss);
  const float r = 1.0f / sqrtf((rms ? ss / static_cast<float>(d) : ss) + eps);
  if (lane == 0) rstat[row] = r;
  float* yr = y + row * d;
  for (int64_t i = lane; i < d; i += 32) yr[i] = w ? xr[i] * r * w[i] : xr[i] * r;
}

// The one block-per-row kernel: RMSNorm's rows are the model's width (1024 and more), where a
// warp per row measured slower (89 against 69 us a launch at 16384 x 1024 on an H200).
__global__ void RmsNormBackwardKernel(const float* x, const float* w, const float* rstd,
                                      const float* dy, int64_t d, float* dx) {
  __shared__ float shm[32];
  const int64_t row = blockIdx.x;
  const float *xr = x + row * d, *dyr = dy + row * d;
  const float r = rstd[row];
  float dot = 0;  // mean(dn * n) with dn = w * dy, n = x * r
  for (int64_t i = threadIdx.x; i < d; i += blockDim.x) dot += w[i] * dyr[i] * xr[i] * r;
  dot = BlockReduce(dot, SumOp(), shm) / static_cast<float>(d);
  float* dxr = dx + row * d;
  for (int64_t i = threadIdx.x; i < d; i += blockDim.x)
    dxr[i] = r * (w[i] * dyr[i] - xr[i] * r * dot);
}

__global__ void L2NormHeadsBackwardKernel(const float* y, const float* rnorm, const float* dy,
                                          int64_t rows, int64_t d, float* dx) {
  GDN_WARP_ROW(rows);
  const float *yr = y + row * d, *dyr = dy + row * d;
  float dot = 0;
#pragma unroll 4
  for (int64_t i = lane; i < d; i += 32) dot += yr[i] * dyr[i];
  dot = WarpSum(dot);
  // d(x / |x|) = (dy - y (y . dy)) / |x|
  const float rn = rnorm[row];
  for (int64_t i = lane; i < d; i += 32) dx[row * d + i] = rn * (dyr[i] - yr[i] * dot);
}

__global__ void GatedRmsNormForwardKernel(const float* o, StoredIn g, const float* w,
                                          int64_t rows, int64_t d, float eps, OperandOut y,
                                          float* rstd) {
  GDN_WARP_ROW(rows);
  const float* orow = o + row * d;
  float ss = 0;
#pragma unroll 4
  for (int64_t i = lane; i < d; i += 32) ss += orow[i] * orow[i];
  ss = WarpSum(ss);
  const float r = 1.0f / sqrtf(ss / static_cast<float>(d) + eps);
  if (lane == 0) rstd[row] = r;
  for (int64_t i = lane; i < d; i += 32) {
    const float gi = g[row * d + i];
    y.Set(row * d + i, orow[i] * r * w[i] * gi * SigmoidF(gi));
  }
}

__global__ void GatedRmsNormBackwardKernel(const float* o, StoredIn g, const float* w,
                                           const float* rstd, const float* dy, int64_t rows,
                                           int64_t d, float* d_o, OperandOut dg) {
  GDN_WARP_ROW(rows);
  const int64_t base = row * d;
  const float r = rstd[row];
  float dot = 0;
#pragma unroll 4
  for (int64_t i = lane; i < d; i += 32) {
    const float gi = g[base + i], s = SigmoidF(gi), silu = gi * s;
    const float n = o[base + i] * r;
    const float dn = dy[base + i] * w[i] * silu;
    dg.Set(base + i, dy[base + i] * n * w[i] * s * (1.0f + gi * (1.0f - s)));
    dot += dn * n;
    d_o[base + i] = dn;  // dn for now; normalised below (by this same thread)
  }
  dot = WarpSum(dot) / static_cast<float>(d);
  for (int64_t i = lane; i < d; i += 32) d_o[base + i] = r * (d_o[base + i] - o[base + i] * r * dot);
}

#undef GDN_WARP_ROW

}  // namespace

void RmsNormForward(const Tensor& x, const Tensor& w, double eps, const Tensor& y,
                    const Tensor& rstd) {
  CheckF32(x, "RmsNormForward");
  CheckF32(w, "RmsNormForward");
  const int64_t d = w.numel(), n = x.numel() / d;
  CheckSame(x, y, "RmsNormForward");
  CHECK_EQ(rstd.numel(), n);
  if (n == 0) return;
  RowNormForwardKernel<<<RowBlocks(n), kThreads, 0, Stream()>>>(F32(x), F32(w), n, d, eps, true,
                                                                F32(y), F32(rstd));
  CUDA_CHECK_LAUNCH();
}

void RmsNormBackward(const Tensor& x, const Tensor& w, const Tensor& rstd, const Tensor& dy,
                     const Tensor& dx, const Tensor& dw) {
  CheckF32(x, "RmsNormBackward");
  const int64_t d = w.numel(), n = x.numel() / d;
  CheckSame(x, dy, "RmsNormBackward");
  CheckSame(x, dx, "RmsNormBackward");
  CheckSame(w, dw, "RmsNormBackward");
  if (n == 0) return;
  const int threads = static_cast<int>(std::clamp<int64_t>((d + 31) / 32 * 32, 32, kThreads));
  RmsNormBackwardKernel<<<n, threads, 0, Stream()>>>(F32(x), F32(w), F32(rstd), F32(dy), d,
                                                     F32(dx));
  CUDA_CHECK_LAUNCH();
  const float *px = F32(x), *pr = F32(rstd), *pdy = F32(dy);
  AccumulateColumnSums(
      [=] __device__(int64_t row, int64_t i) { return pdy[row * d + i] * px[row * d + i] * pr[row]; },
      n, d, F32(dw));
}

void L2NormHeadsForward(const Tensor& x, int64_t head_dim, double eps, const Tensor& y,
                        const Tensor& rnorm) {
  CheckF32(x, "L2NormHeadsForward");
  CheckSame(x, y, "L2NormHeadsForward");
  const int64_t rows = x.numel() / head_dim;
  CHECK_EQ(rnorm.numel(), rows);
  if (rows == 0) return;
  RowNormForwardKernel<<<RowBlocks(rows), kThreads, 0, Stream()>>>(
      F32(x), nullptr, rows, head_dim, eps, false, F32(y), F32(rnorm));
  CUDA_CHECK_LAUNCH();
}

void L2NormHeadsBackward(const Tensor& y, const Tensor& rnorm, const Tensor& dy,
                         const Tensor& dx) {
  CheckF32(y, "L2NormHeadsBackward");
  CheckSame(y, dy, "L2NormHeadsBackward");
  CheckSame(y, dx, "L2NormHeadsBackward");
  const int64_t rows = rnorm.numel();
  if (rows == 0) return;
  const int64_t head_dim = y.numel() / rows;
  L2NormHeadsBackwardKernel<<<RowBlocks(rows), kThreads, 0, Stream()>>>(
      F32(y), F32(rnorm), F32(dy), rows, head_dim, F32(dx));
  CUDA_CHECK_LAUNCH();
}

void GatedRmsNormForward(const Tensor& o, const Tensor& g, const Tensor& w, int64_t head_dim,
                         double eps, const Tensor& y, const Tensor& rstd) {
  CheckF32(o, "GatedRmsNormForward");
  const StoredIn pg = CheckStoredIn(g, o.numel(), "GatedRmsNormForward g");
  const OperandOut py = CheckOperandOut(y, o, "GatedRmsNormForward");
  CheckF32(w, "GatedRmsNormForward");
  CHECK_EQ(w.numel(), head_dim);
  const int64_t rows = o.numel() / head_dim;
  CHECK_EQ(rstd.numel(), rows);
  if (rows == 0) return;
  GatedRmsNormForwardKernel<<<RowBlocks(rows), kThreads, 0, Stream()>>>(
      F32(o), pg, F32(w), rows, head_dim, eps, py, F32(rstd));
  CUDA_CHECK_LAUNCH();
}

void GatedRmsNormBackward(const Tensor& o, const Tensor& g, const Tensor& w, const Tensor& rstd,
                          int64_t head_dim, const Tensor& dy, const Tensor& d_o, const Tensor& dg,
                          const Tensor& dw) {
  CheckF32(o, "GatedRmsNormBackward");
  const StoredIn pg = CheckStoredIn(g, o.numel(), "GatedRmsNormBackward g");
  CheckSame(o, dy, "GatedRmsNormBackward");
  CheckSame(o, d_o, "GatedRmsNormBackward");
  const OperandOut pdg = CheckOperandOut(dg, o, "GatedRmsNormBackward");
  CheckSame(w, dw, "GatedRmsNormBackward");
  const int64_t rows = o.numel() / head_dim;
  if (rows == 0) return;
  GatedRmsNormBackwardKernel<<<RowBlocks(rows), kThreads, 0, Stream()>>>(
      F32(o), pg, F32(w), F32(rstd), F32(dy), rows, head_dim, F32(d_o), pdg);
  CUDA_CHECK_LAUNCH();
  const float *po = F32(o), *pr = F32(rstd), *pdy = F32(dy);
  const int64_t d = head_dim;
  AccumulateColumnSums(
      [=] __device__(int64_t row, int64_t i) {
        const float gi = pg[row * d + i];
        return pdy[row * d + i] * (po[row * d + i] * pr[row]) * (gi * SigmoidF(gi));
      },
      rows, d, F32(dw));
}

}  // namespace gdn::cuda
