// Elementwise ops, reductions and the optimizer updates on CUDA (twins of kernels/cpu/elementwise.cc
// and kernels/cpu/optimizer_updates.cc, same arithmetic in float32; reductions in double).
#include <cuda_bf16.h>

#include <cmath>
#include <initializer_list>
#include <cstring>
#include <vector>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cuda_ops.h"
#include "kernels/update_pieces.h"
#include "runtime/cuda_device.h"

namespace gdn::cuda {

namespace {
// AddColumnSumsKernel's block: 8 columns x 64 lanes. Narrow blocks, so that a norm's weight
// gradient (1024 columns) still spreads over 128 blocks: with 32 columns a block, 32 blocks read
// all the partial rows and a launch took 9 us (H200).
constexpr int kSumColumns = 8, kSumLanes = 64;

// Thread (x, y) sums parts y, y + 64, ... of column 8 blockIdx.x + x; then the 64 lanes' sums are
// added in lane order: a fixed order, so the result repeats bit for bit.
__global__ void AddColumnSumsKernel(const float* partial, int parts, int64_t cols, float* out) {
  __shared__ float lane_sum[kSumLanes][kSumColumns + 1];
  const int64_t c = blockIdx.x * int64_t{kSumColumns} + threadIdx.x;
  float s = 0;
  if (c < cols) {
#pragma unroll 4
    for (int p = threadIdx.y; p < parts; p += kSumLanes) s += partial[p * cols + c];
  }
  lane_sum[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.y == 0 && c < cols) {
    float total = 0;
    for (int y = 0; y < kSumLanes; ++y) total += lane_sum[y][threadIdx.x];
    out[c] += total;
  }
}
}  // namespace

void AddColumnSums(const float* partial, int parts, int64_t cols, float* out) {
  if (cols == 0) return;
  AddColumnSumsKernel<<<static_cast<unsigned>((cols + kSumColumns - 1) / kSumColumns),
                        dim3(kSumColumns, kSumLanes), 0, Stream()>>>(partial, parts, cols, out);
  CUDA_CHECK_LAUNCH();
}

namespace {
void RoundToBf16(const float* in, void* out, int64_t n) {
  __nv_bfloat16* o = static_cast<__nv_bfloat16*>(out);
  // Four values per thread (16 bytes in, 8 out) where the pointers allow: a step of the reference
  // model rounds about 20 GB of operands, so this runs at memory speed.
  if (reinterpret_cast<uintptr_t>(in) % 16 == 0 && reinterpret_cast<uintptr_t>(out) % 8 == 0) {
    const int64_t quads = n / 4;
    const StoredIn src{in, false};
    const OperandOut dst{out, true};
    ForEach4(4 * quads, [=] __device__(int64_t i) { dst.Set4(i, src.Load4(i)); });
    in += 4 * quads, o += 4 * quads, n -= 4 * quads;
  }
  ForEach(n, [=] __device__(int64_t i) { o[i] = __float2bfloat16_rn(in[i]); });
}

// x float32 and out a bf16 CUDA tensor of its element count (ToBf16, ToBf16Pieces).
void CheckRoundingInto(const Tensor& x, const Tensor& out, const char* op) {
  CheckF32(x, op);
  CHECK(out.dtype() == DType::kBF16 && out.device() == Device::kCUDA && out.numel() == x.numel())
      << op << ": output " << ShapeString(out.shape()) << " " << DTypeName(out.dtype()) << " for "
      << ShapeString(x.shape());
}
}  // namespace

Tensor ToBf16(const Tensor& x) {
  Tensor out = Tensor::Empty(x.shape(), DType::kBF16, Device::kCUDA);
  ToBf16(x, out);
  return out;
}

void ToBf16(const Tensor& x, const Tensor& out) {
  CheckRoundingInto(x, out, "ToBf16");
  RoundToBf16(F32(x), out.raw(), x.numel());
}

Tensor ToFloat32(const Tensor& x) {
  const StoredIn px = CheckStoredIn(x, x.numel(), "ToFloat32");
  Tensor out = Tensor::Empty(x.shape(), DType::kF32, Device::kCUDA);
  float* po = F32(out);
  ForEach(x.numel(), [=] __device__(int64_t i) { po[i] = px[i]; });
  return out;
}

void Fill(const Tensor& x, double value) {
  CheckF32(x, "Fill");
  float* p = F32(x);
  const float v = static_cast<float>(value);
  ForEach(x.numel(), [=] __device__(int64_t i) { p[i] = v; });
}

void Add(const Tensor& a, const Tensor& b, const Tensor& out) {
  CheckF32(a, "Add");
  CheckSame(a, b, "Add");
  CheckSame(a, out, "Add");
  const float *pa = F32(a), *pb = F32(b);
  float* po = F32(out);
  ForEach(a.numel(), [=] __device__(int64_t i) { po[i] = pa[i] + pb[i]; });
}

void Axpy(double alpha, const Tensor& x, const Tensor& y) {
  CheckF32(x, "Axpy");
  CheckSame(x, y, "Axpy");
  const float* px = F32(x);
  float* py = F32(y);
  const float al = static_cast<float>(alpha);
  ForEach(x.numel(), [=] __device__(int64_t i) { py[i] += al * px[i]; });
}

void Scale(const Tensor& x, double alpha) {
  CheckF32(x, "Scale");
  float* p = F32(x);
  const float al = static_cast<float>(alpha);
  ForEach(x.numel(), [=] __device__(int64_t i) { p[i] *= al; });
}

double SumSquares(const Tensor& x) {
  CheckF32(x, "SumSquares");
  const float* p = F32(x);
  return SumToHost(
      [=] __device__(int64_t i) { return static_cast<double>(p[i]) * static_cast<double>(p[i]); },
      x.numel());
}

double MeanAbs(const Tensor& x) {
  CheckF32(x, "MeanAbs");
  const float* p = F32(x);
  const double total =
      SumToHost([=] __device__(int64_t i) { return fabs(static_cast<double>(p[i])); }, x.numel());
  return x.numel() ? total / x.numel() : 0.0;
}

bool AllFinite(const Tensor& x) {
  CheckF32(x, "AllFinite");
  const float* p = F32(x);
  return SumToHost([=] __device__(int64_t i) { return isfinite(p[i]) ? 0.0 : 1.0; },
                   x.numel()) == 0;
}

namespace {
__device__ __forceinline__ float SwigluValue(float g, float u) { return g * SigmoidF(g) * u; }
// dup = dh silu(g); dgate = dh u silu'(g), silu'(g) = s (1 + g (1 - s)).
__device__ __forceinline__ void SwigluGrads(float g, float u, float dh, float& dg, float& du) {
  const float s = SigmoidF(g);
  du = dh * (g * s);
  dg = dh * u * s * (1.0f + g * (1.0f - s));
}
}  // namespace

void SwigluForward(const Tensor& gate, const Tensor& up, const Tensor& h) {
  const StoredIn pg = CheckStoredIn(gate, gate.numel(), "SwigluForward gate");
  const StoredIn pu = CheckStoredIn(up, gate.numel(), "SwigluForward up");
  const OperandOut ph = CheckOperandOut(h, gate, "SwigluForward");
  if (Aligned4(gate) && Aligned4(up) && Aligned4(h)) {
    ForEach4(gate.numel(), [=] __device__(int64_t i) {
      const float4 g = pg.Load4(i), u = pu.Load4(i);
      ph.Set4(i, make_float4(SwigluValue(g.x, u.x), SwigluValue(g.y, u.y), SwigluValue(g.z, u.z),
                             SwigluValue(g.w, u.w)));
    });
    return;
  }
  ForEach(gate.numel(), [=] __device__(int64_t i) { ph.Set(i, SwigluValue(pg[i], pu[i])); });
}

void SwigluBackward(const Tensor& gate, const Tensor& up, const Tensor& dh, const Tensor& dgate,
                    const Tensor& dup, const Tensor& h) {
  const StoredIn pg = CheckStoredIn(gate, dh.numel(), "SwigluBackward gate");
  const StoredIn pu = CheckStoredIn(up, dh.numel(), "SwigluBackward up");
  CheckF32(dh, "SwigluBackward");
  const OperandOut pdg = CheckOperandOut(dgate, dh, "SwigluBackward");
  const OperandOut pdu = CheckOperandOut(dup, dh, "SwigluBackward");
  const OperandOut ph =
      h.defined() ? CheckOperandOut(h, dh, "SwigluBackward h") : OperandOut{nullptr, false};
  const StoredIn pdh{dh.raw(), false};
  if (Aligned4(gate) && Aligned4(up) && Aligned4(dh) && Aligned4(dgate) && Aligned4(dup) &&
      (!h.defined() || Aligned4(h))) {
    ForEach4(dh.numel(), [=] __device__(int64_t i) {
      const float4 g = pg.Load4(i), u = pu.Load4(i), d = pdh.Load4(i);
      float4 dg, du;
      SwigluGrads(g.x, u.x, d.x, dg.x, du.x);
      SwigluGrads(g.y, u.y, d.y, dg.y, du.y);
      SwigluGrads(g.z, u.z, d.z, dg.z, du.z);
      SwigluGrads(g.w, u.w, d.w, dg.w, du.w);
      pdg.Set4(i, dg);
      pdu.Set4(i, du);
      if (ph.p)
        ph.Set4(i, make_float4(SwigluValue(g.x, u.x), SwigluValue(g.y, u.y),
                               SwigluValue(g.z, u.z), SwigluValue(g.w, u.w)));
    });
    return;
  }
  ForEach(dh.numel(), [=] __device__(int64_t i) {
    float dg, du;
    SwigluGrads(pg[i], pu[i], pdh[i], dg, du);
    pdg.Set(i, dg);
    pdu.Set(i, du);
    if (ph.p) ph.Set(i, SwigluValue(pg[i], pu[i]));
  });
}

void AdamWUpdate(const Tensor& p, const Tensor& g, const Tensor& m, const Tensor& v, double lr,
                 double beta1, double beta2, double eps, double weight_decay, int64_t step) {
  CheckF32(p, "AdamWUpdate");
  CheckSame(p, g, "AdamWUpdate");
  CheckSame(p, m, "AdamWUpdate");
  CheckSame(p, v, "AdamWUpdate");
  CHECK_GE(step, 1);
  float *pp = F32(p), *pm = F32(m), *pv = F32(v);
  const float* pg = F32(g);
  const float b1 = beta1, b2 = beta2, e = eps, l = lr, wd = weight_decay;
  // The bias corrections as the CPU computes them (float pow), on the host.
  const float c1 = 1.0f / (1.0f - std::pow(b1, static_cast<float>(step)));
  const float c2 = 1.0f / (1.0f - std::pow(b2, static_cast<float>(step)));
  ForEach(p.numel(), [=] __device__(int64_t i) {
    const float mi = b1 * pm[i] + (1.0f - b1) * pg[i];
    const float vi = b2 * pv[i] + (1.0f - b2) * pg[i] * pg[i];
    pm[i] = mi;
    pv[i] = vi;
    pp[i] -= l * (mi * c1 / (sqrtf(vi * c2) + e) + wd * pp[i]);
  });
}

// --- The multi-tensor updates: one launch, one block per work item of up to kPieceChunk
// elements of one piece; the arithmetic is AdamWUpdate's and SgdUpdate's, element for element.
namespace {
constexpr int64_t kPieceChunk = 4096;
struct DevicePiece {
  int64_t p, s, n;
  float lr, wd;
};
struct PieceItem {
  int64_t piece, start;
};

// The pieces and their work items in one device block (freed in stream order by the caller).
struct PieceTable {
  void* block = nullptr;
  size_t bytes = 0;
  const void* pieces = nullptr;
  const PieceItem* items = nullptr;
  int64_t item_count = 0;
  template <typename Piece>
  const Piece* as() const { return static_cast<const Piece*>(pieces); }
};
// Piece: the kernel's description of a piece, n its length in values.
template <typename Piece>
PieceTable UploadPieces(const std::vector<Piece>& dp) {
  std::vector<PieceItem> items;
  for (size_t i = 0; i < dp.size(); ++i)
    for (int64_t start = 0; start < dp[i].n; start += kPieceChunk)
      items.push_back({static_cast<int64_t>(i), start});
  PieceTable t;
  t.item_count = static_cast<int64_t>(items.size());
  const size_t piece_bytes = dp.size() * sizeof(Piece);
  t.bytes = piece_bytes + items.size() * sizeof(PieceItem);
  if (t.bytes == 0) return t;
  std::vector<char> host(t.bytes);
  std::memcpy(host.data(), dp.data(), piece_bytes);
  std::memcpy(host.data() + piece_bytes, items.data(), items.size() * sizeof(PieceItem));
  t.block = DeviceAlloc(t.bytes);
  CopyHostToDevice(t.block, host.data(), t.bytes);
  t.pieces = t.block;
  t.items = reinterpret_cast<const PieceItem*>(static_cast<const char*>(t.block) + piece_bytes);
  return t;
}
PieceTable UploadPieces(const std::vector<UpdatePiece>& pieces) {
  std::vector<DevicePiece> dp;
  for (const UpdatePiece& u : pieces)
    dp.push_back({u.p_offset, u.state_offset, u.length, static_cast<float>(u.lr),
                  static_cast<float>(u.weight_decay)});
  return UploadPieces(dp);
}

// One AdamW step of one value (p, m, v updated in place), the gradient taken times gs (Scale's
// product, so the result is what scaling g first would give).
__device__ __forceinline__ void AdamWValue(float& p, float g, float& m, float& v, float b1, float b2,
                                           float e, float c1, float c2, float lr, float wd,
                                           float gs) {
  g = __fmul_rn(g, gs);  // rounded as Scale rounds it (no fused multiply-add)
  m = b1 * m + (1.0f - b1) * g;
  v = b2 * v + (1.0f - b2) * g * g;
  p -= lr * (m * c1 / (sqrtf(v * c2) + e) + wd * p);
}

// A block per work item. Where the piece's parameter and state offsets are multiples of 4 (and
// the buffers 16-byte aligned: vec), four values a load; the tensors never overlap
// (__restrict__), so loads of several iterations can be in flight together.
__global__ void AdamWPiecesKernel(const DevicePiece* pieces, const PieceItem* items,
                                  float* __restrict__ p, const float* __restrict__ g,
                                  float* __restrict__ m, float* __restrict__ v, float b1, float b2,
                                  float e, float c1, float c2, float gs, bool vec) {
  const PieceItem it = items[blockIdx.x];
  const DevicePiece pc = pieces[it.piece];
  const int64_t end = it.start + kPieceChunk < pc.n ? it.start + kPieceChunk : pc.n;
  int64_t j0 = it.start;
  if (vec && pc.p % 4 == 0 && pc.s % 4 == 0) {
    const int64_t quads = (end - it.start) / 4;
    for (int64_t q = threadIdx.x; q < quads; q += blockDim.x) {
      const int64_t i = pc.p + it.start + 4 * q, k = pc.s + it.start + 4 * q;
      float4 pp = *reinterpret_cast<const float4*>(p + i);
      const float4 gg = *reinterpret_cast<const float4*>(g + i);
      float4 mm = *reinterpret_cast<const float4*>(m + k);
      float4 vv = *reinterpret_cast<const float4*>(v + k);
      AdamWValue(pp.x, gg.x, mm.x, vv.x, b1, b2, e, c1, c2, pc.lr, pc.wd, gs);
      AdamWValue(pp.y, gg.y, mm.y, vv.y, b1, b2, e, c1, c2, pc.lr, pc.wd, gs);
      AdamWValue(pp.z, gg.z, mm.z, vv.z, b1, b2, e, c1, c2, pc.lr, pc.wd, gs);
      AdamWValue(pp.w, gg.w, mm.w, vv.w, b1, b2, e, c1, c2, pc.lr, pc.wd, gs);
      *reinterpret_cast<float4*>(p + i) = pp;
      *reinterpret_cast<float4*>(m + k) = mm;
      *reinterpret_cast<float4*>(v + k) = vv;
    }
    j0 += 4 * quads;
  }
#pragma unroll 4
  for (int64_t j = j0 + threadIdx.x; j < end; j += blockDim.x) {
    const int64_t i = pc.p + j, k = pc.s + j;
    AdamWValue(p[i], g[i], m[k], v[k], b1, b2, e, c1, c2, pc.lr, pc.wd, gs);
  }
}

__global__ void SgdPiecesKernel(const DevicePiece* pieces, const PieceItem* items,
                                float* __restrict__ p, const float* __restrict__ g,
                                float* __restrict__ buf, float mu, float gs) {
  const PieceItem it = items[blockIdx.x];
  const DevicePiece pc = pieces[it.piece];
  const int64_t end = it.start + kPieceChunk < pc.n ? it.start + kPieceChunk : pc.n;
#pragma unroll 4
  for (int64_t j = it.start + threadIdx.x; j < end; j += blockDim.x) {
    const int64_t i = pc.p + j, k = pc.s + j;
    buf[k] = mu * buf[k] + __fmul_rn(g[i], gs) + pc.wd * p[i];
    p[i] -= pc.lr * buf[k];
  }
}
}  // namespace

namespace {
// The update kernels' __restrict__ promise: no two of the tensors share memory.
void CheckDisjoint(std::initializer_list<const Tensor*> ts, const char* op) {
  for (const Tensor* a : ts)
    for (const Tensor* b : ts) {
      if (a == b) continue;
      const char *pa = static_cast<const char*>(a->raw()), *pb = static_cast<const char*>(b->raw());
      CHECK(pa + a->numel() * DTypeSize(a->dtype()) <= pb ||
            pb + b->numel() * DTypeSize(b->dtype()) <= pa)
          << op << ": the parameters, gradients and optimizer state must not share memory";
    }
}
}  // namespace

void AdamWUpdatePieces(const Tensor& p, const Tensor& g, const Tensor& m, const Tensor& v,
                       const Tensor& pieces, double beta1, double beta2, double eps, int64_t step,
                       double grad_scale) {
  CheckF32(p, "AdamWUpdatePieces");
  CheckF32(g, "AdamWUpdatePieces");
  CheckF32(m, "AdamWUpdatePieces");
  CheckSame(m, v, "AdamWUpdatePieces");
  CheckDisjoint({&p, &g, &m, &v}, "AdamWUpdatePieces");
  CHECK_GE(step, 1);
  const PieceTable t = UploadPieces(ReadUpdatePieces(pieces, p, g, m, "AdamWUpdatePieces"));
  if (t.item_count == 0) return;
  const float b1 = beta1, b2 = beta2, e = eps;
  const float c1 = 1.0f / (1.0f - std::pow(b1, static_cast<float>(step)));
  const float c2 = 1.0f / (1.0f - std::pow(b2, static_cast<float>(step)));
  bool vec = true;
  for (const Tensor* x : {&p, &g, &m, &v}) vec = vec && reinterpret_cast<uintptr_t>(x->raw()) % 16 == 0;
  AdamWPiecesKernel<<<static_cast<unsigned>(t.item_count), kThreads, 0, Stream()>>>(
      t.as<DevicePiece>(), t.items, F32(p), F32(g), F32(m), F32(v), b1, b2, e, c1, c2,
      static_cast<float>(grad_scale), vec);
  CUDA_CHECK_LAUNCH();
  DeviceFree(t.block);
}

void SgdUpdatePieces(const Tensor& p, const Tensor& g, const Tensor& buf, const Tensor& pieces,
                     double momentum, double grad_scale) {
  CheckF32(p, "SgdUpdatePieces");
  CheckF32(g, "SgdUpdatePieces");
  CheckF32(buf, "SgdUpdatePieces");
  CheckDisjoint({&p, &g, &buf}, "SgdUpdatePieces");
  const PieceTable t = UploadPieces(ReadUpdatePieces(pieces, p, g, buf, "SgdUpdatePieces"));
  if (t.item_count == 0) return;
  SgdPiecesKernel<<<static_cast<unsigned>(t.item_count), kThreads, 0, Stream()>>>(
      t.as<DevicePiece>(), t.items, F32(p), F32(g), F32(buf), static_cast<float>(momentum),
      static_cast<float>(grad_scale));
  CUDA_CHECK_LAUNCH();
  DeviceFree(t.block);
}

namespace {
struct RoundPiece {
  const float* src;
  __nv_bfloat16* dst;
  int64_t n;
};
// A block per work item: four values a load where both pointers allow (as RoundToBf16).
__global__ void RoundPiecesKernel(const RoundPiece* pieces, const PieceItem* items) {
  const PieceItem it = items[blockIdx.x];
  const RoundPiece pc = pieces[it.piece];
  const int64_t end = it.start + kPieceChunk < pc.n ? it.start + kPieceChunk : pc.n;
  int64_t j0 = it.start;
  const uintptr_t src_at = reinterpret_cast<uintptr_t>(pc.src);
  const uintptr_t dst_at = reinterpret_cast<uintptr_t>(pc.dst);
  if (src_at % 16 == 0 && dst_at % 8 == 0) {
    const int64_t quads = (end - it.start) / 4;
    const StoredIn src{pc.src + it.start, false};
    const OperandOut dst{pc.dst + it.start, true};
    for (int64_t q = threadIdx.x; q < quads; q += blockDim.x) dst.Set4(4 * q, src.Load4(4 * q));
    j0 += 4 * quads;
  }
  for (int64_t j = j0 + threadIdx.x; j < end; j += blockDim.x)
    pc.dst[j] = __float2bfloat16_rn(pc.src[j]);
}
}  // namespace

void ToBf16Pieces(const std::vector<Tensor>& xs, const std::vector<Tensor>& outs) {
  CHECK_EQ(xs.size(), outs.size());
  std::vector<RoundPiece> pieces;
  for (size_t i = 0; i < xs.size(); ++i) {
    CheckRoundingInto(xs[i], outs[i], "ToBf16Pieces");
    pieces.push_back({F32(xs[i]), static_cast<__nv_bfloat16*>(outs[i].raw()), xs[i].numel()});
  }
  const PieceTable t = UploadPieces(pieces);
  if (t.item_count == 0) return;
  RoundPiecesKernel<<<static_cast<unsigned>(t.item_count), kThreads, 0, Stream()>>>(
      t.as<RoundPiece>(), t.items);
  CUDA_CHECK_LAUNCH();
  DeviceFree(t.block);
}

void SgdUpdate(const Tensor& p, const Tensor& g, const Tensor& buf, double lr, double momentum,
               double weight_decay) {
  CheckF32(p, "SgdUpdate");
  CheckSame(p, g, "SgdUpdate");
  CheckSame(p, buf, "SgdUpdate");
  float *pp = F32(p), *pb = F32(buf);
  const float* pg = F32(g);
  const float mu = momentum, l = lr, wd = weight_decay;
  ForEach(p.numel(), [=] __device__(int64_t i) {
    pb[i] = mu * pb[i] + pg[i] + wd * pp[i];
    pp[i] -= l * pb[i];
  });
}

}  // namespace gdn::cuda
