// The short convolution (causal depthwise conv1d + SiLU) and the gated delta rule's gates on CUDA
// (twins of kernels/cpu/conv.cc and kernels/cpu/gates.cc, same arithmetic in float32).
#include <algorithm>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cuda_ops.h"

namespace gdn::cuda {

namespace {
__device__ __forceinline__ float SoftplusF(float x) { return x > 20.0f ? x : log1pf(expf(x)); }
// d silu(p)/dp = s (1 + p (1 - s)), s = sigmoid(p)
__device__ __forceinline__ float SiluGrad(float p, float s) { return s * (1.0f + p * (1.0f - s)); }
__device__ __forceinline__ float SiluGrad(float p) { return SiluGrad(p, SigmoidF(p)); }
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
// Load4: values i .. i+3 in one load (i a multiple of 4, the tensor Aligned4).
struct F32In {
  const float* p;
  __device__ __forceinline__ float operator[](int64_t i) const { return p[i]; }
  __device__ __forceinline__ float4 Load4(int64_t i) const { return StoredIn{p, false}.Load4(i); }
};
struct Bf16In {
  const __nv_bfloat16* p;
  __device__ __forceinline__ float operator[](int64_t i) const { return __bfloat162float(p[i]); }
  __device__ __forceinline__ float4 Load4(int64_t i) const { return StoredIn{p, true}.Load4(i); }
};

template <int K, typename In>
__global__ void ConvSiluForwardKernel(In x, int64_t ldx, const float* __restrict__ w, OperandOut y,
                                      int64_t T, int64_t C, int64_t segments) {
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
      y.Set(base + t * C, acc * SigmoidF(acc));
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
// Calls f(in) with in the [stored] input s in its type (F32In or Bf16In).
template <typename F>
void WithStoredType(const StoredIn& s, F&& f) {
  if (s.bf16) f(Bf16In{static_cast<const __nv_bfloat16*>(s.p)});
  else f(F32In{static_cast<const float*>(s.p)});
}
// Calls launch(k, in) with k the tap count K as a std::integral_constant (1..kConvMaxTaps) and in
// x in its type (F32In or Bf16In): the kernels' template arguments.
template <typename Launch>
void WithConvTemplate(int64_t K, const StoredIn& x, Launch launch) {
  static_assert(kConvMaxTaps == 8);
  WithStoredType(x, [&](auto in) {
    WithConstant<1, 2, 3, 4, 5, 6, 7, 8>(K, [&](auto k) { launch(k, in); });
  });
}
// The same with dy's type too (the backwards): launch(k, in, dy_in).
template <typename Launch>
void WithConvTemplate(int64_t K, const StoredIn& x, const StoredIn& dy, Launch launch) {
  WithStoredType(dy, [&](auto din) {
    WithConvTemplate(K, x, [&](auto k, auto in) { launch(k, in, din); });
  });
}
// The kernels' blocks: (block of 128 channels, sequence segment).
dim3 ConvGrid(int64_t B, int64_t C, int64_t segments) {
  return dim3(static_cast<unsigned>((C + 127) / 128), static_cast<unsigned>(B * segments));
}
}  // namespace

// In the warp kernels below: lane value v's channel, counted from the lane's first (4 adjacent
// channels in each 128).
__device__ __forceinline__ int LaneChannel(int v) { return 128 * (v / 4) + v % 4; }
// A warp's work item (sequence b, segment [s0, s1), group of kP * 128 channels; items in that
// order, the group fastest) and its lane's first channel c0. bs: the (sequence, segment) index.
struct RowWork {
  int64_t b, bs, s0, s1, c0;
};
template <int kP>
__device__ __forceinline__ RowWork RowWorkOf(int64_t item, int lane, int64_t T, int64_t C,
                                             int64_t seg, int64_t segments) {
  const int64_t groups = C / (128 * kP), group = item % groups, bs = item / groups;
  const int64_t s0 = (bs % segments) * seg;
  return {bs / segments, bs, s0, s0 + seg < T ? s0 + seg : T, group * 128 * kP + 4 * lane};
}

// The forward by warps, for channel counts that are a multiple of 128 and 4-value aligned x and y
// (the model's q, k and v): a warp owns kP * 128 channels over one segment of `seg` positions,
// each lane 4 adjacent channels of each 128 (one 4-value load and store each), so every load and
// store of the warp moves whole lines, and kB positions' loads are in flight together. The
// launch sizes segments so that all warps run in one wave (a second, partial wave would leave
// most of the GPU idle). With kLanes > 0 the per-head L2 norm is fused in (the mixer's q and k):
// a head is kLanes lanes' channels (heads of 32 to 128), or a warp's (kP = 2: heads of 256), its
// sum of squares a sum over those lanes, and the conv's output never goes to memory.
template <int K, int kP, int kLanes, typename In>
__global__ void __launch_bounds__(128)
    ConvSiluRowsKernel(In x, int64_t ldx, const float* __restrict__ w, float eps, OperandOut y,
                       float* __restrict__ rnorm, int64_t T, int64_t C, int64_t head_dim,
                       int64_t seg, int64_t segments, int64_t items) {
  constexpr int kV = 4 * kP, kB = kP == 1 ? 8 : 4;  // values a lane; positions loaded together
  const int64_t item = blockIdx.x * int64_t{4} + (threadIdx.x >> 5);  // (b, segment, group)
  if (item >= items) return;  // the whole warp
  const int lane = threadIdx.x & 31;
  const auto [b, bs, s0, s1, c0] = RowWorkOf<kP>(item, lane, T, C, seg, segments);
  const int64_t x_base = b * T * ldx + c0;
  float wt[kV][K], xs[kV][K];
#pragma unroll
  for (int v = 0; v < kV; ++v)
    for (int j = 0; j < K; ++j) {
      wt[v][j] = w[(c0 + LaneChannel(v)) * K + j];
      const int64_t p = s0 - (K - 1) + j;  // xs[v][j] = x[t - (K-1) + j] for t = s0
      xs[v][j] = j < K - 1 && p >= 0 ? x[x_base + p * ldx + LaneChannel(v)] : 0;
    }
  for (int64_t t0 = s0; t0 < s1; t0 += kB) {
    float yb[kB][kV];  // the inputs in, silu(conv) out
#pragma unroll
    for (int u = 0; u < kB; ++u)
#pragma unroll
      for (int p = 0; p < kP; ++p) {
        const int64_t t = t0 + u < s1 ? t0 + u : s1 - 1;  // past the end: loaded, not used
        Unpack4(x.Load4(x_base + t * ldx + 128 * p), yb[u] + 4 * p);
      }
#pragma unroll
    for (int u = 0; u < kB; ++u) {
      const int64_t t = t0 + u;
      if (t >= s1) break;  // the same t in every lane
      float ss = 0;
#pragma unroll
      for (int v = 0; v < kV; ++v) {
        xs[v][K - 1] = yb[u][v];
        float acc = 0;
        for (int j = 0; j < K; ++j)
          if (t - (K - 1) + j >= 0) acc += wt[v][j] * xs[v][j];
        yb[u][v] = acc * SigmoidF(acc);
        ss += yb[u][v] * yb[u][v];
        for (int j = 0; j < K - 1; ++j) xs[v][j] = xs[v][j + 1];
      }
      float r = 1.0f;
      const int64_t row = b * T + t;
      if constexpr (kLanes > 0) {
        for (int o = kLanes / 2; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
        r = 1.0f / sqrtf(ss + eps);
        if (lane % kLanes == 0) rnorm[row * (C / head_dim) + c0 / head_dim] = r;
      }
#pragma unroll
      for (int p = 0; p < kP; ++p)
        y.Set4(row * C + c0 + 128 * p, make_float4(yb[u][4 * p] * r, yb[u][4 * p + 1] * r,
                                                   yb[u][4 * p + 2] * r, yb[u][4 * p + 3] * r));
    }
  }
}

namespace {
// The grid of a warp kernel (ConvSiluRows*Kernel, 128-thread blocks of 4 warps): segments of
// `seg` positions, a multiple of 8, as long as makes all warps resident at once; a warp per
// (sequence, segment, group). groups: warps one segment of positions needs.
struct RowGrid {
  int64_t seg, segments, items;
  unsigned blocks() const { return static_cast<unsigned>((items + 3) / 4); }
};
template <typename Kernel>
RowGrid RowGridFor(Kernel kernel, int64_t T, int64_t groups) {
  int per_sm = 0;
  CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, 128, 0));
  const int64_t warps = std::max(1, per_sm) * int64_t{SmCount()} * 4;
  const int64_t want = std::max<int64_t>(1, warps / groups);  // segments a sequence
  const int64_t seg = ((T + want - 1) / want + 7) / 8 * 8, segments = (T + seg - 1) / seg;
  return {seg, segments, groups * segments};
}
// The shapes the warp kernels take: C a multiple of 128 (256 for heads of 256), 4-value aligned
// tensors (undefined ones skipped), heads (head_dim > 0: the fused norm) of 32, 64, 128 or 256
// values. Returns the 128-value passes a lane group makes (kP), 0 when the shapes do not fit.
int RowPasses(int64_t C, int64_t head_dim, std::initializer_list<const Tensor*> aligned) {
  if (head_dim != 0 && head_dim != 32 && head_dim != 64 && head_dim != 128 && head_dim != 256)
    return 0;
  const int passes = head_dim == 256 ? 2 : 1;
  if (C % (128 * passes) != 0) return 0;
  for (const Tensor* t : aligned)
    if (t->defined() && !Aligned4(*t)) return 0;
  return passes;
}
// Calls launch(p, l) with p = kP and l = kLanes (lanes a head spans, 0: no norm) as
// std::integral_constants.
template <typename Launch>
void WithRowTemplate(int passes, int64_t head_dim, Launch launch) {
  using I = std::integral_constant<int, 1>;
  if (passes == 2) launch(std::integral_constant<int, 2>{}, std::integral_constant<int, 32>{});
  else if (head_dim == 0) launch(I{}, std::integral_constant<int, 0>{});
  else WithConstant<8, 16, 32>(head_dim / 4, [&](auto l) { launch(I{}, l); });
}

// Launches ConvSiluRowsKernel when its shapes allow (C a multiple of 128, x and y Aligned4; with
// the norm, heads of 32, 64, 128 or 256), returning whether it ran. head_dim 0: no norm.
bool LaunchConvSiluRows(const Tensor& x, const StoredIn& px, int64_t ldx, const Tensor& w,
                        int64_t head_dim, double eps, const Tensor& y, const OperandOut& py,
                        const Tensor& rnorm) {
  const int64_t B = x.dim(0), T = x.dim(1), C = x.dim(2), K = w.dim(1);
  const int passes = RowPasses(C, head_dim, {&x, &y});
  if (passes == 0) return false;
  const int64_t groups = B * (C / (128 * passes));  // warps a segment of positions needs
  float* pr = head_dim == 0 ? nullptr : F32(rnorm);
  WithConvTemplate(K, px, [&](auto k, auto in) {
    WithRowTemplate(passes, head_dim, [&](auto p, auto l) {
      const auto kernel = ConvSiluRowsKernel<decltype(k)::value, decltype(p)::value,
                                             decltype(l)::value, decltype(in)>;
      const RowGrid g = RowGridFor(kernel, T, groups);
      kernel<<<g.blocks(), 128, 0, Stream()>>>(in, ldx, F32(w), static_cast<float>(eps), py, pr,
                                               T, C, head_dim, g.seg, g.segments, g.items);
    });
  });
  CUDA_CHECK_LAUNCH();
  return true;
}
}  // namespace

void CausalConvSiluForward(const Tensor& x, const Tensor& w, const Tensor& y) {
  const StoredIn px =
      CheckStoredIn(x, y.numel(), "CausalConvSiluForward x", /*column_view=*/true);
  CheckF32(w, "CausalConvSiluForward");
  const OperandOut py = CheckOperandOut(y, x, "CausalConvSiluForward y");
  CHECK_EQ(x.rank(), 3);
  const int64_t B = x.dim(0), T = x.dim(1), C = x.dim(2), K = w.dim(1);
  CHECK_EQ(w.dim(0), C);
  const int64_t segments = ConvSegments(T, K, "CausalConvSiluForward");
  const int64_t ldx = RowStride(x, C, "CausalConvSiluForward x");
  if (B * T * C == 0) return;
  if (LaunchConvSiluRows(x, px, ldx, w, 0, 0.0, y, py, Tensor())) return;
  WithConvTemplate(K, px, [&](auto k, auto in) {
    ConvSiluForwardKernel<decltype(k)::value, decltype(in)>
        <<<ConvGrid(B, C, segments), 128, 0, Stream()>>>(in, ldx, F32(w), py, T, C, segments);
  });
  CUDA_CHECK_LAUNCH();
}

void CausalConvSiluL2NormForward(const Tensor& x, const Tensor& w, int64_t head_dim, double eps,
                                 const Tensor& y, const Tensor& rnorm) {
  CHECK_EQ(x.rank(), 3);
  const int64_t B = x.dim(0), T = x.dim(1), C = x.dim(2), K = w.dim(1);
  CHECK(head_dim > 0 && C % head_dim == 0)
      << "CausalConvSiluL2NormForward: " << C << " channels are not whole heads of " << head_dim;
  CHECK_EQ(rnorm.numel(), B * T * (C / head_dim));
  CheckF32(rnorm, "CausalConvSiluL2NormForward");
  const StoredIn px =
      CheckStoredIn(x, y.numel(), "CausalConvSiluL2NormForward x", /*column_view=*/true);
  CheckF32(w, "CausalConvSiluL2NormForward");
  const OperandOut py = CheckOperandOut(y, x, "CausalConvSiluL2NormForward y");
  CHECK_EQ(w.dim(0), C);
  const int64_t ldx = RowStride(x, C, "CausalConvSiluL2NormForward x");
  ConvSegments(T, K, "CausalConvSiluL2NormForward");  // checks K
  if (B * T * C == 0) return;
  if (LaunchConvSiluRows(x, px, ldx, w, head_dim, eps, y, py, rnorm)) return;
  // Other shapes: the two ops, the conv's output in float32.
  const Tensor c = py.bf16 ? Tensor::Empty(y.shape(), DType::kF32, Device::kCUDA) : y;
  CausalConvSiluForward(x, w, c);
  L2NormHeadsForward(c, head_dim, eps, y, rnorm);
}

// The backward in one pass: each thread owns one channel of one segment of kSegment positions of
// one sequence, reads dy and x there once (plus K-1 positions of halo), keeps the last K values of
// x and of dpre = dy silu'(pre) in registers (pre recomputed from the x window in the forward's
// order of terms), writes dx and its K partial sums of dw.
template <int K, typename In, typename DyIn>
__global__ void ConvSiluBackwardKernel(In x, int64_t ldx_in, const float* __restrict__ w, DyIn dy,
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

// The backward by warps (ConvSiluRowsKernel's layout and shapes), ConvSiluBackwardKernel's
// arithmetic for each of a lane's channels. With kLanes > 0 the per-head L2 norm's backward is
// fused in (the mixer's q and k): dy is the gradient of the normalised output yn, and the
// conv's output gradient rn (dy - yn (yn . dy)) is made per position (a sum over the head's lanes)
// without going to memory. yn is remade from the recomputed conv and the forward's rn, as the
// forward made it, rather than read. dw_partial: a row per (sequence, segment), as
// ConvSiluBackwardKernel.
template <int K, int kP, int kLanes, typename In, typename DyIn>
__global__ void __launch_bounds__(128)
    ConvSiluRowsBackwardKernel(In x, int64_t ldx_in, const float* __restrict__ w,
                               const float* __restrict__ rn, DyIn dy, OperandOut dx, int64_t ldx,
                               float* __restrict__ dw_partial, int64_t T, int64_t C,
                               int64_t head_dim, int64_t seg, int64_t segments, int64_t items) {
  // Positions whose loads are issued together: 2 with the norm, 4 without; 3 blocks an SM
  // either way.
  constexpr int kV = 4 * kP, kB = kLanes > 0 ? 2 : 4;
  const int64_t item = blockIdx.x * int64_t{4} + (threadIdx.x >> 5);
  if (item >= items) return;  // the whole warp
  const int lane = threadIdx.x & 31;
  const auto [b, bs, s0, s1, c0] = RowWorkOf<kP>(item, lane, T, C, seg, segments);
  const int64_t x_base = b * T * ldx_in + c0, dx_base = b * T * ldx + c0, base = b * T * C + c0;
  float wt[kV][K], g[kV][K], xs[kV][K], dw[kV][K];
#pragma unroll
  for (int v = 0; v < kV; ++v)
    for (int j = 0; j < K; ++j) {
      wt[v][j] = w[(c0 + LaneChannel(v)) * K + j];
      g[v][j] = 0;
      dw[v][j] = 0;
      const int64_t p = s0 - (K - 1) + j;
      xs[v][j] = j < K - 1 && p >= 0 ? x[x_base + p * ldx_in + LaneChannel(v)] : 0;
    }
  const int64_t tend = s1 + (K - 1) < T ? s1 + (K - 1) : T;  // with the halo after the segment
  for (int64_t t0 = s0; t0 < tend; t0 += kB) {
    float xb[kB][kV], db[kB][kV], rb[kB];
#pragma unroll
    for (int u = 0; u < kB; ++u) {
      const int64_t t = t0 + u < tend ? t0 + u : tend - 1;  // past the end: loaded, not used
#pragma unroll
      for (int p = 0; p < kP; ++p) {
        Unpack4(x.Load4(x_base + t * ldx_in + 128 * p), xb[u] + 4 * p);
        Unpack4(dy.Load4(base + t * C + 128 * p), db[u] + 4 * p);
      }
      if constexpr (kLanes > 0) rb[u] = rn[(b * T + t) * (C / head_dim) + c0 / head_dim];
    }
#pragma unroll
    for (int u = 0; u < kB; ++u) {
      const int64_t t = t0 + u;
      if (t >= tend) break;  // the same t in every lane
      float pt[kV], sg[kV];  // the conv's pre-activation and its sigmoid
#pragma unroll
      for (int v = 0; v < kV; ++v) {
        xs[v][K - 1] = xb[u][v];
        pt[v] = 0;
        for (int j = 0; j < K; ++j) pt[v] += wt[v][j] * xs[v][j];
        sg[v] = SigmoidF(pt[v]);
      }
      if constexpr (kLanes > 0) {  // d(x / |x|) = (dy - y (y . dy)) / |x|
        float yn[kV], dot = 0;
#pragma unroll
        for (int v = 0; v < kV; ++v) {
          yn[v] = pt[v] * sg[v] * rb[u];
          dot += yn[v] * db[u][v];
        }
        for (int o = kLanes / 2; o > 0; o >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, o);
#pragma unroll
        for (int v = 0; v < kV; ++v) db[u][v] = rb[u] * (db[u][v] - yn[v] * dot);
      }
      float acc[kV];
#pragma unroll
      for (int v = 0; v < kV; ++v) {
        for (int j = K - 1; j > 0; --j) g[v][j] = g[v][j - 1];  // g[j] = dpre[t - j]
        g[v][0] = db[u][v] * SiluGrad(pt[v], sg[v]);
        if (t < s1)
          for (int j = 0; j < K; ++j) dw[v][j] += g[v][0] * xs[v][j];
        for (int j = 0; j < K - 1; ++j) xs[v][j] = xs[v][j + 1];
        acc[v] = 0;
        for (int j = 0; j < K; ++j) acc[v] += wt[v][j] * g[v][j];
      }
      const int64_t sx = t - (K - 1);  // dx there has all its taps now
      if (sx >= s0)
#pragma unroll
        for (int p = 0; p < kP; ++p)
          dx.Set4(dx_base + sx * ldx + 128 * p,
                  make_float4(acc[4 * p], acc[4 * p + 1], acc[4 * p + 2], acc[4 * p + 3]));
    }
  }
  // The sequence's last K-1 positions (as ConvSiluBackwardKernel).
  for (int m = 0; m < K - 1; ++m) {
    const int64_t sx = T - (K - 1) + m;
    if (sx < s0 || sx >= s1) continue;
    float acc[kV];
#pragma unroll
    for (int v = 0; v < kV; ++v) {
      acc[v] = 0;
      for (int j = m + 1; j < K; ++j) acc[v] += wt[v][j] * g[v][j - m - 1];
    }
#pragma unroll
    for (int p = 0; p < kP; ++p)
      dx.Set4(dx_base + sx * ldx + 128 * p,
              make_float4(acc[4 * p], acc[4 * p + 1], acc[4 * p + 2], acc[4 * p + 3]));
  }
  float* out = dw_partial + bs * C * K;
#pragma unroll
  for (int v = 0; v < kV; ++v)
    for (int j = 0; j < K; ++j) out[(c0 + LaneChannel(v)) * K + j] = dw[v][j];
}

namespace {
// Launches ConvSiluRowsBackwardKernel when the shapes allow (RowPasses), then adds the dw partial
// sums into dw; returns whether it ran. head_dim 0: no norm (rn undefined).
bool LaunchConvSiluRowsBackward(const Tensor& x, const StoredIn& px, int64_t ldx_in,
                                const Tensor& w, const Tensor& rn, const Tensor& dy,
                                const StoredIn& pdy, const Tensor& dx, const OperandOut& pdx,
                                int64_t ldx, const Tensor& dw, int64_t head_dim) {
  const int64_t B = x.dim(0), T = x.dim(1), C = x.dim(2), K = w.dim(1);
  const int passes = RowPasses(C, head_dim, {&x, &dy, &dx});
  if (passes == 0) return false;
  const int64_t groups = B * (C / (128 * passes));
  const float* prn = head_dim == 0 ? nullptr : F32(rn);
  Tensor partial;
  WithConvTemplate(K, px, pdy, [&](auto k, auto in, auto din) {
    WithRowTemplate(passes, head_dim, [&](auto p, auto l) {
      const auto kernel =
          ConvSiluRowsBackwardKernel<decltype(k)::value, decltype(p)::value, decltype(l)::value,
                                     decltype(in), decltype(din)>;
      const RowGrid g = RowGridFor(kernel, T, groups);
      partial = Tensor::Empty({B * g.segments, C * K}, DType::kF32, Device::kCUDA);
      kernel<<<g.blocks(), 128, 0, Stream()>>>(in, ldx_in, F32(w), prn, din, pdx, ldx,
                                               F32(partial), T, C, head_dim, g.seg, g.segments,
                                               g.items);
    });
  });
  CUDA_CHECK_LAUNCH();
  AddColumnSums(F32(partial), static_cast<int>(partial.dim(0)), C * K, F32(dw));
  return true;
}
}  // namespace

void CausalConvSiluBackward(const Tensor& x, const Tensor& w, const Tensor& dy, const Tensor& dx,
                            const Tensor& dw) {
  const StoredIn px =
      CheckStoredIn(x, dy.numel(), "CausalConvSiluBackward x", /*column_view=*/true);
  const StoredIn pdy = CheckStoredIn(dy, dy.numel(), "CausalConvSiluBackward dy");
  CHECK_EQ(x.rank(), 3);
  const int64_t B = x.dim(0), T = x.dim(1), C = x.dim(2), K = w.dim(1);
  const OperandOut pdx = CheckOperandOut(dx, dy, "CausalConvSiluBackward", /*column_view=*/true);
  CheckSame(w, dw, "CausalConvSiluBackward");
  const int64_t segments = ConvSegments(T, K, "CausalConvSiluBackward");
  const int64_t ldx = RowStride(dx, C, "CausalConvSiluBackward dx");
  const int64_t ldx_in = RowStride(x, C, "CausalConvSiluBackward x");
  if (B * T * C == 0) return;
  if (LaunchConvSiluRowsBackward(x, px, ldx_in, w, Tensor(), dy, pdy, dx, pdx, ldx, dw, 0))
    return;
  // Per (sequence, segment) partial sums of dw, then one fixed-order sum: deterministic.
  Tensor partial = Tensor::Empty({B * segments, C * K}, DType::kF32, Device::kCUDA);
  const float* pw = F32(w);
  float* ppart = F32(partial);
  WithConvTemplate(K, px, pdy, [&](auto k, auto in, auto din) {
    ConvSiluBackwardKernel<decltype(k)::value, decltype(in), decltype(din)>
        <<<ConvGrid(B, C, segments), 128, 0, Stream()>>>(in, ldx_in, pw, din, pdx, ldx, ppart,
                                                          T, C, segments);
  });
  CUDA_CHECK_LAUNCH();
  AddColumnSums(ppart, static_cast<int>(B * segments), C * K, F32(dw));
}

void CausalConvSiluL2NormBackward(const Tensor& x, const Tensor& w, const Tensor& y,
                                  const Tensor& rnorm, const Tensor& dy, const Tensor& dx,
                                  const Tensor& dw) {
  const StoredIn px =
      CheckStoredIn(x, dy.numel(), "CausalConvSiluL2NormBackward x", /*column_view=*/true);
  CheckStoredIn(y, dy.numel(), "CausalConvSiluL2NormBackward y");
  const StoredIn pdy = CheckStoredIn(dy, x.numel(), "CausalConvSiluL2NormBackward dy");
  CheckF32(rnorm, "CausalConvSiluL2NormBackward");
  CHECK_EQ(x.rank(), 3);
  const int64_t B = x.dim(0), T = x.dim(1), C = x.dim(2), K = w.dim(1);
  const OperandOut pdx =
      CheckOperandOut(dx, dy, "CausalConvSiluL2NormBackward", /*column_view=*/true);
  CheckSame(w, dw, "CausalConvSiluL2NormBackward");
  ConvSegments(T, K, "CausalConvSiluL2NormBackward");  // checks K
  if (B * T * C == 0) return;
  CHECK(rnorm.numel() > 0 && (B * T * C) % rnorm.numel() == 0)
      << "CausalConvSiluL2NormBackward: rnorm of " << rnorm.numel() << " for " << B * T * C;
  const int64_t head_dim = B * T * C / rnorm.numel();
  const int64_t ldx = RowStride(dx, C, "CausalConvSiluL2NormBackward dx");
  const int64_t ldx_in = RowStride(x, C, "CausalConvSiluL2NormBackward x");
  if (LaunchConvSiluRowsBackward(x, px, ldx_in, w, rnorm, dy, pdy, dx, pdx, ldx, dw, head_dim))
    return;
  // Other shapes: the two ops, in float32.
  auto f32 = [](const Tensor& t) { return t.dtype() == DType::kF32 ? t : ToFloat32(t); };
  const Tensor dc = Tensor::Empty(dy.shape(), DType::kF32, Device::kCUDA);
  L2NormHeadsBackward(f32(y), rnorm, f32(dy), dc);
  CausalConvSiluBackward(x, w, dc, dx, dw);
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
