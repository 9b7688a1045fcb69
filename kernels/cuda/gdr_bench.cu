// Times the CUDA gated delta rule (kernels/cuda/gated_delta_rule.cuh): median forward and
// forward+backward milliseconds over many iterations (cudaEvent timing, warm-up excluded), in
// fp32 and bf16, with the achieved TFLOP/s (the matrix products the kernels execute) and GB/s (the
// least bytes the op must move: each input read once, each output written once); then
// forward+backward with the saved forward (the backward reading the forward's intermediates
// instead of recomputing them) and the memory that holds them.
//   gdr_cuda_bench [B T H HV dk dv [iterations]]   (default 8 2048 16 16 128 128 20)
#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <type_traits>
#include <vector>

#include "kernels/cuda/gated_delta_rule.cuh"

namespace {

#define CHECK_CUDA(call)                                                                    \
  do {                                                                                      \
    const cudaError_t e_ = (call);                                                          \
    if (e_ != cudaSuccess) {                                                                \
      std::fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(e_)); \
      std::exit(1);                                                                         \
    }                                                                                       \
  } while (0)

__device__ float Hash01(uint64_t i, uint32_t salt) {
  uint64_t x = i * 0x9E3779B97F4A7C15ull + salt * 0xBF58476D1CE4E5B9ull;
  x ^= x >> 31;
  x *= 0x94D049BB133111EBull;
  x ^= x >> 29;
  return (x >> 40) * (1.0f / 16777216.0f);
}

// Uniform values in lo + (hi - lo) * [0, 1): random data, never zeros (they can time faster).
template <typename T>
__global__ void Fill(T* p, int64_t n, float lo, float hi, uint32_t salt) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    const float x = lo + (hi - lo) * Hash01(i, salt);
    if constexpr (sizeof(T) == 4)
      p[i] = x;
    else
      p[i] = __float2bfloat16(x);
  }
}

template <typename T>
T* Alloc(int64_t n, float lo, float hi, uint32_t salt) {
  T* p = nullptr;
  CHECK_CUDA(cudaMalloc(&p, n * sizeof(T)));
  Fill<T><<<1024, 256>>>(p, n, lo, hi, salt);
  CHECK_CUDA(cudaGetLastError());
  return p;
}

