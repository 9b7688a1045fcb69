// Matrix products on CUDA: cuBLAS sgemm (twin of kernels/cpu/matmul.cc). cuBLAS is column-major:
// a row-major matrix is its transpose there, so the row-major C = op(A) op(B) is computed as the
// column-major C^T = op(B)^T op(A)^T with the operands swapped. TF32 stays off (CUBLAS_DEFAULT_MATH
// on float32 never uses it unless asked), so results match the CPU to float32 rounding.
#include <cublas_v2.h>

#include <algorithm>

#include "kernels/cuda/cuda_ops.h"
#include "kernels/matmul_shape.h"
#include "kernels/ops.h"
#include "runtime/cuda_check.h"

namespace gdn::cuda {

namespace {

#define CUBLAS_CHECK(call)                                                            \
  do {                                                                                \
    const cublasStatus_t gdn_cublas_st_ = (call);                                     \
    CHECK(gdn_cublas_st_ == CUBLAS_STATUS_SUCCESS)                                    \
        << #call << ": " << cublasGetStatusName(gdn_cublas_st_) << " ("               \
        << cublasGetStatusString(gdn_cublas_st_) << ")";                              \
  } while (0)

cublasHandle_t Handle() {
  static cublasHandle_t handle = [] {
    cublasHandle_t h;
    Stream();  // the device is chosen first
    CUBLAS_CHECK(cublasCreate(&h));
    CUBLAS_CHECK(cublasSetStream(h, Stream()));
    CUBLAS_CHECK(cublasSetMathMode(h, CUBLAS_DEFAULT_MATH));
    return h;
  }();
  return handle;
}

}  // namespace

void Matmul(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, const Tensor& c,
            double alpha, double beta) {
  const auto [m, n, k] = CheckMatmulShape(a, trans_a, b, trans_b, c);
  for (const Tensor* t : {&a, &b, &c}) {
    CHECK(t->dtype() == DType::kF32 && t->device() == Device::kCUDA)
        << "Matmul on CUDA: float32 CUDA tensors only, got " << DTypeName(t->dtype()) << " "
        << DeviceName(t->device());
  }
  if (m == 0 || n == 0) return;
  const float al = static_cast<float>(alpha), be = static_cast<float>(beta);
  // Leading dimensions are the row lengths of the row-major buffers (at least 1 for cuBLAS).
  const int lda = static_cast<int>(std::max<int64_t>(1, a.dim(1)));
  const int ldb = static_cast<int>(std::max<int64_t>(1, b.dim(1)));
  if (ops::GetMatmulPrecision() == ops::MatmulPrecision::kBfloat16) {
    // float32 in and out, bf16 tensor-core products with float32 accumulation.
    CUBLAS_CHECK(cublasGemmEx(Handle(), trans_b ? CUBLAS_OP_T : CUBLAS_OP_N,
                              trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, static_cast<int>(n),
                              static_cast<int>(m), static_cast<int>(k), &al, b.data<float>(),
                              CUDA_R_32F, ldb, a.data<float>(), CUDA_R_32F, lda, &be,
                              c.data<float>(), CUDA_R_32F, static_cast<int>(n),
                              CUBLAS_COMPUTE_32F_FAST_16BF, CUBLAS_GEMM_DEFAULT));
    return;
  }
  CUBLAS_CHECK(cublasSgemm(Handle(), trans_b ? CUBLAS_OP_T : CUBLAS_OP_N,
                           trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, static_cast<int>(n),
                           static_cast<int>(m), static_cast<int>(k), &al, b.data<float>(), ldb,
                           a.data<float>(), lda, &be, c.data<float>(), static_cast<int>(n)));
}

}  // namespace gdn::cuda
