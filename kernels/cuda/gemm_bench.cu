// The matrix products of one training step of the reference model (hidden 1024, 6 heads of dk
// 128 and dv 256, SwiGLU 2048, vocabulary 32000, 8 x 2048 tokens) timed three ways on cuBLAS:
//   fp32        cublasSgemm (the float32 mode);
//   fp32-in     float32 operands with CUBLAS_COMPUTE_32F_FAST_16BF (cuBLAS rounds them to bf16);
//   bf16        the operands rounded to bf16 by our own kernel first, then a bf16 x bf16 -> fp32
//               product (what ops::Matmul does in bf16 mode), rounding included in the time.
// Prints per shape and in all the time and TFLOP/s. Usage: gemm_bench [iterations]
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>
#include <vector>

#define CK(x)                                                                          \
  do {                                                                                 \
    auto e_ = (x);                                                                     \
    if (e_ != 0) {                                                                     \
      std::fprintf(stderr, "%s:%d: %s failed (%d)\n", __FILE__, __LINE__, #x, int(e_)); \
      std::exit(1);                                                                    \
    }                                                                                  \
  } while (0)

__global__ void Round(const float* in, __nv_bfloat16* out, long n) {
  for (long i = blockIdx.x * long(blockDim.x) + threadIdx.x; i < n; i += long(gridDim.x) * blockDim.x)
    out[i] = __float2bfloat16_rn(in[i]);
}

__global__ void FillKernel(float* p, long n, float scale) {
  for (long i = blockIdx.x * long(blockDim.x) + threadIdx.x; i < n; i += long(gridDim.x) * blockDim.x)
    p[i] = scale * float((i * 2654435761u) % 1000) / 1000.0f - 0.5f * scale;
}

struct Shape {
  const char* what;
  int m, n, k;  // row-major C[m, n] = op(A) op(B), reduction k
  bool ta, tb;
};

int main(int argc, char** argv) {
  const int iters = argc > 1 ? std::atoi(argv[1]) : 10;
  const int N = 8 * 2048, D = 1024, K = 768, V = 1536, F = 2048, Voc = 32000;
  // Forward y = x W^T, backward dx = dy W and dW = dy^T x, for each projection of one layer.
  std::vector<Shape> shapes;
  auto proj = [&](const char* name, int in, int out) {
    shapes.push_back({name, N, out, in, false, true});   // forward
    shapes.push_back({name, N, in, out, false, false});  // dx
    shapes.push_back({name, out, in, N, true, false});   // dW
  };
  proj("q,k (x2)", D, K);
  proj("q,k (x2)", D, K);
  proj("v", D, V);
  proj("g", D, V);
  proj("o", V, D);
  proj("mlp gate,up (x2)", D, F);
  proj("mlp gate,up (x2)", D, F);
  proj("mlp down", F, D);
  const size_t layer_shapes = shapes.size();
  proj("head (once)", D, Voc);

  size_t max_elems = 0;
  for (const Shape& s : shapes) {
    max_elems = std::max(max_elems, size_t(s.m) * s.k);
    max_elems = std::max(max_elems, size_t(s.k) * s.n);
    max_elems = std::max(max_elems, size_t(s.m) * s.n);
  }
  float *a, *b, *c;
  __nv_bfloat16 *a16, *b16;
  CK(cudaMalloc(&a, max_elems * 4));
  CK(cudaMalloc(&b, max_elems * 4));
  CK(cudaMalloc(&c, max_elems * 4));
  CK(cudaMalloc(&a16, max_elems * 2));
  CK(cudaMalloc(&b16, max_elems * 2));
  FillKernel<<<1024, 256>>>(a, long(max_elems), 1.0f);
  FillKernel<<<1024, 256>>>(b, long(max_elems), 0.1f);
  cublasHandle_t h;
  CK(cublasCreate(&h));
  cudaEvent_t e0, e1;
  CK(cudaEventCreate(&e0));
  CK(cudaEventCreate(&e1));
  cudaDeviceProp prop;
  CK(cudaGetDeviceProperties(&prop, 0));
  std::printf("gemm_bench on %s: the reference model's matrix products (N = %d tokens), %d iterations\n",
              prop.name, N, iters);

  const char* modes[] = {"fp32", "fp32-in", "bf16"};
  double total_ms[3] = {0, 0, 0}, total_flops = 0;
  for (size_t si = 0; si < shapes.size(); ++si) {
    const Shape& s = shapes[si];
    const double flops = 2.0 * s.m * s.n * s.k;
    const double weight = si < layer_shapes ? 12 : 1;  // 12 layers; the head once
    total_flops += weight * flops;
    std::printf("%-18s m %6d n %6d k %6d %s%s:", s.what, s.m, s.n, s.k, s.ta ? "T" : "N", s.tb ? "T" : "N");
    for (int mode = 0; mode < 3; ++mode) {
      const float al = 1, be = 0;
      const int lda = s.ta ? s.m : s.k, ldb = s.tb ? s.k : s.n;
      const long an = long(s.m) * s.k, bn = long(s.k) * s.n;
      auto run = [&] {
        const cublasOperation_t ob = s.tb ? CUBLAS_OP_T : CUBLAS_OP_N, oa = s.ta ? CUBLAS_OP_T : CUBLAS_OP_N;
        if (mode == 0) {
          CK(cublasSgemm(h, ob, oa, s.n, s.m, s.k, &al, b, ldb, a, lda, &be, c, s.n));
        } else if (mode == 1) {
          CK(cublasGemmEx(h, ob, oa, s.n, s.m, s.k, &al, b, CUDA_R_32F, ldb, a, CUDA_R_32F, lda, &be,
                          c, CUDA_R_32F, s.n, CUBLAS_COMPUTE_32F_FAST_16BF, CUBLAS_GEMM_DEFAULT));
        } else {
          Round<<<1024, 256>>>(a, a16, an);
          Round<<<1024, 256>>>(b, b16, bn);
          CK(cublasGemmEx(h, ob, oa, s.n, s.m, s.k, &al, b16, CUDA_R_16BF, ldb, a16, CUDA_R_16BF, lda,
                          &be, c, CUDA_R_32F, s.n, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
        }
      };
      run();  // warm-up
      CK(cudaEventRecord(e0));
      for (int i = 0; i < iters; ++i) run();
      CK(cudaEventRecord(e1));
      CK(cudaEventSynchronize(e1));
      float ms = 0;
      CK(cudaEventElapsedTime(&ms, e0, e1));
      ms /= iters;
      total_ms[mode] += weight * ms;
      std::printf("  %s %.3f ms %.0f TFLOP/s", modes[mode], ms, flops / ms / 1e9);
    }
    std::printf("\n");
  }
  std::printf("one step's matrix products (12 layers + head, %.1f TFLOP):", total_flops / 1e12);
  for (int mode = 0; mode < 3; ++mode)
    std::printf("  %s %.1f ms (%.0f TFLOP/s)", modes[mode], total_ms[mode],
                total_flops / total_ms[mode] / 1e9);
  std::printf("\n");
  return 0;
}
