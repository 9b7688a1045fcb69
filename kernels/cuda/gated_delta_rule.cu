// The chunked gated delta rule on CUDA (see gated_delta_rule.cuh; the math and its backward are
// derived in kernels/cpu/gated_delta_rule.cc, whose notation this file follows).
//
// Per value head and chunk of L <= 64 tokens (state S at the chunk start, D = dL/dS at its end):
//   G_i = sum_{m<=i} gamma_m, Gam_i = exp(G_i), e_i = exp(G_{L-1} - G_i), E_ij = exp(G_i - G_j)
//   M_ij = beta_i (k_i . k_j) E_ij (i > j),  T = (I + M)^-1
//   W = T diag(beta Gam) K,  U = T diag(beta) V,  V' = U - W S
//   O = s [diag(Gam) Q S + P V'],  P = tril_incl(Q K^T) * E
//   S_next = Gam_{L-1} S + K^T diag(e) V'
// Forward, three launches:
//   PrepKernel    (per chunk, parallel)        W, U (and T for the backward)
//   StateKernel   (per head and 64 state columns, sequential over chunks)  chunk-start states, V'
//   OutputKernel  (per chunk)                  O
// Backward, after PrepKernel and StateKernel again (unless a forward saved their chunk states,
// V' and T for it: the saved buffer of gated_delta_rule.cuh):
//   DvLocalKernel (per chunk)                  s P^T dO, the state-independent part of dV'
//   ReverseKernel (per head and 64 columns, reverse over chunks)  dV' = s P^T dO + diag(e) K D,
//                 Y = T^T dV', D <- Gam_{L-1} D + Q^T diag(s Gam) dO - K^T diag(Gam beta) Y,
//                 keeping Y and each chunk's end-of-chunk D
//   GradKernel    (per chunk, 2 x 256 threads) dq, dk (per value head), dv, dbeta, dgamma
//   ReduceKernel  (only with HV > H)           dq, dk summed over the value heads of a key head
// Every matrix product is a 64 x 64 x 64 block product on shared-memory tiles with rows padded
// to 72 elements (16-byte aligned rows, and conflict-free ldmatrix row reads); dk and dv are
// loops over 64-wide tiles, so each kernel has one instantiation per input type and product mode
// (two, dk <= 128 and dk <= 256, for those that hold per-dk-tile registers: GDR_LAUNCH_NK):
// fp32 FMA on fp32 tiles, or split-bf16 tensor cores on operand tiles that hold each value as
// bf16 hi and lo planes, split once when written (see PutOp, Mma and TcMask). Everything else is
// fp32 (bf16 inputs are widened on load); the sequential kernels keep their fp32 state in
// registers, and copy each chunk's tiles with cp.async: W and T as PrepKernel wrote them for
// their reader (split planes on the tensor cores), input tiles that need no conversion as they
// are. Decays are never divided: E comes from running products of
// alpha = exp(gamma) <= 1, so gamma = 0 and very strong decay are both exact limits. No atomics:
// results repeat bit for bit. Measured figures: experiments/results/gdr-cuda.md.
#include "kernels/cuda/gated_delta_rule.cuh"

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <type_traits>
#include <utility>

namespace gdn::cuda {
namespace {

#define GDR_CUDA_CHECK(call)                                                              \
  do {                                                                                    \
    const cudaError_t gdr_err_ = (call);                                                  \
    if (gdr_err_ != cudaSuccess) {                                                        \
      std::fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #call,                  \
                   cudaGetErrorString(gdr_err_));                                         \
      std::abort();                                                                       \
    }                                                                                     \
  } while (0)

constexpr int kC = 64;            // chunk size and tile edge
constexpr int kLd = kC + 8;       // padded row length of a shared-memory tile (see the top)
constexpr int kTile = kC * kLd;   // floats per tile
constexpr int kThreads = 256;     // threads a block (x): the 16 x 16 thread layouts of Frag
                                  // and InvertUnitLower rely on it. GradKernel has two such
                                  // groups (y), which share its tiles.
constexpr int kMaxTiles = 256 / kC;  // dk, dv <= 256

template <typename T>
__device__ __forceinline__ T FromF(float x);
template <>
__device__ __forceinline__ float FromF<float>(float x) { return x; }
template <>
__device__ __forceinline__ __nv_bfloat16 FromF<__nv_bfloat16>(float x) {
  return __float2bfloat16(x);
}

struct Dims {
  int B, T, H, HV, dk, dv;
  int G;   // value heads per key head
  int NC;  // chunks
  int NK, NV;  // 64-wide tiles of dk and dv
  __host__ __device__ int64_t Qk(int b, int t, int h) const {
    return ((int64_t{b} * T + t) * H + h) * dk;
  }
  __host__ __device__ int64_t Vo(int b, int t, int hv) const {
    return ((int64_t{b} * T + t) * HV + hv) * dv;
  }
  __host__ __device__ int64_t Gb(int b, int t, int hv) const {
    return (int64_t{b} * T + t) * HV + hv;
  }
  // Index of chunk c of (b, hv) in the scratch arrays, which are chunk-major per head.
  __host__ __device__ int64_t Chunk(int b, int hv, int c) const {
    return (int64_t{b} * HV + hv) * NC + c;
  }
};

// 16 bytes of src, as loaded (4 fp32 or 8 bf16 values), and as floats, through the read-only
// data path: every array read this way is written only by earlier launches or, for Y in
// ReverseKernel, at the same place after it is read.
__device__ __forceinline__ float4 Load16Raw(const float* src) {
  return __ldg(reinterpret_cast<const float4*>(src));
}
__device__ __forceinline__ uint4 Load16Raw(const __nv_bfloat16* src) {
  return __ldg(reinterpret_cast<const uint4*>(src));
}
__device__ __forceinline__ void Widen(const float4& v, float* x) {
  x[0] = v.x, x[1] = v.y, x[2] = v.z, x[3] = v.w;
}
__device__ __forceinline__ void Widen(const uint4& v, float* x) {  // 8 bf16 values
  const uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 f = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&w[i]));
    x[2 * i] = f.x, x[2 * i + 1] = f.y;
  }
}
template <typename T>
__device__ __forceinline__ void Load16(const T* src, float* x) {
  Widen(Load16Raw(src), x);
}

// (x0, x1) as two bf16 pairs: hi = bf16(x), lo = bf16(x - hi); hi + lo carries about 16
// significant bits (lo is 0 for a value that is already bf16).
struct Split {
  uint32_t hi, lo;
};
__device__ __forceinline__ Split SplitBf16(float x0, float x1) {
  const __nv_bfloat162 h = __floats2bfloat162_rn(x0, x1);
  const float2 hf = __bfloat1622float2(h);
  const __nv_bfloat162 l = __floats2bfloat162_rn(x0 - hf.x, x1 - hf.y);
  return {*reinterpret_cast<const uint32_t*>(&h), *reinterpret_cast<const uint32_t*>(&l)};
}

// An operand tile: a 64 x 64 tile slot that matrix products read. With fp32 FMA products it is
// the fp32 tile; with the tensor cores (kTC) the slot holds two bf16 planes of the same row
// length, hi then lo (Split), in the same 18 KB: each value is split once when it is written, and
// the products read whole fragments with ldmatrix. PutOp / GetOp write and read one value.
template <bool kTC>
__device__ __forceinline__ void PutOp(float* slot, int r, int c, float x) {
  if constexpr (kTC) {
    __nv_bfloat16* p = reinterpret_cast<__nv_bfloat16*>(slot) + r * kLd + c;
    const __nv_bfloat16 h = __float2bfloat16_rn(x);
    p[0] = h;
    p[kTile] = __float2bfloat16_rn(x - __bfloat162float(h));
  } else {
    slot[r * kLd + c] = x;
  }
}
template <bool kTC>
__device__ __forceinline__ float GetOp(const float* slot, int r, int c) {
  if constexpr (kTC) {
    const __nv_bfloat16* p = reinterpret_cast<const __nv_bfloat16*>(slot) + r * kLd + c;
    return __bfloat162float(p[0]) + __bfloat162float(p[kTile]);
  } else {
    return slot[r * kLd + c];
  }
}
// Four consecutive values of row r from column c (a multiple of 4) on.
template <bool kTC>
__device__ __forceinline__ void PutOp4(float* slot, int r, int c, float x0, float x1, float x2,
                                       float x3) {
  if constexpr (kTC) {
    const Split a = SplitBf16(x0, x1), b = SplitBf16(x2, x3);
    uint2* p = reinterpret_cast<uint2*>(reinterpret_cast<__nv_bfloat16*>(slot) + r * kLd + c);
    p[0] = make_uint2(a.hi, b.hi);
    p[kTile / 4] = make_uint2(a.lo, b.lo);
  } else {
    *reinterpret_cast<float4*>(slot + r * kLd + c) = make_float4(x0, x1, x2, x3);
  }
}

// Four consecutive values of row r from column c (a multiple of 4) on, as GetOp reads them.
template <bool kTC>
__device__ __forceinline__ float4 GetOp4(const float* slot, int r, int c) {
  if constexpr (kTC) {
    const __nv_bfloat16* p = reinterpret_cast<const __nv_bfloat16*>(slot) + r * kLd + c;
    const uint2 h = *reinterpret_cast<const uint2*>(p);
    const uint2 l = *reinterpret_cast<const uint2*>(p + kTile);
    const float2 h0 = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&h.x));
    const float2 h1 = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&h.y));
    const float2 l0 = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&l.x));
    const float2 l1 = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&l.y));
    return make_float4(h0.x + l0.x, h0.y + l0.y, h1.x + l1.x, h1.y + l1.y);
  } else {
    return *reinterpret_cast<const float4*>(slot + r * kLd + c);
  }
}
// dst[0, 4) <- x (dst 16-byte aligned for fp32, 8-byte for bf16).
__device__ __forceinline__ void Store4(float* dst, float4 x) {
  *reinterpret_cast<float4*>(dst) = x;
}
__device__ __forceinline__ void Store4(__nv_bfloat16* dst, float4 x) {
  const __nv_bfloat162 a = __floats2bfloat162_rn(x.x, x.y), b = __floats2bfloat162_rn(x.z, x.w);
  *reinterpret_cast<uint2*>(dst) =
      make_uint2(*reinterpret_cast<const uint32_t*>(&a), *reinterpret_cast<const uint32_t*>(&b));
}

// The thread's index among the kN threads that share a tile load: the block's kThreads, or
// GradKernel's two groups of them (threadIdx.y).
template <int kN>
__device__ __forceinline__ unsigned LoadTid() {
  static_assert(kN == kThreads || kN == 2 * kThreads);
  if constexpr (kN == kThreads)
    return threadIdx.x;
  else
    return threadIdx.x + kThreads * threadIdx.y;
}

// A 64 x 64 tile of src in registers, as loaded (16-byte loads of rows r < rows, row r at src + r *
// stride, zero below; src and stride 16-byte aligned), until Put writes it to the tile dst (an
// operand tile when kOp), each row multiplied by mul and, when given, by row_scale[r]. Held
// apart, the loads' latency overlaps the work between Load and Put (ReverseKernel's dO); LoadTile
// does both at once. All loads are issued before the first shared-memory store: for fp32 tiles
// ptxas keeps them ahead of the stores, so their latencies overlap; for operand tiles on the
// tensor cores it interleaves each load with its converting store whatever the source order
// (experiments/results/gdr-cuda.md, session 7), so fewer tiles per phase is what pays there. An
// unscaled bf16 source on the tensor cores is copied as it is: its values are their own hi part
// and their lo part is 0, what the split would give, without widening each value.
template <typename T, int kN = kThreads>
struct HeldTile {
  static constexpr int kVec = 16 / sizeof(T);       // elements per load
  static constexpr int kPer = kC * kC / kVec / kN;  // loads per thread (kN threads share it)
  decltype(Load16Raw(static_cast<const T*>(nullptr))) raw[kPer];

  __device__ __forceinline__ void Load(const T* from, int64_t stride, int rows) {
#pragma unroll
    for (int u = 0; u < kPer; ++u) {
      const int e = (LoadTid<kN>() + u * kN) * kVec, r = e / kC, c = e % kC;
      if (r < rows)
        raw[u] = Load16Raw(from + r * stride + c);
      else
        raw[u] = {};
    }
  }
  template <bool kOp>
  __device__ __forceinline__ void Put(float* dst, const float* row_scale = nullptr,
                                      float mul = 1.f) const {
    if constexpr (kOp && std::is_same_v<T, __nv_bfloat16>) {
      if (row_scale == nullptr && mul == 1.f) {
#pragma unroll
        for (int u = 0; u < kPer; ++u) {
          const int e = (LoadTid<kN>() + u * kN) * kVec, r = e / kC, c = e % kC;
          uint4* p = reinterpret_cast<uint4*>(reinterpret_cast<__nv_bfloat16*>(dst) + r * kLd + c);
          p[0] = raw[u];
          p[kTile / kVec] = make_uint4(0, 0, 0, 0);
        }
        return;
      }
    }
#pragma unroll
    for (int u = 0; u < kPer; ++u) {
      const int e = (LoadTid<kN>() + u * kN) * kVec, r = e / kC, c = e % kC;
      float x[kVec];
      Widen(raw[u], x);
      const float m = row_scale != nullptr ? mul * row_scale[r] : mul;
#pragma unroll
      for (int i = 0; i < kVec; i += 4)
        PutOp4<kOp>(dst, r, c + i, x[i] * m, x[i + 1] * m, x[i + 2] * m, x[i + 3] * m);
    }
  }
};
template <bool kOp = false, int kN = kThreads, typename T>
__device__ __forceinline__ void LoadTile(float* dst, const T* src, int64_t stride, int rows,
                                         const float* row_scale = nullptr, float mul = 1.f) {
  HeldTile<T, kN> t;
  t.Load(src, stride, rows);
  t.template Put<kOp>(dst, row_scale, mul);
}

