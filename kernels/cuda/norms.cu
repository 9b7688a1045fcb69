// RMSNorm, the per-head L2 norm and the gated per-head RMSNorm on CUDA (twins of
// kernels/cpu/norms.cc): one warp per row for the row statistics (shuffle sums, no barriers: the
// rows are short and many), but for RMSNorm's backward. The backwards sum their weight gradients
// per block as they go, then AddColumnSums adds the blocks' rows in a fixed order (deterministic).
#include <initializer_list>
#include <utility>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cuda_ops.h"

namespace gdn::cuda {

namespace {

constexpr int kRowsPerBlock = 8;  // warps of a block of kThreads, one row each
static_assert(kThreads == 32 * kRowsPerBlock);

inline unsigned RowBlocks(int64_t rows) {
  return static_cast<unsigned>((rows + kRowsPerBlock - 1) / kRowsPerBlock);
}
// This warp's row and lane; false past the last row (the whole warp leaves together).
#define GDN_WARP_ROW(rows)                                                          \
  const int64_t row = blockIdx.x * int64_t{kRowsPerBlock} + (threadIdx.x >> 5);    \
  const int lane = threadIdx.x & 31;                                                \
  if (row >= (rows)) return

// rms: divide the sum of squares by d (RMSNorm), else not (the L2 norm). With res the row is
// x + res, written to h first (the residual add fused with the norm after it); each lane reads
// back only what it wrote.
__global__ void RowNormForwardKernel(const float* x, const float* res, const float* w,
                                     int64_t rows, int64_t d, float eps, bool rms, float* h,
                                     OperandOut y, float* rstat) {
  GDN_WARP_ROW(rows);
  const float* xr = x + row * d;
  float ss = 0;
  if (res) {
    const float* rr = res + row * d;
    float* hr = h + row * d;
#pragma unroll 4
    for (int64_t i = lane; i < d; i += 32) {
      const float v = xr[i] + rr[i];
      hr[i] = v;
      ss += v * v;
    }
    xr = hr;
  } else {
#pragma unroll 4
    for (int64_t i = lane; i < d; i += 32) ss += xr[i] * xr[i];
  }
  ss = WarpSum(ss);
  const float r = 1.0f / sqrtf((rms ? ss / static_cast<float>(d) : ss) + eps);
  if (lane == 0) rstat[row] = r;
  for (int64_t i = lane; i < d; i += 32) y.Set(row * d + i, w ? xr[i] * r * w[i] : xr[i] * r);
}

// A block per row at a time (RMSNorm's rows are the model's width, 1024 and more, where a warp per
// row measured slower: 89 against 69 us a launch at 16384 x 1024 on an H200), the grid striding
// over the rows. Each thread keeps the weight gradient's partial sums of its columns (i =
// threadIdx.x mod blockDim.x) in shared memory and writes them once: per-block partial rows that
// AddColumnSums adds in a fixed order, with no second pass over x and dy.
__global__ void RmsNormBackwardKernel(const float* x, const float* w, const float* rstd,
                                      const float* dy, int64_t rows, int64_t d, bool accumulate,
                                      float* dx, OperandOut dx_operand, float* dw_partial) {
  extern __shared__ float dw_local[];  // [d]
  __shared__ float shm[32];
  for (int64_t i = threadIdx.x; i < d; i += blockDim.x) dw_local[i] = 0;
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const float *xr = x + row * d, *dyr = dy + row * d;
    const float r = rstd[row];
    float dot = 0;  // mean(dn * n) with dn = w * dy, n = x * r
    for (int64_t i = threadIdx.x; i < d; i += blockDim.x) {
      dot += w[i] * dyr[i] * xr[i] * r;
      dw_local[i] += dyr[i] * xr[i] * r;
    }
    dot = BlockReduce(dot, SumOp(), shm) / static_cast<float>(d);
    float* dxr = dx + row * d;
    for (int64_t i = threadIdx.x; i < d; i += blockDim.x) {
      const float v = (accumulate ? dxr[i] : 0.0f) + r * (w[i] * dyr[i] - xr[i] * r * dot);
      dxr[i] = v;
      if (dx_operand.p) dx_operand.Set(row * d + i, v);
    }
  }
  for (int64_t i = threadIdx.x; i < d; i += blockDim.x) dw_partial[blockIdx.x * d + i] = dw_local[i];
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

// The gated norm's output, one expression for both forwards and for the backwards' y, which must
// equal the forward's bit for bit.
__device__ __forceinline__ float GatedNormOut(float o, float r, float w, float g, float sig_g) {
  return o * r * w * g * sig_g;
}

__global__ void GatedRmsNormForwardKernel(StoredIn o, StoredIn g, RowsOf g_rows, const float* w,
                                          int64_t rows, int64_t d, float eps, OperandOut y,
                                          float* rstd) {
  GDN_WARP_ROW(rows);
  auto orow = [&](int64_t i) { return o[row * d + i]; };
  float ss = 0;
#pragma unroll 4
  for (int64_t i = lane; i < d; i += 32) ss += orow(i) * orow(i);
  ss = WarpSum(ss);
  const float r = 1.0f / sqrtf(ss / static_cast<float>(d) + eps);
  if (lane == 0) rstd[row] = r;
  for (int64_t i = lane; i < d; i += 32) {
    const float gi = g[g_rows(row, d) + i];
    y.Set(row * d + i, GatedNormOut(orow(i), r, w[i], gi, SigmoidF(gi)));
  }
}

// A warp per row, the grid striding over groups of kRowsPerBlock rows. Each warp keeps the weight
// gradient's partial sums of its lanes' columns in shared memory; the block adds its warps' in
// order and writes one partial row (no second pass over o, g and dy for dw). y, when given: the
// forward's output again, in the forward's order of operations.
__global__ void GatedRmsNormBackwardKernel(StoredIn o, StoredIn g, RowsOf g_rows,
                                           const float* w,
                                           const float* rstd, const float* dy, int64_t rows,
                                           int64_t d, float* d_o, OperandOut dg, RowsOf dg_rows,
                                           OperandOut y, float* dw_partial) {
  extern __shared__ float dw_local[];  // [kRowsPerBlock][d]
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  float* mine = dw_local + warp * d;
  for (int64_t i = lane; i < d; i += 32) mine[i] = 0;
  for (int64_t row = blockIdx.x * int64_t{kRowsPerBlock} + warp; row < rows;
       row += int64_t{gridDim.x} * kRowsPerBlock) {
    const int64_t base = row * d, g_base = g_rows(row, d), dg_base = dg_rows(row, d);
    const float r = rstd[row];
    float dot = 0;
#pragma unroll 4
    for (int64_t i = lane; i < d; i += 32) {
      const float gi = g[g_base + i], s = SigmoidF(gi), silu = gi * s;
      const float n = o[base + i] * r;
      const float dn = dy[base + i] * w[i] * silu;
      dg.Set(dg_base + i, dy[base + i] * n * w[i] * s * (1.0f + gi * (1.0f - s)));
      mine[i] += dy[base + i] * n * silu;
      if (y.p) y.Set(base + i, GatedNormOut(o[base + i], r, w[i], gi, s));
      dot += dn * n;
      d_o[base + i] = dn;  // dn for now; normalised below (by this same thread)
    }
    dot = WarpSum(dot) / static_cast<float>(d);
    for (int64_t i = lane; i < d; i += 32)
      d_o[base + i] = r * (d_o[base + i] - o[base + i] * r * dot);
  }
  __syncthreads();
  for (int64_t i = threadIdx.x; i < d; i += blockDim.x) {
    float sum = 0;
    for (int k = 0; k < kRowsPerBlock; ++k) sum += dw_local[k * d + i];
    dw_partial[blockIdx.x * d + i] = sum;
  }
}

// Blocks for a kernel that strides over `units` (rows, or groups of rows) and keeps `smem` bytes
// of per-block partial sums in dynamic shared memory (0: in registers or static): enough to fill
// the GPU, few enough that the partial rows stay small.
int PartialBlocks(int64_t units, size_t smem, const void* kernel) {
  static int max_smem = [] {
    int dev = 0, v = 0;
    CUDA_CHECK(cudaGetDevice(&dev));
    CUDA_CHECK(cudaDeviceGetAttribute(&v, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
    return v;
  }();
  CHECK_LE(smem, static_cast<size_t>(max_smem))
      << "a norm's weight gradient needs " << smem << " bytes of shared memory per block, more "
      << "than this GPU's " << max_smem << " (the norm's width is too large)";
  if (smem > 48 * 1024)
    CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    static_cast<int>(smem)));
  return static_cast<int>(std::min<int64_t>(units, 8 * int64_t{SmCount()}));
}

// --- The same kernels with the row in registers, four values a load: for rows of d = 128 m
// values (the models' widths and head sizes, 4-value aligned tensors), each value is read once and
// written once; the scalar kernels above take every other shape.

// RowNormForwardKernel, a warp per row of d = 128 kVec: lane holds values 4 lane + 128 k .. + 3.
template <int kVec>
__global__ void RowNormForwardVecKernel(const float* x, const float* res, const float* w,
                                        int64_t rows, float eps, bool rms, float* h,
                                        OperandOut y, float* rstat) {
  constexpr int d = 128 * kVec;
  GDN_WARP_ROW(rows);
  const int64_t base = row * d + 4 * lane;
  float v[4 * kVec];
#pragma unroll
  for (int k = 0; k < kVec; ++k) Unpack4(Ld4(x + base + 128 * k), v + 4 * k);
  if (res) {
    float a[4 * kVec];
#pragma unroll
    for (int k = 0; k < kVec; ++k) Unpack4(Ld4(res + base + 128 * k), a + 4 * k);
#pragma unroll
    for (int j = 0; j < 4 * kVec; ++j) v[j] += a[j];
#pragma unroll
    for (int k = 0; k < kVec; ++k) St4(h + base + 128 * k, v + 4 * k);
  }
  float ss = 0;
#pragma unroll
  for (int j = 0; j < 4 * kVec; ++j) ss += v[j] * v[j];
  ss = WarpSum(ss);
  const float r = 1.0f / sqrtf((rms ? ss / static_cast<float>(d) : ss) + eps);
  if (lane == 0) rstat[row] = r;
#pragma unroll
  for (int k = 0; k < kVec; ++k) {
    float o[4];
    if (w) Unpack4(Ld4(w + 4 * lane + 128 * k), o);
#pragma unroll
    for (int c = 0; c < 4; ++c) o[c] = w ? v[4 * k + c] * r * o[c] : v[4 * k + c] * r;
    y.Set4(base + 128 * k, Pack4(o));
  }
}

// RmsNormBackwardKernel with a block of d / (4 kVec) threads per row: thread t holds values
// 4 t + 4 blockDim.x k .. + 3, and its columns' weight-gradient sums in registers.
template <int kVec>
__global__ void RmsNormBackwardVecKernel(const float* x, const float* w, const float* rstd,
                                         const float* dy, int64_t rows, int64_t d,
                                         bool accumulate, float* dx, OperandOut dx_operand,
                                         float* dw_partial) {
  __shared__ float shm[32];
  const int col = 4 * threadIdx.x, stride = 4 * blockDim.x;
  float wv[4 * kVec], dw[4 * kVec];
#pragma unroll
  for (int k = 0; k < kVec; ++k) Unpack4(Ld4(w + col + stride * k), wv + 4 * k);
#pragma unroll
  for (int j = 0; j < 4 * kVec; ++j) dw[j] = 0;
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const int64_t base = row * d + col;
    float xv[4 * kVec], dyv[4 * kVec], prev[4 * kVec];
#pragma unroll
    for (int k = 0; k < kVec; ++k) {
      Unpack4(Ld4(x + base + stride * k), xv + 4 * k);
      Unpack4(Ld4(dy + base + stride * k), dyv + 4 * k);
      if (accumulate) Unpack4(Ld4(dx + base + stride * k), prev + 4 * k);
    }
    const float r = rstd[row];
    float dot = 0;  // mean(dn * n) with dn = w * dy, n = x * r
#pragma unroll
    for (int j = 0; j < 4 * kVec; ++j) {
      dot += wv[j] * dyv[j] * xv[j] * r;
      dw[j] += dyv[j] * xv[j] * r;
    }
    dot = BlockReduce(dot, SumOp(), shm) / static_cast<float>(d);
#pragma unroll
    for (int j = 0; j < 4 * kVec; ++j)
      prev[j] = (accumulate ? prev[j] : 0.0f) + r * (wv[j] * dyv[j] - xv[j] * r * dot);
#pragma unroll
    for (int k = 0; k < kVec; ++k) {
      St4(dx + base + stride * k, prev + 4 * k);
      if (dx_operand.p) dx_operand.Set4(base + stride * k, Pack4(prev + 4 * k));
    }
  }
#pragma unroll
  for (int k = 0; k < kVec; ++k) St4(dw_partial + blockIdx.x * d + col + stride * k, dw + 4 * k);
}

// GatedRmsNormForwardKernel, a warp per row of d = 128 kVec (lanes as in RowNormForwardVecKernel):
// o and g read once, in 4-value loads.
template <int kVec>
__global__ void GatedRmsNormForwardVecKernel(StoredIn o, StoredIn g, RowsOf g_rows,
                                             const float* w, int64_t rows, float eps, OperandOut y,
                                             float* rstd) {
  constexpr int d = 128 * kVec;
  GDN_WARP_ROW(rows);
  const int64_t base = row * d + 4 * lane;
  float ov[4 * kVec], gv[4 * kVec], wv[4 * kVec];
#pragma unroll
  for (int k = 0; k < kVec; ++k) {
    Unpack4(o.Load4(base + 128 * k), ov + 4 * k);
    Unpack4(g.Load4(g_rows(row, d) + 4 * lane + 128 * k), gv + 4 * k);
    Unpack4(Ld4(w + 4 * lane + 128 * k), wv + 4 * k);
  }
  float ss = 0;
#pragma unroll
  for (int j = 0; j < 4 * kVec; ++j) ss += ov[j] * ov[j];
  const float r = 1.0f / sqrtf(WarpSum(ss) / static_cast<float>(d) + eps);
  if (lane == 0) rstd[row] = r;
  float yv[4 * kVec];
#pragma unroll
  for (int j = 0; j < 4 * kVec; ++j) yv[j] = GatedNormOut(ov[j], r, wv[j], gv[j], SigmoidF(gv[j]));
#pragma unroll
  for (int k = 0; k < kVec; ++k) y.Set4(base + 128 * k, Pack4(yv + 4 * k));
}

// GatedRmsNormBackwardKernel, a warp per row of d = 128 kVec (lanes as in RowNormForwardVecKernel),
// the weight-gradient sums in registers until the block adds its warps'.
template <int kVec>
__global__ void GatedRmsNormBackwardVecKernel(StoredIn o, StoredIn g, RowsOf g_rows,
                                              const float* w,
                                              const float* rstd, const float* dy, int64_t rows,
                                              OperandOut d_o, OperandOut dg, RowsOf dg_rows,
                                              OperandOut y, float* dw_partial) {
  constexpr int d = 128 * kVec;
  __shared__ float dw_warp[kRowsPerBlock][d];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  float wv[4 * kVec], dw[4 * kVec];
#pragma unroll
  for (int k = 0; k < kVec; ++k) Unpack4(Ld4(w + 4 * lane + 128 * k), wv + 4 * k);
#pragma unroll
  for (int j = 0; j < 4 * kVec; ++j) dw[j] = 0;
  for (int64_t row = blockIdx.x * int64_t{kRowsPerBlock} + warp; row < rows;
       row += int64_t{gridDim.x} * kRowsPerBlock) {
    const int64_t base = row * d + 4 * lane;
    float ov[4 * kVec], gv[4 * kVec], dyv[4 * kVec];
#pragma unroll
    for (int k = 0; k < kVec; ++k) {
      Unpack4(o.Load4(base + 128 * k), ov + 4 * k);
      Unpack4(g.Load4(g_rows(row, d) + 4 * lane + 128 * k), gv + 4 * k);
      Unpack4(Ld4(dy + base + 128 * k), dyv + 4 * k);
    }
    const float r = rstd[row];
    float dot = 0, dn[4 * kVec], dgv[4 * kVec], yv[4 * kVec];
#pragma unroll
    for (int j = 0; j < 4 * kVec; ++j) {
      const float gi = gv[j], s = SigmoidF(gi), silu = gi * s;
      const float n = ov[j] * r;
      dn[j] = dyv[j] * wv[j] * silu;
      dgv[j] = dyv[j] * n * wv[j] * s * (1.0f + gi * (1.0f - s));
      dw[j] += dyv[j] * n * silu;
      yv[j] = GatedNormOut(ov[j], r, wv[j], gi, s);
      dot += dn[j] * n;
    }
    dot = WarpSum(dot) / static_cast<float>(d);
#pragma unroll
    for (int j = 0; j < 4 * kVec; ++j) dn[j] = r * (dn[j] - ov[j] * r * dot);
#pragma unroll
    for (int k = 0; k < kVec; ++k) {
      d_o.Set4(base + 128 * k, Pack4(dn + 4 * k));
      dg.Set4(dg_rows(row, d) + 4 * lane + 128 * k, Pack4(dgv + 4 * k));
      if (y.p) y.Set4(base + 128 * k, Pack4(yv + 4 * k));
    }
  }
#pragma unroll
  for (int k = 0; k < kVec; ++k)
#pragma unroll
    for (int c = 0; c < 4; ++c) dw_warp[warp][4 * lane + 128 * k + c] = dw[4 * k + c];
  __syncthreads();
  for (int i = threadIdx.x; i < d; i += blockDim.x) {
    float sum = 0;
    for (int k = 0; k < kRowsPerBlock; ++k) sum += dw_warp[k][i];
    dw_partial[blockIdx.x * int64_t{d} + i] = sum;
  }
}

// kVec for a row of d values in a warp-per-row kernel above: d = 128 kVec, kVec <= max_vec, and
// every tensor 4-value aligned; 0 when the scalar kernel must run.
int WarpVec(int64_t d, int max_vec, std::initializer_list<const Tensor*> tensors) {
  if (d % 128 != 0 || d / 128 > max_vec || (d / 128 & (d / 128 - 1)) != 0) return 0;
  for (const Tensor* t : tensors)
    if (t->defined() && !Aligned4(*t)) return 0;
  return static_cast<int>(d / 128);
}

#undef GDN_WARP_ROW

// The row-norm forward: res (and h) for the fused residual add, w for RMSNorm's weight; y float32
// or bf16. Rows of 128, 256, 512 or 1024 values take the register kernel.
void LaunchRowNorm(const Tensor& x, const Tensor* res, const Tensor* w, int64_t rows, int64_t d,
                   double eps, bool rms, const Tensor* h, const Tensor& y, const Tensor& rstat) {
  const float* pres = res ? F32(*res) : nullptr;
  const float* pw = w ? F32(*w) : nullptr;
  float* ph = h ? F32(*h) : nullptr;
  const OperandOut py{y.raw(), y.dtype() == DType::kBF16};
  const Tensor none;
  const int vec = WarpVec(d, 8, {&x, res ? res : &none, w ? w : &none, h ? h : &none, &y});
  const float e = static_cast<float>(eps);
  const bool registers = WithConstant<1, 2, 4, 8>(vec, [&](auto k) {
    RowNormForwardVecKernel<decltype(k)::value><<<RowBlocks(rows), kThreads, 0, Stream()>>>(
        F32(x), pres, pw, rows, e, rms, ph, py, F32(rstat));
  });
  if (!registers)
    RowNormForwardKernel<<<RowBlocks(rows), kThreads, 0, Stream()>>>(F32(x), pres, pw, rows, d, e,
                                                                      rms, ph, py, F32(rstat));
  CUDA_CHECK_LAUNCH();
}

// RmsNormBackwardVecKernel's shape for a row of d values: values per thread / 4 (kVec) and
// threads (d / (4 kVec), a multiple of 32, at most 256 where d allows, else 1024); {0, 0} when
// the scalar kernel must run.
std::pair<int, int> RmsBackwardVec(int64_t d) {
  if (d % 128 != 0) return {0, 0};
  const int64_t m = d / 128;
  for (const int64_t limit : {256, 1024})
    for (const int vec : {1, 2, 4, 8})
      if (m % vec == 0 && 32 * m / vec <= limit) return {vec, static_cast<int>(32 * m / vec)};
  return {0, 0};
}
}  // namespace

