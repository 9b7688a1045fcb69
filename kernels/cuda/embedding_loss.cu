// Token embedding and the cross-entropy loss on CUDA (twins of kernels/cpu/embedding_loss.cc).
// The loss's row statistics use one block per row; the mean loss is a deterministic reduction
// returned to the host. The logits are [stored] inputs (float32 or bf16; kernels/op_set.inc).
#include <limits>
#include <type_traits>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cuda_ops.h"

namespace gdn::cuda {

namespace {

void CheckTokens(const Tensor& t, const char* op) {
  CHECK(t.dtype() == DType::kI32 && t.device() == Device::kCUDA)
      << op << ": token ids must be an int32 CUDA tensor";
}

// Four adjacent logits as kept in registers: a float4, or four bf16 in a uint2 (half the
// registers, so two rows of 32000 fit an SM at once).
template <typename In>
using Packed4 = std::conditional_t<std::is_same_v<In, float>, float4, uint2>;
__device__ __forceinline__ float4 Unpack(float4 v) { return v; }
__device__ __forceinline__ float4 Unpack(uint2 u) {
  const float2 a = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&u.x));
  const float2 b = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&u.y));
  return make_float4(a.x, a.y, b.x, b.y);
}
__device__ __forceinline__ float ToFloat(float x) { return x; }
__device__ __forceinline__ float ToFloat(__nv_bfloat16 x) { return __bfloat162float(x); }

// Mean-loss terms per row (lse - target logit) and the fused gradient, as the CPU's loop body.
// Rows of up to 4 kRowThreads kQuads logits, a multiple of 4 (other vocabularies, e.g. 30522,
// take the two-pass kernel below; padded vocabularies are usual): the block holds its row in
// registers (kQuads 4-value loads a thread), so the logits are read from memory once; the max,
// the sum of exponentials and the gradient are passes over registers (the exponentials computed
// twice, not kept: float32 rows would need twice the registers). bf16 logits take the same
// arithmetic on their float32 values, two blocks an SM.
constexpr int kRowThreads = 512;
template <typename In, int kQuads>
__global__ void __launch_bounds__(kRowThreads, sizeof(In) == 2 ? 2 : 1)
    CrossEntropyRowKernel(const In* logits, const int32_t* targets, int vocab, float gscale,
                          float* row_loss, OperandOut dlogits, int* bad) {
  __shared__ float shm[32];
  const int64_t i = blockIdx.x;
  const In* row = logits + i * vocab;
  const int32_t tgt = targets[i];
  if (tgt < 0 || tgt >= vocab) {
    if (threadIdx.x == 0) *bad = 1;
    return;
  }
  const float target_logit = ToFloat(row[tgt]);  // read before dlogits (which may alias) is written
  // This thread's logits: 4 values at j = 4 (threadIdx.x + k kRowThreads) for j < vocab.
  Packed4<In> q[kQuads];
  float m = -INFINITY;
#pragma unroll
  for (int k = 0; k < kQuads; ++k) {
    const int j = 4 * (threadIdx.x + k * kRowThreads);
    if (j < vocab) {
      q[k] = *reinterpret_cast<const Packed4<In>*>(row + j);
      const float4 v = Unpack(q[k]);
      m = fmaxf(fmaxf(m, fmaxf(v.x, v.y)), fmaxf(v.z, v.w));
    }
  }
  const float mx = BlockReduce(m, MaxOp(), shm);
  // -inf adds nothing, even when mx is -inf.
  auto ex = [mx](float x) { return x == -INFINITY ? 0.0f : expf(x - mx); };
  float z = 0;
#pragma unroll
  for (int k = 0; k < kQuads; ++k)
    if (4 * (threadIdx.x + k * kRowThreads) < vocab) {
      const float4 v = Unpack(q[k]);
      z += ex(v.x);
      z += ex(v.y);
      z += ex(v.z);
      z += ex(v.w);
    }
  z = BlockReduce(z, SumOp(), shm);
  const float lse = mx + logf(z);
  if (threadIdx.x == 0) row_loss[i] = lse - target_logit;
  if (!dlogits.p) return;
  const float scale = gscale / z, target_grad = (expf(target_logit - lse) - 1.0f) * gscale;
#pragma unroll
  for (int k = 0; k < kQuads; ++k) {
    const int j = 4 * (threadIdx.x + k * kRowThreads);
    if (j < vocab) {
      const float4 v = Unpack(q[k]);
      float g[4] = {ex(v.x) * scale, ex(v.y) * scale, ex(v.z) * scale, ex(v.w) * scale};
      if (tgt >= j && tgt < j + 4) g[tgt - j] = target_grad;
      dlogits.Set4(i * vocab + j, make_float4(g[0], g[1], g[2], g[3]));
    }
  }
}