// LoadTile<kOp> of two whole fp32 tiles at the same positions of src_a and src_b (one stride),
// returning this thread's part of the sum of their elementwise products, from the fp32 values as
// loaded (GradKernel's <D, S>, without reading the tiles back).
template <bool kOp, int kN = kThreads>
__device__ __forceinline__ float LoadTilesDot(float* dst_a, const float* src_a, float* dst_b,
                                              const float* src_b, int64_t stride) {
  constexpr int kPer = kC * kC / 4 / kN;  // 4-value loads per thread and tile
  float a[kPer][4], b[kPer][4];
#pragma unroll
  for (int u = 0; u < kPer; ++u) {
    const int e = (LoadTid<kN>() + u * kN) * 4, r = e / kC, c = e % kC;
    Load16(src_a + r * stride + c, a[u]);
    Load16(src_b + r * stride + c, b[u]);
  }
  float dot = 0.f;
#pragma unroll
  for (int u = 0; u < kPer; ++u) {
    const int e = (LoadTid<kN>() + u * kN) * 4, r = e / kC, c = e % kC;
    PutOp4<kOp>(dst_a, r, c, a[u][0], a[u][1], a[u][2], a[u][3]);
    PutOp4<kOp>(dst_b, r, c, b[u][0], b[u][1], b[u][2], b[u][3]);
#pragma unroll
    for (int i = 0; i < 4; ++i) dot = fmaf(a[u][i], b[u][i], dot);
  }
  return dot;
}

// dst (operand tile) <- src (fp32 tile) with column c multiplied by col_scale[c].
template <bool kTC>
__device__ __forceinline__ void ToOperand(float* dst, const float* src, const float* col_scale) {
  for (int e = threadIdx.x * 4; e < kC * kC; e += kThreads * 4) {
    const int r = e >> 6, c = e & (kC - 1);
    const float4 x = *reinterpret_cast<const float4*>(src + r * kLd + c);
    PutOp4<kTC>(dst, r, c, x.x * col_scale[c], x.y * col_scale[c + 1], x.z * col_scale[c + 2],
                x.w * col_scale[c + 3]);
  }
}

// dst (64 x 64, row stride `stride`) <- tile.
__device__ __forceinline__ void StoreTile(float* dst, int64_t stride, const float* tile) {
  for (int e = threadIdx.x; e < kC * kC; e += kThreads) {
    const int r = e >> 6, c = e & (kC - 1);
    dst[r * stride + c] = tile[r * kLd + c];
  }
}

// A 64 x 64 block product result spread over the 256 threads, 16 floats each, in one of two
// layouts:
//   kTC = false (fp32 FMA): thread (ty, tx) = (tid / 16, tid % 16) holds rows ty + 16 i and
//     columns tx + 16 j, i, j < 4;
//   kTC = true (bf16 tensor cores, mma.sync m16n8k16): warp w holds rows 16 (w % 4) + [0, 16)
//     and columns 32 (w / 4) + [0, 32) as 4 accumulator fragments of 16 x 8 (i = fragment,
//     j = the 4 values a lane holds of it).
struct Frag {
  float v[4][4];
};
__device__ __forceinline__ void Zero(Frag& f) {
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) f.v[i][j] = 0.f;
}
__device__ __forceinline__ int Tx() { return threadIdx.x & 15; }
__device__ __forceinline__ int Ty() { return threadIdx.x >> 4; }
template <bool kTC>
__device__ __forceinline__ int FragRow(int i, int j) {
  if constexpr (kTC) {
    const int lane = threadIdx.x & 31;
    return ((threadIdx.x >> 5) & 3) * 16 + (lane >> 2) + 8 * (j >> 1);
  } else {
    return Ty() + 16 * i;
  }
}
template <bool kTC>
__device__ __forceinline__ int FragCol(int i, int j) {
  if constexpr (kTC) {
    const int lane = threadIdx.x & 31;
    return (threadIdx.x >> 7) * 32 + i * 8 + 2 * (lane & 3) + (j & 1);
  } else {
    return Tx() + 16 * j;
  }
}
// Loops over a thread's Frag elements with their tile row and column (kTC must be in scope).
#define GDR_FOR_FRAG(i, j, row, col)                                          \
  _Pragma("unroll") for (int i = 0; i < 4; ++i)                               \
      _Pragma("unroll") for (int j = 0; j < 4; ++j)                           \
          for (int row = FragRow<kTC>(i, j), col = FragCol<kTC>(i, j),        \
                   gdr_once_ = 0;                                             \
               gdr_once_ < 1; ++gdr_once_)

__device__ __forceinline__ void MmaBf16(float (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2,
                                        uint32_t a3, uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, "
      "{%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

__device__ __forceinline__ uint32_t SmemAddr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
// Four 8 x 8 bf16 matrices, lane l giving the address of row l % 8 of matrix l / 8; kTrans: each
// matrix transposed on the way.
template <bool kTrans>
__device__ __forceinline__ void LoadMatrices(uint32_t (&x)[4], uint32_t addr) {
  if constexpr (kTrans)
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(x[0]), "=r"(x[1]), "=r"(x[2]), "=r"(x[3])
                 : "r"(addr)
                 : "memory");
  else
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(x[0]), "=r"(x[1]), "=r"(x[2]), "=r"(x[3])
                 : "r"(addr)
                 : "memory");
}

// f += A B over k < 64 with A, B operand tiles (see PutOp); kAT / kBT: use the tile's transpose.
// kTC: on the bf16 tensor cores with each operand split in two bf16 parts (A B ~ Ah Bh + Ah Bl
// + Al Bh, fp32 accumulation): the chunk-local operands (T, W, states, V', Y, ...) are not bf16
// values, and rounding them to bf16 cost up to 2% relative error on short sequences. kAX / kBX:
// the operand holds exact bf16 values (an unscaled bf16 input tile), so its low part is zero and
// its products are skipped.
template <bool kTC, bool kAT, bool kBT, bool kAX = false, bool kBX = false>
__device__ __forceinline__ void Mma(Frag& f, const float* a, const float* b) {
  if constexpr (kTC) {
    // Warp w computes rows m0 + [0, 16) and columns n0 + [0, 32). Lane l addresses row l % 8 of
    // 8 x 8 matrix q = l / 8: A's fragment is the matrices (rows, k) = (0, 0), (8, 0), (0, 8),
    // (8, 8); B's, per 16 columns, (k, columns) = (0, 0), (8, 0), (0, 8), (8, 8). A tile stored
    // with k along its rows (A transposed, B not) is read with the transposing ldmatrix.
    const int lane = threadIdx.x & 31, q = lane >> 3, r8 = lane & 7;
    const int m0 = ((threadIdx.x >> 5) & 3) * 16, n0 = (threadIdx.x >> 7) * 32;
    const int ao = kAT ? ((q >> 1) * 8 + r8) * kLd + m0 + (q & 1) * 8
                       : (m0 + (q & 1) * 8 + r8) * kLd + (q >> 1) * 8;
    const int bo = kBT ? (n0 + (q >> 1) * 8 + r8) * kLd + (q & 1) * 8
                       : ((q & 1) * 8 + r8) * kLd + n0 + (q >> 1) * 8;
    const uint32_t abase = SmemAddr(reinterpret_cast<const __nv_bfloat16*>(a) + ao);
    const uint32_t bbase = SmemAddr(reinterpret_cast<const __nv_bfloat16*>(b) + bo);
    constexpr uint32_t kLo = kTile * sizeof(__nv_bfloat16);  // bytes from hi plane to lo plane
#pragma unroll
    for (int k0 = 0; k0 < kC; k0 += 16) {
      uint32_t ah[4], al[4];
      const uint32_t ak = abase + 2 * (kAT ? k0 * kLd : k0);
      LoadMatrices<kAT>(ah, ak);
      if constexpr (!kAX) LoadMatrices<kAT>(al, ak + kLo);
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        uint32_t bh[4], bl[4];
        const uint32_t bk = bbase + 2 * (kBT ? k0 + 16 * h * kLd : k0 * kLd + 16 * h);
        LoadMatrices<!kBT>(bh, bk);
        if constexpr (!kBX) LoadMatrices<!kBT>(bl, bk + kLo);
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          float(&c)[4] = f.v[2 * h + e];
          if constexpr (!kAX) MmaBf16(c, al[0], al[1], al[2], al[3], bh[2 * e], bh[2 * e + 1]);
          if constexpr (!kBX) MmaBf16(c, ah[0], ah[1], ah[2], ah[3], bl[2 * e], bl[2 * e + 1]);
          MmaBf16(c, ah[0], ah[1], ah[2], ah[3], bh[2 * e], bh[2 * e + 1]);
        }
      }
    }
  } else {
    constexpr int as0 = kAT ? 1 : kLd, as1 = kAT ? kLd : 1;
    constexpr int bs0 = kBT ? 1 : kLd, bs1 = kBT ? kLd : 1;
    const float* ap = a + Ty() * as0;
    const float* bp = b + Tx() * bs1;
#pragma unroll 8
    for (int k = 0; k < kC; ++k) {
      float av[4], bv[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) av[i] = ap[16 * i * as0 + k * as1];
#pragma unroll
      for (int j = 0; j < 4; ++j) bv[j] = bp[k * bs0 + 16 * j * bs1];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) f.v[i][j] = fmaf(av[i], bv[j], f.v[i][j]);
    }
  }
}

// out[slot * 64 + r] += sum over the Frag's row r of f * tile (an operand tile, same positions),
// for every row; slot 0 only for kTC = false, slots 0 and 1 (the two warps that share a row) for
// kTC.
template <bool kTC>
__device__ __forceinline__ void RowDotAdd(const Frag& f, const float* tile, float* out) {
  if constexpr (kTC) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      float s = 0.f;
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int j = 2 * h + e;
          s += f.v[i][j] * GetOp<true>(tile, FragRow<true>(i, j), FragCol<true>(i, j));
        }
      s += __shfl_xor_sync(0xffffffffu, s, 1);
      s += __shfl_xor_sync(0xffffffffu, s, 2);
      if ((threadIdx.x & 3) == 0) out[(threadIdx.x >> 7) * kC + FragRow<true>(0, 2 * h)] += s;
    }
  } else {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      float s = 0.f;
#pragma unroll
      for (int j = 0; j < 4; ++j) s += f.v[i][j] * tile[FragRow<false>(i, j) * kLd + FragCol<false>(i, j)];
      s += __shfl_xor_sync(0xffffffffu, s, 8);
      s += __shfl_xor_sync(0xffffffffu, s, 4);
      s += __shfl_xor_sync(0xffffffffu, s, 2);
      s += __shfl_xor_sync(0xffffffffu, s, 1);
      if (Tx() == 0) out[FragRow<false>(i, 0)] += s;
    }
  }
}

// dst[r * stride + c] <- f (a 64 x 64 block of a global array).
template <bool kTC>
__device__ __forceinline__ void StoreFrag(float* dst, int64_t stride, const Frag& f) {
  if constexpr (kTC) {  // columns j = 0, 1 and 2, 3 of a fragment are adjacent
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int h = 0; h < 2; ++h)
        *reinterpret_cast<float2*>(dst + FragRow<true>(i, 2 * h) * stride +
                                   FragCol<true>(i, 2 * h)) =
            make_float2(f.v[i][2 * h], f.v[i][2 * h + 1]);
  } else {
    GDR_FOR_FRAG(i, j, r, c) { dst[r * stride + c] = f.v[i][j]; }
  }
}