double Median(std::vector<float> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

struct Result {
  double fwd_ms, fwdbwd_ms, saved_ms;  // forward, forward+backward, the same with the saved forward
};

template <typename T>
Result Bench(const gdn::cuda::GdrShape& s, int iters, gdn::cuda::GdrProducts products) {
  const int64_t nqk = int64_t{s.B} * s.T * s.H * s.dk, nv = int64_t{s.B} * s.T * s.HV * s.dv;
  const int64_t ng = int64_t{s.B} * s.T * s.HV;
  // q, k entries of about 1/sqrt(dk) in size, so rows have about unit norm, like the layer's.
  const float a = std::sqrt(3.0f / s.dk);
  T* q = Alloc<T>(nqk, -a, a, 1);
  T* k = Alloc<T>(nqk, -a, a, 2);
  T* v = Alloc<T>(nv, -1, 1, 3);
  T* d_o = Alloc<T>(nv, -1, 1, 4);
  float* gamma = Alloc<float>(ng, -0.5f, -0.01f, 5);
  float* beta = Alloc<float>(ng, 0.05f, 1.f, 6);
  T* o = Alloc<T>(nv, 0, 1, 7);
  T* dq = Alloc<T>(nqk, 0, 1, 8);
  T* dk = Alloc<T>(nqk, 0, 1, 9);
  T* dv = Alloc<T>(nv, 0, 1, 10);
  float* dgamma = Alloc<float>(ng, 0, 1, 11);
  float* dbeta = Alloc<float>(ng, 0, 1, 12);
  const float scale = 1.0f / std::sqrt(float(s.dk));
  cudaStream_t stream;
  CHECK_CUDA(cudaStreamCreate(&stream));
  float* saved = nullptr;
  CHECK_CUDA(cudaMalloc(&saved, gdn::cuda::GdrSavedFloats(s) * sizeof(float) + 1));
  cudaEvent_t e0, e1;
  CHECK_CUDA(cudaEventCreate(&e0));
  CHECK_CUDA(cudaEventCreate(&e1));
  // The forward and the backward, with (`keep`) or without the saved forward.
  auto fwd = [&](bool keep = false) {
    float* sv = keep ? saved : nullptr;
    if constexpr (std::is_same_v<T, float>)
      gdn::cuda::GdrForward(s, q, k, v, gamma, beta, scale, o, nullptr, stream, products, sv);
    else
      gdn::cuda::GdrForward(s, q, k, v, gamma, beta, scale, o, nullptr, stream, sv);
  };
  auto bwd = [&](bool keep) {
    const float* sv = keep ? saved : nullptr;
    if constexpr (std::is_same_v<T, float>)
      gdn::cuda::GdrBackward(s, q, k, v, gamma, beta, scale, d_o, dq, dk, dv, dgamma, dbeta, stream,
                             products, sv);
    else
      gdn::cuda::GdrBackward(s, q, k, v, gamma, beta, scale, d_o, dq, dk, dv, dgamma, dbeta, stream,
                             sv);
  };
  auto time = [&](auto&& fn) {
    for (int i = 0; i < 3; ++i) fn();  // warm-up: module load, memory pool growth
    CHECK_CUDA(cudaStreamSynchronize(stream));
    std::vector<float> ms;
    for (int i = 0; i < iters; ++i) {
      CHECK_CUDA(cudaEventRecord(e0, stream));
      fn();
      CHECK_CUDA(cudaEventRecord(e1, stream));
      CHECK_CUDA(cudaEventSynchronize(e1));
      float t = 0;
      CHECK_CUDA(cudaEventElapsedTime(&t, e0, e1));
      ms.push_back(t);
    }
    return Median(ms);
  };
  Result r{time([&] { fwd(); }), time([&] { fwd(), bwd(false); }),
           time([&] { fwd(true), bwd(true); })};
  CHECK_CUDA(cudaDeviceSynchronize());
  for (void* p : {(void*)q, (void*)k, (void*)v, (void*)d_o, (void*)gamma, (void*)beta, (void*)o,
                  (void*)dq, (void*)dk, (void*)dv, (void*)dgamma, (void*)dbeta, (void*)saved})
    CHECK_CUDA(cudaFree(p));
  CHECK_CUDA(cudaEventDestroy(e0));
  CHECK_CUDA(cudaEventDestroy(e1));
  CHECK_CUDA(cudaStreamDestroy(stream));
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  gdn::cuda::GdrShape s{8, 2048, 16, 16, 128, 128};
  int iters = 20;
  if (argc >= 7) {
    s = {std::atoi(argv[1]), std::atoi(argv[2]), std::atoi(argv[3]), std::atoi(argv[4]),
         std::atoi(argv[5]), std::atoi(argv[6])};
  }
  if (argc >= 8) iters = std::max(1, std::atoi(argv[7]));
  cudaDeviceProp prop;
  CHECK_CUDA(cudaGetDeviceProperties(&prop, 0));
  std::printf("device %s, %d SMs\n", prop.name, prop.multiProcessorCount);
  std::printf("B=%d T=%d H=%d HV=%d dk=%d dv=%d chunk 64, %d timed iterations (median)\n", s.B,
              s.T, s.H, s.HV, s.dk, s.dv, iters);
  // Matrix-product flops the kernels execute per (batch, value head, chunk of C = 64), counting
  // full 64 x 64 tiles (the triangular ones too).
  const double C = 64, dk = s.dk, dv = s.dv;
  const double prep = 2 * C * C * (2 * dk + dv), state = 4 * C * dk * dv;
  const double out = 2 * C * C * dk + 2 * C * dk * dv + 2 * C * C * dv;
  const double fwd_f = prep + state + out;
  const double bwd_f = prep + state + (2 * C * C * dk + 2 * C * C * dv) +
                       (2 * C * dk * dv + 2 * C * C * dv + 4 * C * dk * dv) +
                       (4 * C * C * dk + 4 * C * C * dv + 6 * C * dk * dv + 6 * C * C * dk);
  const double units = double(s.B) * s.HV * ((s.T + 63) / 64);
  // fp32 inputs with fp32 FMA products (the float32 mode), with split-bf16 tensor-core products
  // (the bf16 mode of gdn's model), then bf16 inputs.
  using gdn::cuda::GdrProducts;
  for (int mode = 0; mode < 3; ++mode) {
    const bool bf16 = mode == 2;
    const Result r = bf16       ? Bench<__nv_bfloat16>(s, iters, GdrProducts::kSplitBf16)
                     : mode == 1 ? Bench<float>(s, iters, GdrProducts::kSplitBf16)
                                 : Bench<float>(s, iters, GdrProducts::kFloat32);
    const double el = bf16 ? 2 : 4;
    const double nqk = double(s.B) * s.T * s.H * s.dk, nv = double(s.B) * s.T * s.HV * s.dv;
    const double ng = double(s.B) * s.T * s.HV;
    const double fwd_bytes = el * (2 * nqk + 2 * nv) + 4 * 2 * ng;
    const double bwd_bytes = el * (4 * nqk + 4 * nv) + 4 * 4 * ng;
    const char* name = bf16 ? "bf16       " : mode == 1 ? "fp32 split " : "fp32       ";
    std::printf(
        "%s  forward %8.3f ms  %6.1f TFLOP/s %7.1f GB/s | forward+backward %8.3f ms  %6.1f "
        "TFLOP/s %7.1f GB/s\n",
        name, r.fwd_ms, units * fwd_f / (r.fwd_ms * 1e9), fwd_bytes / (r.fwd_ms * 1e6),
        r.fwdbwd_ms, units * (fwd_f + bwd_f) / (r.fwdbwd_ms * 1e9),
        (fwd_bytes + bwd_bytes) / (r.fwdbwd_ms * 1e6));
    // The backward from the saved forward skips its PrepKernel and StateKernel.
    std::printf("%s  saved forward: forward+backward %8.3f ms  %6.1f TFLOP/s, saved %.2f GB\n",
                name, r.saved_ms, units * (fwd_f + bwd_f - prep - state) / (r.saved_ms * 1e9),
                gdn::cuda::GdrSavedFloats(s) * 4e-9);
  }
  return 0;
}