void RmsNormForward(const Tensor& x, const Tensor& w, double eps, const Tensor& y,
                    const Tensor& rstd) {
  CheckF32(x, "RmsNormForward");
  CheckF32(w, "RmsNormForward");
  const int64_t d = w.numel(), n = x.numel() / d;
  CheckOperandOut(y, x, "RmsNormForward");
  CHECK_EQ(rstd.numel(), n);
  if (n == 0) return;
  LaunchRowNorm(x, nullptr, &w, n, d, eps, true, nullptr, y, rstd);
}

void AddRmsNormForward(const Tensor& x, const Tensor& r, const Tensor& w, double eps,
                       const Tensor& h, const Tensor& y, const Tensor& rstd) {
  CheckF32(x, "AddRmsNormForward");
  CheckF32(w, "AddRmsNormForward");
  CheckSame(x, r, "AddRmsNormForward");
  CheckSame(x, h, "AddRmsNormForward");
  const int64_t d = w.numel(), n = x.numel() / d;
  CheckOperandOut(y, x, "AddRmsNormForward");
  CHECK_EQ(rstd.numel(), n);
  if (n == 0) return;
  LaunchRowNorm(x, &r, &w, n, d, eps, true, &h, y, rstd);
}

void RmsNormBackward(const Tensor& x, const Tensor& w, const Tensor& rstd, const Tensor& dy,
                     const Tensor& dx, const Tensor& dw, bool accumulate,
                     const Tensor& dx_operand) {
  CheckF32(x, "RmsNormBackward");
  const int64_t d = w.numel(), n = x.numel() / d;
  CheckSame(x, dy, "RmsNormBackward");
  CheckSame(x, dx, "RmsNormBackward");
  CheckSame(w, dw, "RmsNormBackward");
  const OperandOut pdxo = dx_operand.defined()
                              ? CheckOperandOut(dx_operand, x, "RmsNormBackward dx_operand")
                              : OperandOut{nullptr, false};
  if (n == 0) return;
  const std::pair<int, int> shape = RmsBackwardVec(d);
  int vec = shape.first;
  const int vec_threads = shape.second;
  for (const Tensor* t : {&x, &w, &dy, &dx, &dx_operand})
    if (t->defined() && !Aligned4(*t)) vec = 0;
  const float *px = F32(x), *pw = F32(w), *pr = F32(rstd), *pdy = F32(dy);
  float* pdx = F32(dx);
  // The register kernel keeps its sums in registers; the scalar one needs d floats of shared memory.
  const size_t smem = vec > 0 ? 0 : d * sizeof(float);
  const int blocks = PartialBlocks(n, smem, reinterpret_cast<const void*>(RmsNormBackwardKernel));
  Tensor partial = Tensor::Empty({blocks, d}, DType::kF32, Device::kCUDA);
  const bool registers = WithConstant<1, 2, 4, 8>(vec, [&](auto k) {
    RmsNormBackwardVecKernel<decltype(k)::value><<<blocks, vec_threads, 0, Stream()>>>(
        px, pw, pr, pdy, n, d, accumulate, pdx, pdxo, F32(partial));
  });
  if (!registers) {
    const int threads = static_cast<int>(std::clamp<int64_t>((d + 31) / 32 * 32, 32, kThreads));
    RmsNormBackwardKernel<<<blocks, threads, smem, Stream()>>>(px, pw, pr, pdy, n, d, accumulate,
                                                               pdx, pdxo, F32(partial));
  }
  CUDA_CHECK_LAUNCH();
  AddColumnSums(F32(partial), blocks, d, F32(dw));
}