// f split as PutOp splits into two bf16 planes at base (rows `pitch` apart, the lo plane `plane`
// values after the hi one): on the tensor cores the two adjacent columns a lane holds of each
// fragment row are split and stored as pairs.
template <bool kTC>
__device__ __forceinline__ void SplitFragInto(__nv_bfloat16* base, int pitch, int plane,
                                              const Frag& f) {
  if constexpr (kTC) {
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const Split x = SplitBf16(f.v[i][2 * h], f.v[i][2 * h + 1]);
        uint32_t* p = reinterpret_cast<uint32_t*>(base + FragRow<true>(i, 2 * h) * pitch +
                                                  FragCol<true>(i, 2 * h));
        p[0] = x.hi;
        p[plane / 2] = x.lo;
      }
  } else {
    GDR_FOR_FRAG(i, j, r, c) {
      const __nv_bfloat16 hi = __float2bfloat16_rn(f.v[i][j]);
      base[r * pitch + c] = hi;
      base[plane + r * pitch + c] = __float2bfloat16_rn(f.v[i][j] - __bfloat162float(hi));
    }
  }
}

// The operand tile slot <- f (as PutOp, value by value).
template <bool kTC>
__device__ __forceinline__ void PutFrag(float* slot, const Frag& f) {
  if constexpr (kTC) {
    SplitFragInto<true>(reinterpret_cast<__nv_bfloat16*>(slot), kLd, kTile, f);
  } else {
    GDR_FOR_FRAG(i, j, r, c) { slot[r * kLd + c] = f.v[i][j]; }
  }
}

// f <- mul * src at the Frag's positions (a 64 x 64 block of a global array; StoreFrag's mirror).
template <bool kTC>
__device__ __forceinline__ void LoadFrag(Frag& f, const float* src, int64_t stride, float mul) {
  if constexpr (kTC) {
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const float2 x = __ldg(reinterpret_cast<const float2*>(
            src + FragRow<true>(i, 2 * h) * stride + FragCol<true>(i, 2 * h)));
        f.v[i][2 * h] = mul * x.x, f.v[i][2 * h + 1] = mul * x.y;
      }
  } else {
    GDR_FOR_FRAG(i, j, r, c) { f.v[i][j] = mul * __ldg(src + r * stride + c); }
  }
}

// dst (a 64 x 64 block stored as an operand tile's two planes, unpadded: 64 x 64 bf16 hi values,
// then the lo values) <- f, split as PutOp splits. PrepKernel writes W this way for a StateKernel
// on the tensor cores, which then copies it without converting (CopyRowsAsync).
template <bool kTC>
__device__ __forceinline__ void StoreFragSplit(__nv_bfloat16* dst, const Frag& f) {
  SplitFragInto<kTC>(dst, kC, kC * kC, f);
}

// Rows [0, 64) of row_bytes (a multiple of 16) at src + r * src_stride (bytes) into shared memory
// at dst + r * dst_stride, by cp.async (no registers, all in flight at once); rows >= rows_valid
// are zero-filled. The caller waits (CpAsyncWaitAll) and synchronises before reading.
__device__ __forceinline__ void CopyRowsAsync(void* dst, int dst_stride, const void* src,
                                              int64_t src_stride, int row_bytes, int rows_valid) {
  const int per_row = row_bytes / 16;
  for (int e = threadIdx.x; e < kC * per_row; e += kThreads) {
    const int r = e / per_row, c = (e % per_row) * 16;
    const bool in = r < rows_valid;
    const char* from = static_cast<const char*>(src) + (in ? r * src_stride : 0) + c;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(
                     SmemAddr(static_cast<char*>(dst) + r * dst_stride + c)),
                 "l"(from), "r"(in ? 16 : 0)
                 : "memory");
  }
}
__device__ __forceinline__ void CpAsyncWaitAll() {
  asm volatile("cp.async.wait_all;\n" ::: "memory");
}

// Tiles loaded unscaled from bf16 inputs hold exact bf16 values (Mma's kAX / kBX).
template <typename T>
constexpr bool kExactInputs = std::is_same_v<T, __nv_bfloat16>;

// dst (two unpadded planes, as StoreFragSplit) <- the fp32 tile, split as PutOp splits.
__device__ __forceinline__ void StoreTileSplit(__nv_bfloat16* dst, const float* tile) {
  for (int e = threadIdx.x * 4; e < kC * kC; e += kThreads * 4) {
    const int r = e >> 6, c = e & (kC - 1);
    const float4 x = *reinterpret_cast<const float4*>(tile + r * kLd + c);
    const Split a = SplitBf16(x.x, x.y), b = SplitBf16(x.z, x.w);
    *reinterpret_cast<uint2*>(dst + e) = make_uint2(a.hi, b.hi);
    *reinterpret_cast<uint2*>(dst + kC * kC + e) = make_uint2(a.lo, b.lo);
  }
}

// A 64 x 64 block of chunk scratch (W, T) that PrepKernel wrote for this product mode into an
// operand slot, by cp.async: on the tensor cores the two planes at src (StoreFragSplit), else
// fp32 rows of `stride` floats.
template <bool kTC>
__device__ __forceinline__ void CopyOperandAsync(float* slot, const float* src, int64_t stride) {
  if constexpr (kTC) {
    const __nv_bfloat16* p = reinterpret_cast<const __nv_bfloat16*>(src);
    CopyRowsAsync(slot, kLd * 2, p, kC * 2, kC * 2, kC);
    CopyRowsAsync(reinterpret_cast<__nv_bfloat16*>(slot) + kTile, kLd * 2, p + kC * kC, kC * 2,
                  kC * 2, kC);
  } else {
    CopyRowsAsync(slot, kLd * 4, src, stride * 4, kC * 4, kC);
  }
}

// An unscaled input tile (rows r < L at src + r * stride, zero below) into an operand slot that
// products read with kAX / kBX = kExactInputs<T>: by cp.async when the slot holds the input's raw
// bytes (bf16 on the tensor cores, whose lo plane is then never read; fp32 for FMA), else through
// LoadTile. Either way the caller waits (CpAsyncWaitAll) and synchronises before reading.
template <bool kTC, typename T>
__device__ __forceinline__ void LoadInputTile(float* slot, const T* src, int64_t stride, int L) {
  if constexpr (kTC ? kExactInputs<T> : std::is_same_v<T, float>) {
    CopyRowsAsync(slot, kLd * (kTC ? 2 : 4), src, stride * int64_t{sizeof(T)},
                  kC * static_cast<int>(sizeof(T)), L);
  } else {
    LoadTile<kTC>(slot, src, stride, L);
  }
}

// On the tensor cores an exact bf16 tile is its hi plane alone (LoadInputTile copies it there,
// and products read it with kAX / kBX): half a slot, so a slot holds two. Slot `slot`'s half i.
template <typename T, bool kTC>
constexpr bool kHalfTiles = kTC && kExactInputs<T>;
__device__ __forceinline__ float* Half(float* slot, int i) { return slot + i * (kTile / 2); }
// Input tiles a load phase takes: two to a slot as half tiles, else one; tile i of a phase in
// `slot`.
template <typename T, bool kTC>
constexpr int kPerSlot = kHalfTiles<T, kTC> ? 2 : 1;
template <typename T, bool kTC>
__device__ __forceinline__ float* InSlot(float* slot, int i) {
  return kHalfTiles<T, kTC> ? Half(slot, i) : slot;
}
// The input tiles of the phase that starts at tile kt0 (at most kPerSlot, below n; tile kt at
// src + kt * 64) into `slot`; the caller waits (CpAsyncWaitAll) and synchronises.
template <bool kTC, typename T>
__device__ __forceinline__ void LoadInputPhase(float* slot, const T* src, int64_t stride, int L,
                                               int kt0, int n) {
  for (int i = 0; i < kPerSlot<T, kTC> && kt0 + i < n; ++i)
    LoadInputTile<kTC>(InSlot<T, kTC>(slot, i), src + (kt0 + i) * kC, stride, L);
}

// Loops over the 64-row tiles kt < n of dk (n <= kNK, a constant), unrolled, so that per-tile
// register arrays (the sequential kernels' state) are indexed by constants.
#define GDR_FOR_TILE(kt, n) \
  _Pragma("unroll") for (int kt = 0; kt < kNK; ++kt) if (kt < (n))

// Tile kt of a chunk's W (64 x dk at Wc), as PrepKernel writes it and StateKernel copies it:
// split, the tiles' plane pairs one after another (StoreFragSplit); else fp32 columns kt * 64 of
// rows dk apart.
template <typename P>
__device__ __forceinline__ P* WTile(P* Wc, int kt, bool split) {
  return Wc + (split ? kt * kC * kC : kt * kC);
}

// Per-token gate quantities of one chunk (padding rows past L: gamma 0, beta 0).
struct Gates {
  float g[kC], alpha[kC], gam[kC], e[kC], beta[kC], bg[kC];  // bg = beta * Gam
};
// Floats of per-token scratch ahead of a kernel's tiles: the Gates alone, or GradKernel's (the
// Gates and its per-token sums). Kept to what each kernel needs: with 4 tiles and the Gates,
// three blocks an SM fit (PrepKernel; 5 KB more would allow two).
constexpr int kGateFloats = sizeof(Gates) / sizeof(float);
constexpr int kGradSmall = 1600;
static_assert(kGateFloats % 4 == 0);  // tiles stay 16-byte aligned

// Warp 0: g, alpha, beta, Gam (prefix sums of g by a warp scan) and bg; warp 1: e (suffix sums,
// scanned separately rather than as total - prefix, which would lose the small exponents of a
// strongly decayed chunk to cancellation). Each lane handles tokens 2 lane and 2 lane + 1.
// sync = false leaves the barrier to the caller (one barrier for the gates and a chunk's tiles).
__device__ void LoadGates(Gates& s, const float* gamma, const float* beta, int64_t stride,
                          int L, bool sync = true) {
  const int w = threadIdx.x >> 5, lane = threadIdx.x & 31, i0 = 2 * lane;
  if (w < 2) {
    const float g0 = i0 < L ? gamma[i0 * stride] : 0.f;
    const float g1 = i0 + 1 < L ? gamma[(i0 + 1) * stride] : 0.f;
    float incl = g0 + g1;
    if (w == 0) {
      for (int o = 1; o < 32; o <<= 1) {
        const float y = __shfl_up_sync(0xffffffffu, incl, o);
        if (lane >= o) incl += y;
      }
      float excl = __shfl_up_sync(0xffffffffu, incl, 1);
      if (lane == 0) excl = 0.f;
      const float b0 = (beta != nullptr && i0 < L) ? beta[i0 * stride] : 0.f;
      const float b1 = (beta != nullptr && i0 + 1 < L) ? beta[(i0 + 1) * stride] : 0.f;
      const float G0 = excl + g0, G1 = G0 + g1;
      s.g[i0] = g0, s.g[i0 + 1] = g1;
      s.alpha[i0] = expf(g0), s.alpha[i0 + 1] = expf(g1);
      s.beta[i0] = b0, s.beta[i0 + 1] = b1;
      s.gam[i0] = expf(G0), s.gam[i0 + 1] = expf(G1);
      s.bg[i0] = b0 * s.gam[i0], s.bg[i0 + 1] = b1 * s.gam[i0 + 1];
    } else {
      for (int o = 1; o < 32; o <<= 1) {
        const float y = __shfl_down_sync(0xffffffffu, incl, o);
        if (lane + o < 32) incl += y;
      }
      float after = __shfl_down_sync(0xffffffffu, incl, 1);  // sum over tokens > 2 lane + 1
      if (lane == 31) after = 0.f;
      s.e[i0 + 1] = expf(after);
      s.e[i0] = expf(after + g1);
    }
  }
  if (sync) __syncthreads();
}

// Asks L2 for rows [0, rows) of row_bytes (a multiple of 128) at base + r * stride_bytes: the next
// chunk's tiles in the sequential kernels, while the current one is computed.
__device__ __forceinline__ void PrefetchRows(const void* base, int64_t stride_bytes, int rows,
                                             int row_bytes) {
  const int lines = row_bytes / 128;
  for (int e = threadIdx.x; e < rows * lines; e += kThreads) {
    const char* p = static_cast<const char*>(base) + (e / lines) * stride_bytes + (e % lines) * 128;
    asm volatile("prefetch.global.L2 [%0];" ::"l"(p));
  }
}

// E_ij for i >= j as the running product alpha_{j+1} ... alpha_i (one column per thread), 0 above
// the diagonal. The caller synchronises before reading.
__device__ void BuildE(float* E, const Gates& s) {
  const int j = threadIdx.x;
  if (j >= kC) return;
  float run = 1.f;
  for (int i = 0; i < kC; ++i) {
    if (i > j) run *= s.alpha[i];
    E[i * kLd + j] = i < j ? 0.f : run;
  }
}