// Longer rows: two passes over memory, the first finding the max and the sum of exponentials
// together.
__global__ void CrossEntropyKernel(StoredIn logits, const int32_t* targets, int64_t vocab,
                                   float gscale, float* row_loss, OperandOut dlogits, int* bad) {
  __shared__ float shm[32];
  const int64_t i = blockIdx.x;
  auto row = [&](int64_t j) { return logits[i * vocab + j]; };
  const int32_t tgt = targets[i];
  const bool ok = tgt >= 0 && tgt < vocab;
  if (!ok) {
    if (threadIdx.x == 0) *bad = 1;
    return;
  }
  const float target_logit = row(tgt);  // read before dlogits (which may alias) is written
  // One pass for the max and the sum of exponentials (each thread rescales its running sum when
  // its max grows), so the row is read twice in all rather than three times.
  float m = -INFINITY, z = 0;
  for (int64_t j = threadIdx.x; j < vocab; j += blockDim.x) {
    const float x = row(j);
    if (x > m) {
      z = z * expf(m - x) + 1.0f;
      m = x;
    } else if (m != -INFINITY) {  // (x = m = -inf adds nothing)
      z += expf(x - m);
    }
  }
  const float mx = BlockReduce(m, MaxOp(), shm);
  z = BlockReduce(m == -INFINITY ? 0.0f : z * expf(m - mx), SumOp(), shm);  // ends with a barrier
  const float lse = mx + logf(z);
  if (threadIdx.x == 0) row_loss[i] = lse - target_logit;
  if (!dlogits.p) return;
  for (int64_t j = threadIdx.x; j < vocab; j += blockDim.x)
    dlogits.Set(i * vocab + j, j == tgt ? (expf(target_logit - lse) - 1.0f) * gscale
                                        : expf(row(j) - lse) * gscale);
}

__global__ void RowMaxKernel(StoredIn logits, int64_t v, float* row_max) {
  __shared__ float shm[32];
  const int64_t row = blockIdx.x * v;
  float mx = -INFINITY;
  for (int64_t j = threadIdx.x; j < v; j += blockDim.x) mx = fmaxf(mx, logits[row + j]);
  mx = BlockReduce(mx, MaxOp(), shm);
  if (threadIdx.x == 0) row_max[blockIdx.x] = mx;
}

__global__ void SoftmaxRowStatsKernel(StoredIn logits, const int32_t* targets,
                                      int64_t vocab_offset, int64_t v, const float* row_max,
                                      float* sum_exp, float* target_logit) {
  __shared__ float shm[32];
  const int64_t i = blockIdx.x, row = i * v;
  const float m = row_max[i];
  float z = 0;
  for (int64_t j = threadIdx.x; j < v; j += blockDim.x) z += expf(logits[row + j] - m);
  z = BlockReduce(z, SumOp(), shm);
  if (threadIdx.x == 0) {
    sum_exp[i] = z;
    const int64_t c = targets[i] - vocab_offset;
    target_logit[i] = c >= 0 && c < v ? logits[row + c] : 0.0f;
  }
}

}  // namespace

void EmbeddingForward(const Tensor& tokens, const Tensor& table, double scale, const Tensor& out,
                      int64_t vocab_offset) {
  CheckTokens(tokens, "EmbeddingForward");
  CheckF32(table, "EmbeddingForward");
  CheckF32(out, "EmbeddingForward");
  const int64_t n = tokens.numel(), rows = table.dim(0), d = table.dim(1);
  CHECK_EQ(out.numel(), n * d);
  const int32_t* tok = tokens.data<int32_t>();
  const float* pt = F32(table);
  float* po = F32(out);
  const float s = static_cast<float>(scale);
  // Tokens outside [vocab_offset, vocab_offset + rows) (another rank's rows) give zero rows; the
  // data loader has checked them against the vocabulary.
  ForEach(n * d, [=] __device__(int64_t k) {
    const int64_t i = k / d, j = k % d, r = tok[i] - vocab_offset;
    po[k] = r >= 0 && r < rows ? s * pt[r * d + j] : 0.0f;
  });
}

void EmbeddingBackward(const Tensor& tokens, const Tensor& dout, double scale,
                       const Tensor& dtable, int64_t vocab_offset) {
  CheckTokens(tokens, "EmbeddingBackward");
  CheckF32(dout, "EmbeddingBackward");
  CheckF32(dtable, "EmbeddingBackward");
  const int64_t n = tokens.numel(), rows = dtable.dim(0), d = dtable.dim(1);
  CHECK_EQ(dout.numel(), n * d);
  const int32_t* tok = tokens.data<int32_t>();
  const float* pd = F32(dout);
  float* pt = F32(dtable);
  const float s = static_cast<float>(scale);
  // Repeated tokens add into the same row: atomics (the order of the additions varies).
  ForEach(n * d, [=] __device__(int64_t k) {
    const int64_t i = k / d, j = k % d, r = tok[i] - vocab_offset;
    if (r >= 0 && r < rows) atomicAdd(pt + r * d + j, s * pd[k]);
  });
}

