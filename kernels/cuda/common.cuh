// Shared by the CUDA kernels: checks, launch shapes, block reductions, the deterministic
// reductions to the host and the column sums behind accumulated parameter gradients.
// Reductions never use atomics, so results do not change from run to run.
#pragma once

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include <cuda_bf16.h>

#include "runtime/cuda_check.h"
#include "runtime/tensor.h"

namespace gdn::cuda {

inline void CheckF32(const Tensor& t, const char* op) {
  CHECK(t.dtype() == DType::kF32) << op << ": the CUDA backend is float32 only, got a "
                                  << DTypeName(t.dtype()) << " tensor";
  CHECK(t.device() == Device::kCUDA) << op << ": a CPU tensor passed to a CUDA op";
}
inline void CheckSame(const Tensor& a, const Tensor& b, const char* what) {
  CHECK(a.dtype() == b.dtype() && a.numel() == b.numel() && a.device() == b.device())
      << what << ": " << ShapeString(a.shape()) << " " << DTypeName(a.dtype()) << " "
      << DeviceName(a.device()) << " vs " << ShapeString(b.shape()) << " " << DTypeName(b.dtype())
      << " " << DeviceName(b.device());
}
inline float* F32(const Tensor& t) { return t.data<float>(); }

// An op's output that feeds matrix products only: float32, or in the bf16 mode a bf16 tensor
// (ops::MatmulOperandType), written rounded so that no float32 copy and no rounding pass are needed.
struct OperandOut {
  void* p;
  bool bf16;
  __device__ __forceinline__ void Set(int64_t i, float v) const {
    if (bf16) static_cast<__nv_bfloat16*>(p)[i] = __float2bfloat16_rn(v);
    else static_cast<float*>(p)[i] = v;
  }
  // Values i .. i+3 (i a multiple of 4, the tensor Aligned4), rounded as Set rounds.
  __device__ __forceinline__ void Set4(int64_t i, float4 v) const {
    if (bf16) {
      const __nv_bfloat162 a = __floats2bfloat162_rn(v.x, v.y), b = __floats2bfloat162_rn(v.z, v.w);
      uint2 u;
      u.x = *reinterpret_cast<const unsigned*>(&a);
      u.y = *reinterpret_cast<const unsigned*>(&b);
      *reinterpret_cast<uint2*>(static_cast<__nv_bfloat16*>(p) + i) = u;
    } else {
      *reinterpret_cast<float4*>(static_cast<float*>(p) + i) = v;
    }
  }
};
// column_view: the op takes out as a column view too (Tensor::Columns; it indexes by row stride).
inline OperandOut CheckOperandOut(const Tensor& out, const Tensor& like, const char* what,
                                  bool column_view = false) {
  CHECK((out.dtype() == DType::kF32 || out.dtype() == DType::kBF16) &&
        out.device() == Device::kCUDA && out.numel() == like.numel())
      << what << ": output " << ShapeString(out.shape()) << " " << DTypeName(out.dtype()) << " "
      << DeviceName(out.device()) << " for " << ShapeString(like.shape())
      << " (float32 or bfloat16 CUDA)";
  return {column_view ? out.strided_raw() : out.raw(), out.dtype() == DType::kBF16};
}

// Where row `row` of d values starts in a tensor that may be a column view: the op's rows are
// heads per token row, token rows `stride` values apart (heads 1 and stride d when contiguous).
struct RowsOf {
  int64_t heads, stride;
  __device__ __forceinline__ int64_t operator()(int64_t row, int64_t d) const {
    return row / heads * stride + row % heads * d;
  }
};
// RowsOf for t, an op's tensor of rows of d values: a column view's token rows hold whole rows of
// d (a multiple of d values); a contiguous t is taken as rows of one.
inline RowsOf RowsOfTensor(const Tensor& t, int64_t d, const char* what) {
  const int64_t heads = t.contiguous() ? 1 : t.dim(-1) / d;
  return {heads, RowStride(t, heads * d, what)};
}

// An op's input marked [stored]: an activation kept for the backward, float32, or in the bf16 mode a
// bf16 tensor (a matrix product's output that only elementwise ops read); read as float32.
struct StoredIn {
  const void* p;
  bool bf16;
  __device__ __forceinline__ float operator[](int64_t i) const {
    return bf16 ? __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i])
                : static_cast<const float*>(p)[i];
  }
  // Values i .. i+3 in one load (i a multiple of 4, the tensor Aligned4).
  __device__ __forceinline__ float4 Load4(int64_t i) const {
    if (bf16) {
      const uint2 u = *reinterpret_cast<const uint2*>(static_cast<const __nv_bfloat16*>(p) + i);
      const float2 a = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&u.x));
      const float2 b = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&u.y));
      return make_float4(a.x, a.y, b.x, b.y);
    }
    return *reinterpret_cast<const float4*>(static_cast<const float*>(p) + i);
  }
};
// Whether a tensor takes 4-value loads and stores (Load4, Set4): a multiple of 4 values, starting
// at a multiple of 4 values' bytes (a column view: rows of, and a row stride of, a multiple of 4).
inline bool Aligned4(const Tensor& t) {
  return t.numel() % 4 == 0 &&
         (t.contiguous() || (t.dim(-1) % 4 == 0 && t.row_stride() % 4 == 0)) &&
         reinterpret_cast<uintptr_t>(t.strided_raw()) % (4 * DTypeSize(t.dtype())) == 0;
}
// column_view: the op takes `in` as a column view too (it indexes by row stride).
inline StoredIn CheckStoredIn(const Tensor& in, int64_t numel, const char* what,
                              bool column_view = false) {
  CHECK((in.dtype() == DType::kF32 || in.dtype() == DType::kBF16) &&
        in.device() == Device::kCUDA && in.numel() == numel)
      << what << ": input " << ShapeString(in.shape()) << " " << DTypeName(in.dtype()) << " "
      << DeviceName(in.device()) << " (float32 or bfloat16 CUDA, " << numel << " elements)";
  return {column_view ? in.strided_raw() : in.raw(), in.dtype() == DType::kBF16};
}