// sP (operand tile) = tril_incl(Q K^T) * E for chunk rows [t0, t0 + L) of (b, h); uses sA, sB as
// scratch. With half tiles and dk <= 128 (PairedQK) Q's tiles stay in sA's halves (Half(sA, kt))
// and K's in sB's, all copied at once.
template <typename T, bool kTC>
__device__ __forceinline__ bool PairedQK(const Dims& d) {
  return kHalfTiles<T, kTC> && d.NK <= 2;
}
template <typename T, bool kTC>
__device__ void BuildP(const Dims& d, const T* q, const T* k, int b, int h, int t0, int L,
                       const float* sE, float* sP, float* sA, float* sB) {
  constexpr bool kX = kExactInputs<T>;
  Frag f;
  Zero(f);
  const int64_t st = int64_t{d.H} * d.dk;
  if (PairedQK<T, kTC>(d)) {
    for (int kt = 0; kt < d.NK; ++kt) {
      LoadInputTile<kTC>(Half(sA, kt), q + d.Qk(b, t0, h) + kt * kC, st, L);
      LoadInputTile<kTC>(Half(sB, kt), k + d.Qk(b, t0, h) + kt * kC, st, L);
    }
    CpAsyncWaitAll();
    __syncthreads();
    for (int kt = 0; kt < d.NK; ++kt) Mma<kTC, false, true, kX, kX>(f, Half(sA, kt), Half(sB, kt));
  } else {
    for (int kt = 0; kt < d.NK; ++kt) {
      LoadTile<kTC>(sA, q + d.Qk(b, t0, h) + kt * kC, st, L);
      LoadTile<kTC>(sB, k + d.Qk(b, t0, h) + kt * kC, st, L);
      __syncthreads();
      Mma<kTC, false, true, kX, kX>(f, sA, sB);
      __syncthreads();
    }
  }
  GDR_FOR_FRAG(i, j, r, c) { f.v[i][j] = r >= c ? f.v[i][j] * sE[r * kLd + c] : 0.f; }
  PutFrag<kTC>(sP, f);
  __syncthreads();
}

// T = (I + M)^-1 for M (fp32 tile) strictly lower triangular, into the fp32 tile T, by 16 x 16
// blocks: the four diagonal blocks by forward substitution (64 threads, one column each), then the
// blocks below them one block diagonal at a time,
//   T_ij = -T_ii Y_ij,  Y_ij = sum_{j <= m < i} M_im T_mj   (block indices),
// every thread one element of each block (Y in the scratch tile sY). A substitution over all 64
// rows, one column per thread, was a dependent chain of about 2000 multiply-adds: 156 of
// PrepKernel's 292 us at the reference model's layer (experiments/results/gdr-cuda.md). The
// diagonal blocks' substitution keeps its column in registers and, once a row is final, updates
// the rows below it (right-looking): the same multiply-adds in the same order as reading the
// column back from shared memory row by row, without a shared-memory round trip in the chain
// (the other 192 threads wait for it at a barrier). Ends with a barrier.
__device__ void InvertUnitLower(const float* sM, float* sT, float* sY) {
  constexpr int kB = 16;  // block edge
  static_assert(kThreads == kB * kB && kC % kB == 0 && kLd % 4 == 0);
  const int t = threadIdx.x;
  for (int e = t; e < kC * kC; e += kThreads) {  // the blocks above the diagonal are 0
    const int row = e / kC, col = e % kC;
    if (col / kB > row / kB) sT[row * kLd + col] = 0.f;
  }
  if (t < kC) {
    const int b0 = t & ~(kB - 1), lc = t - b0;  // column lc of the diagonal block at b0
    float x[kB];
#pragma unroll
    for (int i = 0; i < kB; ++i) x[i] = i == lc ? 1.f : 0.f;
    // Row m is final once rows < m have updated it; rows above lc are 0 and update nothing.
#pragma unroll
    for (int m = 0; m + 1 < kB; ++m) {
#pragma unroll
      for (int i = m + 1; i < kB; ++i) x[i] -= sM[(b0 + i) * kLd + b0 + m] * x[m];
    }
#pragma unroll
    for (int i = 0; i < kB; ++i) sT[(b0 + i) * kLd + t] = x[i];
  }
  __syncthreads();
  const int r = t / kB, c = t % kB;  // kThreads == kB * kB
  for (int s = 1; s < kC / kB; ++s) {
    for (int j = 0; j + s < kC / kB; ++j) {
      const int i = j + s;
      const float* mrow = sM + (kB * i + r) * kLd;  // 16-byte aligned: kLd % 4 == 0
      const float* tcol = sT + kB * j + c;
      float y = 0.f;
      for (int m = kB * j; m < kB * i; m += 4) {  // M's row four values a load
        const float4 a = *reinterpret_cast<const float4*>(mrow + m);
        y = fmaf(a.x, tcol[m * kLd], y);
        y = fmaf(a.y, tcol[(m + 1) * kLd], y);
        y = fmaf(a.z, tcol[(m + 2) * kLd], y);
        y = fmaf(a.w, tcol[(m + 3) * kLd], y);
      }
      sY[j * kB * kB + t] = y;
    }
    __syncthreads();
    for (int j = 0; j + s < kC / kB; ++j) {
      const int i = j + s;
      float x = 0.f;
      for (int q = 0; q <= r; ++q)
        x = fmaf(-sT[(kB * i + r) * kLd + kB * i + q], sY[j * kB * kB + q * kB + c], x);
      sT[(kB * i + r) * kLd + kB * j + c] = x;
    }
    __syncthreads();
  }
}

// ---------------------------------------------------------------------------------------------
// Forward kernels.

// Per chunk: T = (I + M)^-1 (stored when Tm is given), W = T diag(beta Gam) K, U = T diag(beta) V.
template <typename T, bool kTC>
__global__ void __launch_bounds__(kThreads)
    PrepKernel(Dims d, const T* k, const T* v, const float* gamma, const float* beta, float* W,
               float* U, float* Tm, bool w_split, bool t_split) {
  constexpr bool kX = kExactInputs<T>;  // unscaled input tiles hold exact bf16 values
  const int c = blockIdx.x, hv = blockIdx.y, b = blockIdx.z, h = hv / d.G;
  const int t0 = c * kC, L = min(kC, d.T - t0);
  extern __shared__ __align__(16) float smem[];
  Gates& gs = *reinterpret_cast<Gates*>(smem);
  float* sE = smem + kGateFloats;
  float* sM = sE + kTile;
  float* sT = sM + kTile;
  float* sX = sT + kTile;  // operand tile: K's tiles; V's when not half tiles
  LoadGates(gs, gamma + d.Gb(b, t0, hv), beta + d.Gb(b, t0, hv), d.HV, L);
  BuildE(sE, gs);
  const T* kc = k + d.Qk(b, t0, h);
  const T* vc = v + d.Vo(b, t0, hv);
  const int64_t kst = int64_t{d.H} * d.dk, vst = int64_t{d.HV} * d.dv;
  // K's tiles go to sX kPerSlot a phase; when that is all of them (half tiles and dk <= 128, or
  // dk = 64) they are copied once, for K K^T and W (k_kept). V's go kPerSlot at a time into sT's
  // halves once T is an operand with half tiles, else into sX.
  constexpr int kPer = kPerSlot<T, kTC>;
  const bool k_kept = d.NK <= kPer;
  float* const sV = kPer == 2 ? sT : sX;
  Frag f;
  Zero(f);
  for (int kt = 0; kt < d.NK; kt += kPer) {
    if (kt > 0) __syncthreads();  // the last phase's tiles are read
    LoadInputPhase<kTC>(sX, kc, kst, L, kt, d.NK);
    CpAsyncWaitAll();
    __syncthreads();
    for (int i = 0; i < kPer && kt + i < d.NK; ++i)
      Mma<kTC, false, true, kX, kX>(f, InSlot<T, kTC>(sX, i), InSlot<T, kTC>(sX, i));
  }
  GDR_FOR_FRAG(i, j, r, cc) {
    sM[r * kLd + cc] = r > cc ? gs.beta[r] * f.v[i][j] * sE[r * kLd + cc] : 0.f;
  }
  __syncthreads();
  InvertUnitLower(sM, sT, sE);  // E is done with: its slot is the scratch
  const int64_t ch = d.Chunk(b, hv, c);
  if (Tm != nullptr && t_split)
    StoreTileSplit(reinterpret_cast<__nv_bfloat16*>(Tm + ch * kC * kC), sT);
  else if (Tm != nullptr)
    StoreTile(Tm + ch * kC * kC, kC, sT);
  // T diag(beta Gam) and T diag(beta) as operand tiles (sE's and sM's slots; E and M are done
  // with), so that the products take K and V tiles as they are (exact bf16: no lo parts).
  ToOperand<kTC>(sE, sT, gs.bg);
  ToOperand<kTC>(sM, sT, gs.beta);
  __syncthreads();
  if constexpr (kPer == 2) LoadInputPhase<kTC>(sV, vc, vst, L, 0, d.NV);  // sT was read above
  float* Wc = W + ch * kC * d.dk;
  for (int kt = 0; kt < d.NK; kt += kPer) {
    if (!k_kept) {
      if (kt > 0) __syncthreads();  // the last phase's tiles are read
      LoadInputPhase<kTC>(sX, kc, kst, L, kt, d.NK);
      CpAsyncWaitAll();
      __syncthreads();
    }
    for (int i = 0; i < kPer && kt + i < d.NK; ++i) {
      Zero(f);
      Mma<kTC, false, false, false, kX>(f, sE, InSlot<T, kTC>(sX, i));
      float* Wt = WTile(Wc, kt + i, w_split);
      if (w_split)
        StoreFragSplit<kTC>(reinterpret_cast<__nv_bfloat16*>(Wt), f);
      else
        StoreFrag<kTC>(Wt, d.dk, f);
    }
  }
  if constexpr (kPer == 1) __syncthreads();  // V's tiles go to sX, which W's products read
  float* Uc = U + ch * kC * d.dv;
  for (int vt = 0; vt < d.NV; vt += kPer) {
    if (kPer == 1 || vt > 0) LoadInputPhase<kTC>(sV, vc, vst, L, vt, d.NV);
    CpAsyncWaitAll();
    __syncthreads();
    for (int i = 0; i < kPer && vt + i < d.NV; ++i) {
      Zero(f);
      Mma<kTC, false, false, false, kX>(f, sM, InSlot<T, kTC>(sV, i));
      StoreFrag<kTC>(Uc + (vt + i) * kC, d.dv, f);
    }
    __syncthreads();
  }
}

