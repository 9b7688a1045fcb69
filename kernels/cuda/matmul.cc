// Matrix products on CUDA: cuBLAS sgemm (twin of kernels/cpu/matmul.cc). cuBLAS is column-major:
// a row-major matrix is its transpose there, so the row-major C = op(A) op(B) is computed as the
// column-major C^T = op(B)^T op(A)^T with the operands swapped. TF32 stays off (CUBLAS_DEFAULT_MATH
// on float32 never uses it unless asked), so results match the CPU to float32 rounding.
#include <cublas_v2.h>

#include <algorithm>
#include <string>

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
  const bool bf16 = ops::GetMatmulPrecision() == ops::MatmulPrecision::kBfloat16;
  for (const Tensor* t : {&a, &b, &c}) {
    // bf16 tensors only in the bf16 mode: operands (ops::MatmulOperand), and c when it is
    // overwritten (beta 0), which rounds the float32 accumulators once.
    const bool ok_type = t->dtype() == DType::kF32 ||
                         (bf16 && t->dtype() == DType::kBF16 && (t != &c || beta == 0.0));
    CHECK(ok_type && t->device() == Device::kCUDA)
        << "Matmul on CUDA: float32 CUDA tensors (bf16 operands, and a bf16 c with beta 0, in "
           "the bf16 mode), got "
        << DTypeName(t->dtype()) << " " << DeviceName(t->device())
        << (t == &c ? " for c with beta " + std::to_string(beta) : std::string());
  }
  if (m == 0 || n == 0) return;
  const float al = static_cast<float>(alpha), be = static_cast<float>(beta);
  // Leading dimensions are the row strides of the row-major buffers (at least 1 for cuBLAS); a and
  // b may be column views.
  const int lda = static_cast<int>(std::max<int64_t>(1, a.row_stride()));
  const int ldb = static_cast<int>(std::max<int64_t>(1, b.row_stride()));
  if (bf16) {
    // bf16 tensor-core products with float32 accumulation, float32 (or bf16) out. float32
    // operands (contiguous) are rounded to bf16 first, so cuBLAS runs its bf16 kernels
    // (kernels/cuda/gemm_bench.cu compares this with cuBLAS's float32-in form,
    // CUBLAS_COMPUTE_32F_FAST_16BF); bf16 operands are used as they are. A rounded copy goes back
    // to the stream-ordered cache when this returns, so later work on this stream reuses it only
    // after the product has read it.
    const Tensor a16 = a.dtype() == DType::kBF16 ? a : ToBf16(a);
    const Tensor b16 = b.dtype() == DType::kBF16 ? b : ToBf16(b);
    CUBLAS_CHECK(cublasGemmEx(Handle(), trans_b ? CUBLAS_OP_T : CUBLAS_OP_N,
                              trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, static_cast<int>(n),
                              static_cast<int>(m), static_cast<int>(k), &al, b16.strided_raw(),
                              CUDA_R_16BF, ldb, a16.strided_raw(), CUDA_R_16BF, lda, &be,
                              c.raw(),
                              c.dtype() == DType::kBF16 ? CUDA_R_16BF : CUDA_R_32F,
                              static_cast<int>(n), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    return;
  }
  CUBLAS_CHECK(cublasSgemm(Handle(), trans_b ? CUBLAS_OP_T : CUBLAS_OP_N,
                           trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, static_cast<int>(n),
                           static_cast<int>(m), static_cast<int>(k), &al, b.strided_data<float>(),
                           ldb, a.strided_data<float>(), lda, &be, c.data<float>(),
                           static_cast<int>(n)));
}

}  // namespace gdn::cuda