constexpr int kThreads = 256;
// A kernel template's compile-time size chosen at run time: calls
// f(std::integral_constant<int, K>{}) for the K of Ks equal to k; false (nothing called) when none is.
template <int... Ks, typename F>
bool WithConstant(int64_t k, F&& f) {
  return ((k == Ks && (f(std::integral_constant<int, Ks>{}), true)) || ...);
}
// The device's streaming multiprocessors (the device is chosen once per process).
inline int SmCount() {
  static const int count = [] {
    int dev = 0, n = 0;
    CUDA_CHECK(cudaGetDevice(&dev));
    CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev));
    return n;
  }();
  return count;
}
// Blocks for a grid-stride loop over n elements.
inline int GridFor(int64_t n, int threads = kThreads) {
  return static_cast<int>(std::clamp<int64_t>((n + threads - 1) / threads, 1, 1 << 16));
}
__device__ __forceinline__ float SigmoidF(float x) { return 1.0f / (1.0f + expf(-x)); }
// Four floats between registers and memory (16-byte aligned).
__device__ __forceinline__ void Unpack4(float4 t, float* a) {
  a[0] = t.x, a[1] = t.y, a[2] = t.z, a[3] = t.w;
}
__device__ __forceinline__ float4 Pack4(const float* a) {
  return make_float4(a[0], a[1], a[2], a[3]);
}
__device__ __forceinline__ float4 Ld4(const float* p) {
  return *reinterpret_cast<const float4*>(p);
}
__device__ __forceinline__ void St4(float* p, const float* a) {
  *reinterpret_cast<float4*>(p) = Pack4(a);
}
// The sum over a warp's 32 lanes, in every lane (a fixed tree: deterministic).
__device__ __forceinline__ float WarpSum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// f(i) for every i < n, f a __device__ functor (a grid-stride loop).
template <typename Fn>
__global__ void ForEachKernel(Fn f, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x)
    f(i);
}
template <typename Fn>
void ForEach(int64_t n, Fn f) {
  if (n == 0) return;
  ForEachKernel<<<GridFor(n), kThreads, 0, Stream()>>>(f, n);
  CUDA_CHECK_LAUNCH();
}
// f(i) for i = 0, 4, 8, ... < n (n a multiple of 4): four values a thread, for 4-value loads.
template <typename Fn>
__global__ void ForEach4Kernel(Fn f, int64_t n4) {
  for (int64_t j = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; j < n4;
       j += int64_t{gridDim.x} * blockDim.x)
    f(4 * j);
}
template <typename Fn>
void ForEach4(int64_t n, Fn f) {
  if (n == 0) return;
  ForEach4Kernel<<<GridFor(n / 4), kThreads, 0, Stream()>>>(f, n / 4);
  CUDA_CHECK_LAUNCH();
}