// Per (b, hv, 64 state columns), sequential over chunks: stores each chunk-start state and
// V' = U - W S, and advances S <- Gam_{L-1} S + K^T diag(e) V'. The state's fp32 values live in
// registers (st, one Frag per 64 rows; kNK >= d.NK of them), its operand tiles in shared memory.
// Each chunk's W and K tiles arrive by cp.async, all issued at the chunk's start (W in the form
// StateKernel reads: split planes from PrepKernel on the tensor cores, fp32 otherwise; K as it
// is when the tile holds its raw values), and U goes straight into the product's accumulator
// (f = -U + W S = -V'), so a chunk waits on global memory once.
template <typename T, bool kTC, int kNK>
__global__ void __launch_bounds__(kThreads, 2)
    StateKernel(Dims d, const float* W, const float* U, const T* k, const float* gamma,
                float* S_all, float* Vp, float* final_state) {
  constexpr bool kX = kExactInputs<T>;  // unscaled input tiles hold exact bf16 values
  // With dk <= 128 every W and K tile of a chunk has its own slot (3 NK tiles: 4 barriers a
  // chunk; with dk = 128 the 6 tiles and the Gates are 110 KB: two blocks an SM on sm_90, and
  // one more slot would halve them); otherwise one slot takes W's tiles, then K's, one
  // at a time (NK + 2 tiles).
  constexpr bool kFused = kNK <= 2;
  const int vt = blockIdx.x, hv = blockIdx.y, b = blockIdx.z, h = hv / d.G;
  extern __shared__ __align__(16) float smem[];
  Gates& gs = *reinterpret_cast<Gates*>(smem);
  float* sS = smem + kGateFloats;  // d.NK operand tiles: rows kt * 64 + r of the state's columns
  float* sW = sS + d.NK * kTile;   // fused: d.NK operand tiles of W, then diag(e) V' in the first
  float* sK = sW + d.NK * kTile;   // fused: d.NK operand tiles of K
  float* sA = sW;                  // not fused: W's or K's current tile
  float* sV = sA + kTile;          // not fused: diag(e) V'
  for (int e = threadIdx.x; e < d.NK * kTile; e += kThreads) sS[e] = 0.f;  // zero in both forms
  Frag st[kNK];
  GDR_FOR_TILE(kt, d.NK) Zero(st[kt]);
  const int64_t kst = int64_t{d.H} * d.dk;
  const int64_t sd = int64_t{d.dk} * d.dv;
  // W's tile kt of chunk ch, split on the tensor cores (PrepKernel's w_split).
  auto copy_w = [&](float* slot, int64_t ch, int kt) {
    CopyOperandAsync<kTC>(slot, WTile(W + ch * kC * d.dk, kt, kTC), d.dk);
  };
  for (int c = 0; c < d.NC; ++c) {
    const int t0 = c * kC, L = min(kC, d.T - t0);
    const int64_t ch = d.Chunk(b, hv, c);
    const T* kc = k + d.Qk(b, t0, h);
    if constexpr (kFused) {
      GDR_FOR_TILE(kt, d.NK) copy_w(sW + kt * kTile, ch, kt);
      GDR_FOR_TILE(kt, d.NK) LoadInputTile<kTC>(sK + kt * kTile, kc + kt * kC, kst, L);
    } else {
      copy_w(sA, ch, 0);
    }
    LoadGates(gs, gamma + d.Gb(b, t0, hv), nullptr, d.HV, L, false);
    if (c + 1 < d.NC) {
      const int64_t cn = ch + 1;
      PrefetchRows(W + cn * kC * d.dk, d.dk * 4, kC, d.dk * 4);
      PrefetchRows(U + cn * kC * d.dv + vt * kC, d.dv * 4, kC, kC * 4);
      PrefetchRows(k + d.Qk(b, t0 + kC, h), kst * sizeof(T), min(kC, d.T - t0 - kC),
                   d.dk * static_cast<int>(sizeof(T)));
    }
    GDR_FOR_TILE(kt, d.NK) {
      StoreFrag<kTC>(S_all + ch * sd + int64_t{kt} * kC * d.dv + vt * kC, d.dv, st[kt]);
    }
    float* Vc = Vp + ch * kC * d.dv + vt * kC;
    Frag f;  // -U + W S = -V'
    LoadFrag<kTC>(f, U + ch * kC * d.dv + vt * kC, d.dv, -1.f);
    CpAsyncWaitAll();
    __syncthreads();
    if constexpr (kFused) {
      GDR_FOR_TILE(kt, d.NK) Mma<kTC, false, false>(f, sW + kt * kTile, sS + kt * kTile);
    } else {
      for (int kt = 0; kt < d.NK; ++kt) {
        Mma<kTC, false, false>(f, sA, sS + kt * kTile);
        __syncthreads();
        if (kt + 1 < d.NK) {
          copy_w(sA, ch, kt + 1);
          CpAsyncWaitAll();
          __syncthreads();
        }
      }
    }
    GDR_FOR_FRAG(i, j, r, cc) { f.v[i][j] = -f.v[i][j]; }
    StoreFrag<kTC>(Vc, d.dv, f);
    GDR_FOR_FRAG(i, j, r, cc) { f.v[i][j] *= gs.e[r]; }
    float* ev = kFused ? sW : sV;  // diag(e) V'
    if constexpr (kFused) __syncthreads();  // every warp is done with W's first tile
    PutFrag<kTC>(ev, f);
    __syncthreads();
    const float gl = gs.gam[L - 1];
    GDR_FOR_TILE(kt, d.NK) {
      float* kslot = kFused ? sK + kt * kTile : sA;
      if constexpr (!kFused) {
        LoadInputTile<kTC>(sA, kc + kt * kC, kst, L);
        CpAsyncWaitAll();
        __syncthreads();
      }
      Zero(f);
      Mma<kTC, true, false, kX, false>(f, kslot, ev);
      GDR_FOR_FRAG(i, j, r, cc) { st[kt].v[i][j] = gl * st[kt].v[i][j] + f.v[i][j]; }
      PutFrag<kTC>(sS + kt * kTile, st[kt]);  // sS was last read before the barrier above
      if constexpr (!kFused) __syncthreads();
    }
    if constexpr (kFused) __syncthreads();
  }
  if (final_state != nullptr) {
    GDR_FOR_TILE(kt, d.NK) {
      StoreFrag<kTC>(final_state + (int64_t{b} * d.HV + hv) * sd + int64_t{kt} * kC * d.dv +
                         vt * kC,
                     d.dv, st[kt]);
    }
  }
}

// Per chunk: O = s [diag(Gam) Q S + P V'].
template <typename T, bool kTC>
__global__ void __launch_bounds__(kThreads, 2)
    OutputKernel(Dims d, const T* q, const T* k, const float* gamma, const float* S_all,
                 const float* Vp, float scale, T* o) {
  constexpr bool kX = kExactInputs<T>;  // unscaled input tiles hold exact bf16 values
  const int c = blockIdx.x, hv = blockIdx.y, b = blockIdx.z, h = hv / d.G;
  const int t0 = c * kC, L = min(kC, d.T - t0);
  extern __shared__ __align__(16) float smem[];
  Gates& gs = *reinterpret_cast<Gates*>(smem);
  float* sE = smem + kGateFloats;
  float* sP = sE + kTile;  // operand tiles from here on
  float* sA = sP + kTile;
  float* sB = sA + kTile;
  float* sC = sB + kTile;  // with PairedQK only
  LoadGates(gs, gamma + d.Gb(b, t0, hv), nullptr, d.HV, L);
  BuildE(sE, gs);
  BuildP<T, kTC>(d, q, k, b, h, t0, L, sE, sP, sA, sB);
  const int64_t ch = d.Chunk(b, hv, c);
  const int64_t sd = int64_t{d.dk} * d.dv;
  // O's dv tile vt = s [diag(Gam) (Q S) + P V'] from the two products' sums.
  auto store_o = [&](int vt, const Frag& fo, const Frag& fp) {
    T* oc = o + d.Vo(b, t0, hv) + vt * kC;
    GDR_FOR_FRAG(i, j, r, cc) {
      if (r < L)
        oc[int64_t{r} * d.HV * d.dv + cc] =
            FromF<T>(scale * (gs.gam[r] * fo.v[i][j] + fp.v[i][j]));
    }
  };
  if (PairedQK<T, kTC>(d)) {
    // Q's tiles are still in sA's halves: per dv tile, the state's tiles (sE, sB: E and K are done
    // with) and V' (sC) load at once.
    for (int vt = 0; vt < d.NV; ++vt) {
      Frag fo, fp;
      Zero(fo);
      Zero(fp);
      for (int kt = 0; kt < d.NK; ++kt)
        LoadTile<kTC>(kt == 0 ? sE : sB, S_all + ch * sd + int64_t{kt} * kC * d.dv + vt * kC, d.dv,
                      kC);
      LoadTile<kTC>(sC, Vp + ch * kC * d.dv + vt * kC, d.dv, kC);
      __syncthreads();
      for (int kt = 0; kt < d.NK; ++kt)
        Mma<kTC, false, false, kX, false>(fo, Half(sA, kt), kt == 0 ? sE : sB);
      Mma<kTC, false, false>(fp, sP, sC);
      store_o(vt, fo, fp);
      __syncthreads();
    }
    return;
  }
  for (int vt = 0; vt < d.NV; ++vt) {
    Frag fo, fp;
    Zero(fo);
    Zero(fp);
    for (int kt = 0; kt < d.NK; ++kt) {
      LoadTile<kTC>(sA, q + d.Qk(b, t0, h) + kt * kC, int64_t{d.H} * d.dk, L);
      LoadTile<kTC>(sB, S_all + ch * sd + int64_t{kt} * kC * d.dv + vt * kC, d.dv, kC);
      __syncthreads();
      Mma<kTC, false, false, kX, false>(fo, sA, sB);
      __syncthreads();
    }
    LoadTile<kTC>(sB, Vp + ch * kC * d.dv + vt * kC, d.dv, kC);
    __syncthreads();
    Mma<kTC, false, false>(fp, sP, sB);
    store_o(vt, fo, fp);
    __syncthreads();
  }
}

// ---------------------------------------------------------------------------------------------
// Backward kernels.

// Per chunk: dVl = s P^T dO (written to the scratch that ReverseKernel turns into Y).
template <typename T, bool kTC>
__global__ void __launch_bounds__(kThreads)
    DvLocalKernel(Dims d, const T* q, const T* k, const float* gamma, const T* d_o, float scale,
                  float* dVl) {
  constexpr bool kX = kExactInputs<T>;  // unscaled input tiles hold exact bf16 values
  const int c = blockIdx.x, hv = blockIdx.y, b = blockIdx.z, h = hv / d.G;
  const int t0 = c * kC, L = min(kC, d.T - t0);
  extern __shared__ __align__(16) float smem[];
  Gates& gs = *reinterpret_cast<Gates*>(smem);
  float* sE = smem + kGateFloats;
  float* sP = sE + kTile;  // operand tiles from here on
  float* sA = sP + kTile;
  float* sB = sA + kTile;
  LoadGates(gs, gamma + d.Gb(b, t0, hv), nullptr, d.HV, L);
  BuildE(sE, gs);
  BuildP<T, kTC>(d, q, k, b, h, t0, L, sE, sP, sA, sB);
  float* out = dVl + d.Chunk(b, hv, c) * kC * d.dv;
  // dO's tiles go to sB, kPerSlot a phase.
  constexpr int kPer = kPerSlot<T, kTC>;
  for (int vt = 0; vt < d.NV; vt += kPer) {
    LoadInputPhase<kTC>(sB, d_o + d.Vo(b, t0, hv), int64_t{d.HV} * d.dv, L, vt, d.NV);
    CpAsyncWaitAll();
    __syncthreads();
    for (int i = 0; i < kPer && vt + i < d.NV; ++i) {
      Frag f;
      Zero(f);
      Mma<kTC, true, false, false, kX>(f, sP, InSlot<T, kTC>(sB, i));
      GDR_FOR_FRAG(i2, j, r, cc) { f.v[i2][j] *= scale; }
      StoreFrag<kTC>(out + (vt + i) * kC, d.dv, f);
    }
    __syncthreads();
  }
}