void L2NormHeadsForward(const Tensor& x, int64_t head_dim, double eps, const Tensor& y,
                        const Tensor& rnorm) {
  CheckF32(x, "L2NormHeadsForward");
  CheckOperandOut(y, x, "L2NormHeadsForward y");
  const int64_t rows = x.numel() / head_dim;
  CHECK_EQ(rnorm.numel(), rows);
  if (rows == 0) return;
  LaunchRowNorm(x, nullptr, nullptr, rows, head_dim, eps, false, nullptr, y, rnorm);
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
  const StoredIn po = CheckStoredIn(o, o.numel(), "GatedRmsNormForward o");
  const StoredIn pg =
      CheckStoredIn(g, o.numel(), "GatedRmsNormForward g", /*column_view=*/true);
  const OperandOut py = CheckOperandOut(y, o, "GatedRmsNormForward");
  CheckF32(w, "GatedRmsNormForward");
  CHECK_EQ(w.numel(), head_dim);
  const int64_t rows = o.numel() / head_dim;
  CHECK_EQ(rstd.numel(), rows);
  if (rows == 0) return;
  const RowsOf g_rows = RowsOfTensor(g, head_dim, "GatedRmsNormForward g");
  const int vec = WarpVec(head_dim, 4, {&o, &g, &w, &y});
  const bool registers = WithConstant<1, 2, 4, 8>(vec, [&](auto k) {
    GatedRmsNormForwardVecKernel<decltype(k)::value><<<RowBlocks(rows), kThreads, 0, Stream()>>>(
        po, pg, g_rows, F32(w), rows, static_cast<float>(eps), py, F32(rstd));
  });
  if (!registers)
    GatedRmsNormForwardKernel<<<RowBlocks(rows), kThreads, 0, Stream()>>>(
        po, pg, g_rows, F32(w), rows, head_dim, eps, py, F32(rstd));
  CUDA_CHECK_LAUNCH();
}