double CrossEntropy(const Tensor& logits, const Tensor& targets, const Tensor& dlogits,
                    double grad_scale) {
  CheckTokens(targets, "CrossEntropy");
  const int64_t n = targets.numel(), vocab = logits.dim(-1);
  const StoredIn pl = CheckStoredIn(logits, n * vocab, "CrossEntropy logits");
  const OperandOut pd = dlogits.defined() ? CheckOperandOut(dlogits, logits, "CrossEntropy dlogits")
                                           : OperandOut{nullptr, false};
  if (n == 0) return std::numeric_limits<double>::quiet_NaN();  // as the CPU: mean of nothing
  Tensor row_loss = Tensor::Empty({n}, DType::kF32, Device::kCUDA);
  Tensor bad = Tensor::Zeros({1}, DType::kI32, Device::kCUDA);
  const int32_t* pt = targets.data<int32_t>();
  const float gs = static_cast<float>(grad_scale / n);
  float* pr = F32(row_loss);
  int* pb = bad.data<int32_t>();
  bool registers = false;
  if (vocab % 4 == 0 && Aligned4(logits) && (!dlogits.defined() || Aligned4(dlogits))) {
    // 4-value loads a thread for a row in registers: the power of 2 at or above
    // vocab / (4 kRowThreads).
    int64_t quads = 1;
    while (quads * 4 * kRowThreads < vocab) quads *= 2;
    const int v = static_cast<int>(vocab);
    registers = WithConstant<1, 2, 4, 8, 16>(quads, [&](auto k) {
      constexpr int kQuads = decltype(k)::value;
      if (pl.bf16)
        CrossEntropyRowKernel<__nv_bfloat16, kQuads><<<n, kRowThreads, 0, Stream()>>>(
            static_cast<const __nv_bfloat16*>(pl.p), pt, v, gs, pr, pd, pb);
      else
        CrossEntropyRowKernel<float, kQuads><<<n, kRowThreads, 0, Stream()>>>(
            static_cast<const float*>(pl.p), pt, v, gs, pr, pd, pb);
    });
  }
  if (!registers) CrossEntropyKernel<<<n, kThreads, 0, Stream()>>>(pl, pt, vocab, gs, pr, pd, pb);
  CUDA_CHECK_LAUNCH();
  int host_bad = 0;
  CopyDeviceToHost(&host_bad, bad.raw(), sizeof(int));
  CHECK(!host_bad) << "CrossEntropy: a target outside the vocabulary [0, " << vocab << ")";
  const float* rl = pr;
  return SumToHost([=] __device__(int64_t i) { return static_cast<double>(rl[i]); }, n) / n;
}

void RowMax(const Tensor& logits, const Tensor& row_max) {
  CheckF32(row_max, "RowMax");
  const int64_t n = row_max.numel();
  if (n == 0) return;
  const int64_t v = logits.numel() / n;
  const StoredIn pl = CheckStoredIn(logits, n * v, "RowMax logits");
  RowMaxKernel<<<n, kThreads, 0, Stream()>>>(pl, v, F32(row_max));
  CUDA_CHECK_LAUNCH();
}

void SoftmaxRowStats(const Tensor& logits, const Tensor& targets, int64_t vocab_offset,
                     const Tensor& row_max, const Tensor& sum_exp, const Tensor& target_logit) {
  CheckTokens(targets, "SoftmaxRowStats");
  const int64_t n = targets.numel();
  CHECK(row_max.numel() == n && sum_exp.numel() == n && target_logit.numel() == n);
  if (n == 0) return;
  const int64_t v = logits.numel() / n;
  const StoredIn pl = CheckStoredIn(logits, n * v, "SoftmaxRowStats logits");
  SoftmaxRowStatsKernel<<<n, kThreads, 0, Stream()>>>(pl, targets.data<int32_t>(),
                                                      vocab_offset, v, F32(row_max),
                                                      F32(sum_exp), F32(target_logit));
  CUDA_CHECK_LAUNCH();
}

double CrossEntropyFromStats(const Tensor& logits, const Tensor& targets, int64_t vocab_offset,
                             const Tensor& row_max, const Tensor& sum_exp,
                             const Tensor& target_logit, const Tensor& dlogits,
                             double grad_scale) {
  CheckTokens(targets, "CrossEntropyFromStats");
  const int64_t n = targets.numel();
  CHECK(row_max.numel() == n && sum_exp.numel() == n && target_logit.numel() == n);
  if (n == 0) return std::numeric_limits<double>::quiet_NaN();
  const int64_t v = logits.numel() / n;
  const StoredIn pl = CheckStoredIn(logits, n * v, "CrossEntropyFromStats logits");
  const int32_t* tgt = targets.data<int32_t>();
  const float *pm = F32(row_max), *ps = F32(sum_exp), *pt = F32(target_logit);
  if (dlogits.defined()) {
    const OperandOut pd = CheckOperandOut(dlogits, logits, "CrossEntropyFromStats dlogits");
    const float gscale = static_cast<float>(grad_scale / n);
    ForEach(n * v, [=] __device__(int64_t k) {
      const int64_t i = k / v, j = k % v;
      const float lse = pm[i] + logf(ps[i]);
      float g = expf(pl[k] - lse) * gscale;
      if (j == tgt[i] - vocab_offset) g -= gscale;
      pd.Set(k, g);
    });
  }
  return SumToHost(
             [=] __device__(int64_t i) {
               return static_cast<double>((pm[i] + logf(ps[i])) - pt[i]);
             },
             n) /
         n;
}

}  // namespace gdn::cuda