// Per (b, hv, 64 columns), reverse over chunks, carrying D = dL/dS at the current chunk's end
// (fp32 values in registers, dd; operand tiles in shared memory): stores D per chunk, turns dVl
// into Y = T^T (dVl + diag(e) K D) in place, and moves D to the chunk start:
// D <- Gam_{L-1} D + Q^T diag(s Gam) dO - K^T diag(Gam beta) Y. kNK >= d.NK.
//
// Tiles arrive by cp.async (T in the form this kernel reads, from PrepKernel; dVl; Q and K), dO
// through registers (it is scaled). With dk > 128 one tile at a time. With dk <= 128 (kFused)
// each phase loads all its tiles at once, 7 barriers a chunk: the second K tile of K D in sY
// (free until dVl + diag(e) K D is written), the second Q and K tiles of the update of D in the
// sD slots (D's values are in registers; its operand tiles are rewritten after). With half tiles
// as well (kPaired: bf16 on the tensor cores) Q's tiles share sY and K's share sA, so a chunk's T,
// dVl, K and Q all arrive at its start, one wait on global memory a chunk and 5 barriers; dVl +
// diag(e) K D goes to D's first slot, diag(s Gam) dO to its second (there are two slots even
// when dk = 64), and dO's loads are issued before the two products they wait behind.
template <typename T, bool kTC, int kNK>
__global__ void __launch_bounds__(kThreads, 2)
    ReverseKernel(Dims d, const T* q, const T* k, const float* gamma, const float* beta,
                  const T* d_o, float scale, const float* Tm, float* Y, float* D_all) {
  constexpr bool kX = kExactInputs<T>;  // unscaled input tiles hold exact bf16 values
  constexpr bool kFused = kNK <= 2;
  constexpr bool kPaired = kFused && kHalfTiles<T, kTC>;
  const int vt = blockIdx.x, hv = blockIdx.y, b = blockIdx.z, h = hv / d.G;
  extern __shared__ __align__(16) float smem[];
  Gates& gs = *reinterpret_cast<Gates*>(smem);
  float* sD = smem + kGateFloats;                  // D's operand tiles (d.NK; 2 when paired)
  float* sT = sD + (kPaired ? 2 : d.NK) * kTile;  // operand tile: T, then K in the update of D
  float* sX = sT + kTile;  // fp32 dVl, then the operand tile -diag(Gam beta) Y
  float* sY = sX + kTile;  // operand tile: dVl + diag(e) K D, then diag(s Gam) dO; paired: Q
  float* sA = sY + kTile;  // operand tile: K, then Q; paired: K
  float* sXo = kPaired ? sD : sY;  // dVl + diag(e) K D
  for (int e = threadIdx.x; e < d.NK * kTile; e += kThreads) sD[e] = 0.f;  // zero in both forms
  Frag dd[kNK];
  GDR_FOR_TILE(kt, d.NK) Zero(dd[kt]);
  const int64_t kst = int64_t{d.H} * d.dk;
  const int64_t sd = int64_t{d.dk} * d.dv;
  for (int c = d.NC - 1; c >= 0; --c) {
    const int t0 = c * kC, L = min(kC, d.T - t0);
    const int64_t ch = d.Chunk(b, hv, c);
    float* Yc = Y + ch * kC * d.dv + vt * kC;
    const T* qc = q + d.Qk(b, t0, h);
    const T* kc = k + d.Qk(b, t0, h);
    CopyOperandAsync<kTC>(sT, Tm + ch * kC * kC, kC);
    CopyRowsAsync(sX, kLd * 4, Yc, d.dv * 4, kC * 4, kC);
    if constexpr (kPaired) {
      GDR_FOR_TILE(kt, d.NK) {
        LoadInputTile<kTC>(Half(sA, kt), kc + kt * kC, kst, L);
        LoadInputTile<kTC>(Half(sY, kt), qc + kt * kC, kst, L);
      }
    } else if constexpr (kFused) {
      LoadInputTile<kTC>(sA, kc, kst, L);
      if (d.NK > 1) LoadInputTile<kTC>(sY, kc + kC, kst, L);
    }
    LoadGates(gs, gamma + d.Gb(b, t0, hv), beta + d.Gb(b, t0, hv), d.HV, L, false);
    if (c > 0) {  // the previous chunk is whole
      PrefetchRows(Tm + (ch - 1) * kC * kC, kC * 4, kC, kC * 4);
      PrefetchRows(Y + (ch - 1) * kC * d.dv + vt * kC, d.dv * 4, kC, kC * 4);
      PrefetchRows(k + d.Qk(b, t0 - kC, h), kst * sizeof(T), kC, d.dk * static_cast<int>(sizeof(T)));
      PrefetchRows(q + d.Qk(b, t0 - kC, h), kst * sizeof(T), kC, d.dk * static_cast<int>(sizeof(T)));
      PrefetchRows(d_o + d.Vo(b, t0 - kC, hv) + vt * kC, int64_t{d.HV} * d.dv * sizeof(T), kC,
                   kC * static_cast<int>(sizeof(T)));
    }
    GDR_FOR_TILE(kt, d.NK) {
      StoreFrag<kTC>(D_all + ch * sd + int64_t{kt} * kC * d.dv + vt * kC, d.dv, dd[kt]);
    }
    Frag f;
    Zero(f);
    CpAsyncWaitAll();
    __syncthreads();
    HeldTile<T> dO;  // paired: loaded here, put after T^T (dVl + diag(e) K D)
    if constexpr (kPaired) {
      GDR_FOR_TILE(kt, d.NK) Mma<kTC, false, false, kX, false>(f, Half(sA, kt), sD + kt * kTile);
      dO.Load(d_o + d.Vo(b, t0, hv) + vt * kC, int64_t{d.HV} * d.dv, L);
      __syncthreads();
    } else if constexpr (kFused) {
      Mma<kTC, false, false, kX, false>(f, sA, sD);
      if (d.NK > 1) Mma<kTC, false, false, kX, false>(f, sY, sD + kTile);
      __syncthreads();
    } else {
      for (int kt = 0; kt < d.NK; ++kt) {
        LoadInputTile<kTC>(sA, kc + kt * kC, kst, L);
        CpAsyncWaitAll();
        __syncthreads();
        Mma<kTC, false, false, kX, false>(f, sA, sD + kt * kTile);
        __syncthreads();
      }
    }
    GDR_FOR_FRAG(i, j, r, cc) { f.v[i][j] = sX[r * kLd + cc] + gs.e[r] * f.v[i][j]; }
    PutFrag<kTC>(sXo, f);
    __syncthreads();
    Zero(f);
    Mma<kTC, true, false>(f, sT, sXo);
    // sX's fp32 values were last read before the barrier above; sXo is still being read.
    StoreFrag<kTC>(Yc, d.dv, f);
    GDR_FOR_FRAG(i, j, r, cc) { f.v[i][j] *= -gs.bg[r]; }
    PutFrag<kTC>(sX, f);
    if constexpr (kPaired) {
      dO.template Put<kTC>(sD + kTile, gs.gam, scale);  // D's second slot was last read by K D
      __syncthreads();
      const float gl = gs.gam[L - 1];
      GDR_FOR_TILE(kt, d.NK) {
        Zero(f);
        Mma<kTC, true, false, kX, false>(f, Half(sY, kt), sD + kTile);
        Mma<kTC, true, false, kX, false>(f, Half(sA, kt), sX);
        GDR_FOR_FRAG(i, j, r, cc) { dd[kt].v[i][j] = gl * dd[kt].v[i][j] + f.v[i][j]; }
      }
      __syncthreads();  // then the next chunk's copies and D's operand tiles
      GDR_FOR_TILE(kt, d.NK) PutFrag<kTC>(sD + kt * kTile, dd[kt]);
      continue;
    }
    __syncthreads();
    if constexpr (kFused) {
      LoadInputTile<kTC>(sA, qc, kst, L);
      LoadInputTile<kTC>(sT, kc, kst, L);
      if (d.NK > 1) {
        LoadInputTile<kTC>(sD, qc + kC, kst, L);
        LoadInputTile<kTC>(sD + kTile, kc + kC, kst, L);
      }
    }
    LoadTile<kTC>(sY, d_o + d.Vo(b, t0, hv) + vt * kC, int64_t{d.HV} * d.dv, L, gs.gam,
                  scale);
    const float gl = gs.gam[L - 1];
    if constexpr (kFused) {
      CpAsyncWaitAll();
      __syncthreads();
    }
    GDR_FOR_TILE(kt, d.NK) {
      if constexpr (!kFused) {
        LoadInputTile<kTC>(sA, qc + kt * kC, kst, L);
        LoadInputTile<kTC>(sT, kc + kt * kC, kst, L);
        CpAsyncWaitAll();
        __syncthreads();
      }
      Zero(f);
      Mma<kTC, true, false, kX, false>(f, kFused && kt == 1 ? sD : sA, sY);
      Mma<kTC, true, false, kX, false>(f, kFused && kt == 1 ? sD + kTile : sT, sX);
      GDR_FOR_FRAG(i, j, r, cc) { dd[kt].v[i][j] = gl * dd[kt].v[i][j] + f.v[i][j]; }
      if constexpr (!kFused) {
        PutFrag<kTC>(sD + kt * kTile, dd[kt]);
        __syncthreads();
      }
    }
    if constexpr (kFused) {
      __syncthreads();  // the sD slots' staged Q and K tiles are read
      GDR_FOR_TILE(kt, d.NK) PutFrag<kTC>(sD + kt * kTile, dd[kt]);
      __syncthreads();
    }
  }
}