struct SumOp {
  template <typename T>
  __device__ T operator()(T a, T b) const { return a + b; }
};
struct MaxOp {
  template <typename T>
  __device__ T operator()(T a, T b) const { return a > b ? a : b; }
};

// Reduces v over the block (blockDim.x a multiple of 32); every thread gets the result. shm holds
// 32 values; the leading barrier lets consecutive reductions share it.
template <typename T, typename Op>
__device__ T BlockReduce(T v, Op op, T* shm) {
  for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  __syncthreads();
  if (lane == 0) shm[warp] = v;
  __syncthreads();
  v = shm[0];
  for (int i = 1; i < warps; ++i) v = op(v, shm[i]);
  return v;
}

// Four independent sums a thread, so that four loads are in flight (one sum chained the loads:
// 418 us for the 217M gradients of the reference model on the H200).
template <typename Fn>
__global__ void PartialSumKernel(Fn f, int64_t n, double* partial) {
  __shared__ double shm[32];
  double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  const int64_t stride = int64_t{gridDim.x} * blockDim.x;
  int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  for (; i + 3 * stride < n; i += 4 * stride) {
    s0 += f(i);
    s1 += f(i + stride);
    s2 += f(i + 2 * stride);
    s3 += f(i + 3 * stride);
  }
  for (; i < n; i += stride) s0 += f(i);
  const double s = BlockReduce((s0 + s1) + (s2 + s3), SumOp(), shm);
  if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

// sum_{i < n} f(i) in double, f a __device__ functor: per-block partial sums, added on the host in
// a fixed order. Waits for the stream.
template <typename Fn>
double SumToHost(Fn f, int64_t n) {
  constexpr int kBlocks = 1024;  // about all that fit on the GPU at once
  Tensor partial = Tensor::Empty({kBlocks}, DType::kF64, Device::kCUDA);
  PartialSumKernel<<<kBlocks, kThreads, 0, Stream()>>>(f, n, partial.data<double>());
  CUDA_CHECK_LAUNCH();
  std::vector<double> host(kBlocks);
  CopyDeviceToHost(host.data(), partial.raw(), kBlocks * sizeof(double));
  double s = 0;
  for (double x : host) s += x;
  return s;
}

template <typename Fn>
__global__ void ColumnPartialKernel(Fn f, int64_t rows, int64_t cols, int64_t rows_per_part,
                                    float* partial) {
  const int64_t c = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (c >= cols) return;
  const int64_t r0 = blockIdx.y * rows_per_part, r1 = r0 + rows_per_part < rows ? r0 + rows_per_part : rows;
  float s = 0;
  for (int64_t r = r0; r < r1; ++r) s += f(r, c);
  partial[blockIdx.y * cols + c] = s;
}

// out[c] += sum over p < parts of partial[p * cols + c], in a fixed order (elementwise.cu).
void AddColumnSums(const float* partial, int parts, int64_t cols, float* out);

// out[c] += sum_{r < rows} f(r, c) for c < cols (parameter gradients accumulate): partial sums
// over slices of rows, then a fixed-order sum per column. Deterministic.
template <typename Fn>
void AccumulateColumnSums(Fn f, int64_t rows, int64_t cols, float* out) {
  if (rows == 0 || cols == 0) return;
  // Up to 1024 slices, so that even a few columns give enough blocks to keep the GPU busy.
  const int64_t rows_per_part = std::max<int64_t>(32, (rows + 1023) / 1024);
  const int parts = static_cast<int>((rows + rows_per_part - 1) / rows_per_part);
  Tensor partial = Tensor::Empty({parts, cols}, DType::kF32, Device::kCUDA);
  const dim3 grid(static_cast<unsigned>((cols + 127) / 128), parts);
  ColumnPartialKernel<<<grid, 128, 0, Stream()>>>(f, rows, cols, rows_per_part, F32(partial));
  CUDA_CHECK_LAUNCH();
  AddColumnSums(F32(partial), parts, cols, out);
}

}  // namespace gdn::cuda