void GatedRmsNormBackward(const Tensor& o, const Tensor& g, const Tensor& w, const Tensor& rstd,
                          int64_t head_dim, const Tensor& dy, const Tensor& d_o, const Tensor& dg,
                          const Tensor& dw, const Tensor& y) {
  const StoredIn po = CheckStoredIn(o, o.numel(), "GatedRmsNormBackward o");
  const StoredIn pg =
      CheckStoredIn(g, o.numel(), "GatedRmsNormBackward g", /*column_view=*/true);
  CheckF32(dy, "GatedRmsNormBackward");
  CHECK_EQ(dy.numel(), o.numel());
  const OperandOut pdo = CheckOperandOut(d_o, o, "GatedRmsNormBackward d_o");
  const OperandOut pdg = CheckOperandOut(dg, o, "GatedRmsNormBackward", /*column_view=*/true);
  const OperandOut py =
      y.defined() ? CheckOperandOut(y, o, "GatedRmsNormBackward y") : OperandOut{nullptr, false};
  CheckSame(w, dw, "GatedRmsNormBackward");
  const int64_t rows = o.numel() / head_dim, d = head_dim;
  if (rows == 0) return;
  const RowsOf g_rows = RowsOfTensor(g, d, "GatedRmsNormBackward g");
  const RowsOf dg_rows = RowsOfTensor(dg, d, "GatedRmsNormBackward dg");
  const int vec = WarpVec(d, 4, {&o, &g, &w, &dy, &d_o, &dg, &y});
  if (vec == 0 && pdo.bf16) {  // the scalar kernel normalises a float32 d_o in place
    const Tensor df = Tensor::Empty(d_o.shape(), DType::kF32, Device::kCUDA);
    GatedRmsNormBackward(o, g, w, rstd, head_dim, dy, df, dg, dw, y);
    ToBf16(df, d_o);
    return;
  }
  // The register kernel's sums are static shared memory; the scalar one's are per warp, dynamic.
  const size_t smem = vec > 0 ? 0 : kRowsPerBlock * d * sizeof(float);
  const int blocks = PartialBlocks(RowBlocks(rows), smem,
                                   reinterpret_cast<const void*>(GatedRmsNormBackwardKernel));
  Tensor partial = Tensor::Empty({blocks, d}, DType::kF32, Device::kCUDA);
  const bool registers = WithConstant<1, 2, 4, 8>(vec, [&](auto k) {
    GatedRmsNormBackwardVecKernel<decltype(k)::value><<<blocks, kThreads, 0, Stream()>>>(
        po, pg, g_rows, F32(w), F32(rstd), F32(dy), rows, pdo, pdg, dg_rows, py, F32(partial));
  });
  if (!registers)
    GatedRmsNormBackwardKernel<<<blocks, kThreads, smem, Stream()>>>(
        po, pg, g_rows, F32(w), F32(rstd), F32(dy), rows, d, F32(d_o), pdg, dg_rows, py,
        F32(partial));
  CUDA_CHECK_LAUNCH();
  AddColumnSums(F32(partial), blocks, d, F32(dw));
}

}  // namespace gdn::cuda