// Per chunk: every gradient term local to the chunk given S (its start state), D (dL/dS at its
// end), V' and Y (see the derivation in kernels/cpu/gated_delta_rule.cc); with HV > H, dq and dk
// of this value head go to fp32 scratch (dqp, dkp, chunk-major) for ReduceKernel. Two groups of
// kThreads (threadIdx.y) share the tiles: group g computes one of each pair of products (phase
// A: g = 0 Q K^T and dP, g = 1 K K^T and dM; phase B: dk tile kp + g of each pair kp), so a
// thread holds a third of the sums it held as one group, and twice the warps hide the loads'
// latency.
template <typename T, bool kTC>
__global__ void __launch_bounds__(2 * kThreads)
    GradKernel(Dims d, const T* q, const T* k, const T* v, const float* gamma,
               const float* beta, const T* d_o, float scale, const float* S_all,
               const float* D_all, const float* Vp, const float* Y, float* dqp, float* dkp,
               T* dq_out, T* dk_out, T* dv_out, float* dgamma, float* dbeta) {
  constexpr bool kX = kExactInputs<T>;  // unscaled input tiles hold exact bf16 values
  constexpr int kN = 2 * kThreads;
  const int c = blockIdx.x, hv = blockIdx.y, b = blockIdx.z, h = hv / d.G;
  const int t0 = c * kC, L = min(kC, d.T - t0);
  const int grp = threadIdx.y, tid = threadIdx.x + kThreads * grp;
  extern __shared__ __align__(16) float smem[];
  Gates& gs = *reinterpret_cast<Gates*>(smem);
  float* small = smem + kGateFloats;
  float* svy = small;            // v_i . Y_i, by column half (group)
  float* srow = svy + 2 * kC;    // sum_j dE_ij E_ij (j < i)
  float* scol = srow + kC;       // sum_i dE_ij E_ij (i > j)
  float* sdbm = scol + kC;       // the M term of dbeta
  float* sqx1 = sdbm + kC;       // q_i . X1_i, in RowDotAdd's two slots per group
  float* skx2 = sqx1 + 4 * kC;   // k_i . X2_i
  float* skx3 = skx2 + 4 * kC;   // k_i . X3_i = de_i
  float* sdG = skx3 + 4 * kC;
  float* sred = sdG + kC;        // the warps' partials of <D, S>
  static_assert(kGateFloats + 5 * kC + 12 * kC + kC + kN / 32 <= kGradSmall);
  // Nine tile slots (Backward launches it with 9). Phase A: fp32 tiles sE, sQK, sKK, sDP, sDM and
  // operand tiles t1..t4 (t4 fp32); from the end of phase A the operand tiles dP (in t1) and dM
  // (in t2), and phase B's loads in the five slots of phase A's fp32 tiles and t3, t4.
  float* sE = smem + kGradSmall;
  float* sQK = sE + kTile;
  float* sKK = sQK + kTile;
  float* sDP = sKK + kTile;
  float* sDM = sDP + kTile;
  float* t1 = sDM + kTile;
  float* t2 = t1 + kTile;
  float* t3 = t2 + kTile;
  float* t4 = t3 + kTile;
  float* pDP = t1;
  float* pDM = t2;

  if (grp == 0) LoadGates(gs, gamma + d.Gb(b, t0, hv), beta + d.Gb(b, t0, hv), d.HV, L, false);
  __syncthreads();
  if (grp == 0) BuildE(sE, gs);
  if (tid < 4 * kC) sqx1[tid] = skx2[tid] = skx3[tid] = 0.f;
  if (tid < 2 * kC) svy[tid] = 0.f;
  const int64_t kst = int64_t{d.H} * d.dk, vst = int64_t{d.HV} * d.dv;
  const int64_t ch = d.Chunk(b, hv, c);
  const int64_t sd = int64_t{d.dk} * d.dv;
  const T* qc = q + d.Qk(b, t0, h);
  const T* kc = k + d.Qk(b, t0, h);
  const T* doc = d_o + d.Vo(b, t0, hv);
  const float* Yc = Y + ch * kC * d.dv;
  const float* Vc = Vp + ch * kC * d.dv;

  // A: Q K^T (group 0), K K^T (group 1); dP = dO V'^T (0), dM = Y V'^T (1); v . Y; dv = beta Y.
  {
    Frag f;
    Zero(f);
    for (int kt = 0; kt < d.NK; ++kt) {
      LoadTile<kTC, kN>(t1, qc + kt * kC, kst, L);
      LoadTile<kTC, kN>(t2, kc + kt * kC, kst, L);
      __syncthreads();
      Mma<kTC, false, true, kX, kX>(f, grp == 0 ? t1 : t2, t2);
      __syncthreads();
    }
    float* const qk = grp == 0 ? sQK : sKK;
    GDR_FOR_FRAG(i, j, r, cc) { qk[r * kLd + cc] = f.v[i][j]; }
    Zero(f);
    for (int vt = 0; vt < d.NV; ++vt) {
      LoadTile<kTC, kN>(t1, doc + vt * kC, vst, L);
      LoadTile<kTC, kN>(t2, Yc + vt * kC, d.dv, kC);
      LoadTile<kTC, kN>(t3, Vc + vt * kC, d.dv, kC);
      LoadTile<false, kN>(t4, v + d.Vo(b, t0, hv) + vt * kC, vst, L);
      __syncthreads();
      if (grp == 0)
        Mma<kTC, false, true, kX, false>(f, t1, t3);
      else
        Mma<kTC, false, true>(f, t2, t3);
      {  // v . Y and dv = beta Y: row r, columns 4 p + 16 i + [0, 4), i = 2 grp, 2 grp + 1
         // (4-value loads and stores; one value at a time this took 12% of the kernel)
        const int r = threadIdx.x >> 2, p = threadIdx.x & 3;
        const float br = gs.beta[r];
        float s = 0.f;
#pragma unroll
        for (int i = 0; i < 2; ++i) {
          const int x = 4 * p + 16 * (2 * grp + i);
          const float4 y = GetOp4<kTC>(t2, r, x);
          const float4 w = *reinterpret_cast<const float4*>(t4 + r * kLd + x);
          s += w.x * y.x + w.y * y.y + w.z * y.z + w.w * y.w;
          if (r < L)
            Store4(dv_out + d.Vo(b, t0 + r, hv) + vt * kC + x,
                   make_float4(br * y.x, br * y.y, br * y.z, br * y.w));
        }
        s += __shfl_xor_sync(0xffffffffu, s, 1);
        s += __shfl_xor_sync(0xffffffffu, s, 2);
        if (p == 0) svy[grp * kC + r] += s;
      }
      __syncthreads();
    }
    float* const pm = grp == 0 ? sDP : sDM;
    GDR_FOR_FRAG(i, j, r, cc) { pm[r * kLd + cc] = f.v[i][j]; }
    __syncthreads();
  }
  // The operand tiles dQK = s dP * E (pDP) and dA + dA^T with dA = -dM * beta_i E (pDM); in
  // place, the E terms of dG (sQK <- dE_ij E_ij) and the M term of dbeta (sKK).
  for (int e = tid; e < kC * kC; e += kN) {
    const int i = e >> 6, j = e & (kC - 1), x = i * kLd + j;
    if (j < i) {
      const float dp = scale * sDP[x], dm = -sDM[x], eij = sE[x], bi = gs.beta[i];
      const float kk = sKK[x];
      sQK[x] = (dp * sQK[x] + dm * bi * kk) * eij;
      sKK[x] = dm * kk * eij;
      PutOp<kTC>(pDP, i, j, dp * eij);
      PutOp<kTC>(pDM, i, j, dm * bi * eij);
    } else {
      const int xt = j * kLd + i;  // (j, i), below the diagonal when j > i
      PutOp<kTC>(pDP, i, j, i == j ? scale * sDP[x] : 0.f);
      PutOp<kTC>(pDM, i, j, i == j ? 0.f : -sDM[xt] * gs.beta[j] * sE[xt]);
      sQK[x] = sKK[x] = 0.f;
    }
  }
  __syncthreads();
  if (tid < kC) {
    float rs = 0.f, db = 0.f;
    for (int j = 0; j < kC; ++j) {
      rs += sQK[tid * kLd + j];
      db += sKK[tid * kLd + j];
    }
    srow[tid] = rs;
    sdbm[tid] = db;
  } else if (tid < 2 * kC) {
    const int j = tid - kC;
    float cs = 0.f;
    for (int i = 0; i < kC; ++i) cs += sQK[i * kLd + j];
    scol[j] = cs;
  }
  __syncthreads();

  // B: per pair of 64-column tiles of dk, kt = kp + grp: X1 = dO S^T, X2 = Y S^T, X3 = V' D^T
  // (sums over dv), their row dot products with q and k, then
  //   dq = dQK K + s diag(Gam) X1,
  //   dk = dQK^T Q + (dA + dA^T) K + diag(e) X3 - diag(Gam beta) X2.
  // dO, Y and V' load once per pair and dv tile; S and D of both tiles beside them.
  float ds = 0.f;  // <D, S>, summed as S and D load (LoadTilesDot)
  float* const sl[7] = {sE, sQK, sKK, sDP, sDM, t3, t4};  // dO, Y, V', (S, D) per group
  for (int kp = 0; kp < d.NK; kp += 2) {
    const int kt = kp + grp;
    const bool mine = kt < d.NK;  // dk = 64 or 192: group 1 has no tile in the last pair
    const float* pS = grp == 0 ? sl[3] : sl[5];
    const float* pD = grp == 0 ? sl[4] : sl[6];
    Frag f1, f2, f3;
    Zero(f1);
    Zero(f2);
    Zero(f3);
    for (int vt = 0; vt < d.NV; ++vt) {
      LoadTile<kTC, kN>(sl[0], doc + vt * kC, vst, L);
      LoadTile<kTC, kN>(sl[1], Yc + vt * kC, d.dv, kC);
      LoadTile<kTC, kN>(sl[2], Vc + vt * kC, d.dv, kC);
#pragma unroll
      for (int g = 0; g < 2; ++g) {
        if (kp + g < d.NK) {
          const int64_t so = ch * sd + int64_t{kp + g} * kC * d.dv + vt * kC;
          ds += LoadTilesDot<kTC, kN>(sl[3 + 2 * g], S_all + so, sl[4 + 2 * g], D_all + so,
                                      d.dv);
        }
      }
      __syncthreads();
      if (mine) {
        Mma<kTC, false, true, kX, false>(f1, sl[0], pS);
        Mma<kTC, false, true>(f2, sl[1], pS);
        Mma<kTC, false, true>(f3, sl[2], pD);
      }
      __syncthreads();
    }
    // Q and K tiles of the pair (in the slots of dO, Y, V' and the first S), then each group's
    // sums and products.
#pragma unroll
    for (int g = 0; g < 2; ++g) {
      if (kp + g < d.NK) {
        LoadTile<kTC, kN>(sl[2 * g], qc + (kp + g) * kC, kst, L);
        LoadTile<kTC, kN>(sl[2 * g + 1], kc + (kp + g) * kC, kst, L);
      }
    }
    __syncthreads();
    if (mine) {
      const float* tq = grp == 0 ? sl[0] : sl[2];
      const float* tk = grp == 0 ? sl[1] : sl[3];
      RowDotAdd<kTC>(f1, tq, sqx1 + grp * 2 * kC);
      RowDotAdd<kTC>(f2, tk, skx2 + grp * 2 * kC);
      RowDotAdd<kTC>(f3, tk, skx3 + grp * 2 * kC);
      GDR_FOR_FRAG(i, j, r, cc) {
        f1.v[i][j] *= scale * gs.gam[r];
        f3.v[i][j] = gs.e[r] * f3.v[i][j] - gs.bg[r] * f2.v[i][j];
      }
      Mma<kTC, false, false, false, kX>(f1, pDP, tk);
      Mma<kTC, true, false, false, kX>(f3, pDP, tq);
      Mma<kTC, false, false, false, kX>(f3, pDM, tk);
      if (d.G == 1) {  // one value head per key head: final dq, dk
        T* dqc = dq_out + d.Qk(b, t0, h) + kt * kC;
        T* dkc = dk_out + d.Qk(b, t0, h) + kt * kC;
        GDR_FOR_FRAG(i, j, r, cc) {
          if (r < L) {
            dqc[r * kst + cc] = FromF<T>(f1.v[i][j]);
            dkc[r * kst + cc] = FromF<T>(f3.v[i][j]);
          }
        }
      } else {
        StoreFrag<kTC>(dqp + ch * kC * d.dk + kt * kC, d.dk, f1);
        StoreFrag<kTC>(dkp + ch * kC * d.dk + kt * kC, d.dk, f3);
      }
    }
    __syncthreads();
  }
  for (int o = 16; o > 0; o >>= 1) ds += __shfl_xor_sync(0xffffffffu, ds, o);
  if ((tid & 31) == 0) sred[tid >> 5] = ds;
  __syncthreads();

  // C: per token dbeta and dG, then dgamma_j = sum_{i >= j} dG_i.
  //   dbeta_i = (M term) + v_i . Y_i - Gam_i k_i . X2_i
  //   dG_i = (E terms) + Gam_i (s q_i . X1_i - beta_i k_i . X2_i) - [i < L-1] e_i de_i
  //   dG_{L-1} += sum_{i < L-1} e_i de_i + Gam_{L-1} <D, S>
  if (tid < kC) {  // fold the groups' and RowDotAdd's slots
    sqx1[tid] += sqx1[kC + tid] + (sqx1[2 * kC + tid] + sqx1[3 * kC + tid]);
    skx2[tid] += skx2[kC + tid] + (skx2[2 * kC + tid] + skx2[3 * kC + tid]);
    skx3[tid] += skx3[kC + tid] + (skx3[2 * kC + tid] + skx3[3 * kC + tid]);
    svy[tid] += svy[kC + tid];
  }
  __syncthreads();
  if (tid < L) {
    const int i = tid;
    dbeta[d.Gb(b, t0 + i, hv)] = sdbm[i] + svy[i] - gs.gam[i] * skx2[i];
    const float dgam = scale * sqx1[i] - gs.beta[i] * skx2[i];
    float dg = srow[i] - scol[i] + dgam * gs.gam[i];
    if (i < L - 1) dg -= skx3[i] * gs.e[i];
    sdG[i] = dg;
  }
  __syncthreads();
  if (tid == 0) {
    float dsum = 0.f;
    for (int w = 0; w < kN / 32; ++w) dsum += sred[w];
    float extra = dsum * gs.gam[L - 1];
    for (int i = 0; i < L - 1; ++i) extra += skx3[i] * gs.e[i];
    sdG[L - 1] += extra;
    float acc = 0.f;
    for (int i = L - 1; i >= 0; --i) {
      acc += sdG[i];
      dgamma[d.Gb(b, t0 + i, hv)] = acc;
    }
  }
}

// dq, dk [B, T, H, dk] = sums of the per-value-head scratch over each key head's group.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    ReduceKernel(Dims d, const float* dqp, const float* dkp, T* dq, T* dk) {
  const int64_t n = int64_t{d.B} * d.T * d.H * d.dk;
  for (int64_t idx = blockIdx.x * int64_t{kThreads} + threadIdx.x; idx < n;
       idx += int64_t{gridDim.x} * kThreads) {
    const int x = static_cast<int>(idx % d.dk);
    int64_t rest = idx / d.dk;
    const int h = static_cast<int>(rest % d.H);
    rest /= d.H;
    const int t = static_cast<int>(rest % d.T);
    const int b = static_cast<int>(rest / d.T);
    const int c = t / kC, i = t % kC;
    float sq = 0.f, sk = 0.f;
    for (int g = 0; g < d.G; ++g) {
      const int64_t off = (d.Chunk(b, h * d.G + g, c) * kC + i) * d.dk + x;
      sq += dqp[off];
      sk += dkp[off];
    }
    dq[idx] = FromF<T>(sq);
    dk[idx] = FromF<T>(sk);
  }
}

// ---------------------------------------------------------------------------------------------
// Host side.

void Validate(const GdrShape& s, const char* fn) {
  const char* bad = nullptr;
  if (s.B < 0) bad = "B must be >= 0";
  else if (s.T < 0) bad = "T must be >= 0";
  else if (s.H <= 0) bad = "H must be > 0";
  else if (s.HV <= 0 || s.HV % s.H != 0) bad = "HV must be a positive multiple of H";
  else if (s.dk < kC || s.dk > kMaxTiles * kC || s.dk % kC != 0) bad = "dk must be 64, 128, 192 or 256";
  else if (s.dv < kC || s.dv > kMaxTiles * kC || s.dv % kC != 0) bad = "dv must be 64, 128, 192 or 256";
  if (bad != nullptr) {
    std::fprintf(stderr, "%s: invalid shape B=%d T=%d H=%d HV=%d dk=%d dv=%d: %s\n", fn, s.B, s.T,
                 s.H, s.HV, s.dk, s.dv, bad);
    std::abort();
  }
}

// The kernels read q, k, v and d_o and write dv 16 bytes at a time.
void CheckAligned(const void* p, const char* name, const char* fn) {
  if (reinterpret_cast<uintptr_t>(p) % 16 != 0) {
    std::fprintf(stderr, "%s: %s is not 16-byte aligned\n", fn, name);
    std::abort();
  }
}

Dims MakeDims(const GdrShape& s) {
  Dims d;
  d.B = s.B, d.T = s.T, d.H = s.H, d.HV = s.HV, d.dk = s.dk, d.dv = s.dv;
  d.G = s.HV / s.H;
  d.NC = (s.T + kC - 1) / kC;
  d.NK = s.dk / kC;
  d.NV = s.dv / kC;
  return d;
}

// A launch: its grid, its block (`groups` groups of kThreads, along y) and its dynamic shared
// memory (`tiles` tiles after `small` floats of per-token scratch).
struct Shape {
  dim3 grid, block;
  size_t smem;
};
Shape LaunchShape(dim3 grid, int tiles, int small = kGateFloats, int groups = 1) {
  return {grid, dim3(kThreads, groups),
          (small + static_cast<size_t>(tiles) * kTile) * sizeof(float)};
}

// Raises a kernel's dynamic shared-memory limit when it needs more than the default 48 KB (every
// launch: the setting belongs to the current device).
template <typename Kernel>
void AllowSmem(Kernel kernel, size_t bytes) {
  if (bytes > 48 * 1024)
    GDR_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(bytes)));
}

// Stream-ordered scratch from the device's default pool, kept cached between calls.
float* Scratch(size_t floats, cudaStream_t stream) {
  int dev = 0;
  GDR_CUDA_CHECK(cudaGetDevice(&dev));
  cudaMemPool_t pool;
  GDR_CUDA_CHECK(cudaDeviceGetDefaultMemPool(&pool, dev));
  uint64_t threshold = UINT64_MAX;
  GDR_CUDA_CHECK(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &threshold));
  void* p = nullptr;
  GDR_CUDA_CHECK(cudaMallocAsync(&p, floats * sizeof(float), stream));
  return static_cast<float*>(p);
}

// Which kernels run their block products on the bf16 tensor cores (split operands, see Mma):
// bit n for kernel n (PrepKernel 0, StateKernel 1, OutputKernel 2, DvLocalKernel 3,
// ReverseKernel 4, GradKernel 5). For bf16 inputs all; for fp32 inputs all with
// GdrProducts::kSplitBf16, none with kFloat32 (fp32 FMA keeps fp32 accuracy; the split operands
// carry about 16 bits). The environment variables GDR_CUDA_TC_MASK (bf16) and
// GDR_CUDA_FP32_TC_MASK (fp32), read on every call, override that, to compare accuracy and speed.
template <typename T>
int TcMask(GdrProducts products) {
  const bool bf16 = std::is_same_v<T, __nv_bfloat16>;
  const char* s = std::getenv(bf16 ? "GDR_CUDA_TC_MASK" : "GDR_CUDA_FP32_TC_MASK");
  if (s != nullptr) return static_cast<int>(std::strtol(s, nullptr, 0));
  return bf16 || products == GdrProducts::kSplitBf16 ? 0x3f : 0;
}

