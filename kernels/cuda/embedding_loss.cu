// Token embedding and the cross-entropy loss on CUDA (twins of kernels/cpu/embedding_loss.cc).
// The loss's row statistics use one block per row; the mean loss is a deterministic reduction
// returned to the host.
#include <limits>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cuda_ops.h"

namespace gdn::cuda {

namespace {

void CheckTokens(const Tensor& t, const char* op) {
  CHECK(t.dtype() == DType::kI32 && t.device() == Device::kCUDA)
      << op << ": token ids must be an int32 CUDA tensor";
}

// Mean-loss terms per row (lse - target logit) and the fused gradient, as the CPU's loop body.
// Rows of up to kRowThreads * kPer logits: the block holds its row in registers (kPer values a
// thread), so the logits are read from memory once; the max, the sum of exponentials (each value
// replaced by its exponential) and the gradient are passes over registers.
constexpr int kRowThreads = 512;  // up to 128 registers a thread: 64 values kept without spills
template <int kPer>
__global__ void __launch_bounds__(kRowThreads)
    CrossEntropyRowKernel(const float* logits, const int32_t* targets, int64_t vocab, float gscale,
                          float* row_loss, OperandOut dlogits, int* bad) {
  __shared__ float shm[32];
  const int64_t i = blockIdx.x;
  const float* row = logits + i * vocab;
  const int32_t tgt = targets[i];
  if (tgt < 0 || tgt >= vocab) {
    if (threadIdx.x == 0) *bad = 1;
    return;
  }
  const float target_logit = row[tgt];  // read before dlogits (which may alias) is written
  // This thread's logits: mine[k * kRowThreads] for k * kRowThreads < left (32-bit offsets).
  const float* mine = row + threadIdx.x;
  const int left = static_cast<int>(vocab) - static_cast<int>(threadIdx.x);
  float v[kPer];
  float m = -INFINITY;
#pragma unroll
  for (int k = 0; k < kPer; ++k) {
    v[k] = k * kRowThreads < left ? mine[k * kRowThreads] : -INFINITY;
    m = fmaxf(m, v[k]);
  }
  const float mx = BlockReduce(m, MaxOp(), shm);
  float z = 0;
#pragma unroll
  for (int k = 0; k < kPer; ++k) {
    v[k] = v[k] == -INFINITY ? 0.0f : expf(v[k] - mx);  // (-inf adds nothing, even if mx is -inf)
    z += v[k];
  }
  z = BlockReduce(z, SumOp(), shm);
  const float lse = mx + logf(z);
  if (threadIdx.x == 0) row_loss[i] = lse - target_logit;
  if (!dlogits.p) return;
  const float scale = gscale / z;
  const int64_t out = i * vocab + threadIdx.x;
  const int tgt_offset = tgt - static_cast<int>(threadIdx.x);
#pragma unroll
  for (int k = 0; k < kPer; ++k)
    if (k * kRowThreads < left)
      dlogits.Set(out + k * kRowThreads, k * kRowThreads == tgt_offset
                                             ? (expf(target_logit - lse) - 1.0f) * gscale
                                             : v[k] * scale);
}

// Longer rows: two passes over memory, the first finding the max and the sum of exponentials
// together.
__global__ void CrossEntropyKernel(const float* logits, const int32_t* targets, int64_t vocab,
                                   float gscale, float* row_loss, OperandOut dlogits, int* bad) {
  __shared__ float shm[32];
  const int64_t i = blockIdx.x;
  const float* row = logits + i * vocab;
  const int32_t tgt = targets[i];
  const bool ok = tgt >= 0 && tgt < vocab;
  if (!ok) {
    if (threadIdx.x == 0) *bad = 1;
    return;
  }
  const float target_logit = row[tgt];  // read before dlogits (which may alias) is written
  // One pass for the max and the sum of exponentials (each thread rescales its running sum when
  // its max grows), so the row is read twice in all rather than three times.
  float m = -INFINITY, z = 0;
  for (int64_t j = threadIdx.x; j < vocab; j += blockDim.x) {
    const float x = row[j];
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
                                        : expf(row[j] - lse) * gscale);
}

__global__ void RowMaxKernel(const float* logits, int64_t v, float* row_max) {
  __shared__ float shm[32];
  const float* row = logits + blockIdx.x * v;
  float mx = -INFINITY;
  for (int64_t j = threadIdx.x; j < v; j += blockDim.x) mx = fmaxf(mx, row[j]);
  mx = BlockReduce(mx, MaxOp(), shm);
  if (threadIdx.x == 0) row_max[blockIdx.x] = mx;
}

__global__ void SoftmaxRowStatsKernel(const float* logits, const int32_t* targets,
                                      int64_t vocab_offset, int64_t v, const float* row_max,
                                      float* sum_exp, float* target_logit) {
  __shared__ float shm[32];
  const int64_t i = blockIdx.x;
  const float* row = logits + i * v;
  const float m = row_max[i];
  float z = 0;
  for (int64_t j = threadIdx.x; j < v; j += blockDim.x) z += expf(row[j] - m);
  z = BlockReduce(z, SumOp(), shm);
  if (threadIdx.x == 0) {
    sum_exp[i] = z;
    const int64_t c = targets[i] - vocab_offset;
    target_logit[i] = c >= 0 && c < v ? row[c] : 0.0f;
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
  CheckF32(logits, "CrossEntropy");
  CheckTokens(targets, "CrossEntropy");
  const int64_t n = targets.numel(), vocab = logits.dim(-1);
  CHECK_EQ(logits.numel(), n * vocab);
  const OperandOut pd = dlogits.defined() ? CheckOperandOut(dlogits, logits, "CrossEntropy dlogits")
                                           : OperandOut{nullptr, false};
  if (n == 0) return std::numeric_limits<double>::quiet_NaN();  // as the CPU: mean of nothing
  Tensor row_loss = Tensor::Empty({n}, DType::kF32, Device::kCUDA);
  Tensor bad = Tensor::Zeros({1}, DType::kI32, Device::kCUDA);
  const float* pl = F32(logits);
  const int32_t* pt = targets.data<int32_t>();
  const float gs = static_cast<float>(grad_scale / n);
  float* pr = F32(row_loss);
  int* pb = bad.data<int32_t>();
  // Values a thread for a row in registers: the power of 2 at or above vocab / kRowThreads.
  int64_t per = 1;
  while (per * kRowThreads < vocab) per *= 2;
  const bool registers = WithConstant<1, 2, 4, 8, 16, 32, 64>(per, [&](auto k) {
    CrossEntropyRowKernel<decltype(k)::value><<<n, kRowThreads, 0, Stream()>>>(pl, pt, vocab, gs,
                                                                               pr, pd, pb);
  });
  if (!registers) CrossEntropyKernel<<<n, kThreads, 0, Stream()>>>(pl, pt, vocab, gs, pr, pd, pb);
  CUDA_CHECK_LAUNCH();
  int host_bad = 0;
  CopyDeviceToHost(&host_bad, bad.raw(), sizeof(int));
  CHECK(!host_bad) << "CrossEntropy: a target outside the vocabulary [0, " << vocab << ")";
  const float* rl = pr;
  return SumToHost([=] __device__(int64_t i) { return static_cast<double>(rl[i]); }, n) / n;
}

void RowMax(const Tensor& logits, const Tensor& row_max) {
  CheckF32(logits, "RowMax");
  CheckF32(row_max, "RowMax");
  const int64_t n = row_max.numel();
  if (n == 0) return;
  const int64_t v = logits.numel() / n;
  RowMaxKernel<<<n, kThreads, 0, Stream()>>>(F32(logits), v, F32(row_max));
  CUDA_CHECK_LAUNCH();
}

void SoftmaxRowStats(const Tensor& logits, const Tensor& targets, int64_t vocab_offset,
                     const Tensor& row_max, const Tensor& sum_exp, const Tensor& target_logit) {
  CheckF32(logits, "SoftmaxRowStats");
  CheckTokens(targets, "SoftmaxRowStats");
  const int64_t n = targets.numel();
  CHECK(row_max.numel() == n && sum_exp.numel() == n && target_logit.numel() == n);
  if (n == 0) return;
  const int64_t v = logits.numel() / n;
  SoftmaxRowStatsKernel<<<n, kThreads, 0, Stream()>>>(F32(logits), targets.data<int32_t>(),
                                                      vocab_offset, v, F32(row_max),
                                                      F32(sum_exp), F32(target_logit));
  CUDA_CHECK_LAUNCH();
}

double CrossEntropyFromStats(const Tensor& logits, const Tensor& targets, int64_t vocab_offset,
                             const Tensor& row_max, const Tensor& sum_exp,
                             const Tensor& target_logit, const Tensor& dlogits,
                             double grad_scale) {
  CheckF32(logits, "CrossEntropyFromStats");
  CheckTokens(targets, "CrossEntropyFromStats");
  const int64_t n = targets.numel();
  CHECK(row_max.numel() == n && sum_exp.numel() == n && target_logit.numel() == n);
  if (n == 0) return std::numeric_limits<double>::quiet_NaN();
  const int64_t v = logits.numel() / n;
  const int32_t* tgt = targets.data<int32_t>();
  const float *pl = F32(logits), *pm = F32(row_max), *ps = F32(sum_exp), *pt = F32(target_logit);
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