template <typename... Params, typename... Args>
void Launch(void (*kernel)(Params...), const Shape& shape, cudaStream_t stream, Args&&... args) {
  AllowSmem(kernel, shape.smem);
  kernel<<<shape.grid, shape.block, shape.smem, stream>>>(std::forward<Args>(args)...);
  GDR_CUDA_CHECK(cudaGetLastError());
}

// Launches KERNEL<T, kTC> with kTC from bit `bit` of the mask `tc` (TcMask's, in scope).
#define GDR_LAUNCH(KERNEL, bit, ...)                                  \
  do {                                                                \
    if ((tc >> (bit)) & 1)                                            \
      Launch(KERNEL<T, true>, __VA_ARGS__);                           \
    else                                                              \
      Launch(KERNEL<T, false>, __VA_ARGS__);                          \
  } while (0)
// The same for the kernels that hold per-dk-tile registers (the sequential kernels' state), in
// two sizes: dk <= 128 (the common case, without spills) and dk <= 256 (d in scope).
#define GDR_LAUNCH_NK(KERNEL, bit, ...)                              \
  do {                                                                \
    const bool tc_ = (tc >> (bit)) & 1;                               \
    if (d.NK <= 2)                                                    \
      tc_ ? Launch(KERNEL<T, true, 2>, __VA_ARGS__)                   \
          : Launch(KERNEL<T, false, 2>, __VA_ARGS__);                 \
    else                                                              \
      tc_ ? Launch(KERNEL<T, true, kMaxTiles>, __VA_ARGS__)           \
          : Launch(KERNEL<T, false, kMaxTiles>, __VA_ARGS__);         \
  } while (0)

struct Work {
  float *W = nullptr, *U = nullptr, *S = nullptr, *Vp = nullptr;
  float *Tm = nullptr, *D = nullptr, *dkp = nullptr, *Y = nullptr;
  float* base = nullptr;
};

// What the backward reads of the forward's work, in this order in a saved buffer: chunk-start
// states S, V' and T.
size_t SavedSizes(const Dims& d, size_t sizes[3]) {
  const size_t nch = static_cast<size_t>(d.B) * d.HV * d.NC, n64 = nch * kC;
  sizes[0] = nch * d.dk * d.dv, sizes[1] = n64 * d.dv, sizes[2] = nch * kC * kC;
  return sizes[0] + sizes[1] + sizes[2];
}

// Scratch for one call. `saved` (forward: to write, backward: to read; nullptr: none) holds S,
// V' and T instead of the scratch; a backward from it runs no PrepKernel or StateKernel, so needs
// W only as dq's scratch (HV > H) and no U.
Work Allocate(const Dims& d, bool backward, float* saved, cudaStream_t stream) {
  const size_t nch = static_cast<size_t>(d.B) * d.HV * d.NC, n64 = nch * kC;
  size_t kept[3];
  SavedSizes(d, kept);
  const bool prep = !backward || saved == nullptr, own = saved == nullptr;
  const size_t sizes[] = {prep || d.G > 1 ? n64 * d.dk : 0,
                          prep ? n64 * d.dv : 0,
                          own ? kept[0] : 0,
                          own ? kept[1] : 0,
                          own && backward ? kept[2] : 0,
                          backward ? nch * d.dk * d.dv : 0,
                          backward && d.G > 1 ? n64 * d.dk : 0,
                          backward ? n64 * d.dv : 0};
  size_t total = 0;
  for (size_t s : sizes) total += (s + 63) / 64 * 64;
  Work w;
  w.base = Scratch(total, stream);
  float* p = w.base;
  float** slots[] = {&w.W, &w.U, &w.S, &w.Vp, &w.Tm, &w.D, &w.dkp, &w.Y};
  for (int i = 0; i < 8; ++i) {
    *slots[i] = sizes[i] ? p : nullptr;
    p += (sizes[i] + 63) / 64 * 64;
  }
  if (saved != nullptr) w.S = saved, w.Vp = w.S + kept[0], w.Tm = w.Vp + kept[1];
  return w;
}

// A second stream of the current device for work that overlaps the process's stream, and the
// events that order the two (made once: gdn drives one device a process).
struct SideStream {
  cudaStream_t stream;
  cudaEvent_t fork, join;
};
const SideStream& Side() {
  static const SideStream side = [] {
    SideStream s;
    GDR_CUDA_CHECK(cudaStreamCreateWithFlags(&s.stream, cudaStreamNonBlocking));
    GDR_CUDA_CHECK(cudaEventCreateWithFlags(&s.fork, cudaEventDisableTiming));
    GDR_CUDA_CHECK(cudaEventCreateWithFlags(&s.join, cudaEventDisableTiming));
    return s;
  }();
  return side;
}

// PrepKernel then StateKernel: chunk-start states and V' in w (and T where w has its slot).
// `between` runs after PrepKernel's launch, before StateKernel's.
template <typename T, typename Between = void (*)()>
void ForwardStates(const Dims& d, const T* k, const T* v, const float* gamma, const float* beta,
                   const Work& w, float* final_state, int tc, cudaStream_t stream,
                   Between between = [] {}) {
  const dim3 chunks(d.NC, d.HV, d.B), columns(d.NV, d.HV, d.B);
  // W and T in the form their readers take them (split planes for StateKernel and ReverseKernel
  // on the tensor cores: StoreFragSplit, StoreTileSplit).
  const bool w_split = (tc >> 1) & 1, t_split = (tc >> 4) & 1;
  GDR_LAUNCH(PrepKernel, 0, LaunchShape(chunks, 4), stream, d, k, v, gamma, beta, w.W, w.U, w.Tm,
             w_split, t_split);
  between();
  GDR_LAUNCH_NK(StateKernel, 1, LaunchShape(columns, d.NK <= 2 ? 3 * d.NK : d.NK + 2), stream, d,
                w.W, w.U, k, gamma, w.S, w.Vp, final_state);
}

template <typename T>
void Forward(const GdrShape& s, const T* q, const T* k, const T* v, const float* gamma,
             const float* beta, float scale, T* o, float* final_state, GdrProducts products,
             cudaStream_t stream, float* saved) {
  Validate(s, "GdrForward");
  CheckAligned(q, "q", "GdrForward"), CheckAligned(k, "k", "GdrForward");
  CheckAligned(v, "v", "GdrForward");
  if (s.B == 0) return;
  if (s.T == 0) {
    if (final_state != nullptr)
      GDR_CUDA_CHECK(cudaMemsetAsync(
          final_state, 0, sizeof(float) * s.B * s.HV * s.dk * size_t(s.dv), stream));
    return;
  }
  const Dims d = MakeDims(s);
  const int tc = TcMask<T>(products);
  const Work w = Allocate(d, false, saved, stream);
  ForwardStates(d, k, v, gamma, beta, w, final_state, tc, stream);
  GDR_LAUNCH(OutputKernel, 2, LaunchShape(dim3(d.NC, d.HV, d.B), 5), stream, d, q, k, gamma, w.S,
             w.Vp, scale, o);
  GDR_CUDA_CHECK(cudaFreeAsync(w.base, stream));
}

template <typename T>
void Backward(const GdrShape& s, const T* q, const T* k, const T* v, const float* gamma,
              const float* beta, float scale, const T* d_o, T* dq, T* dk, T* dv, float* dgamma,
              float* dbeta, GdrProducts products, cudaStream_t stream, const float* saved) {
  Validate(s, "GdrBackward");
  CheckAligned(q, "q", "GdrBackward"), CheckAligned(k, "k", "GdrBackward");
  CheckAligned(v, "v", "GdrBackward"), CheckAligned(d_o, "d_o", "GdrBackward");
  CheckAligned(dv, "dv", "GdrBackward");
  if (s.B == 0 || s.T == 0) return;
  const Dims d = MakeDims(s);
  const int tc = TcMask<T>(products);
  // S, V' and T point into the saved buffer, which the backward's kernels only read.
  const Work w = Allocate(d, true, const_cast<float*>(saved), stream);
  const dim3 chunks(d.NC, d.HV, d.B), columns(d.NV, d.HV, d.B);
  if (saved != nullptr) {
    GDR_LAUNCH(DvLocalKernel, 3, LaunchShape(chunks, 4), stream, d, q, k, gamma, d_o, scale, w.Y);
  } else {
    // DvLocalKernel needs nothing of PrepKernel's and StateKernel's: it runs on a second stream
    // beside StateKernel (launched after it, so that StateKernel's few blocks, one per b, hv and
    // 64 state columns, are placed first), on the SMs they leave idle. Its dVl (then Y) has a slot
    // of its own, U being StateKernel's input.
    const SideStream& side = Side();
    ForwardStates(d, k, v, gamma, beta, w, nullptr, tc, stream, [&] {
      GDR_CUDA_CHECK(cudaEventRecord(side.fork, stream));
      GDR_CUDA_CHECK(cudaStreamWaitEvent(side.stream, side.fork, 0));
    });
    GDR_LAUNCH(DvLocalKernel, 3, LaunchShape(chunks, 4), side.stream, d, q, k, gamma, d_o, scale,
               w.Y);
    GDR_CUDA_CHECK(cudaEventRecord(side.join, side.stream));
    GDR_CUDA_CHECK(cudaStreamWaitEvent(stream, side.join, 0));
  }
  float* Y = w.Y;
  float* dqp = w.W;  // W is dead after StateKernel (or never held the forward's W)
  // ReverseKernel: D's slots (two with dk <= 128, see kPaired), T, dVl, and two more.
  GDR_LAUNCH_NK(ReverseKernel, 4, LaunchShape(columns, std::max(d.NK, 2) + 4), stream, d, q, k,
                gamma, beta, d_o, scale, w.Tm, Y, w.D);
  GDR_LAUNCH(GradKernel, 5, LaunchShape(chunks, 9, kGradSmall, 2), stream, d, q, k, v, gamma, beta,
             d_o, scale, w.S, w.D, w.Vp, Y, dqp, w.dkp, dq, dk, dv, dgamma, dbeta);
  if (d.G > 1) {
    const int64_t n = int64_t{d.B} * d.T * d.H * d.dk;
    const int blocks = static_cast<int>(std::min<int64_t>((n + kThreads - 1) / kThreads, 65536));
    ReduceKernel<T><<<blocks, kThreads, 0, stream>>>(d, dqp, w.dkp, dq, dk);
    GDR_CUDA_CHECK(cudaGetLastError());
  }
  GDR_CUDA_CHECK(cudaFreeAsync(w.base, stream));
}

}  // namespace

size_t GdrSavedFloats(const GdrShape& s) {
  Validate(s, "GdrSavedFloats");
  size_t sizes[3];
  return SavedSizes(MakeDims(s), sizes);
}

void GdrForward(const GdrShape& s, const float* q, const float* k, const float* v,
                const float* gamma, const float* beta, float scale, float* o, float* final_state,
                cudaStream_t stream, GdrProducts products, float* saved) {
  Forward<float>(s, q, k, v, gamma, beta, scale, o, final_state, products, stream, saved);
}
void GdrBackward(const GdrShape& s, const float* q, const float* k, const float* v,
                 const float* gamma, const float* beta, float scale, const float* d_o, float* dq,
                 float* dk, float* dv, float* dgamma, float* dbeta, cudaStream_t stream,
                 GdrProducts products, const float* saved) {
  Backward<float>(s, q, k, v, gamma, beta, scale, d_o, dq, dk, dv, dgamma, dbeta, products,
                  stream, saved);
}
void GdrForward(const GdrShape& s, const __nv_bfloat16* q, const __nv_bfloat16* k,
                const __nv_bfloat16* v, const float* gamma, const float* beta, float scale,
                __nv_bfloat16* o, float* final_state, cudaStream_t stream, float* saved) {
  Forward<__nv_bfloat16>(s, q, k, v, gamma, beta, scale, o, final_state, GdrProducts::kSplitBf16,
                         stream, saved);
}
void GdrBackward(const GdrShape& s, const __nv_bfloat16* q, const __nv_bfloat16* k,
                 const __nv_bfloat16* v, const float* gamma, const float* beta, float scale,
                 const __nv_bfloat16* d_o, __nv_bfloat16* dq, __nv_bfloat16* dk,
                 __nv_bfloat16* dv, float* dgamma, float* dbeta, cudaStream_t stream,
                 const float* saved) {
  Backward<__nv_bfloat16>(s, q, k, v, gamma, beta, scale, d_o, dq, dk, dv, dgamma, dbeta,
                          GdrProducts::kSplitBf16, stream, saved);
}

}  // namespace gdn::cuda
